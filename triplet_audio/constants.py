"""The one home of every fixed number of the front end and window shape.

Values follow the paper and ../shared/DESIGN.md (the VGGish / AudioSet front
end). Every other module imports them from here; never restate them.
"""

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
