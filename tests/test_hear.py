"""Tests of triplet_audio.hear, the HEAR 2021 API over an export.

The export holds a tiny model (tests/tiny_model.py): what is tested is
the API's shapes, framing, timestamps and padding, which do not depend on
the model. The reference for the timestamp embeddings is the NumPy front end
(tests/numpy_frontend.py) framed by hand.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tiny_model
import numpy_frontend
from triplet_audio import constants as C
from triplet_audio import hear
from triplet_audio.hear import api
from triplet_audio.serving import export

D = 16


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hear") / "export")
    export.export_saved_model(tiny_model.tiny_model(D), path)
    return path


@pytest.fixture(scope="module")
def model(export_dir):
    return hear.load_model(export_dir)


def _audio(num_sounds, seconds, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, (num_sounds, int(round(
        seconds * C.SAMPLE_RATE)))).astype(np.float32)


def test_model_attributes(model):
    assert isinstance(model, tf.Module)
    assert model.sample_rate == 16000 and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == D
    assert model.timestamp_embedding_size == D
    assert isinstance(model.scene_embedding_size, int)
    assert isinstance(model.timestamp_embedding_size, int)
    assert model.timestamp_hop_seconds == 0.05


@pytest.mark.parametrize("seconds", [0.1, 2.0, 30.0])
@pytest.mark.parametrize("num_sounds", [1, 3, 16])
def test_shapes_dtypes_and_timestamps(model, num_sounds, seconds):
    audio = _audio(num_sounds, seconds)
    scene = hear.get_scene_embeddings(tf.constant(audio), model)
    assert isinstance(scene, tf.Tensor) and scene.dtype == tf.float32
    assert scene.shape == (num_sounds, D)

    embeddings, timestamps = hear.get_timestamp_embeddings(
        tf.constant(audio), model)
    num = 1 + audio.shape[1] // 800  # a window centred every 50 ms
    assert num == api.num_timestamps(audio.shape[1], 0.05)
    assert isinstance(embeddings, tf.Tensor)
    assert embeddings.dtype == tf.float32 and timestamps.dtype == tf.float32
    assert embeddings.shape == (num_sounds, num, D)
    assert timestamps.shape == (num_sounds, num)
    times = timestamps.numpy()
    # Regular, from the start to the end of the sound, the same per sound.
    np.testing.assert_array_equal(times, np.tile(np.arange(num) * 50.0,
                                                 (num_sounds, 1)))
    assert times[0, -1] <= 1000.0 * seconds < times[0, -1] + 50.0
    assert np.isfinite(embeddings.numpy()).all()


def _reference_timestamp_embeddings(keras_model, sound, hop_frames):
    # Half a window of zeros on both sides, then windows hop_frames apart of
    # the NumPy front end's frames: window w is centred on w * hop.
    half = C.MIN_WINDOW_SAMPLES // 2
    padded = np.concatenate([np.zeros(half), sound, np.zeros(half)])
    logmel = numpy_frontend.waveform_to_logmel(padded)
    count = 1 + (logmel.shape[0] - C.WINDOW_FRAMES) // hop_frames
    windows = np.stack([logmel[w * hop_frames:w * hop_frames +
                               C.WINDOW_FRAMES] for w in range(count)])
    return keras_model(windows.astype(np.float32), training=False).numpy()


def test_timestamp_embeddings_are_centred_windows(export_dir, model):
    keras_model = tiny_model.tiny_model(D)
    audio = _audio(2, 1.37, seed=3)
    got, _ = hear.get_timestamp_embeddings(audio, model)
    for i in range(2):
        want = _reference_timestamp_embeddings(keras_model, audio[i], 5)
        assert got.shape[1] == want.shape[0]
        np.testing.assert_allclose(got[i].numpy(), want, atol=2e-4, rtol=0)
    # The comparison tells a centred window from one starting at its
    # timestamp (the sound framed without the half-window of padding).
    logmel = numpy_frontend.waveform_to_logmel(audio[0])
    starting = keras_model(np.stack([
        logmel[w * 5:w * 5 + C.WINDOW_FRAMES] for w in range(3)]).astype(
            np.float32), training=False).numpy()
    assert np.abs(got[0, :3].numpy() - starting).max() > 1e-2


def test_long_sounds_are_cut_into_calls_like_the_whole(export_dir, model,
                                                       monkeypatch):
    audio = _audio(3, 7.3, seed=4)
    whole_scene = hear.get_scene_embeddings(audio, model).numpy()
    whole, times = hear.get_timestamp_embeddings(audio, model)
    # Calls of 1 s per sound, groups of 2 sounds.
    monkeypatch.setattr(api, "CALL_SECONDS", 1.0)
    monkeypatch.setattr(api, "SOUNDS_PER_CALL", 2)
    cut, cut_times = hear.get_timestamp_embeddings(audio, model)
    np.testing.assert_allclose(cut.numpy(), whole.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cut_times.numpy(), times.numpy())
    np.testing.assert_allclose(hear.get_scene_embeddings(audio, model),
                               whole_scene, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seconds", [0.3, 2.5])
def test_scene_is_the_mean_of_the_export_s_windows(export_dir, model,
                                                   seconds):
    audio = _audio(3, seconds, seed=1)
    scene = hear.get_scene_embeddings(audio, model).numpy()
    serve = tf.saved_model.load(export.saved_model_path(
        export_dir)).signatures["serving_default"]
    for i in range(3):
        out = serve(waveform=tf.constant(audio[i]))
        windows = out["window_embeddings"].numpy()
        assert windows.shape[0] == (1 if seconds < 1 else 2)
        # The plain mean (not re-normalised): serving_default's clip.
        np.testing.assert_allclose(scene[i], windows.mean(axis=0), atol=1e-6,
                                   rtol=0)
        np.testing.assert_allclose(scene[i], out["clip_embedding"].numpy(),
                                   atol=1e-6, rtol=0)


def test_timestamp_hop_is_a_load_option(export_dir):
    model = hear.load_model(export_dir, timestamp_hop_seconds=0.25)
    embeddings, timestamps = hear.get_timestamp_embeddings(_audio(2, 1.0),
                                                           model)
    np.testing.assert_array_equal(timestamps[0].numpy(),
                                  [0.0, 250.0, 500.0, 750.0, 1000.0])
    assert embeddings.shape == (2, 5, D)


def test_numpy_float64_input_is_accepted(model):
    audio = _audio(2, 1.0).astype(np.float64)
    np.testing.assert_allclose(
        hear.get_scene_embeddings(audio, model).numpy(),
        hear.get_scene_embeddings(audio.astype(np.float32), model).numpy(),
        atol=1e-6)


def _with(value, at):
    audio = _audio(3, 1.0)
    audio[at] = value
    return audio


@pytest.mark.parametrize("audio,words", [
    (_with(np.nan, (1, 5)), "NaN or Inf samples (sound 1)"),
    (_with(np.inf, (2, 0)), "NaN or Inf samples (sound 2)"),
    (np.zeros(16000, np.float32), "2-D [n_sounds, n_samples]"),
    (np.zeros((1, 2, 16000), np.float32), "2-D [n_sounds, n_samples]"),
    (np.zeros((0, 16000), np.float32), "empty"),
    (np.zeros((2, 0), np.float32), "empty"),
    (np.zeros((2, 16000), np.int16), "floating-point"),
    (tf.zeros((2, 16000), tf.int32), "floating-point"),
])
@pytest.mark.parametrize("function", ["get_scene_embeddings",
                                      "get_timestamp_embeddings"])
def test_bad_audio_is_refused(model, function, audio, words):
    with pytest.raises(ValueError) as info:
        getattr(hear, function)(audio, model)
    assert function in str(info.value) and words in str(info.value)


def test_bad_model_and_paths_are_refused(tmp_path, export_dir):
    with pytest.raises(ValueError, match="what load_model returned"):
        hear.get_scene_embeddings(_audio(1, 1.0), object())
    with pytest.raises(ValueError, match="export directory"):
        hear.load_model("")
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        hear.load_model(str(tmp_path))
    with pytest.raises(ValueError, match="timestamp_hop_seconds"):
        hear.load_model(export_dir, timestamp_hop_seconds=0.055)
    # A SavedModel without embed_waveforms (an export from before it).
    old = tf.Module()
    old.f = tf.function(lambda x: {"y": x},
                        input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(old, str(tmp_path / "old"),
                        signatures={"serving_default": old.f})
    with pytest.raises(ValueError, match="export it again"):
        hear.load_model(str(tmp_path / "old"))


# Runs in a fresh process: argv[1] the export, argv[2] minutes of audio.
_MEMORY = r'''
import json, resource, sys
import numpy as np
from triplet_audio import hear

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

model = hear.load_model(sys.argv[1])
audio = np.empty((1, int(float(sys.argv[2]) * 60 * 16000)), np.float32)
rng = np.random.default_rng(0)
for i in range(0, audio.shape[1], 1 << 20):
    piece = audio[0, i:i + (1 << 20)]
    piece[:] = rng.uniform(-0.5, 0.5, piece.shape)
# Warm up on the first minute (one full call), then measure the whole.
hear.get_scene_embeddings(audio[:, :960000], model)
hear.get_timestamp_embeddings(audio[:, :960000], model)
base = peak_mb()
scene = hear.get_scene_embeddings(audio, model)
embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
print(json.dumps({"base_mb": base, "peak_mb": peak_mb(),
                  "audio_mb": audio.nbytes / 2.0 ** 20,
                  "shape": list(embeddings.shape),
                  "last_ms": float(timestamps[0, -1])}))
'''


def test_twenty_minutes_run_in_bounded_memory(export_dir):
    # The README's bound: beyond the loaded model and the caller's audio,
    # the HEAR functions hold the [n_sounds, n_timestamps, D] output and
    # one call's working set (1 minute of audio per sound), whatever the
    # length. Here (tiny model, D=16): 20 minutes (73 MB of audio) must add
    # less than 120 MB to the peak reached on its first minute. Copying the
    # audio twice (146 MB), holding its log-mel windows at 50 ms (24,001 x
    # 24.6 KB = 590 MB) or its whole STFT (~860 MB) would not fit.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
        sys.path), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MEMORY, export_dir, "20"],
                          env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 24001, D]
    assert result["last_ms"] == 1200000.0
    assert result["peak_mb"] - result["base_mb"] < 120.0, result
