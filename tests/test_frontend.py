"""Tests of triplet_audio.features.frontend against the independent NumPy reference.

The reference (tests/numpy_frontend.py) computes in float64; TensorFlow works
in float32. Where a band holds almost no energy, float32 FFT round-off from
the loud bands is amplified by 1 / (mel + 0.01) in the log, so test signals
stay at or below half full scale to keep that floor well under the 1e-3
tolerance.
"""

import numpy as np
import pytest
import tensorflow as tf

import numpy_frontend
from triplet_audio import constants as C
from triplet_audio.features import frontend

TOLERANCE = 1e-3

# Two full windows and a partial one, so framing is exercised too.
_NUM_SAMPLES = C.MIN_WINDOW_SAMPLES + C.WINDOW_HOP_SAMPLES + 3000


def _time():
    return np.arange(_NUM_SAMPLES) / C.SAMPLE_RATE


def _white_noise():
    return 0.3 * np.random.default_rng(0).standard_normal(_NUM_SAMPLES)


def _pink_noise():
    # 1/f power: shape white noise's spectrum by 1/sqrt(f).
    rng = np.random.default_rng(1)
    spectrum = np.fft.rfft(rng.standard_normal(_NUM_SAMPLES))
    freqs = np.fft.rfftfreq(_NUM_SAMPLES)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    pink = np.fft.irfft(spectrum, n=_NUM_SAMPLES)
    return 0.5 * pink / np.abs(pink).max()


def _tone(hz, amplitude=0.5):
    return amplitude * np.sin(2.0 * np.pi * hz * _time())


def _chirp():
    # Linear sweep 50 Hz -> 7900 Hz over the clip: crosses every band.
    t = _time()
    f0, f1 = 50.0, 7900.0
    sweep = f0 * t + (f1 - f0) * t ** 2 / (2.0 * t[-1])
    return 0.5 * np.sin(2.0 * np.pi * sweep)


_SIGNALS = {
    "white_noise": _white_noise,
    "pink_noise": _pink_noise,
    "tone_440": lambda: _tone(440.0),
    "tone_1000": lambda: _tone(1000.0),
    "tone_7000": lambda: _tone(7000.0),
    "chirp": _chirp,
    "silence": lambda: np.zeros(_NUM_SAMPLES),
}


def _signal(name):
    return _SIGNALS[name]().astype(np.float32)


def test_mel_matrix_matches_reference():
    np.testing.assert_allclose(frontend._mel_matrix().numpy(),
                               numpy_frontend.mel_weight_matrix(), atol=1e-6)


def test_reference_filterbank_convention():
    weights = numpy_frontend.mel_weight_matrix()
    assert weights.shape == (C.NUM_SPECTROGRAM_BINS, C.NUM_MEL_BANDS)
    assert np.all(weights[0] == 0.0)
    # Nothing outside 125-7500 Hz contributes.
    hz = numpy_frontend.spectrogram_bin_hz()
    outside = (hz <= C.MEL_LOWER_HZ) | (hz >= C.MEL_UPPER_HZ)
    assert np.all(weights[outside] == 0.0)
    # Peaks of at most 1, each band reaching most of it (bins are 31.25 Hz).
    assert weights.max() <= 1.0
    assert np.all(weights.max(axis=0) > 0.5)


@pytest.mark.parametrize("name", sorted(_SIGNALS))
def test_logmel_matches_reference(name):
    waveform = _signal(name)
    got = frontend.waveform_to_logmel(waveform).numpy()
    want = numpy_frontend.waveform_to_logmel(waveform)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(_SIGNALS))
def test_windows_match_reference(name):
    waveform = _signal(name)
    got = frontend.waveform_to_windows(waveform).numpy()
    want = numpy_frontend.waveform_to_windows(waveform)
    assert got.shape == want.shape == (2,) + C.WINDOW_SHAPE
    assert np.max(np.abs(got - want)) <= TOLERANCE


def test_tolerance_catches_a_symmetric_window():
    # The comparison must be able to tell periodic from symmetric Hann.
    waveform = _signal("white_noise")
    symmetric = numpy_frontend.NumpyFrontend()
    n = np.arange(C.STFT_WINDOW_SAMPLES)
    symmetric.window = 0.5 - 0.5 * np.cos(
        2.0 * np.pi * n / (C.STFT_WINDOW_SAMPLES - 1))
    got = frontend.waveform_to_logmel(waveform).numpy()
    assert np.max(np.abs(got - symmetric.waveform_to_logmel(waveform))) > (
        10 * TOLERANCE)


_BOUNDARY_LENGTHS = [0, 1, 399, 400, 15599, 15600, 15759, 15760, 30959, 30960,
                     160000]


@pytest.mark.parametrize("pad_short", [True, False])
@pytest.mark.parametrize("num_samples", _BOUNDARY_LENGTHS)
def test_window_counts_at_boundaries(num_samples, pad_short):
    waveform = np.random.default_rng(num_samples).uniform(
        -0.5, 0.5, num_samples).astype(np.float32)
    expected = frontend.num_windows_for_samples(num_samples,
                                                pad_short=pad_short)
    eager = frontend.waveform_to_windows(waveform, pad_short=pad_short).numpy()
    reference = numpy_frontend.waveform_to_windows(waveform,
                                                   pad_short=pad_short)
    assert eager.shape == reference.shape == (expected,) + C.WINDOW_SHAPE
    if expected:
        assert np.max(np.abs(eager - reference)) <= TOLERANCE
    if not pad_short:
        # windows_fn sees an unknown length, so takes the graph-side path.
        assert frontend.windows_fn(waveform).shape == eager.shape


def test_window_counts_follow_documented_framing():
    # From frontend.py's docstring: 1 + (N - 400) // 160 frames, 96 per
    # window, trailing partial dropped; a 10 s clip gives 10 windows.
    assert frontend.num_windows_for_samples(10 * C.SAMPLE_RATE) == 10
    for n in range(C.STFT_WINDOW_SAMPLES, 40 * C.WINDOW_HOP_SAMPLES, 37):
        frames = 1 + (n - C.STFT_WINDOW_SAMPLES) // C.STFT_HOP_SAMPLES
        assert frontend.num_windows_for_samples(n, pad_short=False) == (
            frames // C.WINDOW_FRAMES)


@pytest.mark.parametrize("num_windows", range(0, 13))
def test_samples_for_windows_is_the_inverse(num_windows):
    n = frontend.samples_for_windows(num_windows)
    assert frontend.num_windows_for_samples(n, pad_short=False) == num_windows
    if num_windows > 0:
        # The fewest samples that give that many windows.
        assert frontend.num_windows_for_samples(n - 1, pad_short=False) == (
            num_windows - 1)


def test_pad_short_pads_with_zeros_at_the_end():
    clip = _signal("white_noise")[:5000]
    padded = np.concatenate(
        [clip, np.zeros(C.MIN_WINDOW_SAMPLES - clip.shape[0], np.float32)])
    got = frontend.waveform_to_windows(clip, pad_short=True).numpy()
    np.testing.assert_allclose(
        got, frontend.waveform_to_windows(padded).numpy(), atol=1e-6)
    assert np.max(np.abs(
        got - numpy_frontend.waveform_to_windows(padded))) <= TOLERANCE
    assert frontend.waveform_to_windows(clip, pad_short=False).shape[0] == 0


def test_window_w_starts_at_w_hops():
    waveform = _signal("pink_noise")
    windows = frontend.waveform_to_windows(waveform).numpy()
    for w in range(windows.shape[0]):
        start = w * C.WINDOW_HOP_SAMPLES
        alone = frontend.waveform_to_windows(
            waveform[start:start + C.MIN_WINDOW_SAMPLES]).numpy()
        np.testing.assert_allclose(windows[w], alone[0], atol=1e-5)


# Lengths that exercise each branch of waveform_to_windows when the length is
# only known at run time: short of one frame, short of one window, several.
_GRAPH_LENGTHS = [300, 5000, 15600, 40000]


def _graph_inputs():
    rng = np.random.default_rng(7)
    return [rng.uniform(-0.5, 0.5, n).astype(np.float32)
            for n in _GRAPH_LENGTHS]


@pytest.mark.parametrize("pad_short", [True, False])
def test_tf_function_equals_eager(pad_short):
    graph_fn = tf.function(
        lambda x: frontend.waveform_to_windows(x, pad_short=pad_short),
        input_signature=[tf.TensorSpec([None], tf.float32)])
    for waveform in _graph_inputs():
        eager = frontend.waveform_to_windows(waveform, pad_short=pad_short)
        graph = graph_fn(waveform)
        assert graph.shape == eager.shape
        np.testing.assert_array_equal(graph.numpy(), eager.numpy())
        if not pad_short:
            np.testing.assert_array_equal(
                frontend.windows_fn(waveform).numpy(), eager.numpy())


@pytest.mark.parametrize("pad_short", [True, False])
def test_dataset_map_equals_eager(pad_short):
    inputs = _graph_inputs()
    ds = tf.data.Dataset.from_generator(
        lambda: iter(inputs),
        output_signature=tf.TensorSpec([None], tf.float32))
    ds = ds.map(lambda x: frontend.waveform_to_windows(x, pad_short=pad_short))
    mapped = list(ds.as_numpy_iterator())
    assert len(mapped) == len(inputs)
    for waveform, got in zip(inputs, mapped):
        eager = frontend.waveform_to_windows(waveform, pad_short=pad_short)
        assert got.shape == eager.shape
        np.testing.assert_array_equal(got, eager.numpy())


@pytest.mark.parametrize("hz", [250.0, 1000.0, 4000.0])
def test_tone_peaks_in_nearest_band(hz):
    centers = numpy_frontend.mel_band_centers_hz()
    distance = np.abs(centers - hz)
    nearest = int(np.argmin(distance))
    # 1 kHz lies between two centres (28 Hz below, 33 Hz above); make sure
    # "nearest" is not a tie, so the test can tell the two apart.
    assert np.partition(distance, 1)[1] > 1.1 * distance[nearest]
    logmel = frontend.waveform_to_logmel(_tone(hz).astype(np.float32)).numpy()
    assert int(np.argmax(logmel.mean(axis=0))) == nearest


# ------------------------------------------------- dense (overlapping) ---
def _reference_dense_windows(waveform, hop_frames):
    # Windows hop_frames apart, framed by hand from the NumPy log-mel.
    logmel = numpy_frontend.waveform_to_logmel(waveform)
    count = 1 + (logmel.shape[0] - C.WINDOW_FRAMES) // hop_frames
    return np.stack([logmel[w * hop_frames:w * hop_frames + C.WINDOW_FRAMES]
                     for w in range(max(count, 0))])


@pytest.mark.parametrize("hop_frames", [1, 5, 48, 95, 96])
def test_dense_windows_match_numpy_framing(hop_frames):
    waveform = _signal("chirp")
    want = _reference_dense_windows(waveform, hop_frames)
    got = frontend.waveform_to_windows(waveform, hop_frames=hop_frames)
    assert got.shape == want.shape
    assert want.shape[0] == frontend.num_windows_for_samples(
        waveform.shape[0], hop_frames=hop_frames)
    assert np.max(np.abs(got.numpy() - want)) <= TOLERANCE
    # A batch of recordings of one length, the hop a tensor (as in the
    # exported graph): the same windows.
    batch = np.stack([waveform, _signal("pink_noise")])
    batched = frontend.logmel_to_windows(frontend.waveform_to_logmel(batch),
                                         tf.constant(hop_frames))
    assert batched.shape == (2,) + want.shape
    assert np.max(np.abs(batched[0].numpy() - want)) <= TOLERANCE
    assert np.max(np.abs(batched[1].numpy() - _reference_dense_windows(
        batch[1], hop_frames))) <= TOLERANCE


def test_default_hop_is_the_non_overlapping_framing_bit_for_bit():
    waveform = _signal("white_noise")
    logmel = frontend.waveform_to_logmel(waveform)
    np.testing.assert_array_equal(
        frontend.logmel_to_windows(logmel, tf.constant(C.WINDOW_FRAMES)),
        frontend.logmel_to_windows(logmel))


@pytest.mark.parametrize("hop_frames", [1, 5, 50])
@pytest.mark.parametrize("num_windows", [1, 2, 7])
def test_dense_samples_for_windows_is_the_inverse(hop_frames, num_windows):
    n = frontend.samples_for_windows(num_windows, hop_frames)
    assert frontend.num_windows_for_samples(
        n, pad_short=False, hop_frames=hop_frames) == num_windows
    assert frontend.num_windows_for_samples(
        n - 1, pad_short=False, hop_frames=hop_frames) == num_windows - 1
    np.testing.assert_allclose(
        frontend.window_start_seconds(num_windows, hop_frames).numpy(),
        np.arange(num_windows) * hop_frames * 0.01, atol=1e-6)
