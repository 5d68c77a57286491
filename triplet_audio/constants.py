"""The one home of every fixed number of the front end and window shape.

Values follow the paper and ../shared/DESIGN.md (the VGGish / AudioSet front
end). Every other module imports them from here; never restate them.
"""

import math
import numbers

SAMPLE_RATE = 16000
"""Sample rate (Hz) of every waveform that reaches the front end."""

STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
STFT_WINDOW_SAMPLES = 400  # 25 ms at 16 kHz.
STFT_HOP_SAMPLES = 160  # 10 ms at 16 kHz.
FFT_LENGTH = 512
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1

NUM_MEL_BANDS = 64
MEL_LOWER_HZ = 125.0
MEL_UPPER_HZ = 7500.0
LOG_OFFSET = 0.01
"""log(mel + LOG_OFFSET): the offset the samplers subtract in the energy domain."""

WINDOW_FRAMES = 96
"""Frames per example window (0.96 s): T in the paper."""

WINDOW_SHAPE = (WINDOW_FRAMES, NUM_MEL_BANDS)
"""(T, F) = (96, 64): the shape of one log-mel example."""

WINDOW_SECONDS = WINDOW_FRAMES * STFT_HOP_SECONDS

WINDOW_HOP_SAMPLES = WINDOW_FRAMES * STFT_HOP_SAMPLES
"""Samples between the starts of two consecutive (non-overlapping) windows."""

MIN_WINDOW_SAMPLES = (WINDOW_FRAMES - 1) * STFT_HOP_SAMPLES + STFT_WINDOW_SAMPLES
"""Samples needed for one full window (15,600 = 0.975 s)."""

DEFAULT_WINDOW_HOP_SECONDS = WINDOW_SECONDS
"""Default hop between window starts: non-overlapping windows, as the paper
(and the corpora bin/extract_features writes) cut them."""

_HOP_TOLERANCE_SECONDS = 1e-4


def window_hop_frames(hop_seconds, name="window_hop_seconds"):
    """STFT frames between the starts of consecutive windows.

    Windows are cut from the log-mel frames, so a hop is a whole number of
    STFT hops (10 ms), from 1 (0.01 s, the densest) to `WINDOW_FRAMES`
    (0.96 s, non-overlapping).

    Args:
      hop_seconds: the hop in seconds, e.g. 0.96, 0.5 or 0.05.
      name: the setting's name, for the error message.

    Returns:
      int, 1..WINDOW_FRAMES.

    Raises:
      ValueError: naming `name` when the hop is not a multiple of 0.01 s in
        [0.01, 0.96] (or not a number).
    """
    seconds = float("nan")
    if isinstance(hop_seconds, numbers.Real) and not isinstance(
            hop_seconds, bool):
        seconds = float(hop_seconds)
    frames = round(seconds / STFT_HOP_SECONDS) if math.isfinite(seconds) else 0
    if not 1 <= frames <= WINDOW_FRAMES or abs(
            seconds - frames * STFT_HOP_SECONDS) > _HOP_TOLERANCE_SECONDS:
        raise ValueError(
            "%s: must be a multiple of %g s (the STFT hop) from %g to %g, "
            "got %r" % (name, STFT_HOP_SECONDS, STFT_HOP_SECONDS,
                        WINDOW_SECONDS, hop_seconds))
    return int(frames)

MAX_WINDOWS_PER_RECORD = 256
"""A recording longer than this many windows (~4.1 min) is split into chunks,
one tf.train.Example each, so that a record stays a few MB."""


def frontend_params():
    """Returns the front-end parameters as a JSON-serialisable dict.

    Written into every corpus manifest and export metadata so a consumer can
    check it was computed the same way.
    """
    return {
        "sample_rate": SAMPLE_RATE,
        "stft_window_samples": STFT_WINDOW_SAMPLES,
        "stft_hop_samples": STFT_HOP_SAMPLES,
        "fft_length": FFT_LENGTH,
        "window_fn": "periodic_hann",
        "magnitude": True,
        "num_mel_bands": NUM_MEL_BANDS,
        "mel_lower_hz": MEL_LOWER_HZ,
        "mel_upper_hz": MEL_UPPER_HZ,
        "mel_scale": "htk",
        "log_offset": LOG_OFFSET,
        "window_frames": WINDOW_FRAMES,
        "window_hop_frames": WINDOW_FRAMES,
        "max_windows_per_record": MAX_WINDOWS_PER_RECORD,
    }
