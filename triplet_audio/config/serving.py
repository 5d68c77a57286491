"""How exports are written and embeddings cut: `ServingConfig`.

Each field's default, help and bounds are written once here; bin/export's
flags (`--window_hop_seconds`, `--tflite`, `--tflite_variants`) and
bin/embed's (`--window_hop_seconds`) are derived from them
(`fields.define_flags`). No TensorFlow.
"""

import dataclasses

from triplet_audio import constants as C
from triplet_audio.config import fields

TFLITE_VARIANTS = ("float32", "float16", "int8")
"""TFLite models bin/export --tflite can write: float32 weights, float16
weights (computed in float32), int8 dynamic-range quantisation."""

HEAR_TIMESTAMP_HOP_SECONDS = 0.05
"""Default hop of the HEAR API's timestamp embeddings (`triplet_audio.hear`):
HEAR asks for 50 ms or less, for its event-detection tasks."""


def _parse_variants(value):
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value or () if v.strip())


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """Window hop and on-device models of an export; validated on creation.

    Field names are the flag names, so a ValueError naming a field names the
    flag too.

    Attributes:
      window_hop_seconds: seconds between the starts of consecutive 0.96 s
        windows (a multiple of the 10 ms STFT hop, 0.01-0.96).
      tflite: whether bin/export also writes TFLite models.
      tflite_variants: which TFLite models (`TFLITE_VARIANTS`).
    """

    window_hop_seconds: float = fields.setting(
        C.DEFAULT_WINDOW_HOP_SECONDS,
        "Seconds between the starts of consecutive 0.96 s windows: a "
        "multiple of 0.01 (the STFT hop) from 0.01 to 0.96. 0.96 (default) "
        "cuts non-overlapping windows, as the paper; smaller hops give "
        "overlapping, denser windows (e.g. 0.05 for event detection). "
        "bin/export: the hop of serving_default and the TFLite models (the "
        "embed_waveforms signature takes one per request); bin/embed: the "
        "hop for audio input (a TFRecord corpus holds non-overlapping "
        "windows only).",
        lower_bound=C.STFT_HOP_SECONDS, upper_bound=C.WINDOW_SECONDS)
    tflite: bool = fields.setting(
        False, "Also write TFLite models taking a 16 kHz waveform, log-mel "
        "front end inside (see --tflite_variants).")
    tflite_variants: tuple = fields.setting(
        ("float32", "float16", "int8"),
        "With --tflite: comma-separated TFLite models to write: float32 "
        "(model.tflite), float16 (weights in float16, half the size), int8 "
        "(dynamic-range quantisation, a quarter).", kind="list",
        parse=_parse_variants)

    def __post_init__(self):
        C.window_hop_frames(self.window_hop_seconds)  # raises, naming it
        variants = _parse_variants(self.tflite_variants)
        unknown = [v for v in variants if v not in TFLITE_VARIANTS]
        if unknown:
            raise ValueError("tflite_variants: %s not among %s" % (
                ", ".join(unknown), ", ".join(TFLITE_VARIANTS)))
        if self.tflite and not variants:
            raise ValueError("tflite_variants: name at least one of %s with "
                             "--tflite" % ", ".join(TFLITE_VARIANTS))
        object.__setattr__(self, "tflite_variants", variants)
        object.__setattr__(self, "window_hop_seconds",
                           float(self.window_hop_seconds))

    @property
    def written_tflite_variants(self):
        """The variants to write: `tflite_variants` with --tflite, else ()."""
        return self.tflite_variants if self.tflite else ()
