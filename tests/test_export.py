"""Round trip of triplet_audio.serving.export: SavedModel, metadata.json, model.keras.

The SavedModel is exercised the way a consumer uses it: in a fresh Python
process that loads it with plain `tf.saved_model.load` and cannot import
triplet_audio (a package of that name that refuses to import is put first on
its path). Its outputs come back as .npy files and are compared with the
in-memory Keras model applied to `frontend.waveform_to_windows`.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import jsonio
from triplet_audio.config import sampling
from triplet_audio.config import training as train_config
from triplet_audio.serving import export
from triplet_audio.features import frontend
from triplet_audio.model import models
from triplet_audio.training import run_dir

ATOL = 1e-5

# Runs in the fresh process: argv[1] is the SavedModel, argv[2] the directory
# of inputs (*.npy) and outputs.
_CONSUMER = r'''
import json, os, sys
import numpy as np
import tensorflow as tf

saved_model, io_dir = sys.argv[1], sys.argv[2]
loaded = tf.saved_model.load(saved_model)
serve = loaded.signatures["serving_default"]
embed = loaded.signatures["embed_logmel"]

def load(name):
    return np.load(os.path.join(io_dir, name + ".npy"))

def save(name, value):
    np.save(os.path.join(io_dir, name + ".npy"), value.numpy())

for clip in ("clip", "short"):
    out = serve(waveform=tf.constant(load(clip)))
    for key, value in out.items():
        save("%s_%s" % (clip, key), value)
out = embed(logmel=tf.constant(load("logmel")))
save("logmel_embeddings", out["embeddings"])

bad = {
    "serving_default/rank2": lambda: serve(waveform=tf.zeros([2, 16000])),
    "serving_default/float64": lambda: serve(
        waveform=tf.zeros([16000], tf.float64)),
    "serving_default/nan": lambda: serve(
        waveform=tf.constant(np.full(16000, np.nan, np.float32))),
    "serving_default/empty": lambda: serve(waveform=tf.zeros([0])),
    "embed_logmel/rank2": lambda: embed(logmel=tf.zeros([96, 64])),
    "embed_logmel/shape": lambda: embed(logmel=tf.zeros([2, 96, 63])),
    "embed_logmel/float64": lambda: embed(
        logmel=tf.zeros([2, 96, 64], tf.float64)),
    "embed_logmel/nan": lambda: embed(
        logmel=tf.constant(np.full([2, 96, 64], np.nan, np.float32))),
    "embed_logmel/empty": lambda: embed(logmel=tf.zeros([0, 96, 64])),
}
errors = {}
for name, request in bad.items():
    try:
        request()
        errors[name] = None
    except Exception as e:  # pylint: disable=broad-except
        errors[name] = {"type": type(e).__name__, "message": str(e)}
with open(os.path.join(io_dir, "errors.json"), "w") as f:
    json.dump(errors, f)
with open(os.path.join(io_dir, "modules.json"), "w") as f:
    json.dump(sorted(m for m in sys.modules if m.startswith("triplet_audio")),
              f)
'''


def _randomize_batch_norm_stats(model, seed=0):
    # Fresh BN layers have mean 0 / variance 1, which would hide an export
    # that dropped the moving statistics or ran the model in training mode.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0.0, 0.5, mean.shape).astype(np.float32))
            var.assign(rng.uniform(0.5, 2.0, var.shape).astype(np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export_dir, io_dir) after running the fresh-process consumer."""
    root = tmp_path_factory.mktemp("export")
    model = models.build_model("small", seed=0)
    _randomize_batch_norm_stats(model)
    export_dir = str(root / "export")
    saved = export.export_saved_model(
        model, export_dir, training_config={"sampler": {"sampler": "noise"}},
        step=7)

    io_dir = root / "io"
    io_dir.mkdir()
    rng = np.random.default_rng(1)
    # 3.5 s: three windows and an unused tail.
    np.save(io_dir / "clip.npy",
            (0.1 * rng.standard_normal(56000)).astype(np.float32))
    # 0.3 s: shorter than one window, so zero-padded to one.
    np.save(io_dir / "short.npy",
            (0.1 * rng.standard_normal(4800)).astype(np.float32))
    # More windows than one in-graph batch, so the batching is exercised.
    np.save(io_dir / "logmel.npy", rng.uniform(
        np.log(C.LOG_OFFSET), 5.0,
        (export.SERVING_BATCH_WINDOWS + 20,) + C.WINDOW_SHAPE).astype(
            np.float32))

    poison = root / "poison" / "triplet_audio"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text(
        "raise ImportError('the SavedModel must load without triplet_audio')\n")
    env = dict(os.environ, PYTHONPATH=str(root / "poison"),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _CONSUMER, saved, str(io_dir)],
        cwd=str(root), env=env, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model, export_dir, io_dir


def _reference(model, waveform):
    windows = frontend.waveform_to_windows(waveform)
    return np.asarray(model(windows, training=False))


def test_consumer_did_not_import_triplet_audio(exported):
    _, _, io_dir = exported
    assert json.loads((io_dir / "modules.json").read_text()) == []


@pytest.mark.parametrize("clip,num_windows", [("clip", 3), ("short", 1)])
def test_serving_default_matches_in_memory_model(exported, clip, num_windows):
    model, _, io_dir = exported
    waveform = np.load(io_dir / (clip + ".npy"))
    expected = _reference(model, waveform)
    got = np.load(io_dir / (clip + "_window_embeddings.npy"))
    assert got.shape == (num_windows, 128)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.load(io_dir / (clip + "_clip_embedding.npy")),
                               expected.mean(axis=0), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.load(io_dir / (clip + "_start_times.npy")),
                               np.arange(num_windows) * C.WINDOW_SECONDS,
                               atol=1e-6)


def test_embed_logmel_matches_in_memory_model(exported):
    model, _, io_dir = exported
    logmel = np.load(io_dir / "logmel.npy")
    expected = np.asarray(model(logmel, training=False))
    got = np.load(io_dir / "logmel_embeddings.npy")
    assert got.shape == (logmel.shape[0], 128)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # Unit norm survives the export (the L2 layer is part of the graph).
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("request_name,words", [
    ("serving_default/rank2", "1-D"),
    ("serving_default/float64", "double"),
    ("serving_default/nan", "NaN"),
    ("serving_default/empty", "empty"),
    ("embed_logmel/rank2", "[batch, 96, 64]"),
    ("embed_logmel/shape", "[batch, 96, 64]"),
    ("embed_logmel/float64", "double"),
    ("embed_logmel/nan", "NaN"),
    ("embed_logmel/empty", "empty"),
])
def test_bad_requests_are_refused_naming_the_signature(exported, request_name,
                                                       words):
    _, _, io_dir = exported
    errors = json.loads((io_dir / "errors.json").read_text())
    error = errors[request_name]
    assert error is not None, "%s was accepted" % request_name
    assert error["type"] == "InvalidArgumentError"
    signature = request_name.split("/")[0]
    assert signature in error["message"]
    assert words in error["message"]


def test_metadata(exported):
    model, export_dir, _ = exported
    meta = export.load_metadata(export_dir)
    assert meta["package"] == "triplet-audio"
    assert meta["sample_rate"] == C.SAMPLE_RATE
    assert meta["frontend"] == C.frontend_params()
    assert meta["embedding_size"] == 128
    assert meta["model"] == models.model_summary_dict(model)
    assert meta["step"] == 7
    assert set(meta["signatures"]) == {"serving_default", "embed_logmel",
                                       "embed_waveforms"}
    assert meta["window_hop_seconds"] == C.WINDOW_SECONDS
    assert meta["tflite"] == {}
    assert meta["signatures"]["serving_default"]["inputs"] == {
        "waveform": "float32 [num_samples], 16 kHz mono"}
    assert set(meta["signatures"]["serving_default"]["outputs"]) == {
        "window_embeddings", "clip_embedding", "start_times"}
    assert meta["training_config"] == {"sampler": {"sampler": "noise"}}
    for key in ("version", "tensorflow_version", "keras_version"):
        assert meta[key]
    assert os.path.isfile(os.path.join(export_dir, meta["saved_model"],
                                       "saved_model.pb"))
    assert os.path.isfile(os.path.join(export_dir, meta["keras_model"]))


def test_keras_copy_reloads_with_the_same_outputs(exported):
    model, export_dir, io_dir = exported
    reloaded = keras.saving.load_model(
        os.path.join(export_dir, export.KERAS_NAME))
    logmel = np.load(io_dir / "logmel.npy")[:8]
    np.testing.assert_allclose(np.asarray(reloaded(logmel, training=False)),
                               np.asarray(model(logmel, training=False)),
                               atol=ATOL, rtol=0)


def test_saved_model_path_accepts_both_directories(exported):
    _, export_dir, _ = exported
    inner = os.path.join(export_dir, export.SAVED_MODEL_SUBDIR)
    assert export.saved_model_path(export_dir) == inner
    assert export.saved_model_path(inner) == inner
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        export.saved_model_path(os.path.dirname(export_dir))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    model = models.build_model("small", embedding_size=8, seed=1)
    export_dir = str(tmp_path / "export")
    export.export_saved_model(model, export_dir)
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_saved_model(model, export_dir)
    other = models.build_model("small", embedding_size=16, seed=2)
    export.export_saved_model(other, export_dir, overwrite=True)
    assert export.load_metadata(export_dir)["embedding_size"] == 16
    assert not os.path.exists(os.path.join(
        export_dir, export.SAVED_MODEL_SUBDIR + ".incomplete"))


def test_export_run_restores_the_run_directory_s_checkpoint(tmp_path):
    # A run directory as training leaves it: config.json and a checkpoint of
    # model and step (written here through run_dir, without training).
    model_dir = str(tmp_path / "run")
    config = train_config.TrainConfig(
        train_data="/data/corpus", model_dir=model_dir,
        sampler=sampling.SamplerConfig(sampler="noise"), model="small",
        embedding_size=8, seed=3)
    run_dir.write_config(model_dir, config)
    model = models.build_model("small", embedding_size=8, seed=4)
    step = tf.Variable(9, dtype=tf.int64)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, step=step),
        run_dir.checkpoint_dir(model_dir), max_to_keep=1).save(9)

    export_dir = str(tmp_path / "export")
    export.export_run(model_dir, export_dir)
    meta = export.load_metadata(export_dir)
    assert meta["step"] == 9
    assert meta["embedding_size"] == 8
    assert meta["training_config"] == jsonio.to_jsonable(config)
    reloaded = keras.saving.load_model(
        os.path.join(export_dir, export.KERAS_NAME))
    logmel = np.random.default_rng(0).uniform(
        -4.0, 2.0, (4,) + C.WINDOW_SHAPE).astype(np.float32)
    # The checkpoint's weights (seed 4), not the config's seed 3.
    np.testing.assert_allclose(np.asarray(reloaded(logmel, training=False)),
                               np.asarray(model(logmel, training=False)),
                               atol=ATOL, rtol=0)


def test_export_run_without_a_checkpoint_says_so(tmp_path):
    model_dir = str(tmp_path / "run")
    run_dir.write_config(model_dir, train_config.TrainConfig(
        train_data="/data/corpus", model_dir=model_dir,
        sampler=sampling.SamplerConfig(sampler="noise"), model="small"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export.export_run(model_dir, str(tmp_path / "export"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        export.export_run(str(tmp_path / "empty"), str(tmp_path / "export"))
