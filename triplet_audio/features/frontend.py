"""Log-mel front end in TensorFlow (tf.signal), usable inside a SavedModel.

waveform (16 kHz mono float32) -> STFT magnitude (25 ms periodic Hann, 10 ms
hop, FFT 512) -> 64 HTK mel bands 125-7500 Hz -> log(mel + 0.01) -> frames
grouped into non-overlapping windows of 96 frames.

Framing rules (documented once, here):
  * STFT frames are taken without padding: a waveform of N >= 400 samples
    gives 1 + (N - 400) // 160 frames.
  * Windows are non-overlapping runs of 96 frames. A trailing partial window
    (fewer than 96 frames left) is dropped, as VGGish does: a 10 s clip gives
    10 windows, the last 0.38 s unused.
  * A clip too short for one window (< 15,600 samples, ~0.975 s) is zero-
    padded at the end to exactly one window when `pad_short=True` (default),
    else it yields zero windows and callers drop it.
  * Window w of a recording starts at w * 0.96 s.

Dense (overlapping) windows: with `hop_frames` < 96 (a hop of hop_frames x
10 ms), window w is frames [w * hop_frames, w * hop_frames + 96) and starts
at w * hop_frames * 0.01 s; a waveform of N >= 15,600 samples gives
1 + (num_frames - 96) // hop_frames windows, the trailing partial one
dropped as above. hop_frames = 96 is the non-overlapping framing above,
computed by the same code as before (a reshape), so its values are
unchanged.
"""

import tensorflow as tf

from triplet_audio import constants as C

_MEL_MATRIX_F64 = None


def _mel_matrix(dtype=tf.float32):
    # Built once, eagerly and in float64, then used as a constant: built in
    # float32 inside each graph, the weights came out ~1e-5 different inside
    # a tf.data function than in eager mode, so the same audio gave slightly
    # different features depending on where the front end ran.
    global _MEL_MATRIX_F64
    if _MEL_MATRIX_F64 is None:
        with tf.init_scope():
            # linear_to_mel_weight_matrix uses the HTK mel scale
            # (1127 ln(1 + f/700)).
            _MEL_MATRIX_F64 = tf.signal.linear_to_mel_weight_matrix(
                num_mel_bins=C.NUM_MEL_BANDS,
                num_spectrogram_bins=C.NUM_SPECTROGRAM_BINS,
                sample_rate=C.SAMPLE_RATE,
                lower_edge_hertz=C.MEL_LOWER_HZ,
                upper_edge_hertz=C.MEL_UPPER_HZ,
                dtype=tf.float64).numpy()
    dtype = tf.as_dtype(dtype)
    return tf.constant(_MEL_MATRIX_F64.astype(dtype.as_numpy_dtype), dtype)


def waveform_to_logmel(waveform):
    """Computes log-mel frames of a 16 kHz waveform.

    Args:
      waveform: float32 tensor [..., num_samples] at `constants.SAMPLE_RATE`.

    Returns:
      float32 tensor [..., num_frames, 64] of log(mel + 0.01). num_frames is
      0 when num_samples < 400.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    # The STFT of tf.signal.stft, cheaper: frames are cut FFT_LENGTH wide
    # under a window zero past its 400 taps, so the FFT needs no padded copy
    # of every frame, and |X| is taken from its real and imaginary parts
    # (tf.abs on complex64 cost 1.6x as much). Same frames, same values.
    tail = C.FFT_LENGTH - C.STFT_WINDOW_SAMPLES
    if waveform.shape.rank is not None:  # static paddings keep static shapes
        paddings = [[0, 0]] * (waveform.shape.rank - 1) + [[0, tail]]
    else:
        paddings = tf.concat([tf.zeros([tf.rank(waveform) - 1, 2], tf.int32),
                              [[0, tail]]], axis=0)
    frames = tf.signal.frame(tf.pad(waveform, paddings), C.FFT_LENGTH,
                             C.STFT_HOP_SAMPLES)
    window = tf.pad(tf.signal.hann_window(C.STFT_WINDOW_SAMPLES),
                    [[0, tail]])  # periodic=True by default.
    stft = tf.signal.rfft(frames * window, [C.FFT_LENGTH])
    real, imag = tf.math.real(stft), tf.math.imag(stft)
    magnitude = tf.sqrt(real * real + imag * imag)
    mel = tf.tensordot(magnitude, _mel_matrix(), axes=1)
    mel.set_shape(magnitude.shape[:-1].concatenate([C.NUM_MEL_BANDS]))
    return tf.math.log(mel + C.LOG_OFFSET)


def logmel_to_windows(logmel, hop_frames=C.WINDOW_FRAMES):
    """Groups log-mel frames into [96, 64] windows, `hop_frames` apart.

    Args:
      logmel: float32 tensor [num_frames, 64], or [..., num_frames, 64] (a
        batch of recordings of equal length) when `hop_frames` is given.
      hop_frames: frames between window starts: a Python int or an int32
        scalar tensor, 1..96. 96 (default): non-overlapping windows.

    Returns:
      float32 tensor [..., num_windows, 96, 64] with num_windows =
      1 + (num_frames - 96) // hop_frames (0 when num_frames < 96); the
      trailing partial window is dropped.
    """
    logmel = tf.convert_to_tensor(logmel, tf.float32)
    if isinstance(hop_frames, int) and hop_frames == C.WINDOW_FRAMES and (
            logmel.shape.rank == 2):
        # The non-overlapping framing: a reshape, as it always was.
        num_windows = tf.shape(logmel)[0] // C.WINDOW_FRAMES
        kept = logmel[:num_windows * C.WINDOW_FRAMES]
        return tf.reshape(kept, [num_windows, C.WINDOW_FRAMES,
                                 C.NUM_MEL_BANDS])
    # Overlapping (or batched) framing: a strided gather of frame rows.
    windows = tf.signal.frame(logmel, C.WINDOW_FRAMES, hop_frames, axis=-2)
    return tf.ensure_shape(
        windows, logmel.shape[:-2].concatenate(
            [None, C.WINDOW_FRAMES, C.NUM_MEL_BANDS]))


def pad_to_one_window(waveform):
    """Zero-pads a 1-D waveform at the end to at least one window of samples."""
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    missing = tf.maximum(C.MIN_WINDOW_SAMPLES - tf.shape(waveform)[0], 0)
    return tf.pad(waveform, [[0, missing]])


def waveform_to_windows(waveform, pad_short=True, hop_frames=C.WINDOW_FRAMES):
    """Maps a 1-D 16 kHz waveform to its log-mel windows.

    Args:
      waveform: float32 tensor [num_samples].
      pad_short: whether a clip shorter than one window is zero-padded to one
        window (True) or yields zero windows (False).
      hop_frames: frames between window starts (see `logmel_to_windows`).

    Returns:
      float32 tensor [num_windows, 96, 64].
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    if pad_short:
        waveform = pad_to_one_window(waveform)
    elif waveform.shape.rank == 1 and waveform.shape[0] is not None and (
            waveform.shape[0] < C.STFT_WINDOW_SAMPLES):
        # tf.signal.stft needs at least one frame's worth of samples.
        return tf.zeros([0, C.WINDOW_FRAMES, C.NUM_MEL_BANDS], tf.float32)
    else:
        waveform = tf.pad(waveform, [[
            0, tf.maximum(C.STFT_WINDOW_SAMPLES - tf.shape(waveform)[0], 0)]])
    return logmel_to_windows(waveform_to_logmel(waveform), hop_frames)


def num_windows_for_samples(num_samples, pad_short=True,
                            hop_frames=C.WINDOW_FRAMES):
    """Number of windows `waveform_to_windows` yields for `num_samples` samples.

    Args:
      num_samples: int, length of a 16 kHz waveform.
      pad_short: as in `waveform_to_windows`.
      hop_frames: as in `waveform_to_windows`.

    Returns:
      int.
    """
    if num_samples < C.MIN_WINDOW_SAMPLES:
        return 1 if pad_short else 0
    frames = 1 + (num_samples - C.STFT_WINDOW_SAMPLES) // C.STFT_HOP_SAMPLES
    return 1 + (frames - C.WINDOW_FRAMES) // hop_frames


def samples_for_windows(num_windows, hop_frames=C.WINDOW_FRAMES):
    """Samples a waveform needs to yield exactly `num_windows` full windows."""
    if num_windows <= 0:
        return 0
    return ((num_windows - 1) * hop_frames * C.STFT_HOP_SAMPLES +
            C.MIN_WINDOW_SAMPLES)


def window_start_seconds(num_windows, hop_frames=C.WINDOW_FRAMES):
    """Start times (float32 seconds) of the first `num_windows` windows."""
    if isinstance(hop_frames, int):
        # A Python hop: the product in double, so 96 frames is exactly
        # WINDOW_SECONDS, as the start times always were.
        step = hop_frames * C.STFT_HOP_SECONDS
    else:
        step = tf.cast(hop_frames, tf.float32) * C.STFT_HOP_SECONDS
    return tf.cast(tf.range(num_windows), tf.float32) * step


# autograph=False: no tensor-dependent Python control flow here, and the
# conversion cost ~0.3 s on the first call.
@tf.function(input_signature=[tf.TensorSpec([None], tf.float32)],
             reduce_retracing=True, autograph=False)
def windows_fn(waveform):
    """Graph-compiled `waveform_to_windows` without padding, for extraction."""
    return waveform_to_windows(waveform, pad_short=False)
