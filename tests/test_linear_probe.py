"""The linear probe (--protocol=linear_probe), against scikit-learn and NumPy."""

import json

import numpy as np
import pytest
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from triplet_audio.config import evaluation as eval_config
from triplet_audio.evaluation import linear_probe as L
from triplet_audio.evaluation import report
from triplet_audio.serving import embeddings_io


def _blobs(n, dim, classes, seed, noise=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 2.0
    y = np.arange(n) % classes
    x = centres[y] + noise * rng.standard_normal((n, dim))
    return x.astype(np.float32), y


def _sklearn_lr(x, y, l2):
    # Our loss is mean CE + l2 / 2 |W|^2; scikit-learn's C * sum CE +
    # |W|^2 / 2, the same optimum for C = 1 / (l2 n).
    return linear_model.LogisticRegression(
        C=1.0 / (l2 * x.shape[0]), tol=1e-10, max_iter=10000).fit(x, y)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_linear_classifier_is_logistic_regression(l2):
    x, y = _blobs(240, 12, 4, seed=1, noise=2.0)
    params = L.fit_classifier(x, y, L.SINGLE_LABEL, 0, l2)
    ours = L.predict_scores(params, x, L.SINGLE_LABEL)
    np.testing.assert_allclose(ours, _sklearn_lr(x, y, l2).predict_proba(x),
                               atol=2e-3)


def test_multi_label_linear_classifier_is_one_regression_per_class():
    x, y = _blobs(200, 8, 3, seed=2, noise=2.0)
    rng = np.random.default_rng(3)
    labels = np.eye(3, dtype=np.uint8)[y]
    labels[rng.random(200) < 0.3, 0] = 1  # Some clips also carry class 0.
    params = L.fit_classifier(x, labels, L.MULTI_LABEL, 0, 1e-2)
    ours = L.predict_scores(params, x, L.MULTI_LABEL)
    for c in range(3):
        want = _sklearn_lr(x, labels[:, c], 1e-2).predict_proba(x)[:, 1]
        np.testing.assert_allclose(ours[:, c], want, atol=2e-3)


@pytest.mark.parametrize("task", [L.SINGLE_LABEL, L.MULTI_LABEL])
def test_mlp_gradient_is_the_finite_difference(task):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((15, 6))
    y = (rng.integers(0, 3, 15) if task == L.SINGLE_LABEL else
         (rng.random((15, 3)) < 0.4).astype(np.float64))
    shapes = L._shapes(6, 3, 5)  # pylint: disable=protected-access
    theta = rng.standard_normal(sum(int(np.prod(s)) for s in shapes)) * 0.5
    _, grad = L.loss_and_grad(theta, x, y, task, 5, 0.3, shapes)
    eps = 1e-6
    numeric = np.array([
        (L.loss_and_grad(theta + eps * e, x, y, task, 5, 0.3, shapes)[0] -
         L.loss_and_grad(theta - eps * e, x, y, task, 5, 0.3, shapes)[0]) /
        (2 * eps) for e in np.eye(theta.size)])
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_lbfgs_finds_the_minimum_of_a_quadratic():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((30, 30))
    h = a @ a.T + np.eye(30)
    b = rng.standard_normal(30)
    theta, _, _ = L.lbfgs(lambda t: (0.5 * t @ h @ t - b @ t, h @ t - b),
                          np.zeros(30), max_iter=500, gtol=1e-9, ftol=0)
    np.testing.assert_allclose(theta, np.linalg.solve(h, b), atol=1e-6)


# --------------------------------------------------------------- parts ---


def test_folds_test_one_validate_on_the_next_and_train_on_the_rest():
    splits = np.array(["fold%d" % (1 + k % 10) for k in range(40)])
    scheme, parts = L.plan_parts(splits)
    assert scheme == "folds"
    order = ["fold%d" % k for k in range(1, 11)]  # fold10 last, not second
    assert [p["test"] for p in parts] == order
    for k, part in enumerate(parts):
        assert part["val"] == order[(k + 1) % 10]
        train, val, test = (set(part[r].tolist()) for r in (
            "train_rows", "val_rows", "test_rows"))
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(range(40))
        assert {splits[i] for i in test} == {part["test"]}
        assert {splits[i] for i in val} == {part["val"]}


def test_splits_give_one_part_and_a_held_out_validation_when_needed():
    splits = np.array(["train"] * 6 + ["val"] * 2 + ["eval"] * 3)
    scheme, (part,) = L.plan_parts(splits)
    assert scheme == "split"
    assert part["val_rows"].tolist() == [6, 7]
    assert part["test_rows"].tolist() == [8, 9, 10]
    splits = np.array(["balanced_train"] * 20 + ["eval"] * 5)
    _, (part,) = L.plan_parts(splits, val_fraction=0.2, seed=3)
    assert part["val_rows"].size == 4 and part["train_rows"].size == 16
    assert set(part["val_rows"]) | set(part["train_rows"]) == set(range(20))
    assert not set(part["val_rows"]) & set(part["train_rows"])
    with pytest.raises(L.ProbeError, match="no test part"):
        L.plan_parts(np.array(["train", "dev"]))


def _fold_data(seed=6, per_fold=24, folds=5, dim=10, classes=3):
    x, y = _blobs(per_fold * folds, dim, classes, seed, noise=2.5)
    splits = np.array(["fold%d" % (1 + k // per_fold)
                       for k in range(per_fold * folds)])
    return x, np.eye(classes, dtype=np.uint8)[y], splits


def test_test_clips_never_reach_training_or_the_choice_of_penalty():
    x, labels, splits = _fold_data()
    _, parts = L.plan_parts(splits)
    part = parts[2]
    first = L.evaluate_part(x, labels, part, L.SINGLE_LABEL, 0,
                            (1e-3, 1e-1, 10.0))
    poisoned = x.copy()
    poisoned[part["test_rows"]] = 1e3 * np.random.default_rng(0).standard_normal(
        (part["test_rows"].size, x.shape[1]))
    second = L.evaluate_part(poisoned, labels, part, L.SINGLE_LABEL, 0,
                             (1e-3, 1e-1, 10.0))
    assert second["val_scores"] == first["val_scores"]
    assert second["l2"] == first["l2"]


def test_a_fold_part_is_scored_as_scikit_learn_scores_it():
    x, labels, splits = _fold_data(seed=7)
    y = labels.argmax(axis=1)
    grid = (1e-3, 1e-1, 3.0)
    _, parts = L.plan_parts(splits)
    for part in parts[:2]:
        ours = L.evaluate_part(x, labels, part, L.SINGLE_LABEL, 0, grid)
        tr, va, te = part["train_rows"], part["val_rows"], part["test_rows"]
        mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
        z = (x - mean) / std
        val_acc = {l2: float(np.mean(_sklearn_lr(z[tr], y[tr], l2).predict(
            z[va]) == y[va])) for l2 in grid}
        best = max(val_acc, key=lambda k: (val_acc[k], k))
        assert ours["l2"] == best
        assert ours["val_scores"] == {"%g" % k: v for k, v in
                                      sorted(val_acc.items())}
        want = np.mean(_sklearn_lr(z[tr], y[tr], best).predict(z[te]) == y[te])
        assert ours["score"] == pytest.approx(want)


def test_cross_validation_reports_mean_and_spread_over_folds():
    x, labels, splits = _fold_data(seed=8)
    config = eval_config.EvaluationConfig(
        probe_l2=(1e-2, 1.0), probe_classifiers=("linear", "mlp_1x512"),
        probe_max_iter=60)
    result = L.linear_probe(np.arange(len(x)).astype(str), x, labels, splits,
                            ["a", "b", "c"], config)
    assert result["task"] == L.SINGLE_LABEL and result["metric"] == L.ACCURACY
    for model in ("linear", "mlp_1x512"):
        scores = [p["score"] for p in result[model]["per_part"]]
        assert len(scores) == 5
        assert result[model]["mean"] == pytest.approx(np.mean(scores))
        assert result[model]["std"] == pytest.approx(np.std(scores, ddof=1))
        assert result[model]["mean"] > 0.6  # Learnable blobs; chance 1/3.


def test_multi_label_split_is_scored_by_map():
    x, y = _blobs(150, 6, 3, seed=9, noise=2.0)
    labels = np.eye(3, dtype=np.uint8)[y]
    labels[::4, (y[::4] + 1) % 3] = 1
    splits = np.array(["train"] * 90 + ["val"] * 30 + ["eval"] * 30)
    config = eval_config.EvaluationConfig(probe_l2=(1e-2,),
                                          probe_classifiers=("linear",))
    result = L.linear_probe(np.arange(150).astype(str), x, labels, splits,
                            ["a", "b", "c"], config)
    assert result["task"] == L.MULTI_LABEL and result["metric"] == L.MAP
    tr, te = np.arange(90), np.arange(120, 150)
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
    z = (x - mean) / std
    aps = [sk_metrics.average_precision_score(
        labels[te, c], _sklearn_lr(z[tr], labels[tr, c], 1e-2).predict_proba(
            z[te])[:, 1]) for c in range(3)]
    assert result["linear"]["mean"] == pytest.approx(np.mean(aps), abs=2e-3)


def _emb_set(x, labels, splits, ids, windows=2, seed=0):
    rng = np.random.default_rng(seed)
    emb = np.repeat(x, windows, axis=0) + 0.01 * rng.standard_normal(
        (len(x) * windows, x.shape[1]))
    return embeddings_io.EmbeddingSet(
        embeddings=emb.astype(np.float32),
        segment_index=np.repeat(np.arange(len(x)), windows),
        start_times=np.tile(np.arange(windows) * 0.96, len(x)),
        segment_ids=ids, labels=labels, split=splits,
        class_names=["a", "b", "c"], representation="toy")


def test_combining_sets_keeps_each_clip_once():
    x, labels, splits = _fold_data(per_fold=4)
    ids = np.array(["c%d" % k for k in range(len(x))])
    one = _emb_set(x, labels, splits, ids)
    got = L.combine_sets(one, one)
    assert got[0].tolist() == ids.tolist()
    np.testing.assert_allclose(got[1], embeddings_io.segment_means(one))
    half = len(x) // 2
    train = _emb_set(x[:half], labels[:half], [""] * half, ids[:half])
    held = _emb_set(x[half:], labels[half:], [""] * (len(x) - half),
                    ids[half:])
    got = L.combine_sets(train, held)
    assert got[3].tolist() == ["train"] * half + ["eval"] * (len(x) - half)
    with pytest.raises(ValueError, match="in both"):
        L.combine_sets(train, _emb_set(x[:3], labels[:3], [""] * 3,
                                       ids[:3]))


def test_bin_evaluate_writes_the_probe_beside_the_paper(tmp_path):
    x, labels, splits = _fold_data(seed=10, per_fold=6)
    ids = np.array(["c%d" % k for k in range(len(x))])
    path = str(tmp_path / "all.npz")
    embeddings_io.write_embeddings(path, _emb_set(x, labels, splits, ids))
    config = eval_config.EvaluationConfig(
        protocol="linear_probe", probe_l2=(1e-2,),
        probe_classifiers=("linear",))
    results = report.evaluate_to_dir(path, None, str(tmp_path / "probe"),
                                     config=config)
    with open(tmp_path / "probe" / "results.json") as f:
        written = json.load(f)
    assert written["linear_probe"]["linear"]["mean"] == pytest.approx(
        results["linear_probe"]["linear"]["mean"])
    assert "qbe" not in written and written["protocol"] == "linear_probe"
    assert "| toy | linear |" in (tmp_path / "probe" / "report.md").read_text()
    # --protocol=both on disjoint files: the paper's parts and the probe.
    held = np.isin(splits, ["fold1"])
    tr_path, ev_path = str(tmp_path / "tr.npz"), str(tmp_path / "ev.npz")
    embeddings_io.write_embeddings(tr_path, _emb_set(
        x[~held], labels[~held], ["train"] * int((~held).sum()), ids[~held]))
    embeddings_io.write_embeddings(ev_path, _emb_set(
        x[held], labels[held], ["eval"] * int(held.sum()), ids[held]))
    both = eval_config.EvaluationConfig(
        protocol="both", parts=("qbe",), qbe_min_count=2,
        probe_l2=(1e-2,), probe_classifiers=("linear",))
    results = report.evaluate_to_dir(tr_path, ev_path,
                                     str(tmp_path / "both"), config=both)
    assert "qbe" in results and results["linear_probe"]["scheme"] == "split"
    text = (tmp_path / "both" / "report.md").read_text()
    assert "QbE" in text and "Linear probe" in text
    with pytest.raises(ValueError, match="eval"):
        report.evaluate_to_dir(path, None, str(tmp_path / "x"),
                               config=eval_config.EvaluationConfig())


@pytest.mark.parametrize("kwargs,flag", [
    ({"protocol": "linear"}, "--protocol"),
    ({"probe_l2": (0.1, -1.0)}, "--probe_l2"),
    ({"probe_classifiers": ("svm",)}, "--probe_classifiers"),
    ({"probe_val_fraction": 1.0}, "--probe_val_fraction"),
])
def test_probe_settings_are_checked_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        eval_config.EvaluationConfig(**kwargs)
