"""bin/train_classifier: a head on an export's embeddings, shipped."""

import json
import os

import numpy as np
import pytest
from sklearn import linear_model
import soundfile as sf
import tensorflow as tf

from testdata import make_datasets as M
from triplet_audio.config import classifier as classifier_config
from triplet_audio.config import evaluation as eval_config
from triplet_audio.evaluation import classifier
from triplet_audio.evaluation import linear_probe
from triplet_audio.model import models
from triplet_audio.serving import embed
from triplet_audio.serving import embeddings_io
from triplet_audio.serving import export

PROBE = eval_config.EvaluationConfig(probe_l2=(1e-2, 1.0), probe_max_iter=200)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    esc = M.make_esc50(str(root / "esc50"))
    export_dir = str(root / "export")
    export.export_saved_model(
        models.build_model("small", embedding_size=16, seed=0), export_dir,
        training_config={"sampler": {"sampler": "noise"}})
    config = classifier_config.ClassifierExportConfig(
        saved_model=export_dir, classifier_input=esc,
        export_dir=str(root / "classifier"), head="linear")
    summary = classifier.train_and_export(config, PROBE, input_format="esc50")
    return root, esc, export_dir, summary


def test_held_out_score_is_the_linear_probes(shipped):
    root, esc, export_dir, summary = shipped
    emb = str(root / "emb")
    embed.embed_corpus(esc, emb, saved_model=export_dir, input_format="esc50")
    want = linear_probe.evaluate(embeddings_io.read_embeddings(emb), None,
                                 eval_config.EvaluationConfig(
                                     probe_l2=PROBE.probe_l2,
                                     probe_max_iter=PROBE.probe_max_iter,
                                     probe_classifiers=("linear",)))
    got = summary["held_out"]
    assert got["scheme"] == "folds" and got["metric"] == "accuracy"
    assert got["linear"]["scores"] == pytest.approx(want["linear"]["scores"])
    with open(os.path.join(summary["export_dir"], "results.json")) as f:
        written = json.load(f)["linear_probe"]["linear"]
    assert written["mean"] == pytest.approx(want["linear"]["mean"])


def test_shipped_model_scores_a_waveform_like_the_refit_head(shipped):
    root, esc, export_dir, summary = shipped
    model = tf.saved_model.load(summary["saved_model"])
    names = model.signatures["class_names"]()["class_names"].numpy()
    assert [n.decode() for n in names] == list(M.ESC50_CLASSES)
    with open(os.path.join(summary["export_dir"], "metadata.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == list(M.ESC50_CLASSES)
    assert meta["scores"] == "softmax" and meta["head"] == "linear"
    wave, rate = sf.read(os.path.join(esc, "audio", M.esc50_rows()[0][0]),
                         dtype="float32")
    assert rate == 16000
    out = model.signatures["serving_default"](waveform=tf.constant(wave))
    windows = out["window_scores"].numpy()
    clip = out["clip_scores"].numpy()
    assert windows.shape == (out["start_times"].shape[0], 3)
    np.testing.assert_allclose(windows.sum(axis=1), 1.0, atol=1e-5)
    # Reference: scikit-learn's logistic regression with the same penalty on
    # the standardised clip embeddings of every clip, applied to this one.
    emb = embeddings_io.read_embeddings(_embedded(root, esc, export_dir))
    x = embeddings_io.segment_means(emb)
    y = emb.labels.argmax(axis=1)
    mean, std = x.mean(axis=0), x.std(axis=0)
    ref = linear_model.LogisticRegression(
        C=1.0 / (summary["l2"] * len(x)), tol=1e-10, max_iter=10000).fit(
            (x - mean) / std, y)
    want = ref.predict_proba(((out["clip_embedding"].numpy() - mean) /
                              std)[None])[0]
    np.testing.assert_allclose(clip, want, atol=5e-3)


def _embedded(root, esc, export_dir):
    path = str(root / "emb")
    if not os.path.exists(path + ".npz"):
        embed.embed_corpus(esc, path, saved_model=export_dir,
                           input_format="esc50")
    return path


def test_an_existing_classifier_is_kept_unless_overwritten(shipped):
    root, esc, export_dir, summary = shipped
    config = classifier_config.ClassifierExportConfig(
        saved_model=export_dir, embeddings=_embedded(root, esc, export_dir),
        export_dir=summary["export_dir"])
    with pytest.raises(FileExistsError, match="overwrite"):
        classifier.train_and_export(config, PROBE)


def test_mlp_head_in_the_graph_is_the_probes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    params = [rng.standard_normal(s).astype(np.float32)
              for s in ((5, 4), (4,), (4, 3), (3,))]
    mean, std = rng.standard_normal(5), 1 + rng.random(5)
    for task in (linear_probe.SINGLE_LABEL, linear_probe.MULTI_LABEL):
        module = classifier._ClassifierModule(  # pylint: disable=protected-access
            None, mean, std, params, task, ["a", "b", "c"])
        got = module._head(tf.constant(x)).numpy()  # pylint: disable=protected-access
        want = linear_probe.predict_scores(params, (x - mean) / std, task)
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"export_dir": "c"}, "--saved_model"),
    ({"saved_model": "e", "export_dir": "c"}, "exactly one of --input"),
    ({"saved_model": "e", "export_dir": "c", "embeddings": "x",
      "head": "svm"}, "--head"),
])
def test_settings_are_checked_naming_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        classifier_config.ClassifierExportConfig(**kwargs)
