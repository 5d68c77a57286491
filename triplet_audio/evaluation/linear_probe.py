"""The linear-probe evaluation: shallow classifiers on frozen clip embeddings.

How EVAR, BYOL-A and COLA compare audio representations, beside the paper's
protocol (`metrics`): each clip is one vector (the mean of its window
embeddings, `embeddings_io.segment_means`), standardised with the statistics
of the training part; a classifier is trained on the training part, its L2
penalty chosen on the validation part, and scored on the test part.

  * Folds (every labelled clip's split is `foldN`, as ESC-50 and
    UrbanSound8K ship): cross-validation over the dataset's own folds. Each
    fold in turn is the test part, the next fold (cyclically) the
    validation part, the others the training part; the score is reported
    per fold, with its mean and sample standard deviation (ddof=1) over
    folds.
  * Splits (FSD50K's train / val / eval, AudioSet's *_train / eval, the
    demo's train / eval): test = "eval" or "test", validation = "val",
    "valid" or "validation", training = every other split. Without a
    validation split, a seeded `probe_val_fraction` of the training clips
    is held out for it.

No test clip ever reaches the training part, the standardisation
statistics or the choice of penalty.

Classifiers (`fit_classifier`: full-batch L-BFGS in NumPy, `lbfgs`, so the
result depends on nothing but the data and the seed):

  * "linear": logistic regression, softmax over classes for single-label
    data, one sigmoid per class for multi-label data; zero start, so the
    (convex) optimum is unique. Loss = mean cross-entropy over clips +
    l2 / 2 * |W|^2 (biases unpenalised): scikit-learn's LogisticRegression
    with C = 1 / (l2 * n).
  * "mlp_1x512": one hidden ReLU layer of 512 units before the same output,
    He-initialised from the seed, the same loss with both weight matrices
    penalised.

Single-label data (every labelled clip has exactly one class) is scored by
accuracy; multi-label data by mAP over the classes with a positive test
clip (`metrics.classification_map`, the paper protocol's definition). Clips
without a label are left out (and counted).
"""

import collections
import re

from absl import logging
import numpy as np
import threadpoolctl

from triplet_audio.config import evaluation as eval_config
from triplet_audio.evaluation import metrics
from triplet_audio.serving import embeddings_io

LINEAR_PROBE = eval_config.LINEAR_PROBE
LINEAR, MLP = eval_config.PROBE_CLASSIFIERS
MODELS = eval_config.PROBE_CLASSIFIERS
HIDDEN_UNITS = 512
FLOAT64_MAX_VALUES = 20_000_000
"""Feature matrices up to this size are fitted in float64, larger in float32."""
ONE_THREAD_MAX_FLOPS = 1e9
"""Fits whose largest product needs fewer multiply-adds run on one BLAS
thread: for them, waking a thread pool costs more than it saves (measured
30x slower with the default pool on a busy 2-core machine)."""

SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
ACCURACY = "accuracy"
MAP = "map"

TEST_SPLITS = ("eval", "test")
VAL_SPLITS = ("val", "valid", "validation")
_FOLD = re.compile(r"^fold(\d+)$")


class ProbeError(ValueError):
    """Data the linear probe cannot use (no test part, one class, ...)."""


# ------------------------------------------------------------ the clips ---


def clips_of(emb_set, default_split=""):
    """(ids, features, labels, splits) of a set's clips (segment means).

    Args:
      emb_set: an `EmbeddingSet`.
      default_split: split given to clips whose split is "".

    Returns:
      str [S], float32 [S, D], uint8 [S, C], str [S].
    """
    splits = np.asarray(emb_set.split, dtype=object).copy()
    splits[splits == ""] = default_split
    return (np.asarray(emb_set.segment_ids), embeddings_io.segment_means(
        emb_set), np.asarray(emb_set.labels), splits.astype(str))


def combine_sets(train_set, eval_set=None, allow_segment_overlap=False):
    """The clips of the linear probe: those of both sets, once.

    Args:
      train_set: `EmbeddingSet` (clips with no split count as "train").
      eval_set: optional `EmbeddingSet` (clips with no split count as
        "eval"); None, or the same object, for a dataset in one file.
      allow_segment_overlap: keep a clip present in both sets once (the
        first) instead of failing.

    Returns:
      (ids, features, labels, splits, class_names).

    Raises:
      ValueError: on different representations or dimensions, or shared
        clip ids without `allow_segment_overlap` (unless the sets are equal).
    """
    if eval_set is None or eval_set is train_set:
        ids, x, y, splits = clips_of(train_set, "train")
        return ids, x, y, splits, np.asarray(train_set.class_names)
    train_set, eval_set = metrics.align_vocabularies(train_set, eval_set)
    if train_set.dim != eval_set.dim or (
            train_set.representation != eval_set.representation):
        raise ValueError("%s (%s, D=%d) and %s (%s, D=%d) are not the same "
                         "representation" % (
                             train_set.source, train_set.representation,
                             train_set.dim, eval_set.source,
                             eval_set.representation, eval_set.dim))
    a = clips_of(train_set, "train")
    b = clips_of(eval_set, "eval")
    shared = np.isin(b[0], a[0])
    if shared.any():
        same = shared.all() and b[0].size == a[0].size
        if not (same or allow_segment_overlap):
            raise ValueError(
                "%d clip(s) are in both %s and %s, e.g. %r (give one file "
                "holding every clip, or disjoint files)" % (
                    int(shared.sum()), train_set.source, eval_set.source,
                    str(b[0][shared][0])))
        b = tuple(v[~shared] for v in b)
    return (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]),
            np.concatenate([a[2], b[2]]), np.concatenate([a[3], b[3]]),
            np.asarray(train_set.class_names))


# --------------------------------------------------------------- parts ---


def fold_number(split):
    """N of a "foldN" split name, or None."""
    match = _FOLD.match(str(split))
    return int(match.group(1)) if match else None


def plan_parts(splits, val_fraction=0.1, seed=0):
    """The (name, train, val, test) index triples of the evaluation.

    Args:
      splits: str [S] split of each (labelled) clip.
      val_fraction: share of the training clips held out for validation
        when there is no validation split (split scheme only).
      seed: seed of that hold-out.

    Returns:
      (scheme, parts): "folds" or "split", and a list of dicts {"name",
      "test", "val": split names, "train", "val_rows", "test_rows": int
      arrays of clip rows}; the three row sets are disjoint.

    Raises:
      ProbeError: naming the splits found when no test part can be made.
    """
    splits = np.asarray(splits).astype(str)
    names = sorted(set(splits.tolist()))
    folds = [fold_number(n) for n in names]
    if len(names) >= 3 and all(f is not None for f in folds):
        order = [n for _, n in sorted(zip(folds, names))]
        parts = []
        for k, test in enumerate(order):
            val = order[(k + 1) % len(order)]
            parts.append({
                "name": test, "test": test, "val": val,
                "train_rows": np.flatnonzero((splits != test) &
                                             (splits != val)),
                "val_rows": np.flatnonzero(splits == val),
                "test_rows": np.flatnonzero(splits == test)})
        return "folds", parts
    test_names = [n for n in names if n.lower() in TEST_SPLITS]
    if not test_names:
        raise ProbeError(
            "no test part: the clips' splits are %s; the linear probe needs "
            "folds (fold1, fold2, ...: at least 3) or a split named %s" % (
                ", ".join(repr(n) for n in names) or "none",
                " or ".join(TEST_SPLITS)))
    val_names = [n for n in names if n.lower() in VAL_SPLITS]
    is_test = np.isin(splits, test_names)
    is_val = np.isin(splits, val_names)
    train_rows = np.flatnonzero(~is_test & ~is_val)
    val_rows = np.flatnonzero(is_val)
    val_label = ",".join(val_names)
    if not val_names:
        rng = np.random.default_rng([seed, 1])
        shuffled = rng.permutation(train_rows)
        n_val = max(1, int(round(val_fraction * shuffled.size)))
        val_rows = np.sort(shuffled[:n_val])
        train_rows = np.sort(shuffled[n_val:])
        val_label = "%g of training" % val_fraction
    return "split", [{"name": ",".join(test_names),
                      "test": ",".join(test_names), "val": val_label,
                      "train_rows": train_rows, "val_rows": val_rows,
                      "test_rows": np.flatnonzero(is_test)}]


# ----------------------------------------------------------- the model ---


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _shapes(dim, num_classes, hidden):
    if hidden:
        return [(dim, hidden), (hidden,), (hidden, num_classes),
                (num_classes,)]
    return [(dim, num_classes), (num_classes,)]


def _unpack(theta, shapes):
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(theta[start:start + size].reshape(shape))
        start += size
    return out


def loss_and_grad(theta, x, y, task, hidden, l2, shapes=None):
    """The probe's objective and its gradient.

    Args:
      theta: float64 [P] parameters (weights then bias, per layer).
      x: [N, D] standardised features (float64 or float32: the dtype of
        the products).
      y: for SINGLE_LABEL int [N] class indices; for MULTI_LABEL float
        [N, C] multi-hot.
      task: SINGLE_LABEL or MULTI_LABEL.
      hidden: 0 (linear) or the hidden layer's width.
      l2: penalty on the weight matrices (not the biases).
      shapes: the parameter shapes (`_shapes`); derived when None.

    Returns:
      (loss, gradient [P]) in float64: mean cross-entropy over the N rows
      plus l2 / 2 * the squared weights.
    """
    n = x.shape[0]
    if shapes is None:
        num_classes = (int(y.max()) + 1) if task == SINGLE_LABEL else (
            y.shape[1])
        shapes = _shapes(x.shape[1], num_classes, hidden)
    params = _unpack(theta, shapes)
    dt = x.dtype  # float64 for small data, float32 for large (see fit).
    if hidden:
        w1, b1, w2, b2 = params
        pre = x @ w1.astype(dt) + b1.astype(dt)
        h = np.maximum(pre, 0)
        z = (h @ w2.astype(dt)).astype(np.float64) + b2
    else:
        w, b = params
        z = (x @ w.astype(dt)).astype(np.float64) + b
    if task == SINGLE_LABEL:
        logp = _log_softmax(z)
        loss = -logp[np.arange(n), y].mean()
        dz = np.exp(logp)
        dz[np.arange(n), y] -= 1.0
    else:
        # Binary cross-entropy from logits, summed over classes.
        loss = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
                ).sum(axis=1).mean()
        dz = 1.0 / (1.0 + np.exp(-z)) - y
    dz /= n
    weights = params[0::2]
    loss += 0.5 * l2 * sum(float((w * w).sum()) for w in weights)
    if hidden:
        w1, b1, w2, b2 = params
        dzt = dz.astype(dt)
        gw2 = h.T @ dzt + l2 * w2
        gb2 = dz.sum(axis=0)
        dh = (dzt @ w2.T.astype(dt)) * (pre > 0)
        gw1 = x.T @ dh + l2 * w1
        gb1 = dh.sum(axis=0)
        grads = [gw1, gb1, gw2, gb2]
    else:
        gw = (x.T @ dz.astype(dt)) + l2 * params[0]
        grads = [gw, dz.sum(axis=0)]
    return float(loss), np.concatenate([np.ravel(g).astype(np.float64)
                                        for g in grads])


def _init(shapes, hidden, seed):
    if not hidden:
        return np.zeros(sum(int(np.prod(s)) for s in shapes))
    rng = np.random.default_rng([seed, 2])
    parts = []
    for shape in shapes:
        if len(shape) == 2:
            parts.append(rng.standard_normal(shape) * np.sqrt(2.0 / shape[0]))
        else:
            parts.append(np.zeros(shape))
    return np.concatenate([p.ravel() for p in parts])


def lbfgs(fun, theta, max_iter, memory=10, gtol=1e-6, ftol=1e-10):
    """Minimises `fun` by limited-memory BFGS with a backtracking search.

    The two-loop recursion costs O(memory * P) per iteration, so millions
    of parameters (an MLP on 6,144-d log-mel) are cheap to update; SciPy's
    L-BFGS-B spends O(memory^2 * P) on its bound constraints.

    Args:
      fun: theta -> (value, gradient), float64.
      theta: float64 [P] start.
      max_iter: iterations at most.
      memory: correction pairs kept.
      gtol: stop when the largest gradient component is below this.
      ftol: stop when an iteration lowers the value by less than ftol *
        max(1, |value|).

    Returns:
      (theta, value, iterations).
    """
    theta = np.array(theta, np.float64)
    value, grad = fun(theta)
    pairs = collections.deque(maxlen=memory)  # (s, y, 1 / y.s)
    done = 0
    for done in range(1, int(max_iter) + 1):
        if np.max(np.abs(grad)) < gtol:
            break
        q = grad.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            alpha = rho * s.dot(q)
            q -= alpha * y
            alphas.append(alpha)
        if pairs:
            s, y, _ = pairs[-1]
            q *= s.dot(y) / y.dot(y)
        else:
            q /= max(1.0, np.linalg.norm(grad))
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            q += s * (alpha - rho * y.dot(q))
        direction = -q
        slope = grad.dot(direction)
        if slope >= 0:  # Not a descent direction: restart from the gradient.
            pairs.clear()
            direction = -grad / max(1.0, np.linalg.norm(grad))
            slope = grad.dot(direction)
        step = 1.0
        while True:
            new = theta + step * direction
            new_value, new_grad = fun(new)
            if new_value <= value + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return theta, value, done
        s, y = new - theta, new_grad - grad
        if s.dot(y) > 1e-12 * y.dot(y):
            pairs.append((s, y, 1.0 / s.dot(y)))
        small = value - new_value <= ftol * max(1.0, abs(value))
        theta, value, grad = new, new_value, new_grad
        if small:
            break
    return theta, value, done


def fit_classifier(x, y, task, hidden=0, l2=1e-3, max_iter=500, seed=0,
                   num_classes=None):
    """Trains the probe's classifier by full-batch L-BFGS (`lbfgs`).

    Args:
      x: float32 [N, D] standardised features.
      y: SINGLE_LABEL: int [N] classes; MULTI_LABEL: [N, C] multi-hot.
      task: SINGLE_LABEL or MULTI_LABEL.
      hidden: 0 for the linear classifier, else the hidden width.
      l2: the L2 penalty (see `loss_and_grad`).
      max_iter: L-BFGS iterations at most.
      seed: initialisation seed (the MLP's).
      num_classes: C (single-label; default max(y) + 1).

    Returns:
      the parameter list (weights and biases per layer, float32).
    """
    if task == SINGLE_LABEL:
        num_classes = num_classes or int(np.max(y)) + 1
        y = np.asarray(y, np.int64)
    else:
        num_classes = y.shape[1]
        y = np.asarray(y, np.float64)
    shapes = _shapes(x.shape[1], num_classes, hidden)
    # float64 where it is cheap (exact line searches); float32 halves the
    # memory and time of large problems (a log-mel probe on FSD50K).
    dtype = np.float64 if x.size <= FLOAT64_MAX_VALUES else np.float32
    x = np.ascontiguousarray(x, dtype)
    flops = float(x.shape[0]) * x.shape[1] * (hidden or num_classes)
    with threadpoolctl.threadpool_limits(
            limits=1 if flops < ONE_THREAD_MAX_FLOPS else None,
            user_api="blas"):
        theta, _, _ = lbfgs(
            lambda t: loss_and_grad(t, x, y, task, hidden, l2, shapes),
            _init(shapes, hidden, seed), max_iter)
    return [p.astype(np.float32) for p in _unpack(theta, shapes)]


def predict_scores(params, x, task):
    """Class probabilities [N, C] of a fitted classifier."""
    x = np.asarray(x, np.float32)
    if len(params) == 4:
        w1, b1, w2, b2 = params
        z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    else:
        w, b = params
        z = x @ w + b
    z = z.astype(np.float64)
    if task == SINGLE_LABEL:
        return np.exp(_log_softmax(z))
    return 1.0 / (1.0 + np.exp(-z))


def score(scores, labels, task, class_names=None):
    """Accuracy (single-label) or mAP (multi-label) of clip scores.

    Args:
      scores: [N, C] class scores.
      labels: [N, C] multi-hot labels.
      task: SINGLE_LABEL or MULTI_LABEL.
      class_names: for the per-class APs of the multi-label case.

    Returns:
      (value, per-class APs or None).
    """
    labels = np.asarray(labels)
    if task == SINGLE_LABEL:
        return float(np.mean(np.argmax(scores, axis=1) ==
                             np.argmax(labels, axis=1))), None
    result = metrics.classification_map(scores, labels, class_names)
    return result["map"], result["per_class"]


def standardise(x, train_rows):
    """Features standardised with the mean and std of the training rows."""
    mean = x[train_rows].mean(axis=0, dtype=np.float64)
    std = x[train_rows].std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0  # Constant over training: centred only.
    return ((x - mean) / std).astype(np.float32)


# ---------------------------------------------------------- the probe ---


def _target(labels, task):
    return np.argmax(labels, axis=1) if task == SINGLE_LABEL else labels


def evaluate_part(x, labels, part, task, hidden, l2_grid, max_iter=500,
                  seed=0, class_names=None):
    """One train / val / test part: choose l2 on val, score on test.

    Args:
      x: float32 [S, D] clip features (raw: standardised here with the
        training rows' statistics).
      labels: uint8 [S, C] multi-hot labels.
      part: a `plan_parts` dict.
      task: SINGLE_LABEL or MULTI_LABEL.
      hidden: 0 or the hidden width.
      l2_grid: penalties to try.
      max_iter: L-BFGS iterations at most.
      seed: initialisation seed.
      class_names: names for per-class APs.

    Returns:
      dict: name, test, val, train / val / test clip counts, l2 (chosen),
      val_scores {l2: score}, val_score, score, per_class (multi-label).
    """
    train, val, test = part["train_rows"], part["val_rows"], part["test_rows"]
    z = standardise(x, train)
    num_classes = labels.shape[1]
    y = _target(labels, task)
    val_scores, fitted = {}, {}
    # Ties go to the stronger penalty (the simpler model).
    for l2 in sorted(l2_grid, reverse=True):
        params = fit_classifier(z[train], y[train], task, hidden, l2,
                                max_iter, seed, num_classes)
        val_scores[l2], _ = score(predict_scores(params, z[val], task),
                                  labels[val], task)
        fitted[l2] = params
    valid = {k: v for k, v in val_scores.items() if np.isfinite(v)}
    best = max(valid, key=lambda k: (valid[k], k)) if valid else max(
        l2_grid)
    test_score, per_class = score(predict_scores(fitted[best], z[test], task),
                                  labels[test], task, class_names)
    out = {"name": part["name"], "test": part["test"], "val": part["val"],
           "train_clips": int(train.size), "val_clips": int(val.size),
           "test_clips": int(test.size), "l2": best,
           "val_scores": {"%g" % k: v for k, v in sorted(val_scores.items())},
           "val_score": val_scores[best], "score": test_score}
    if per_class is not None:
        out["per_class"] = per_class
    return out


def linear_probe(ids, x, labels, splits, class_names, config=None):
    """The linear probe on a labelled set of clips.

    Args:
      ids: str [S] clip ids.
      x: float [S, D] clip embeddings.
      labels: uint8 [S, C] multi-hot labels.
      splits: str [S] split or fold of each clip.
      class_names: [C] names.
      config: an `EvaluationConfig` (probe_classifiers, probe_l2,
        probe_max_iter, probe_val_fraction, seed); default its defaults.

    Returns:
      JSON-able dict: task, metric, scheme, clips, unlabelled_clips, the
      parts, and per model (`MODELS`) {mean, std, scores, per_part}.

    Raises:
      ProbeError: no test part, or fewer than two classes to tell apart.
    """
    config = config or eval_config.EvaluationConfig()
    labels = np.asarray(labels).astype(np.uint8)
    labelled = labels.sum(axis=1) > 0
    dropped = int((~labelled).sum())
    ids, x = np.asarray(ids)[labelled], np.asarray(x, np.float32)[labelled]
    labels, splits = labels[labelled], np.asarray(splits)[labelled]
    if not labels.shape[0]:
        raise ProbeError("no labelled clip")
    task = SINGLE_LABEL if (labels.sum(axis=1) == 1).all() else MULTI_LABEL
    if int(labels.any(axis=0).sum()) < 2:
        raise ProbeError("the labelled clips have fewer than 2 classes")
    scheme, parts = plan_parts(splits, config.probe_val_fraction,
                               config.seed)
    for part in parts:
        for key in ("train_rows", "val_rows", "test_rows"):
            if not part[key].size:
                raise ProbeError("part %s has no %s clip" % (
                    part["name"], key.split("_")[0]))
    metric = ACCURACY if task == SINGLE_LABEL else MAP
    logging.info("Linear probe: %d clips (%s, %s), %d classes, %s over %s",
                 ids.size, task, metric, labels.shape[1], scheme,
                 ", ".join(p["name"] for p in parts))
    result = {"task": task, "metric": metric, "scheme": scheme,
              "clips": int(ids.size), "unlabelled_clips": dropped,
              "dim": int(x.shape[1]), "classes": int(labels.shape[1]),
              "l2_grid": list(config.probe_l2),
              "parts": [{"name": p["name"], "test": p["test"],
                         "val": p["val"]} for p in parts]}
    for model, hidden in ((LINEAR, 0), (MLP, HIDDEN_UNITS)):
        if model not in config.probe_classifiers:
            continue
        per_part = [evaluate_part(x, labels, p, task, hidden,
                                  config.probe_l2, config.probe_max_iter,
                                  config.seed, list(class_names))
                    for p in parts]
        scores = [p["score"] for p in per_part]
        result[model] = {
            "architecture": "linear" if not hidden else "1x%d" % hidden,
            "mean": float(np.mean(scores)),
            "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            "scores": scores, "per_part": per_part}
        logging.info("Linear probe %s: %s %.3f +- %.3f over %d part(s)",
                     model, metric, result[model]["mean"],
                     result[model]["std"], len(scores))
    return result


def evaluate(train_set, eval_set=None, config=None):
    """`linear_probe` on the clips of one or two `EmbeddingSet`s.

    Args:
      train_set: `EmbeddingSet` (a whole dataset, or its training part).
      eval_set: optional second `EmbeddingSet` (see `combine_sets`).
      config: an `EvaluationConfig`.

    Returns:
      the `linear_probe` dict, plus representation and sources.
    """
    config = config or eval_config.EvaluationConfig()
    ids, x, labels, splits, names = combine_sets(
        train_set, eval_set, config.allow_segment_overlap)
    result = linear_probe(ids, x, labels, splits, names, config)
    result["representation"] = train_set.representation
    result["sources"] = [train_set.source] + (
        [eval_set.source] if eval_set is not None and
        eval_set is not train_set else [])
    return result


def markdown(result, name="representation"):
    """The linear probe's section of report.md.

    Args:
      result: the `linear_probe` dict.
      name: the representation's row name.

    Returns:
      Markdown string: one row per model (mean +- std over parts), then the
      score of each part.
    """
    metric = "accuracy" if result["metric"] == ACCURACY else "mAP"
    lines = ["## Linear probe (%s, %s over %s)" % (
        result["task"].replace("_", "-"), metric,
        "the dataset's folds" if result["scheme"] == "folds" else
        "its splits"), "",
        "| Representation | Classifier | %s | %s |" % (
            metric, " | ".join(p["name"] for p in result["parts"])),
        "|---|---|---|" + "---|" * len(result["parts"])]
    for model in MODELS:
        entry = result.get(model)
        if not entry:
            continue
        value = "%.3f" % entry["mean"]
        if len(entry["scores"]) > 1:
            value += " ± %.3f" % entry["std"]
        lines.append("| %s | %s | %s | %s |" % (
            str(name).replace("|", "\\|"), entry["architecture"], value,
            " | ".join("%.3f" % s for s in entry["scores"])))
    lines += ["", "%d clips, %d classes; L2 chosen on the validation part "
              "from %s; test parts never seen in training." % (
                  result["clips"], result["classes"],
                  ", ".join("%g" % v for v in result["l2_grid"])), ""]
    return "\n".join(lines)
