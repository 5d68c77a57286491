"""Using an export: dense windows, TFLite models, TF Serving's REST body.

  * `embed_waveforms` (any hop, batched) against windows framed by hand from
    the NumPy front end (tests/numpy_frontend.py), and at the default hop
    against serving_default;
  * a hop baked into serving_default by bin/export --window_hop_seconds;
  * the TFLite models (float32, float16, int8) run by the TFLite interpreter
    against the SavedModel on the same audio, at the tolerances the README
    states;
  * the REST request and response of TF Serving for the signatures, as the
    README writes them;
  * the ServingConfig settings and the flags derived from them.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tiny_model
import numpy_frontend
from triplet_audio import constants as C
from triplet_audio.config import serving as serving_config
from triplet_audio.model import models
from triplet_audio.serving import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 16

# |TFLite - SavedModel| per embedding value (the README's figures), and the
# smallest cosine between the two embeddings of a window.
TFLITE_TOLERANCE = {"float32": (1e-5, 0.99999), "float16": (3e-3, 0.9999),
                    "int8": (0.06, 0.99)}


def _randomize_batch_norm_stats(model, seed=0):
    # As tests/test_export.py: fresh statistics would hide a dropped one.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(
                0.0, 0.5, layer.moving_mean.shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(
                0.5, 2.0, layer.moving_variance.shape).astype(np.float32))


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """(keras model, export dir, loaded SavedModel): small CNN, all TFLite."""
    model = models.build_model("small", embedding_size=D, seed=0)
    _randomize_batch_norm_stats(model)
    export_dir = str(tmp_path_factory.mktemp("use") / "export")
    export.export_saved_model(
        model, export_dir, tflite_variants=serving_config.TFLITE_VARIANTS)
    return model, export_dir, tf.saved_model.load(
        export.saved_model_path(export_dir))


def _audio(shape, seed=0):
    return (0.3 * np.random.default_rng(seed).standard_normal(shape)).astype(
        np.float32)


def _reference_windows(sound, hop_frames):
    """Windows hop_frames apart, framed by hand from the NumPy front end."""
    if sound.shape[0] < C.MIN_WINDOW_SAMPLES:
        sound = np.pad(sound, (0, C.MIN_WINDOW_SAMPLES - sound.shape[0]))
    logmel = numpy_frontend.waveform_to_logmel(sound)
    count = 1 + (logmel.shape[0] - C.WINDOW_FRAMES) // hop_frames
    return np.stack([logmel[w * hop_frames:w * hop_frames + C.WINDOW_FRAMES]
                     for w in range(count)]).astype(np.float32)


# ------------------------------------------------------ dense windows ---
@pytest.mark.parametrize("hop_seconds", [0.03, 0.25, 0.96])
def test_embed_waveforms_equals_numpy_framing(small_export, hop_seconds):
    model, _, loaded = small_export
    hop_frames = C.window_hop_frames(hop_seconds)
    waveforms = _audio((2, 27000), seed=1)  # 1.69 s: a tail left over
    out = loaded.signatures["embed_waveforms"](
        waveforms=tf.constant(waveforms),
        hop_seconds=tf.constant(hop_seconds, tf.float32))
    got = out["window_embeddings"].numpy()
    for i in range(2):
        windows = _reference_windows(waveforms[i], hop_frames)
        want = model(windows, training=False).numpy()
        assert got.shape[1] == windows.shape[0] == 1 + (
            (1 + (27000 - 400) // 160) - 96) // hop_frames
        np.testing.assert_allclose(got[i], want, atol=5e-4, rtol=0)
    np.testing.assert_allclose(out["clip_embeddings"].numpy(),
                               got.mean(axis=1), atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        out["start_times"].numpy(),
        np.arange(got.shape[1]) * hop_frames * C.STFT_HOP_SECONDS, atol=1e-6)


def test_embed_waveforms_at_the_default_hop_is_serving_default(small_export):
    _, _, loaded = small_export
    waveforms = _audio((3, 50000), seed=2)
    dense = loaded.signatures["embed_waveforms"](
        waveforms=tf.constant(waveforms), hop_seconds=tf.constant(0.96))
    for i in range(3):
        serve = loaded.signatures["serving_default"](
            waveform=tf.constant(waveforms[i]))
        np.testing.assert_allclose(dense["window_embeddings"][i].numpy(),
                                   serve["window_embeddings"].numpy(),
                                   atol=1e-6, rtol=0)
        np.testing.assert_array_equal(dense["start_times"].numpy(),
                                      serve["start_times"].numpy())


def test_steps_of_windows_do_not_change_the_result(monkeypatch):
    # One window per sound per step (3 sounds, 4 windows a step) against
    # the default 256-window steps: the same embeddings.
    module = export.EmbeddingModule(tiny_model.tiny_model(D))
    waveforms = tf.constant(_audio((3, 24000), seed=3))
    hop = tf.constant(0.05)
    whole = module.embed_waveforms(waveforms, hop)["window_embeddings"]
    monkeypatch.setattr(export, "SERVING_BATCH_WINDOWS", 4)
    stepped = export.EmbeddingModule(tiny_model.tiny_model(D))
    got = stepped.embed_waveforms(waveforms, hop)["window_embeddings"]
    assert got.shape == whole.shape == (3, 1 + (148 - 96) // 5, D)
    np.testing.assert_allclose(got.numpy(), whole.numpy(), atol=1e-6, rtol=0)


def test_short_waveforms_are_padded_to_one_window(small_export):
    model, _, loaded = small_export
    waveforms = _audio((2, 4000), seed=4)
    out = loaded.signatures["embed_waveforms"](
        waveforms=tf.constant(waveforms), hop_seconds=tf.constant(0.05))
    assert out["window_embeddings"].shape == (2, 1, D)
    np.testing.assert_allclose(
        out["window_embeddings"][1].numpy(),
        model(_reference_windows(waveforms[1], 5), training=False).numpy(),
        atol=5e-4, rtol=0)


def test_a_hop_baked_into_serving_default():
    # The exported module as bin/export --window_hop_seconds=0.5 makes it.
    model = tiny_model.tiny_model(D)
    module = export.EmbeddingModule(model, window_hop_seconds=0.5)
    waveform = _audio(40000, seed=5)  # 2.5 s: 4 windows 0.5 s apart
    out = module.serving_default(tf.constant(waveform))
    assert out["window_embeddings"].shape == (4, D)
    np.testing.assert_allclose(out["start_times"].numpy(),
                               [0.0, 0.5, 1.0, 1.5], atol=1e-6)
    np.testing.assert_allclose(
        out["window_embeddings"].numpy(),
        model(_reference_windows(waveform, 50), training=False).numpy(),
        atol=5e-4, rtol=0)
    np.testing.assert_allclose(out["clip_embedding"].numpy(),
                               out["window_embeddings"].numpy().mean(0),
                               atol=1e-6)


@pytest.mark.parametrize("inputs,words", [
    (dict(waveforms=np.zeros((1, 16000)), hop_seconds=0.055), "multiple of"),
    (dict(waveforms=np.zeros((1, 16000)), hop_seconds=0.0), "multiple of"),
    (dict(waveforms=np.zeros((1, 16000)), hop_seconds=1.0), "multiple of"),
    (dict(waveforms=np.zeros((1, 16000)), hop_seconds=np.nan), "NaN or Inf"),
    (dict(waveforms=np.zeros((1, 16000)), hop_seconds=[0.05]), "scalar"),
    (dict(waveforms=np.zeros(16000), hop_seconds=0.05), "2-D"),
    (dict(waveforms=np.zeros((0, 16000)), hop_seconds=0.05), "empty"),
    (dict(waveforms=np.zeros((2, 0)), hop_seconds=0.05), "empty"),
    (dict(waveforms=np.full((1, 16000), np.nan), hop_seconds=0.05), "NaN"),
])
def test_bad_embed_waveforms_requests_are_refused(small_export, inputs,
                                                  words):
    _, _, loaded = small_export
    request = {k: tf.constant(v, tf.float32) for k, v in inputs.items()}
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        loaded.signatures["embed_waveforms"](**request)
    assert "embed_waveforms" in str(info.value)
    assert words in str(info.value)


# ---------------------------------------------------------------- TFLite ---
def _interpreter(path):
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation note
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=path, num_threads=1)


@pytest.mark.parametrize("variant", serving_config.TFLITE_VARIANTS)
def test_tflite_matches_the_saved_model(small_export, variant):
    _, export_dir, loaded = small_export
    meta = export.load_metadata(export_dir)["tflite"][variant]
    path = os.path.join(export_dir, meta["file"])
    assert os.path.getsize(path) == meta["bytes"]
    interpreter = _interpreter(path)
    assert interpreter.get_signature_list() == {"serving_default": {
        "inputs": ["waveform"],
        "outputs": ["clip_embedding", "window_embeddings"]}}
    # Builtin ops only: no TensorFlow (Flex) ops needed on the device.
    ops = {op["op_name"] for op in interpreter._get_ops_details()}  # pylint: disable=protected-access
    assert "RFFT2D" in ops and not any(o.startswith("Flex") for o in ops)
    runner = interpreter.get_signature_runner()
    atol, min_cosine = TFLITE_TOLERANCE[variant]
    for num_samples in (4800, 15600, 56000):  # padded, one window, three
        waveform = _audio(num_samples, seed=num_samples)
        want = loaded.signatures["serving_default"](
            waveform=tf.constant(waveform))["window_embeddings"].numpy()
        got = runner(waveform=waveform)
        assert got["window_embeddings"].shape == want.shape
        assert np.abs(got["window_embeddings"] - want).max() <= atol
        cosine = np.sum(got["window_embeddings"] * want, axis=1) / (
            np.linalg.norm(got["window_embeddings"], axis=1) *
            np.linalg.norm(want, axis=1))
        assert cosine.min() >= min_cosine
        np.testing.assert_allclose(got["clip_embedding"],
                                   got["window_embeddings"].mean(axis=0),
                                   atol=1e-5)


def test_tflite_files_shrink_with_quantisation(small_export):
    _, export_dir, _ = small_export
    sizes = {v: m["bytes"] for v, m in
             export.load_metadata(export_dir)["tflite"].items()}
    assert set(sizes) == set(serving_config.TFLITE_VARIANTS) == set(
        export.TFLITE_NAMES)
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["int8"] < 0.35 * sizes["float32"]


def test_unknown_tflite_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="bfloat16"):
        export.export_saved_model(tiny_model.tiny_model(D),
                                  str(tmp_path / "e"),
                                  tflite_variants=("bfloat16",))


# ------------------------------------------------ TF Serving REST (JSON) ---
# The bodies and responses the README shows: TF Serving's predict API in
# its columnar form ("inputs" / "outputs"), since serving_default takes one
# unbatched waveform.
README_REQUEST = {"signature_name": "serving_default",
                  "inputs": {"waveform": "[16 kHz samples]"}}
README_RESPONSE_KEYS = {"window_embeddings", "clip_embedding", "start_times"}
README_DENSE_REQUEST = {"signature_name": "embed_waveforms",
                        "inputs": {"waveforms": "[[...], [...]]",
                                   "hop_seconds": 0.05}}


def _serve_rest(loaded, body_text):
    """What TF Serving does with a columnar predict body, in miniature."""
    body = json.loads(body_text)
    signature = loaded.signatures[body.get("signature_name",
                                           "serving_default")]
    specs = signature.structured_input_signature[1]
    inputs = {name: tf.constant(value, specs[name].dtype)
              for name, value in body["inputs"].items()}
    outputs = signature(**inputs)
    return json.dumps({"outputs": {k: v.numpy().tolist()
                                   for k, v in outputs.items()}})


def test_rest_body_of_serving_default(small_export):
    _, _, loaded = small_export
    waveform = _audio(32000, seed=6)
    body = dict(README_REQUEST, inputs={"waveform": waveform.tolist()})
    assert set(body) == {"signature_name", "inputs"}
    response = json.loads(_serve_rest(loaded, json.dumps(body)))
    assert set(response) == {"outputs"}
    assert set(response["outputs"]) == README_RESPONSE_KEYS
    direct = loaded.signatures["serving_default"](
        waveform=tf.constant(waveform))
    for key in README_RESPONSE_KEYS:
        np.testing.assert_allclose(np.array(response["outputs"][key]),
                                   direct[key].numpy(), atol=1e-6)
    assert np.array(response["outputs"]["window_embeddings"]).shape == (2, D)
    np.testing.assert_allclose(response["outputs"]["start_times"],
                               [0.0, 0.96], atol=1e-6)


def test_rest_body_of_embed_waveforms(small_export):
    _, _, loaded = small_export
    waveforms = _audio((2, 20000), seed=7)
    body = dict(README_DENSE_REQUEST, inputs=dict(
        README_DENSE_REQUEST["inputs"], waveforms=waveforms.tolist()))
    response = json.loads(_serve_rest(loaded, json.dumps(body)))
    assert set(response["outputs"]) == {"window_embeddings",
                                        "clip_embeddings", "start_times"}
    windows = np.array(response["outputs"]["window_embeddings"])
    assert windows.shape == (2, 1 + (122 - 96) // 5, D)
    direct = loaded.signatures["embed_waveforms"](
        waveforms=tf.constant(waveforms), hop_seconds=tf.constant(0.05))
    np.testing.assert_allclose(windows, direct["window_embeddings"].numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(response["outputs"]["start_times"],
                               np.arange(6) * 0.05, atol=1e-6)


# ---------------------------------------------------- settings and flags ---
@pytest.mark.parametrize("kwargs,match", [
    (dict(window_hop_seconds=0.055), "window_hop_seconds"),
    (dict(window_hop_seconds=2.0), "window_hop_seconds"),
    (dict(tflite_variants=("float32", "int4")), "int4"),
    (dict(tflite=True, tflite_variants=()), "at least one"),
])
def test_serving_config_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        serving_config.ServingConfig(**kwargs)


def test_serving_config_defaults():
    config = serving_config.ServingConfig()
    assert config.window_hop_seconds == C.WINDOW_SECONDS
    assert config.written_tflite_variants == ()
    assert serving_config.ServingConfig(
        tflite=True, tflite_variants="float16, int8").written_tflite_variants \
        == ("float16", "int8")


_FLAGS = r'''
import json, sys
from triplet_audio.cli import commands, flagdefs
commands.define_flags(sys.argv[1])
flagdefs.FLAGS(["prog"] + sys.argv[2:])
args = (flagdefs.export_args_from_flags() if sys.argv[1] == "export"
        else flagdefs.embed_args_from_flags())
print(json.dumps(args))
'''


@pytest.mark.parametrize("binary,argv,expected", [
    ("export", ["--model_dir=r", "--export_dir=e"],
     {"window_hop_seconds": 0.96, "tflite_variants": []}),
    ("export", ["--model_dir=r", "--export_dir=e", "--tflite",
                "--tflite_variants=float16", "--window_hop_seconds=0.5"],
     {"window_hop_seconds": 0.5, "tflite_variants": ["float16"]}),
    ("embed", ["--input=i", "--output=o.npz", "--representation=logmel",
               "--window_hop_seconds=0.05"], {"window_hop_seconds": 0.05}),
])
def test_flags_are_derived_from_the_config(binary, argv, expected):
    proc = subprocess.run([sys.executable, "-c", _FLAGS, binary] + argv,
                          cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    args = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, value in expected.items():
        assert args[key] == value, key
