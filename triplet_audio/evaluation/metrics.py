"""The paper's evaluations of segment embeddings (Sections 4.2 and 4.3).

Implements the protocol of ../shared/DESIGN.md ("Evaluation protocol"):

* QbE retrieval (`qbe_map`): per class, 100 segments with the class and 100
  without (seeded); every unordered pair among the 200 with at least one
  positive member is scored by cosine similarity of segment embeddings
  (segment = mean of its windows); positive-positive pairs are relevant,
  positive-negative pairs are not, negative-negative pairs are left out. AP
  per class, mAP over classes; chance is 4950 / 14950 = 0.331.
* Shallow classifiers (`classifier_map`): an MLP (hidden ReLU layers of 512
  units, one sigmoid per class) trained with binary cross-entropy on the
  windows of the train set (a window carries its segment's labels), features
  standardised with train statistics; a segment's score is the mean of its
  windows' scores; mAP over the classes with a positive among the held-out
  eval segments.
* Few-shot (`fewshot_map`): the same classifier trained on 20 segments per
  class drawn from the train set (see `draw_fewshot_segments`), 3 seeded
  draws, mean and standard deviation of mAP.
* `evaluate` runs all of them on a (train, eval) pair of `EmbeddingSet`s;
  the log-mel baseline is simply an `EmbeddingSet` with D = 6144.

Everything is seeded; the same inputs and config give the same samples and
draws.
"""

import dataclasses
import time

from absl import logging
import keras
import numpy as np
from sklearn import metrics
import tensorflow as tf

from triplet_audio.config import evaluation as eval_config
from triplet_audio.serving import embeddings_io

# The settings live in the config home (no TensorFlow there); these names are
# kept here for the callers that know them from this module.
QBE = eval_config.QBE
CLASSIFIER_1X512 = eval_config.CLASSIFIER_1X512
CLASSIFIER_2X512 = eval_config.CLASSIFIER_2X512
FEWSHOT = eval_config.FEWSHOT
ALL_PARTS = eval_config.ALL_PARTS
LOGMEL_REPRESENTATION = eval_config.LOGMEL_REPRESENTATION
ClassifierConfig = eval_config.ClassifierConfig
EvaluationConfig = eval_config.EvaluationConfig

_PREDICT_CHUNK = 8192


# ---------------------------------------------------------------------------
# Query-by-example retrieval.
# ---------------------------------------------------------------------------


def qbe_pairs(is_positive):
    """The QbE pairs of one class's sampled segments.

    Every unordered pair (i < j) with at least one positive member: two
    positives make a relevant pair, a positive and a negative an irrelevant
    one; negative-negative pairs are left out. For 100 positives and 100
    negatives that is C(100, 2) = 4,950 relevant and 100 * 100 = 10,000
    irrelevant pairs.

    Args:
      is_positive: bool [M], whether sampled segment m has the class.

    Returns:
      (first, second, relevant): int64 [P], int64 [P], bool [P].
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    first, second = np.triu_indices(is_positive.size, k=1)
    keep = is_positive[first] | is_positive[second]
    first, second = first[keep], second[keep]
    relevant = is_positive[first] & is_positive[second]
    return first, second, relevant


def cosine_normalize(x):
    """Rows of `x` scaled to unit L2 norm (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero vector has no direction; give it similarity 0 to everything
    # instead of NaN.
    return x / np.maximum(norms, 1e-12)


def sample_qbe_segments(labels, class_index, num_pos=100, num_neg=100, seed=0,
                        min_count=None):
    """Seeded sample of one class's positive and negative segments.

    The generator is seeded with (seed, class_index), so a class's sample
    does not depend on which other classes exist or are skipped.

    Args:
      labels: multi-hot [S, C] segment labels.
      class_index: the class c.
      num_pos: positives to sample (segments with class c).
      num_neg: negatives to sample (segments without class c).
      seed: int seed.
      min_count: None for the exact protocol (a class needs `num_pos`
        positives and `num_neg` negatives); otherwise a class with at least
        `min_count` positives and negatives is kept and all of them are used
        when fewer than `num_pos` / `num_neg` exist.

    Returns:
      (positives, negatives) int arrays of segment rows, or None if the class
      has too few segments.
    """
    column = np.asarray(labels[:, class_index]).astype(bool)
    pos = np.flatnonzero(column)
    neg = np.flatnonzero(~column)
    need_pos, need_neg = (num_pos, num_neg) if min_count is None else (
        max(min_count, 2), max(min_count, 1))
    if pos.size < need_pos or neg.size < need_neg:
        return None
    rng = np.random.default_rng([seed, class_index])
    pos = rng.choice(pos, size=min(num_pos, pos.size), replace=False)
    neg = rng.choice(neg, size=min(num_neg, neg.size), replace=False)
    return pos, neg


def qbe_map(segment_embeddings, labels, num_pos=100, num_neg=100, seed=0,
            min_count=None, class_names=None):
    """Query-by-example retrieval mAP over classes.

    Args:
      segment_embeddings: [S, D] segment embeddings (means of windows).
      labels: multi-hot [S, C] segment labels.
      num_pos: positives sampled per class.
      num_neg: negatives sampled per class.
      seed: int seed of the samples.
      min_count: see `sample_qbe_segments`; None is the paper's protocol.
      class_names: optional [C] names used as keys; defaults to "0".."C-1".

    Returns:
      A dict with
        map: mean over evaluated classes of the per-class AP (NaN if none),
        chance: mean over evaluated classes of relevant / (relevant +
          irrelevant) pairs (0.331 for 100 + 100),
        per_class: {class name: AP},
        skipped: [{"class", "positives", "negatives"}] of classes with too few
          segments,
        num_classes: number of evaluated classes,
        pairs: {"relevant", "irrelevant"} totals over evaluated classes.
    """
    labels = np.asarray(labels)
    num_classes = labels.shape[1]
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    unit = cosine_normalize(segment_embeddings)
    per_class, chances, skipped = {}, [], []
    total_relevant = total_irrelevant = 0
    for c in range(num_classes):
        name = str(class_names[c])
        sample = sample_qbe_segments(labels, c, num_pos, num_neg, seed,
                                     min_count)
        if sample is None:
            n_pos = int(np.count_nonzero(labels[:, c]))
            skipped.append({"class": name, "positives": n_pos,
                            "negatives": int(labels.shape[0] - n_pos)})
            continue
        pos, neg = sample
        rows = np.concatenate([pos, neg])
        is_positive = np.arange(rows.size) < pos.size
        first, second, relevant = qbe_pairs(is_positive)
        x = unit[rows]
        similarity = x @ x.T
        scores = similarity[first, second]
        per_class[name] = float(metrics.average_precision_score(relevant,
                                                                scores))
        n_rel = int(relevant.sum())
        total_relevant += n_rel
        total_irrelevant += int(relevant.size - n_rel)
        chances.append(n_rel / relevant.size)
    if skipped:
        logging.warning("QbE: skipped %d class(es) with too few segments: %s",
                        len(skipped), ", ".join(s["class"] for s in skipped))
    aps = list(per_class.values())
    if not aps:
        logging.error("QbE: no class has %d positive and %d negative segments;"
                      " for a small corpus pass min_count (e.g. 10) or smaller"
                      " num_pos / num_neg", num_pos, num_neg)
    return {
        "map": float(np.mean(aps)) if aps else float("nan"),
        "chance": float(np.mean(chances)) if chances else float("nan"),
        "per_class": per_class,
        "skipped": skipped,
        "num_classes": len(aps),
        "pairs": {"relevant": total_relevant, "irrelevant": total_irrelevant},
    }


# ---------------------------------------------------------------------------
# Shallow classifiers.
# ---------------------------------------------------------------------------


def feature_stats(emb_set, chunk=65536):
    """Per-dimension mean and variance of the windows of `emb_set`.

    Accumulated in float64 over chunks, so a float16 log-mel set is never
    converted whole.

    Args:
      emb_set: an `EmbeddingSet` (its windows are the training features).
      chunk: windows per accumulation step.

    Returns:
      (mean, variance): float32 [D] arrays.
    """
    x = emb_set.embeddings
    total = np.zeros(x.shape[1], np.float64)
    for start in range(0, x.shape[0], chunk):
        total += x[start:start + chunk].sum(axis=0, dtype=np.float64)
    mean = total / x.shape[0]
    sq = np.zeros(x.shape[1], np.float64)
    for start in range(0, x.shape[0], chunk):
        d = x[start:start + chunk].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", d, d)
    return mean.astype(np.float32), (sq / x.shape[0]).astype(np.float32)


def build_classifier(dim, num_classes, config, mean, variance):
    """The shallow classifier: standardise, hidden ReLU layers, sigmoids.

    Standardisation is the model's first layer (fixed train statistics), so
    features can stay float16 on the host and the model is self-contained.

    Args:
      dim: input feature dimension D.
      num_classes: C, one sigmoid output each.
      config: a `ClassifierConfig`.
      mean: float [D] train feature mean.
      variance: float [D] train feature variance.

    Returns:
      An uncompiled `keras.Model` mapping [B, D] -> [B, C] probabilities.
    """
    inputs = keras.Input(shape=(dim,), name="features")
    x = keras.layers.Normalization(mean=np.asarray(mean),
                                   variance=np.asarray(variance),
                                   name="standardize")(inputs)
    for i in range(config.hidden_layers):
        x = keras.layers.Dense(config.hidden_units, activation="relu",
                               name="hidden_%d" % i)(x)
    outputs = keras.layers.Dense(num_classes, activation="sigmoid",
                                 name="scores")(x)
    return keras.Model(inputs, outputs, name="classifier_" +
                       config.architecture)


def _window_rows(emb_set, segments):
    """Windows of `segments` (all windows if None), in file order."""
    if segments is None:
        return None
    keep = np.zeros(emb_set.num_segments, dtype=bool)
    keep[np.asarray(segments, dtype=np.int64)] = True
    return np.flatnonzero(keep[emb_set.segment_index])


def _training_dataset(emb_set, rows, batch_size, seed):
    """tf.data of (features, window labels) batches, reshuffled each epoch.

    Window labels are gathered from the segment table per batch rather than
    materialised as an [N, C] array.
    """
    if rows is None:
        features = emb_set.embeddings
        seg = emb_set.segment_index
    else:
        features = emb_set.embeddings[rows]
        seg = emb_set.segment_index[rows]
    features = tf.convert_to_tensor(features)
    seg = tf.convert_to_tensor(seg)
    seg_labels = tf.convert_to_tensor(emb_set.labels)
    n = int(seg.shape[0])

    def gather(idx):
        x = tf.cast(tf.gather(features, idx), tf.float32)
        y = tf.cast(tf.gather(seg_labels, tf.gather(seg, idx)), tf.float32)
        return x, y

    return (tf.data.Dataset.range(n)
            .shuffle(n, seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)), n


def _epoch_logger(name, epochs):
    """A Keras callback logging each epoch's loss through absl."""
    every = max(1, epochs // 5)

    def on_epoch_end(epoch, logs):
        # About five progress lines per classifier, always the last epoch.
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            logging.info("%s: epoch %d/%d loss %.4f", name, epoch + 1, epochs,
                         (logs or {}).get("loss", float("nan")))
    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def train_classifier(train_set, config, segments=None, stats=None):
    """Trains a shallow classifier on the windows of the train set.

    Args:
      train_set: `EmbeddingSet` of the training corpus.
      config: a `ClassifierConfig`.
      segments: optional segment rows to train on (few-shot); default all.
      stats: optional (mean, variance) for standardisation; default computed
        from the windows trained on.

    Returns:
      The trained `keras.Model`.
    """
    keras.utils.set_random_seed(config.seed)
    rows = _window_rows(train_set, segments)
    if stats is None:
        subset = train_set if segments is None else (
            embeddings_io.subset_segments(train_set, segments))
        stats = feature_stats(subset)
    model = build_classifier(train_set.dim, train_set.num_classes, config,
                             *stats)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="binary_crossentropy",
                  # Fewer Python round trips per epoch; matters on CPU.
                  steps_per_execution=16)
    dataset, n = _training_dataset(train_set, rows, config.batch_size,
                                   config.seed)
    logging.info("Classifier %s: %d windows, D=%d, %d classes, %d epochs",
                 config.architecture, n, train_set.dim, train_set.num_classes,
                 config.epochs)
    model.fit(dataset, epochs=config.epochs, verbose=0, shuffle=False,
              callbacks=[_epoch_logger(config.architecture, config.epochs)])
    return model


def predict_segment_scores(model, emb_set, batch_size=_PREDICT_CHUNK):
    """Segment scores: the mean of the model's scores over a segment's windows.

    Args:
      model: a window classifier, [B, D] -> [B, C].
      emb_set: the `EmbeddingSet` to score.
      batch_size: windows per forward pass.

    Returns:
      float32 [S, C] segment scores.
    """
    sums = None
    for start in range(0, emb_set.num_windows, batch_size):
        x = emb_set.embeddings[start:start + batch_size]
        # predict_on_batch reuses the model's one compiled predict function.
        scores = np.asarray(model.predict_on_batch(x))
        seg = emb_set.segment_index[start:start + batch_size]
        if sums is None:
            sums = np.zeros((emb_set.num_segments, scores.shape[1]),
                            np.float64)
        # Per-chunk sums over the chunk's own segments keep memory at
        # [chunk, C] + [S, C], whatever N is.
        present, local = np.unique(seg, return_inverse=True)
        order = np.argsort(local, kind="stable")
        starts = np.searchsorted(local[order], np.arange(present.size))
        sums[present] += np.add.reduceat(scores[order], starts, axis=0,
                                         dtype=np.float64)
    counts = np.bincount(emb_set.segment_index, minlength=emb_set.num_segments)
    return (sums / counts[:, None]).astype(np.float32)


def classification_map(scores, labels, class_names=None):
    """Macro mAP of segment scores over classes with a positive segment.

    Args:
      scores: [S, C] segment scores.
      labels: multi-hot [S, C] segment labels.
      class_names: optional [C] names used as keys.

    Returns:
      A dict with map (NaN if no class has a positive), per_class
      {name: AP}, num_classes (evaluated), excluded (names of classes without
      a positive segment).
    """
    labels = np.asarray(labels).astype(bool)
    num_classes = labels.shape[1]
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    per_class, excluded = {}, []
    for c in range(num_classes):
        name = str(class_names[c])
        if not labels[:, c].any():
            excluded.append(name)
            continue
        per_class[name] = float(metrics.average_precision_score(
            labels[:, c], scores[:, c]))
    aps = list(per_class.values())
    return {"map": float(np.mean(aps)) if aps else float("nan"),
            "per_class": per_class, "num_classes": len(aps),
            "excluded": excluded}


def classifier_map(train_set, eval_set, config, segments=None, stats=None):
    """Trains a classifier on `train_set` and scores held-out `eval_set`.

    Args:
      train_set: training `EmbeddingSet`.
      eval_set: held-out `EmbeddingSet` (different segments).
      config: a `ClassifierConfig`.
      segments: optional train segment rows (few-shot); default all.
      stats: optional (mean, variance) standardisation statistics.

    Returns:
      The `classification_map` dict plus architecture and train counts.
    """
    model = train_classifier(train_set, config, segments=segments, stats=stats)
    scores = predict_segment_scores(model, eval_set)
    result = classification_map(scores, eval_set.labels, eval_set.class_names)
    train_labels = (train_set.labels if segments is None
                    else train_set.labels[np.asarray(segments)])
    untrained = np.flatnonzero(~train_labels.astype(bool).any(axis=0))
    result.update({
        "architecture": config.architecture,
        "train_segments": int(train_labels.shape[0]),
        "classes_without_train_positives": [
            str(eval_set.class_names[c]) for c in untrained],
    })
    return result


# ---------------------------------------------------------------------------
# Few-shot.
# ---------------------------------------------------------------------------


def draw_fewshot_segments(labels, per_class=20, seed=0, draw=0):
    """Draws `per_class` labelled segments for every class.

    The draw: classes are visited in index order with one generator seeded by
    (seed, draw). Class c gets `per_class` distinct segments that carry c,
    picked first among segments not yet drawn for an earlier class (so the
    union is about per_class * C segments) and, only if those run out, among
    already-drawn ones. A drawn segment keeps all its labels, so it is also a
    positive for the other classes it carries; the classifier then trains on
    the union with full multi-hot labels. A class with fewer than `per_class`
    segments gets all of them and is reported as short.

    Args:
      labels: multi-hot [S, C] train segment labels.
      per_class: segments per class (20 in the paper).
      seed: int seed.
      draw: index of the draw (0, 1, 2 for three trials).

    Returns:
      (segments, by_class, short): sorted int64 rows of the union; a list
      whose entry c is the rows drawn for class c; indices of short classes.
    """
    labels = np.asarray(labels).astype(bool)
    rng = np.random.default_rng([seed, draw])
    taken = np.zeros(labels.shape[0], dtype=bool)
    by_class, short = [], []
    for c in range(labels.shape[1]):
        fresh = np.flatnonzero(labels[:, c] & ~taken)
        if fresh.size >= per_class:
            chosen = rng.choice(fresh, size=per_class, replace=False)
        else:
            reused = np.flatnonzero(labels[:, c] & taken)
            extra = rng.choice(reused, size=min(per_class - fresh.size,
                                                reused.size), replace=False)
            chosen = np.concatenate([fresh, extra])
            if chosen.size < per_class:
                short.append(c)
        chosen = np.sort(chosen).astype(np.int64)
        taken[chosen] = True
        by_class.append(chosen)
    return np.flatnonzero(taken).astype(np.int64), by_class, short


def fewshot_map(train_set, eval_set, config, per_class=20, num_draws=3,
                seed=0, stats=None):
    """Few-shot classifier mAP averaged over seeded draws.

    Args:
      train_set: training `EmbeddingSet` the segments are drawn from.
      eval_set: held-out `EmbeddingSet`.
      config: `ClassifierConfig` (the caller picks the architecture: 1x512 on
        embeddings, 4x512 on log-mel in the paper); its seed is offset by the
        draw index so draws also differ in initialisation.
      per_class: labelled segments per class.
      num_draws: number of draws (trials).
      seed: seed of the draws.
      stats: optional (mean, variance) standardisation; default computed
        from each draw's windows.

    Returns:
      A dict with map (mean over draws), std (sample standard deviation,
      ddof=1; 0 for one draw), maps (per draw), architecture, per_class (mean
      AP over draws per class), segments_per_draw, short_classes, per_draw
      (the full `classifier_map` dict of each draw, with its segment ids).
    """
    maps, per_draw, short_classes = [], [], set()
    for d in range(num_draws):
        segments, _, short = draw_fewshot_segments(train_set.labels, per_class,
                                                   seed, d)
        short_classes.update(str(train_set.class_names[c]) for c in short)
        logging.info("Few-shot draw %d/%d: %d segments", d + 1, num_draws,
                     segments.size)
        draw_config = dataclasses.replace(config, seed=config.seed + d)
        result = classifier_map(train_set, eval_set, draw_config,
                                segments=segments, stats=stats)
        result["segment_ids"] = train_set.segment_ids[segments].tolist()
        maps.append(result["map"])
        per_draw.append(result)
    names = list(per_draw[0]["per_class"]) if per_draw else []
    per_class_mean = {n: float(np.mean([r["per_class"][n] for r in per_draw]))
                      for n in names}
    return {
        "map": float(np.mean(maps)),
        "std": float(np.std(maps, ddof=1)) if len(maps) > 1 else 0.0,
        "maps": maps,
        "architecture": config.architecture,
        "per_class": per_class_mean,
        "segments_per_draw": [len(r["segment_ids"]) for r in per_draw],
        "short_classes": sorted(short_classes),
        "per_draw": per_draw,
    }


# ---------------------------------------------------------------------------
# Everything.
# ---------------------------------------------------------------------------


def align_vocabularies(train_set, eval_set):
    """Re-indexes both sets' labels onto the sorted union of their classes.

    Train and eval corpora extracted from different label files get
    vocabularies of their own (each sorted); a class present in only one of
    them is still a class of the evaluation (the other side has no segment
    with it). Sets with identical vocabularies are returned unchanged.

    Args:
      train_set: training `EmbeddingSet`.
      eval_set: held-out `EmbeddingSet`.

    Returns:
      (train_set, eval_set) sharing one `class_names`.
    """
    if np.array_equal(train_set.class_names, eval_set.class_names):
        return train_set, eval_set
    union = np.asarray(sorted(set(train_set.class_names.tolist()) |
                              set(eval_set.class_names.tolist())))
    logging.warning("class vocabularies differ (%d train, %d eval classes); "
                    "evaluating on their union of %d",
                    len(train_set.class_names), len(eval_set.class_names),
                    len(union))
    index = {name: i for i, name in enumerate(union.tolist())}

    def remap(emb_set):
        labels = np.zeros((emb_set.labels.shape[0], len(union)), np.uint8)
        cols = [index[name] for name in emb_set.class_names.tolist()]
        labels[:, cols] = emb_set.labels
        return dataclasses.replace(emb_set, labels=labels, class_names=union)

    return remap(train_set), remap(eval_set)


def check_compatible(train_set, eval_set, allow_segment_overlap=False):
    """Raises ValueError unless the two sets can be evaluated together.

    Args:
      train_set: training `EmbeddingSet`.
      eval_set: held-out `EmbeddingSet`.
      allow_segment_overlap: skip the disjointness check.
    """
    if not np.array_equal(train_set.class_names, eval_set.class_names):
        raise ValueError("%s and %s have different class vocabularies"
                         % (train_set.source, eval_set.source))
    if train_set.dim != eval_set.dim:
        raise ValueError("%s has D=%d but %s has D=%d" % (
            train_set.source, train_set.dim, eval_set.source, eval_set.dim))
    if train_set.representation != eval_set.representation:
        raise ValueError("%s is %r but %s is %r" % (
            train_set.source, train_set.representation, eval_set.source,
            eval_set.representation))
    if not allow_segment_overlap:
        shared = np.intersect1d(train_set.segment_ids, eval_set.segment_ids)
        if shared.size:
            # Held-out means held-out: a shared segment leaks its labels.
            raise ValueError("%d segment(s) are in both %s and %s, e.g. %r"
                             % (shared.size, train_set.source,
                                eval_set.source, str(shared[0])))


def _counts(emb_set):
    return {"segments": emb_set.num_segments, "windows": emb_set.num_windows,
            "dim": emb_set.dim, "dtype": str(emb_set.embeddings.dtype),
            "positives_per_class_min": int(emb_set.labels.sum(axis=0).min()),
            "source": emb_set.source}


def evaluate(train_set, eval_set, config=None):
    """Runs the paper's evaluations of one representation.

    QbE uses the eval set only; classifiers train on `train_set` windows and
    are scored on `eval_set` segments; few-shot draws from `train_set`. All
    classifiers standardise with the statistics of all train windows
    (unlabelled information, the same for every draw).

    Args:
      train_set: training `EmbeddingSet`.
      eval_set: held-out `EmbeddingSet` (same classes, representation, D).
      config: an `EvaluationConfig`; defaults to the paper's protocol.

    Returns:
      A JSON-serialisable dict with representation, counts, config, timings
      (seconds per part) and one entry per part run: "qbe" {map, chance,
      per_class, skipped, ...}, "classifier_1x512" / "classifier_2x512"
      {map, per_class, ...}, "fewshot" {map, std, maps, ...}.
    """
    config = config or EvaluationConfig()
    train_set, eval_set = align_vocabularies(train_set, eval_set)
    check_compatible(train_set, eval_set, config.allow_segment_overlap)
    results = {
        "representation": eval_set.representation,
        "counts": {"train": _counts(train_set), "eval": _counts(eval_set),
                   "classes": eval_set.num_classes},
        "config": dataclasses.asdict(config),
        "timings": {},
    }
    results["config"]["parts"] = list(config.parts)
    total_start = time.perf_counter()
    if QBE in config.parts:
        start = time.perf_counter()
        logging.info("QbE retrieval on %d eval segments, %d classes",
                     eval_set.num_segments, eval_set.num_classes)
        results[QBE] = qbe_map(
            embeddings_io.segment_means(eval_set), eval_set.labels,
            num_pos=config.qbe_num_pos, num_neg=config.qbe_num_neg,
            seed=config.seed, min_count=config.qbe_min_count,
            class_names=eval_set.class_names)
        results["timings"][QBE] = time.perf_counter() - start
        logging.info("QbE mAP %.3f (chance %.3f) over %d classes in %.1f s",
                     results[QBE]["map"], results[QBE]["chance"],
                     results[QBE]["num_classes"], results["timings"][QBE])
    if config.retrieval_k > 0:
        # Every labelled eval segment a query, through a search index.
        from triplet_audio.search import retrieval  # pylint: disable=g-import-not-at-top
        start = time.perf_counter()
        results[retrieval.PART] = retrieval.retrieval_at_k(
            eval_set, k=config.retrieval_k)
        results["timings"][retrieval.PART] = time.perf_counter() - start
    stats = None
    if set(config.parts) & {CLASSIFIER_1X512, CLASSIFIER_2X512, FEWSHOT}:
        stats = feature_stats(train_set)
    for part, layers in ((CLASSIFIER_1X512, 1), (CLASSIFIER_2X512, 2)):
        if part not in config.parts:
            continue
        start = time.perf_counter()
        logging.info("Classifier %s", part)
        results[part] = classifier_map(train_set, eval_set,
                                       config.classifier(layers), stats=stats)
        results["timings"][part] = time.perf_counter() - start
        logging.info("%s mAP %.3f over %d classes in %.1f s", part,
                     results[part]["map"], results[part]["num_classes"],
                     results["timings"][part])
    if FEWSHOT in config.parts:
        start = time.perf_counter()
        layers = config.fewshot_layers(train_set.representation)
        logging.info("Few-shot: %d draws of %d segments/class, %dx%d",
                     config.fewshot_draws, config.fewshot_per_class, layers,
                     config.hidden_units)
        results[FEWSHOT] = fewshot_map(
            train_set, eval_set,
            config.classifier(layers, epochs=config.fewshot_epochs),
            per_class=config.fewshot_per_class,
            num_draws=config.fewshot_draws, seed=config.seed, stats=stats)
        results["timings"][FEWSHOT] = time.perf_counter() - start
        logging.info("Few-shot mAP %.3f +- %.3f in %.1f s",
                     results[FEWSHOT]["map"], results[FEWSHOT]["std"],
                     results["timings"][FEWSHOT])
    results["timings"]["total"] = time.perf_counter() - total_start
    return results

