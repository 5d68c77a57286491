"""Independent NumPy reference of the log-mel front end (frontend.py).

Written from the numbers in DESIGN.md and the framing rules documented in
`triplet_audio/features/frontend.py`, without calling TensorFlow, so that the tests can
check the tf.signal implementation against it and the benchmark can time the
two on the same audio.

The design numbers are restated here as literals on purpose, not imported
from `triplet_audio.constants`: a reference that read the library's constants
would follow a wrong constant (e.g. an upper mel edge of 8000 Hz) and still
agree with the library. `tests/test_constants.py` pins the library's
constants to the same numbers.

The mel filterbank follows the convention of
`tf.signal.linear_to_mel_weight_matrix` (which the TF front end uses), since
"HTK mel, 64 bands, 125-7500 Hz" alone leaves it open:
  * mel(f) = 1127 ln(1 + f / 700) (the HTK formula);
  * band edges are 66 points equally spaced in mel between mel(125) and
    mel(7500); band k has lower edge, centre, upper edge = points k, k+1, k+2;
  * the spectrogram bins sit at linspace(0, sr / 2, 257) Hz and each triangle
    is linear in mel (not Hz), with peak 1 at the centre (no area
    normalisation);
  * the DC bin gets zero weight in every band.
"""

import numpy as np

# The numbers DESIGN.md fixes ("The numbers the paper fixes"), as literals.
SAMPLE_RATE = 16000  # Hz, mono.
STFT_WINDOW_SAMPLES = 400  # 25 ms.
STFT_HOP_SAMPLES = 160  # 10 ms.
FFT_LENGTH = 512
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1  # 257 magnitude bins.
NUM_MEL_BANDS = 64
MEL_LOWER_HZ = 125.0
MEL_UPPER_HZ = 7500.0
LOG_OFFSET = 0.01  # log(mel + 0.01).
WINDOW_FRAMES = 96  # 0.96 s, non-overlapping.
WINDOW_SHAPE = (WINDOW_FRAMES, NUM_MEL_BANDS)
# Samples one full window needs: 95 hops plus one STFT window (15,600).
MIN_WINDOW_SAMPLES = ((WINDOW_FRAMES - 1) * STFT_HOP_SAMPLES +
                      STFT_WINDOW_SAMPLES)

_HTK_MEL_Q = 1127.0
_HTK_MEL_BREAK_HZ = 700.0


def hz_to_mel(hz):
    """HTK mel scale: 1127 ln(1 + f / 700) (= 2595 log10(1 + f / 700))."""
    return _HTK_MEL_Q * np.log1p(np.asarray(hz, np.float64) / _HTK_MEL_BREAK_HZ)


def mel_to_hz(mel):
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, np.float64)
    return _HTK_MEL_BREAK_HZ * np.expm1(mel / _HTK_MEL_Q)


def periodic_hann(length=STFT_WINDOW_SAMPLES):
    """Periodic Hann window: 0.5 - 0.5 cos(2 pi n / length), n < length."""
    n = np.arange(length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)


def _mel_band_edges_mel():
    return np.linspace(hz_to_mel(MEL_LOWER_HZ), hz_to_mel(MEL_UPPER_HZ),
                       NUM_MEL_BANDS + 2)


def mel_band_centers_hz():
    """Centre frequency (Hz) of each of the 64 mel bands, ascending."""
    return mel_to_hz(_mel_band_edges_mel()[1:-1])


def spectrogram_bin_hz():
    """Frequency (Hz) of each of the 257 magnitude-spectrum bins."""
    return np.linspace(0.0, SAMPLE_RATE / 2.0, NUM_SPECTROGRAM_BINS)


def mel_weight_matrix():
    """Triangular HTK filterbank [257, 64] (see the module docstring)."""
    edges = _mel_band_edges_mel()
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    bin_mel = hz_to_mel(spectrogram_bin_hz())[:, np.newaxis]
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # HTK leaves out the DC bin.
    return weights


def frame_signal(waveform):
    """Frames [N] samples into [1 + (N - 400) // 160, 400], no padding."""
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError("waveform must be 1-D, got shape %s" %
                         (waveform.shape,))
    if waveform.shape[0] < STFT_WINDOW_SAMPLES:
        return np.zeros((0, STFT_WINDOW_SAMPLES), waveform.dtype)
    num_frames = 1 + (waveform.shape[0] - STFT_WINDOW_SAMPLES) // (
        STFT_HOP_SAMPLES)
    # A strided view: frames share memory with the waveform, no copy.
    return np.lib.stride_tricks.as_strided(
        waveform, shape=(num_frames, STFT_WINDOW_SAMPLES),
        strides=(STFT_HOP_SAMPLES * waveform.strides[0], waveform.strides[0]),
        writeable=False)


class NumpyFrontend:
    """The front end with its window and filterbank built once.

    Args:
      dtype: floating dtype of the computation. float64 (default) is the
        accurate reference the tests compare against; float32 does the same
        arithmetic at TensorFlow's precision, for a like-for-like benchmark.
    """

    def __init__(self, dtype=np.float64):
        self.dtype = np.dtype(dtype)
        self.window = periodic_hann().astype(self.dtype)
        self.mel_matrix = mel_weight_matrix().astype(self.dtype)

    def waveform_to_logmel(self, waveform):
        """[N] samples -> [num_frames, 64] log(mel + 0.01); none if N < 400."""
        frames = frame_signal(np.asarray(waveform, self.dtype))
        magnitude = np.abs(np.fft.rfft(frames * self.window, n=FFT_LENGTH,
                                       axis=-1))
        mel = magnitude.astype(self.dtype, copy=False) @ self.mel_matrix
        return np.log(mel + LOG_OFFSET)

    def waveform_to_windows(self, waveform, pad_short=True):
        """[N] samples -> [num_windows, 96, 64], framed as in frontend.py.

        Args:
          waveform: 1-D array of 16 kHz samples.
          pad_short: zero-pad a clip shorter than one window (15,600 samples)
            at the end to exactly one window; if False such a clip gives zero
            windows.

        Returns:
          array [num_windows, 96, 64] of `self.dtype`.
        """
        waveform = np.asarray(waveform, self.dtype)
        if pad_short and waveform.shape[0] < MIN_WINDOW_SAMPLES:
            waveform = np.pad(
                waveform, (0, MIN_WINDOW_SAMPLES - waveform.shape[0]))
        return logmel_to_windows(self.waveform_to_logmel(waveform))


def logmel_to_windows(logmel):
    """[num_frames, 64] -> [num_frames // 96, 96, 64], dropping the rest."""
    num_windows = logmel.shape[0] // WINDOW_FRAMES
    return logmel[:num_windows * WINDOW_FRAMES].reshape(
        (num_windows,) + WINDOW_SHAPE)


_DEFAULT = None


def _default():
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = NumpyFrontend()
    return _DEFAULT


def waveform_to_logmel(waveform):
    """float64 reference of `frontend.waveform_to_logmel` for a 1-D waveform."""
    return _default().waveform_to_logmel(waveform)


def waveform_to_windows(waveform, pad_short=True):
    """float64 reference of `frontend.waveform_to_windows`."""
    return _default().waveform_to_windows(waveform, pad_short=pad_short)
