"""Which synthetic corpus to write: `CorpusConfig` and the class vocabulary.

Each setting's default, help and bounds are written once here:
bin/make_corpus's flags are derived from `CorpusConfig`
(`fields.define_flags`), and the demo's corpus settings are this class as a
part of `config.demo.DemoConfig`. `demo.synthetic` synthesises what it
describes.

No TensorFlow here.
"""

import dataclasses
import math
from typing import Optional

from triplet_audio.config import fields

CLASS_NAMES = (
    "harmonic_tone",
    "chirp",
    "noise_burst",
    "impact",
    "click_train",
    "fm_warble",
    "am_tone",
    "speech_like",
    "engine_hum",
    "bird_trill",
    "rain",
    "siren",
    "dog_bark",
    "bubbles",
)
"""Class vocabulary of the synthetic corpus, in label-index order (the
synthesiser of each class is in `demo.synthetic`)."""

DEFAULT_DURATION_S = 10.0

CORPUS_VERSIONS = (1, 2)
"""The recording-condition models `demo.synthetic` can write (its docstring
says what each is). 1: every recording over its own constant background (the
corpus of the first demo, kept so that its results reproduce); 2: shared
acoustic environments, drift and recording nuisances."""
DEFAULT_CORPUS_VERSION = 2


def vocabulary_for(num_classes=None):
    """The class vocabulary of a corpus restricted to `num_classes` classes.

    Args:
      num_classes: how many of `CLASS_NAMES` to use, first ones first; None
        for all.

    Returns:
      Tuple of class names.

    Raises:
      ValueError: if num_classes is not in [1, len(CLASS_NAMES)].
    """
    if num_classes is None:
        return CLASS_NAMES
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(CLASS_NAMES)}], "
                         f"got {num_classes}")
    return CLASS_NAMES[:num_classes]


@dataclasses.dataclass
class CorpusConfig:
    """Resolved, validated settings of one synthetic corpus.

    Attributes:
      out_dir: directory the corpus is written to (--output_dir); a demo's
        corpus part leaves it None (the demo places the corpus).
      num_train: number of training recordings.
      num_eval: number of evaluation recordings.
      seed: non-negative corpus seed.
      duration_s: length of every recording in seconds.
      num_classes: use the first this many of `CLASS_NAMES`; None for all
        (--num_classes=0).
      workers: worker processes; 1 generates serially, 0 uses every core.
      corpus_version: which recording conditions to synthesise, one of
        `CORPUS_VERSIONS`; the same version, seed and sizes write the same
        bytes.
    """
    out_dir: str = fields.setting(
        None, "Directory to write the corpus to: audio/{train,eval}/*.wav, "
        "labels.csv, train.csv, eval.csv and corpus.json.", flag="output_dir",
        kind="str")
    num_train: int = fields.setting(240, "Training recordings.",
                                    lower_bound=0)
    num_eval: int = fields.setting(120, "Evaluation recordings.",
                                   lower_bound=0)
    seed: int = fields.setting(
        0, "Corpus seed; the same seed writes identical files.",
        lower_bound=0)
    duration_s: float = fields.setting(DEFAULT_DURATION_S,
                                       "Length of every recording (s).")
    num_classes: Optional[int] = fields.setting(
        None, "Use only the first N sound classes of the synthetic "
        "vocabulary; 0 uses all of them.", lower_bound=0, kind="int",
        parse=fields.zero_is_none, format=fields.none_is_zero)
    workers: int = fields.setting(1, "Worker processes; 0 uses every core.",
                                  lower_bound=0)
    corpus_version: int = fields.setting(
        DEFAULT_CORPUS_VERSION, "Recording conditions of the corpus: 2 draws "
        "each recording's acoustic environment from a pool shared by many "
        "recordings, with background drift, gain changes and sometimes a "
        "second environment; 1 is the first demo's corpus, every recording "
        "over its own constant background (which identifies the recording), "
        "kept to reproduce its results.",
        lower_bound=min(CORPUS_VERSIONS), upper_bound=max(CORPUS_VERSIONS))

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Checks every field but out_dir (see `require_out_dir`).

        Returns:
          self.

        Raises:
          ValueError: naming the flag of the first invalid field.
        """
        def bad(flag, why, value):
            raise ValueError("--%s: %s, got %r" % (flag, why, value))

        for name in ("num_train", "num_eval", "seed", "workers"):
            value = getattr(self, name)
            if not fields.is_integer(value) or value < 0:
                bad(name, "must be an integer >= 0", value)
        if not (fields.is_integer(self.corpus_version) and
                self.corpus_version in CORPUS_VERSIONS):
            bad("corpus_version", "must be one of %s" % (
                ", ".join(map(str, CORPUS_VERSIONS))), self.corpus_version)
        if self.num_train + self.num_eval == 0:
            raise ValueError("--num_train, --num_eval: the corpus needs at "
                             "least one recording")
        if isinstance(self.duration_s, bool) or not (
                isinstance(self.duration_s, (int, float)) and
                math.isfinite(self.duration_s) and self.duration_s > 0):
            bad("duration_s", "must be a positive number of seconds",
                self.duration_s)
        if self.num_classes is not None and not (
                fields.is_integer(self.num_classes) and
                1 <= self.num_classes <= len(CLASS_NAMES)):
            bad("num_classes", "must be in [1, %d] (0 on the command line: "
                "all)" % len(CLASS_NAMES), self.num_classes)
        return self

    def require_out_dir(self):
        """Returns self, or raises ValueError naming --output_dir if unset."""
        if not self.out_dir:
            raise ValueError("--output_dir is required")
        return self

    def content(self):
        """The settings that determine the corpus's bytes (corpus.json):
        every field but where it is written and by how many workers."""
        return {f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in ("out_dir", "workers")}
