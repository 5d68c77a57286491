"""Tests of the paper's evaluation protocol (triplet_audio/evaluation/metrics.py)."""

import dataclasses
import math

from absl import flags
import numpy as np
import pytest

from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import fields
from triplet_audio.serving import embeddings_io as eio
from triplet_audio.evaluation import metrics as ev

# Chance of the 100 + 100 design, from the pair counts (not the paper's
# rounded 0.331): C(100, 2) relevant among C(100, 2) + 100 * 100.
_CHANCE_100 = math.comb(100, 2) / (math.comb(100, 2) + 100 * 100)

# Classifier tests use a small net: the protocol, not the capacity, is tested.
_SMALL = dict(hidden_units=32, epochs=8, batch_size=64, learning_rate=3e-3)


def random_labels(num_segments, num_classes, rate, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((num_segments, num_classes)) < rate).astype(np.uint8)


def make_set(labels, dim=16, windows=3, separation=0.0, noise=1.0, seed=0,
             prefix="s", representation="toy"):
    """Windows = separation * sum of the segment's class centroids + noise."""
    labels = np.asarray(labels, dtype=np.uint8)
    num_segments, num_classes = labels.shape
    rng = np.random.default_rng(seed)
    centroids = np.random.default_rng(1234).normal(size=(num_classes, dim))
    segment_index = np.repeat(np.arange(num_segments), windows)
    emb = (separation * labels[segment_index] @ centroids +
           noise * rng.normal(size=(segment_index.size, dim)))
    return eio.EmbeddingSet(
        embeddings=emb.astype(np.float32), segment_index=segment_index,
        start_times=np.tile(np.arange(windows) * 0.96, num_segments),
        segment_ids=["%s%05d" % (prefix, i) for i in range(num_segments)],
        labels=labels, split=[""] * num_segments,
        class_names=["c%d" % c for c in range(num_classes)],
        representation=representation)


# --- QbE ---------------------------------------------------------------------


def test_qbe_pairs_100_plus_100():
    is_positive = np.arange(200) < 100
    first, second, relevant = ev.qbe_pairs(is_positive)
    assert relevant.sum() == 4950
    assert (~relevant).sum() == 10000
    assert (first < second).all()
    # Every kept pair has a positive; no pair appears twice.
    assert (is_positive[first] | is_positive[second]).all()
    assert len(set(zip(first.tolist(), second.tolist()))) == first.size
    # Relevant exactly when both are positive.
    np.testing.assert_array_equal(relevant,
                                  is_positive[first] & is_positive[second])


def test_qbe_pairs_do_not_depend_on_order():
    rng = np.random.default_rng(0)
    is_positive = rng.permutation(np.arange(200) < 100)
    _, _, relevant = ev.qbe_pairs(is_positive)
    assert relevant.sum() == 4950 and relevant.size == 14950


def test_qbe_random_embeddings_give_chance():
    aps = []
    for seed in range(3):
        labels = random_labels(700, 4, 0.3, seed)
        emb = np.random.default_rng(100 + seed).normal(size=(700, 32))
        result = ev.qbe_map(emb, labels, seed=seed)
        assert result["num_classes"] == 4 and not result["skipped"]
        assert result["chance"] == pytest.approx(_CHANCE_100)
        assert result["pairs"] == {"relevant": 4 * 4950,
                                   "irrelevant": 4 * 10000}
        aps.extend(result["per_class"].values())
    assert np.mean(aps) == pytest.approx(_CHANCE_100, abs=0.02)


def test_qbe_oracle_embedding_gives_one():
    rng = np.random.default_rng(0)
    single = rng.integers(0, 5, size=800)
    labels = np.eye(5, dtype=np.uint8)[single]
    result = ev.qbe_map(labels.astype(np.float32), labels)
    assert result["num_classes"] == 5
    assert result["map"] == pytest.approx(1.0)


def test_qbe_learned_beats_random_through_segment_means():
    labels = random_labels(600, 3, 0.35, 0)
    emb_set = make_set(labels, separation=1.0, windows=4)
    result = ev.qbe_map(eio.segment_means(emb_set), labels)
    assert result["map"] > _CHANCE_100 + 0.2


def test_qbe_skips_and_reports_small_classes():
    labels = random_labels(400, 3, 0.4, 0)
    labels[:, 1] = 0
    labels[:50, 1] = 1  # 50 positives < 100.
    emb = np.random.default_rng(0).normal(size=(400, 8))
    result = ev.qbe_map(emb, labels, class_names=["a", "b", "c"])
    assert result["skipped"] == [{"class": "b", "positives": 50,
                                  "negatives": 350}]
    assert set(result["per_class"]) == {"a", "c"}
    # With a lower minimum the class is kept, using all its 50 positives.
    relaxed = ev.qbe_map(emb, labels, class_names=["a", "b", "c"],
                         min_count=20)
    assert "b" in relaxed["per_class"] and not relaxed["skipped"]
    chance_b = math.comb(50, 2) / (math.comb(50, 2) + 50 * 100)
    assert relaxed["chance"] == pytest.approx((2 * _CHANCE_100 + chance_b) / 3)


def _brute_force_qbe_ap(embeddings, is_positive, similarity):
    """The paper's QbE AP of one class, pair by pair in float64.

    Every unordered pair of the sampled segments with at least one positive
    member, scored by `similarity`; relevant when both are positive. AP =
    mean over the relevant pairs of the precision at their rank (scores
    have no ties here).
    """
    scored = []
    for i in range(len(embeddings)):
        for j in range(i + 1, len(embeddings)):
            if is_positive[i] or is_positive[j]:
                scored.append((similarity(embeddings[i], embeddings[j]),
                               bool(is_positive[i] and is_positive[j])))
    scored.sort(key=lambda pair: -pair[0])
    hits, precisions = 0, []
    for rank, (_, relevant) in enumerate(scored, start=1):
        if relevant:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def _cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_qbe_scores_by_cosine_not_dot_product():
    # Each class's positives point near its own direction; every segment has
    # a norm drawn from 0.05-20, so a dot product ranks by norm as much as by
    # direction and its ranking differs from the cosine one.
    rng = np.random.default_rng(2)
    num_segments, dim = 24, 6
    labels = random_labels(num_segments, 2, 0.4, 3)
    directions = rng.normal(size=(2, dim))
    emb = labels @ directions + 0.3 * rng.normal(size=(num_segments, dim))
    emb *= (np.exp(rng.uniform(np.log(0.05), np.log(20.0), num_segments)) /
            np.linalg.norm(emb, axis=1))[:, None]
    emb = emb.astype(np.float32)
    # min_count with 100 + 100 > the corpus: every segment is in the sample.
    result = ev.qbe_map(emb, labels, min_count=2, class_names=["a", "b"])
    assert result["num_classes"] == 2
    x = emb.astype(np.float64)
    for c, name in enumerate(["a", "b"]):
        is_positive = labels[:, c].astype(bool)
        assert 2 <= is_positive.sum() <= num_segments - 2
        cosine_ap = _brute_force_qbe_ap(x, is_positive, _cosine)
        dot_ap = _brute_force_qbe_ap(x, is_positive, np.dot)
        # The case separates the two scorings.
        assert abs(cosine_ap - dot_ap) > 0.1, (cosine_ap, dot_ap)
        assert result["per_class"][name] == pytest.approx(cosine_ap,
                                                          abs=1e-9)
    assert result["map"] == pytest.approx(
        np.mean(list(result["per_class"].values())), abs=1e-12)


def test_qbe_samples_are_seeded_per_class():
    labels = random_labels(500, 3, 0.4, 0)
    a = ev.sample_qbe_segments(labels, 1, seed=7)
    b = ev.sample_qbe_segments(labels, 1, seed=7)
    c = ev.sample_qbe_segments(labels, 1, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(np.sort(a[0]), np.sort(c[0]))
    assert labels[a[0], 1].all() and not labels[a[1], 1].any()
    assert len(set(a[0].tolist())) == 100 and len(set(a[1].tolist())) == 100
    # A class's sample does not depend on the other classes.
    e = ev.sample_qbe_segments(np.concatenate([labels, labels[:, :1]], 1), 1,
                               seed=7)
    np.testing.assert_array_equal(a[0], e[0])


# --- Classifiers -------------------------------------------------------------


def test_classification_map_ignores_classes_without_positives():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.6, 0.5],
                       [0.1, 0.3, 0.5]])
    result = ev.classification_map(scores, labels, ["a", "b", "c"])
    assert result["excluded"] == ["c"]
    assert result["per_class"] == {"a": 1.0, "b": 1.0}
    assert result["map"] == 1.0
    scores[1, 0] = 0.95  # A negative now ranks first for "a".
    assert ev.classification_map(scores, labels)["map"] < 1.0


def test_feature_stats_matches_numpy():
    emb_set = make_set(random_labels(50, 2, 0.5, 0), separation=2.0)
    mean, var = ev.feature_stats(emb_set, chunk=7)
    np.testing.assert_allclose(mean, emb_set.embeddings.mean(0), atol=1e-5)
    np.testing.assert_allclose(var, emb_set.embeddings.var(0), rtol=1e-4)


def test_segment_scores_are_means_of_window_scores():
    labels = random_labels(40, 3, 0.5, 0)
    emb_set = make_set(labels, windows=3)
    order = np.random.default_rng(0).permutation(emb_set.num_windows)
    shuffled = eio.EmbeddingSet(
        emb_set.embeddings[order], emb_set.segment_index[order],
        emb_set.start_times[order], emb_set.segment_ids, labels,
        emb_set.split, emb_set.class_names, "toy")
    config = ev.ClassifierConfig(hidden_units=8)
    model = ev.build_classifier(16, 3, config, *ev.feature_stats(shuffled))
    # A chunk size that splits segments across chunks.
    scores = ev.predict_segment_scores(model, shuffled, batch_size=7)
    windows = model.predict(shuffled.embeddings, verbose=0)
    for s in range(40):
        np.testing.assert_allclose(
            scores[s], windows[shuffled.segment_index == s].mean(0),
            rtol=1e-5, atol=1e-6)


def test_classifier_separable_toy_set_is_near_one():
    train = make_set(random_labels(300, 3, 0.35, 0), separation=1.5, seed=0)
    held_out = make_set(random_labels(200, 3, 0.35, 1), separation=1.5,
                        seed=1, prefix="e")
    result = ev.classifier_map(train, held_out,
                               ev.ClassifierConfig(hidden_layers=1, **_SMALL))
    assert result["map"] > 0.9
    assert result["architecture"] == "1x32"
    assert result["num_classes"] == 3


def test_classifier_on_shuffled_labels_is_near_chance():
    train_labels = random_labels(300, 3, 0.35, 0)
    held_out_labels = random_labels(400, 3, 0.35, 1)
    train = make_set(train_labels, separation=1.5, seed=0)
    held_out = make_set(held_out_labels, separation=1.5, seed=1, prefix="e")
    # Labels shuffled across segments: features no longer predict them.
    rng = np.random.default_rng(5)
    train.labels = train_labels[rng.permutation(300)]
    held_out.labels = held_out_labels[rng.permutation(400)]
    result = ev.classifier_map(train, held_out,
                               ev.ClassifierConfig(hidden_layers=2, **_SMALL))
    positive_rate = held_out.labels.mean(axis=0).mean()
    assert abs(result["map"] - positive_rate) < 0.1


# --- Few-shot ----------------------------------------------------------------


def test_fewshot_draws_are_seeded_and_give_each_class_20():
    labels = random_labels(1000, 6, 0.15, 0)
    labels[:, 5] = 0
    labels[:12, 5] = 1  # A class with only 12 segments.
    union, by_class, short = ev.draw_fewshot_segments(labels, 20, seed=3,
                                                      draw=0)
    for c in range(5):
        assert by_class[c].size == 20
        assert len(set(by_class[c].tolist())) == 20
        assert labels[by_class[c], c].all()
    assert short == [5] and by_class[5].size == 12
    np.testing.assert_array_equal(union, np.unique(np.concatenate(by_class)))
    # Drawn among fresh segments first: the union is as large as possible.
    assert union.size == 5 * 20 + 12 - np.intersect1d(
        by_class[5], np.concatenate(by_class[:5])).size
    same, _, _ = ev.draw_fewshot_segments(labels, 20, seed=3, draw=0)
    np.testing.assert_array_equal(union, same)
    other_seed, _, _ = ev.draw_fewshot_segments(labels, 20, seed=4, draw=0)
    other_draw, _, _ = ev.draw_fewshot_segments(labels, 20, seed=3, draw=1)
    assert not np.array_equal(union, other_seed)
    assert not np.array_equal(union, other_draw)


def test_fewshot_reuses_drawn_segments_when_fresh_run_out():
    labels = np.zeros((30, 2), np.uint8)
    labels[:, 0] = 1
    labels[:25, 1] = 1  # Class 1 lives almost only on class-0 segments.
    union, by_class, short = ev.draw_fewshot_segments(labels, 20, seed=0)
    assert not short
    assert by_class[1].size == 20 and labels[by_class[1], 1].all()
    assert union.size <= 30


def test_fewshot_architecture_follows_representation():
    config = ev.EvaluationConfig()
    assert config.fewshot_layers("logmel") == 4
    assert config.fewshot_layers("joint_model") == 1
    assert ev.EvaluationConfig(fewshot_hidden_layers=2).fewshot_layers(
        "logmel") == 2


# --- the settings ------------------------------------------------------------


def test_configs_live_in_the_config_home():
    # metrics keeps the names its callers know.
    assert ev.EvaluationConfig is eval_config.EvaluationConfig
    assert ev.ClassifierConfig is eval_config.ClassifierConfig
    assert ev.ALL_PARTS == (ev.QBE, ev.CLASSIFIER_1X512, ev.CLASSIFIER_2X512,
                            ev.FEWSHOT) == eval_config.ALL_PARTS


def test_classifiers_get_the_evaluation_training_fields():
    config = ev.EvaluationConfig(hidden_units=8, epochs=3, batch_size=16,
                                 learning_rate=0.01, seed=5)
    two = config.classifier(2)
    assert (two.hidden_layers, two.hidden_units, two.epochs, two.batch_size,
            two.learning_rate, two.seed) == (2, 8, 3, 16, 0.01, 5)
    assert config.classifier(1, epochs=7).epochs == 7
    assert two.architecture == "2x8"


@pytest.mark.parametrize("make, message", [
    (lambda: ev.ClassifierConfig(hidden_units=0),
     "ClassifierConfig.hidden_units: must be an integer >= 1"),
    (lambda: ev.ClassifierConfig(hidden_layers=-1),
     "ClassifierConfig.hidden_layers: must be an integer >= 0"),
    (lambda: ev.ClassifierConfig(learning_rate=0.0),
     "ClassifierConfig.learning_rate: must be > 0"),
    # A field that is a flag is named as the flag.
    (lambda: ev.EvaluationConfig(epochs=0),
     "--classifier_epochs: must be an integer >= 1"),
    (lambda: ev.EvaluationConfig(fewshot_draws=0),
     "--fewshot_draws: must be an integer >= 1"),
    (lambda: ev.EvaluationConfig(batch_size=0),
     "EvaluationConfig.batch_size: must be an integer >= 1"),
])
def test_configs_reject_bad_values(make, message):
    with pytest.raises(ValueError, match="^" + message):
        make()


def test_evaluate_flags_are_derived_from_the_config():
    values = flags.FlagValues()
    fields.define_flags(ev.EvaluationConfig, values)
    # bin/evaluate's settings; the library-only fields have no flag.
    assert set(values) == {"eval_seed", "qbe_num_pos", "qbe_num_neg",
                           "qbe_min_count", "classifier_epochs",
                           "fewshot_epochs", "fewshot_per_class",
                           "fewshot_draws", "protocol", "probe_l2",
                           "probe_classifiers", "probe_max_iter",
                           "probe_val_fraction", "retrieval_k"}
    assert values["qbe_min_count"].default == 0  # None: the exact protocol.
    values(["prog"])
    assert fields.config_from_flags(ev.EvaluationConfig, values) == (
        ev.EvaluationConfig())
    values(["prog", "--qbe_min_count=12", "--classifier_epochs=4",
            "--eval_seed=3", "--fewshot_epochs=2"])
    config = fields.config_from_flags(ev.EvaluationConfig, values)
    assert (config.qbe_min_count, config.epochs, config.seed,
            config.fewshot_epochs) == (12, 4, 3, 2)
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--qbe_num_pos=0"])


# --- evaluate() --------------------------------------------------------------


def test_evaluate_runs_every_part():
    train = make_set(random_labels(240, 3, 0.3, 0), separation=1.5, seed=0)
    held_out = make_set(random_labels(240, 3, 0.3, 1), separation=1.5, seed=1,
                        prefix="e")
    config = ev.EvaluationConfig(qbe_num_pos=30, qbe_num_neg=30,
                                 fewshot_per_class=10, fewshot_draws=2,
                                 fewshot_epochs=4, epochs=2, hidden_units=16)
    results = ev.evaluate(train, held_out, config)
    assert results["qbe"]["chance"] == pytest.approx(
        math.comb(30, 2) / (math.comb(30, 2) + 900))
    for part in ev.ALL_PARTS:
        assert 0.0 <= results[part]["map"] <= 1.0
        assert results["timings"][part] >= 0.0
    assert results["classifier_2x512"]["architecture"] == "2x16"
    few = results["fewshot"]
    assert few["architecture"] == "1x16" and len(few["maps"]) == 2
    assert few["std"] == pytest.approx(np.std(few["maps"], ddof=1))
    assert results["counts"]["eval"]["segments"] == 240
    # Draws differ, so the two few-shot training sets differ.
    ids = [set(d["segment_ids"]) for d in few["per_draw"]]
    assert ids[0] != ids[1]


def test_evaluate_rejects_incompatible_sets():
    labels = random_labels(50, 2, 0.5, 0)
    train = make_set(labels)
    with pytest.raises(ValueError, match="in both"):
        ev.evaluate(train, make_set(labels), ev.EvaluationConfig(parts=["qbe"]))
    other = make_set(labels, dim=8, prefix="e")
    with pytest.raises(ValueError, match="D="):
        ev.evaluate(train, other, ev.EvaluationConfig(parts=["qbe"]))
    with pytest.raises(ValueError, match="unknown"):
        ev.EvaluationConfig(parts=["qbe", "resnet"])


def test_align_vocabularies_reindexes_onto_the_union():
    labels_a = np.array([[1, 0], [0, 1], [1, 1]], np.uint8)   # [cat, dog]
    labels_b = np.array([[1, 0], [0, 1]], np.uint8)           # [bird, dog]
    a = make_set(labels_a, seed=1)
    b = make_set(labels_b, seed=2)
    a = dataclasses.replace(a, class_names=np.array(["cat", "dog"]))
    b = dataclasses.replace(b, class_names=np.array(["bird", "dog"]),
                            segment_ids=np.array(["x0", "x1"]))
    a2, b2 = ev.align_vocabularies(a, b)
    assert a2.class_names.tolist() == ["bird", "cat", "dog"]
    assert b2.class_names.tolist() == ["bird", "cat", "dog"]
    # Each segment keeps exactly its named classes.
    np.testing.assert_array_equal(a2.labels, [[0, 1, 0], [0, 0, 1],
                                              [0, 1, 1]])
    np.testing.assert_array_equal(b2.labels, [[1, 0, 0], [0, 0, 1]])
    # Identical vocabularies come back untouched.
    same_a, same_b = ev.align_vocabularies(a, a)
    assert same_a is a and same_b is a
