"""How triplets are sampled: `SamplerConfig` (paper section 3.2).

Each field's default, help and bounds are written once here; the flags of
bin/train and bin/inspect_triplets are derived from them
(`fields.define_flags`).
"""

import dataclasses
import math

import numpy as np

from triplet_audio import constants as C
from triplet_audio.config import fields
from triplet_audio.config import options

DEFAULT_SHUFFLE_BUFFER = 1024
"""Windows in the shuffle buffer by default. Larger buffers cost CPU, not just
memory: on a 2-core test machine one pass with 4096 windows (100 MB) took
+17 us per window over parse-only, with 1024 +8 us (cache-cold copies), while
file shuffling and the 8-record interleave already mix recordings."""


def parse_joint_weights(text):
    """Parses "noise=1,translation=2" into {sampler: weight}.

    Samplers not named get weight 0.

    Args:
      text: comma-separated name=weight entries over
        `options.UNSUPERVISED_SAMPLERS`.

    Returns:
      dict over every unsupervised sampler name.

    Raises:
      ValueError: naming `joint_weights` on a malformed entry or unknown name.
    """
    weights = {name: 0.0 for name in options.UNSUPERVISED_SAMPLERS}
    for entry in str(text).split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError("--joint_weights: entry %r is not name=weight" %
                             entry)
        if name not in weights:
            raise ValueError(
                "--joint_weights: unknown sampler %r (choose from %s)" %
                (name, ", ".join(options.UNSUPERVISED_SAMPLERS)))
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError("--joint_weights: weight %r of %s is not a number"
                             % (value, name)) from None
    return weights


def _default_joint_weights():
    return {name: 1.0 for name in options.UNSUPERVISED_SAMPLERS}


@dataclasses.dataclass
class SamplerConfig:
    """How triplets are sampled (section 3.2 of the paper).

    Fields are described by their `fields.setting` help; in short:

    Attributes:
      sampler: one of `options.SAMPLERS`.
      noise_sigma: standard deviation of the Gaussian-noise sampler's eps.
      translation_max_shift: S, the largest frequency shift in mel bins
        (0 <= S < 64).
      mixing_alpha: alpha of the example-mixing sampler.
      proximity_dt: seconds; anchor and positive start less than this apart
        (inf: anywhere in the record). Pairs never span two records, so a long
        recording split into chunks of `MAX_WINDOWS_PER_RECORD` windows pairs
        within a chunk.
      joint_weights: {unsupervised sampler: weight >= 0} for `joint`; the
        weights are normalised, and a sampler with weight 0 is left out. A
        string "noise=1,proximity=2" is parsed.
      shuffle_buffer: windows held by the shuffle buffer of an input
        pipeline (~25 KB each; proximity elements are two windows, so its
        buffer holds half as many; joint splits it among its samplers). The
        record shuffle before flattening holds `shuffle_buffer // 32` records
        (1 to 256). supervised does not stream (see `class_index`) and
        ignores it.
      class_sampling: how supervised chooses a triplet's class: "uniform"
        over classes (the paper) or "frequency" (in proportion to windows).
    """
    sampler: str = fields.setting(
        None, "Triplet sampler (paper section 3.2): noise, translation, "
        "mixing, proximity, supervised (topline) or joint (mixture of the "
        "unsupervised ones).", choices=options.SAMPLERS)
    noise_sigma: float = fields.setting(
        0.5, "Gaussian-noise sampler: std of eps in x * (1 + |eps|).",
        lower_bound=0.0)
    translation_max_shift: int = fields.setting(
        10, "Translation sampler: largest frequency shift S in mel bins.",
        lower_bound=0)
    mixing_alpha: float = fields.setting(
        0.25, "Mixing sampler: alpha in x_a + alpha * E(x_a) / E(x_n) * x_n.",
        lower_bound=0.0)
    proximity_dt: float = fields.setting(
        math.inf, "Proximity sampler: anchor and positive start less than "
        "this many seconds apart ('inf': anywhere in the recording).")
    joint_weights: dict = fields.setting(
        help="Joint sampler: comma-separated sampler=weight; unnamed "
        "samplers get 0.", default_factory=_default_joint_weights,
        kind="str", parse=lambda text: parse_joint_weights(text),
        format=lambda weights: ",".join("%s=%g" % kv
                                        for kv in weights.items()))
    shuffle_buffer: int = fields.setting(
        DEFAULT_SHUFFLE_BUFFER, "Windows held by the shuffle buffer of each "
        "input pipeline (~25 KB each; joint splits them among its samplers); "
        "records are shuffled in a buffer of shuffle_buffer / 32 (at most "
        "256). supervised draws by class index and does not use it.",
        lower_bound=1)
    class_sampling: str = fields.setting(
        "uniform", "Supervised sampler: choose each triplet's class "
        "uniformly over classes (the paper) or in proportion to its "
        "windows.", choices=options.CLASS_SAMPLING)

    def __post_init__(self):
        if isinstance(self.joint_weights, str):
            self.joint_weights = parse_joint_weights(self.joint_weights)
        elif (isinstance(self.joint_weights, dict) and
              set(self.joint_weights) <= set(options.UNSUPERVISED_SAMPLERS)):
            # One spelling per config: every sampler named, unnamed ones 0.
            self.joint_weights = {
                name: self.joint_weights.get(name, 0.0)
                for name in options.UNSUPERVISED_SAMPLERS}
        if isinstance(self.proximity_dt, str):
            # config.json writes inf as "inf".
            try:
                self.proximity_dt = float(self.proximity_dt)
            except ValueError:
                raise ValueError("--proximity_dt: %r is not a number" %
                                 self.proximity_dt) from None
        self.validate()

    def validate(self):
        """Checks every field.

        Returns:
          self.

        Raises:
          ValueError: naming the first invalid field.
        """
        def bad(field, why):
            raise ValueError("--%s: %s" % (field, why))

        def finite_at_least_zero(field, value):
            if (isinstance(value, bool) or
                    not isinstance(value, (int, float, np.number)) or
                    not math.isfinite(value) or value < 0):
                bad(field, "must be a finite number >= 0, got %r" % (value,))

        if self.sampler is None:
            bad("sampler", "required (one of %s)" % ", ".join(options.SAMPLERS))
        if self.sampler not in options.SAMPLERS:
            bad("sampler", "must be one of %s, got %r" %
                (", ".join(options.SAMPLERS), self.sampler))
        finite_at_least_zero("noise_sigma", self.noise_sigma)
        finite_at_least_zero("mixing_alpha", self.mixing_alpha)
        if (isinstance(self.translation_max_shift, bool) or
                not isinstance(self.translation_max_shift, (int, np.integer))
                or not 0 <= self.translation_max_shift < C.NUM_MEL_BANDS):
            bad("translation_max_shift", "must be an integer in [0, %d), got %r"
                % (C.NUM_MEL_BANDS, self.translation_max_shift))
        if (isinstance(self.proximity_dt, bool) or
                not isinstance(self.proximity_dt, (int, float, np.number)) or
                math.isnan(self.proximity_dt) or not self.proximity_dt > 0):
            bad("proximity_dt", "must be > 0 seconds (inf allowed), got %r" %
                (self.proximity_dt,))
        if not isinstance(self.joint_weights, dict):
            bad("joint_weights", "must be a dict or 'name=weight,...' string")
        for name, weight in self.joint_weights.items():
            if name not in options.UNSUPERVISED_SAMPLERS:
                bad("joint_weights", "unknown sampler %r (choose from %s)" %
                    (name, ", ".join(options.UNSUPERVISED_SAMPLERS)))
            finite_at_least_zero("joint_weights", weight)
        if not sum(self.joint_weights.values()) > 0:
            bad("joint_weights", "at least one weight must be > 0")
        if self.class_sampling not in options.CLASS_SAMPLING:
            bad("class_sampling", "must be one of %s, got %r" % (
                ", ".join(options.CLASS_SAMPLING), self.class_sampling))
        if (isinstance(self.shuffle_buffer, bool) or
                not isinstance(self.shuffle_buffer, (int, np.integer)) or
                self.shuffle_buffer < 1):
            bad("shuffle_buffer", "must be an integer >= 1, got %r" %
                (self.shuffle_buffer,))
        return self

    @classmethod
    def from_dict(cls, d):
        """Rebuilds a config from `dataclasses.asdict` / config.json output.

        Unknown keys are ignored (a newer config read by older code).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    def active_joint_samplers(self):
        """The (name, normalised weight) pairs `joint` mixes, in fixed order."""
        total = float(sum(self.joint_weights.values()))
        return [(name, self.joint_weights[name] / total)
                for name in options.UNSUPERVISED_SAMPLERS
                if self.joint_weights.get(name, 0) > 0]


