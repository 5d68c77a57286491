"""Tests of triplet_audio.model.losses.

The reference (`reference_loss` below) is independent of the implementation:
it computes distances in float64 from explicit differences and enumerates
every triplet (a, p, n) with Python loops, applying the mining rule of
../shared/DESIGN.md literally. The implementation uses float32 and the
|x|^2 + |y|^2 - 2 x.y form, so random batches agree to about 1e-6; cases with
exact ties use integer-valued embeddings, for which both are exact.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

from absl import logging as absl_logging
import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio.model import losses

TOLERANCE = 1e-5

# float16 / bfloat16 embeddings are rounded versions of the float32 ones;
# the loss then differs by the rounding of the distances (~1e-3 and ~1e-2
# relative) and by the mining decisions that rounding flips. Measured on 30
# random unit-norm batches like test_low_precision_agrees_with_float32's
# (B=32, D=16, margin 0.5, loss ~0.4): at most 1.4e-3 (float16) and 3.1e-3
# (bfloat16) absolute. The bounds leave about 4x headroom.
LOW_PRECISION_TOLERANCE = {"float16": 0.005, "bfloat16": 0.02}


def reference_loss(labels, embeddings, margin, distance="squared"):
    """Brute-force semi-hard triplet loss, in float64 with explicit loops.

    Args:
      labels: [B] class ids or [B, C] multi-hot array.
      embeddings: [B, D] array.
      margin: hinge margin.
      distance: "squared" or "euclidean".

    Returns:
      (loss, metrics) with the keys of `losses.METRIC_NAMES`, as floats.
    """
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    b = len(x)

    def dist(i, j):
        diff = x[i] - x[j]
        squared = float(np.dot(diff, diff))
        return squared if distance == "squared" else math.sqrt(squared)

    def is_positive(i, j):
        if labels.ndim == 1:
            return labels[i] == labels[j]
        return bool(np.any((labels[i] != 0) & (labels[j] != 0)))

    hinges, positive_dists, negative_dists, semi_hard = [], [], [], []
    without_negative = 0
    for a in range(b):
        for p in range(b):
            if p == a or not is_positive(a, p):
                continue
            d_ap = dist(a, p)
            closest_farther = None  # closest negative farther than p
            farthest = None  # farthest negative overall (the fallback)
            for n in range(b):
                if n == a or is_positive(a, n):
                    continue
                d_an = dist(a, n)
                if d_an > d_ap and (closest_farther is None
                                    or d_an < closest_farther):
                    closest_farther = d_an
                if farthest is None or d_an > farthest:
                    farthest = d_an
            if farthest is None:
                without_negative += 1
                continue
            d_an = farthest if closest_farther is None else closest_farther
            hinges.append(max(d_ap - d_an + margin, 0.0))
            positive_dists.append(d_ap)
            negative_dists.append(d_an)
            semi_hard.append(closest_farther is not None)

    def mean(values):
        return float(np.mean(values)) if values else 0.0

    metrics = {
        "fraction_active": mean([h > 0 for h in hinges]),
        "fraction_semi_hard": mean(semi_hard),
        "mean_positive_distance": mean(positive_dists),
        "mean_negative_distance": mean(negative_dists),
        "num_pairs": float(len(hinges)),
        "num_pairs_without_negative": float(without_negative),
    }
    return mean(hinges), metrics


def _random_batch(seed, b, d, normalized, multi_hot):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, d)).astype(np.float32)
    if normalized:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    num_classes = max(3, b // 4)
    labels = rng.integers(0, num_classes, size=b).astype(np.int32)
    if multi_hot:
        # One class each, plus a second one for about a third of them.
        second = rng.integers(0, num_classes, size=b)
        labels = np.eye(num_classes, dtype=np.int32)[labels]
        extra = rng.random(b) < 0.3
        labels[extra] |= np.eye(num_classes, dtype=np.int32)[second[extra]]
    return labels, x


def _loss_and_grad(labels, x, **kwargs):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, metrics = losses.semi_hard_triplet_loss(
            labels, x, return_metrics=True, **kwargs)
    return loss, metrics, tape.gradient(loss, x)


def _assert_matches_reference(labels, x, margin, distance, atol=TOLERANCE):
    loss, metrics, grad = _loss_and_grad(labels, x, margin=margin,
                                         distance=distance)
    expected_loss, expected_metrics = reference_loss(labels, x, margin,
                                                     distance)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), expected_loss, atol=atol,
                               rtol=atol)
    assert set(metrics) == set(losses.METRIC_NAMES)
    for name, expected in expected_metrics.items():
        np.testing.assert_allclose(metrics[name].numpy(), expected, atol=atol,
                                   rtol=atol, err_msg=name)
    assert np.all(np.isfinite(grad.numpy()))
    return loss, metrics, grad


# ------------------------------------------------------ brute-force reference
@pytest.mark.parametrize("distance", losses.DISTANCES)
@pytest.mark.parametrize("multi_hot", [False, True], ids=["ids", "multihot"])
@pytest.mark.parametrize("normalized", [True, False], ids=["unit", "raw"])
@pytest.mark.parametrize("b,d", [(6, 2), (13, 3), (24, 8), (40, 16)])
def test_random_batches_match_reference(b, d, normalized, multi_hot,
                                        distance):
    seed = b * 1000 + d * 10 + 2 * normalized + multi_hot
    labels, x = _random_batch(seed, b, d, normalized, multi_hot)
    # Squared distances between unit vectors are at most 4; a margin of the
    # same order keeps both active and inactive pairs in the batch.
    margin = 0.5 if normalized else 2.0
    _, metrics, _ = _assert_matches_reference(labels, x, margin, distance)
    assert metrics["num_pairs"] > 0


def test_some_pairs_have_no_semi_hard_negative():
    # Class 0 at 0 and 3, class 1 at 1 and 2 (1-D). For anchors 0 and 3 the
    # positive (distance 9) is farther than both negatives (1 and 4): the
    # fallback picks the farther one, 4. Anchors 1 and 2 find distance 4
    # beyond their positive at 1.
    labels = np.array([0, 0, 1, 1])
    x = np.array([[0.0], [3.0], [1.0], [2.0]], np.float32)
    _, metrics, _ = _assert_matches_reference(labels, x, 0.2, "squared")
    assert metrics["fraction_semi_hard"].numpy() == pytest.approx(0.5)
    # Pairs (0,3), (3,0): 9 - 4 + 0.2 = 5.2; pairs (1,2), (2,1): 1 - 4 + 0.2
    # < 0. Mean over the 4 pairs: 2.6.
    assert losses.semi_hard_triplet_loss(labels, x).numpy() == (
        pytest.approx(2.6, abs=TOLERANCE))


@pytest.mark.parametrize("distance", losses.DISTANCES)
def test_single_class_batch_is_zero_without_nan(distance):
    labels = np.zeros(8, np.int32)
    _, x = _random_batch(0, 8, 4, True, False)
    loss, metrics, grad = _assert_matches_reference(labels, x, 0.2, distance)
    assert loss.numpy() == 0.0
    assert metrics["num_pairs"].numpy() == 0.0
    assert metrics["num_pairs_without_negative"].numpy() == 8 * 7
    np.testing.assert_array_equal(grad.numpy(), 0.0)


def test_anchor_without_negative_is_left_out():
    # Anchor 0 shares a class with everyone (multi-hot), so its pairs are
    # excluded; the other anchors still count.
    labels = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    _, x = _random_batch(1, 5, 3, False, False)
    _, metrics, _ = _assert_matches_reference(labels, x, 1.0, "squared")
    assert metrics["num_pairs_without_negative"].numpy() == 4
    assert metrics["num_pairs"].numpy() == 6  # 1-0, 2-0, 3-0, 4-0, 1-4, 4-1.


@pytest.mark.parametrize("multi_hot", [False, True], ids=["ids", "multihot"])
def test_all_singletons_have_no_pairs(multi_hot):
    b = 7
    labels = np.eye(b, dtype=np.int32) if multi_hot else np.arange(b)
    _, x = _random_batch(2, b, 4, True, False)
    loss, metrics, grad = _assert_matches_reference(labels, x, 0.2, "squared")
    assert loss.numpy() == 0.0
    assert metrics["num_pairs"].numpy() == 0.0
    np.testing.assert_array_equal(grad.numpy(), 0.0)


def test_examples_without_any_class_are_negatives_of_all():
    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [0, 1], [0, 1]])
    _, x = _random_batch(3, 6, 3, True, False)
    _, metrics, _ = _assert_matches_reference(labels, x, 0.3, "squared")
    # The two label-less examples are not positives of each other.
    assert metrics["num_pairs"].numpy() == 4


@pytest.mark.parametrize("distance", losses.DISTANCES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_embeddings_and_exact_ties(seed, distance):
    # Small-integer coordinates make every distance exact in float32 too, so
    # the many exact ties (d(a, n) == d(a, p) must not count as semi-hard)
    # are decided alike by both implementations.
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, size=(6, 3)).astype(np.float32)
    x = base[rng.integers(0, 6, size=20)]
    labels = rng.integers(0, 4, size=20)
    _, _, grad = _assert_matches_reference(labels, x, 1.0, distance)
    assert np.all(np.isfinite(grad.numpy()))


def test_one_hot_multi_hot_equals_class_ids():
    labels, x = _random_batch(4, 24, 8, True, False)
    one_hot = np.eye(labels.max() + 1, dtype=np.float32)[labels]
    np.testing.assert_allclose(
        losses.semi_hard_triplet_loss(one_hot, x).numpy(),
        losses.semi_hard_triplet_loss(labels, x).numpy(), atol=1e-7)


def test_gradient_matches_finite_differences_of_reference():
    _, x = _random_batch(5, 6, 3, False, False)
    labels = np.array([0, 0, 1, 1, 2, 2])
    margin = 3.0  # Large enough that most hinges are active.
    _, _, grad = _loss_and_grad(labels, x, margin=margin)
    eps = 1e-5
    x64 = x.astype(np.float64)
    numeric = np.zeros_like(x64)
    for index in np.ndindex(*x64.shape):
        step = np.zeros_like(x64)
        step[index] = eps
        numeric[index] = (reference_loss(labels, x64 + step, margin)[0]
                          - reference_loss(labels, x64 - step, margin)[0]) / (
                              2 * eps)
    assert np.abs(numeric).max() > 0.1  # The check is not vacuous.
    np.testing.assert_allclose(grad.numpy(), numeric, atol=1e-4)


# ------------------------------------------------------ closed-form cases
def test_closed_form_1d_squared():
    """Classes {0: x=0, 1}, {1: x=2, 4}, margin 1, squared distances.

    (0,1): d_ap = 1; negatives of 0 at 4, 16; semi-hard 4 -> [1-4+1]+ = 0.
    (1,0): d_ap = 1; negatives of 1 at 1, 9; 1 is not > 1 (a tie), so 9
           -> [1-9+1]+ = 0.
    (2,3): d_ap = 4; negatives of 2 at 4, 1; none > 4: fallback to the
           farthest, 4 -> [4-4+1]+ = 1.
    (3,2): d_ap = 4; negatives of 3 at 16, 9; semi-hard 9 -> 0.
    Loss = (0+0+1+0)/4 = 0.25; mined negatives (4+9+4+9)/4 = 6.5;
    positives (1+1+4+4)/4 = 2.5; 3 of 4 pairs found a semi-hard negative.
    """
    labels = tf.constant([0, 0, 1, 1])
    x = tf.constant([[0.0], [1.0], [2.0], [4.0]])
    loss, metrics = losses.semi_hard_triplet_loss(labels, x, margin=1.0,
                                                  return_metrics=True)
    assert loss.numpy() == pytest.approx(0.25)
    assert metrics["mean_negative_distance"].numpy() == pytest.approx(6.5)
    assert metrics["mean_positive_distance"].numpy() == pytest.approx(2.5)
    assert metrics["fraction_semi_hard"].numpy() == pytest.approx(0.75)
    assert metrics["fraction_active"].numpy() == pytest.approx(0.25)
    assert metrics["num_pairs"].numpy() == 4


def test_closed_form_1d_euclidean():
    """Same points, Euclidean distances, margin 1.5.

    (0,1): d_ap = 1; negatives 2, 4 -> 2 -> [1-2+1.5]+ = 0.5.
    (1,0): d_ap = 1; negatives 1 (tie, not farther), 3 -> [1-3+1.5]+ = 0.
    (2,3): d_ap = 2; negatives 2, 1; none farther: 2 -> [2-2+1.5]+ = 1.5.
    (3,2): d_ap = 2; negatives 4, 3 -> 3 -> [2-3+1.5]+ = 0.5.
    Loss = 2.5 / 4 = 0.625.
    """
    loss = losses.semi_hard_triplet_loss(
        tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [2.0], [4.0]]),
        margin=1.5, distance="euclidean")
    assert loss.numpy() == pytest.approx(0.625)


def test_closed_form_unit_circle():
    """Unit vectors (1,0), (0,1) of class 0 and (-1,0) of class 1, margin 0.2.

    Squared distances 2 - 2 cos: |e0-e1|^2 = 2, |e0-(-e0)|^2 = 4,
    |e1-(-e0)|^2 = 2.
    (0,1): d_ap = 2; the negative at 4 is farther -> [2-4+0.2]+ = 0.
    (1,0): d_ap = 2; the negative at 2 ties, none farther, fallback 2
           -> [2-2+0.2]+ = 0.2.
    Loss = 0.1. Anchor 2 has no positive.
    """
    loss = losses.semi_hard_triplet_loss(
        tf.constant([0, 0, 1]),
        tf.constant([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert loss.numpy() == pytest.approx(0.1)


def test_closed_form_multi_hot():
    """Multi-hot {A}, {A, B}, {B} at x = 0, 1, 3; margin 6.

    0 and 2 share nothing (negatives of each other); 1 shares a class with
    both, so it has no negative and its pairs (1,0), (1,2) are left out.
    (0,1): d_ap = 1; negative 2 at 9 -> [1-9+6]+ = 0.
    (2,1): d_ap = 4; negative 0 at 9 -> [4-9+6]+ = 1.
    Loss = 1/2.
    """
    loss, metrics = losses.semi_hard_triplet_loss(
        tf.constant([[1, 0], [1, 1], [0, 1]]),
        tf.constant([[0.0], [1.0], [3.0]]), margin=6.0, return_metrics=True)
    assert loss.numpy() == pytest.approx(0.5)
    assert metrics["num_pairs"].numpy() == 2
    assert metrics["num_pairs_without_negative"].numpy() == 2


def test_margin_zero_and_empty_batch():
    loss = losses.semi_hard_triplet_loss(tf.zeros([0], tf.int32),
                                         tf.zeros([0, 4]))
    assert loss.numpy() == 0.0
    # Margin 0, every mined negative farther: nothing active.
    loss = losses.semi_hard_triplet_loss(
        tf.constant([0, 0, 1]), tf.constant([[0.0], [1.0], [5.0]]),
        margin=0.0)
    assert loss.numpy() == 0.0


def test_invalid_arguments():
    labels, x = _random_batch(6, 4, 2, True, False)
    with pytest.raises(ValueError, match="distance"):
        losses.semi_hard_triplet_loss(labels, x, distance="cosine")
    with pytest.raises(ValueError, match="margin"):
        losses.semi_hard_triplet_loss(labels, x, margin=-0.1)
    with pytest.raises(ValueError, match="labels"):
        losses.semi_hard_triplet_loss(labels.reshape(2, 2, 1), x)


# ------------------------------------------------------ dtypes, graphs, XLA
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_agrees_with_float32(dtype):
    labels, x = _random_batch(7, 32, 16, True, False)
    low = tf.cast(x, dtype)
    loss, metrics, grad = _loss_and_grad(labels, low, margin=0.5)
    assert loss.dtype == tf.float32
    assert grad.dtype == low.dtype
    assert np.all(np.isfinite(grad.numpy().astype(np.float32)))
    assert all(np.isfinite(v.numpy()) for v in metrics.values())
    # Computed in float32: identical to the float32 loss of the rounded
    # embeddings.
    rounded = losses.semi_hard_triplet_loss(labels, tf.cast(low, tf.float32),
                                            margin=0.5)
    assert loss.numpy() == rounded.numpy()
    full = losses.semi_hard_triplet_loss(labels, x, margin=0.5)
    assert abs(loss.numpy() - full.numpy()) < LOW_PRECISION_TOLERANCE[dtype]


@pytest.mark.parametrize("distance", losses.DISTANCES)
@pytest.mark.parametrize("multi_hot", [False, True], ids=["ids", "multihot"])
def test_xla_matches_eager(multi_hot, distance):
    labels, x = _random_batch(8, 24, 8, True, multi_hot)

    @tf.function(jit_compile=True)
    def compiled(labels, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = losses.semi_hard_triplet_loss(labels, x, margin=0.5,
                                                 distance=distance)
        return loss, tape.gradient(loss, x)

    loss, grad = compiled(tf.constant(labels), tf.constant(x))
    expected_loss, _, expected_grad = _loss_and_grad(
        labels, x, margin=0.5, distance=distance)
    np.testing.assert_allclose(loss.numpy(), expected_loss.numpy(),
                               atol=TOLERANCE)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(),
                               atol=TOLERANCE)


def test_tf_function_with_unknown_batch_size():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 8], tf.float32)])
    def fn(labels, x):
        return losses.semi_hard_triplet_loss(labels, x, return_metrics=True)

    for b in (5, 17):
        labels, x = _random_batch(9 + b, b, 8, True, False)
        loss, metrics = fn(labels, x)
        expected, expected_metrics = reference_loss(labels, x, 0.2)
        np.testing.assert_allclose(loss.numpy(), expected, atol=TOLERANCE)
        assert metrics["num_pairs"].numpy() == expected_metrics["num_pairs"]


def test_graph_has_no_cubic_tensor():
    """No op of the forward or backward graph holds B^3 elements."""
    b, d = 50, 8

    @tf.function
    def fn(labels, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = losses.semi_hard_triplet_loss(labels, x)
        return tape.gradient(loss, x)

    graph = fn.get_concrete_function(
        tf.TensorSpec([b], tf.int32), tf.TensorSpec([b, d], tf.float32)).graph
    sizes = [output.shape.num_elements() or 0
             for op in graph.get_operations() for output in op.outputs]
    assert max(sizes) >= b * b  # The shapes were inferred.
    assert max(sizes) < b * b * 4


def test_distribute_replica_context():
    """Per-replica mining under MirroredStrategy with 2 logical CPUs.

    Runs in a subprocess: logical devices must be set before TensorFlow
    initialises, which the rest of the test session has already done.
    """
    script = textwrap.dedent("""
        import json
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from triplet_audio.model import losses
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 12, 4)).astype(np.float32)
        y = rng.integers(0, 3, size=(2, 12)).astype(np.int32)
        dx = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group]))
        dy = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(y[ctx.replica_id_in_sync_group]))
        keras_loss = losses.SemiHardTripletLoss(margin=0.5)

        def replica_fn(labels, emb):
            return (losses.semi_hard_triplet_loss(labels, emb, margin=0.5),
                    keras_loss(labels, emb))

        @tf.function
        def step(labels, emb):
            return strategy.run(replica_fn, args=(labels, emb))

        pure, scaled = step(dy, dx)
        print(json.dumps({
            "pure": [float(v) for v in
                     strategy.experimental_local_results(pure)],
            "keras": [float(v) for v in
                      strategy.experimental_local_results(scaled)],
            "local": [float(losses.semi_hard_triplet_loss(y[i], x[i], 0.5))
                      for i in range(2)]}))
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], env=env,
                            capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    # Each replica mines in its own half of the batch ...
    np.testing.assert_allclose(values["pure"], values["local"], atol=1e-6)
    assert values["local"][0] != values["local"][1]
    # ... and the Keras loss carries Keras's 1 / num_replicas scaling.
    np.testing.assert_allclose(values["keras"],
                               np.array(values["local"]) / 2, atol=1e-6)


# ------------------------------------------------------ metrics logging
def test_log_metrics(caplog):
    labels, x = _random_batch(10, 12, 4, True, False)
    _, metrics = losses.semi_hard_triplet_loss(labels, x,
                                               return_metrics=True)
    caplog.set_level("INFO")
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        losses.log_metrics(metrics, step=7)
    finally:
        absl_logging.set_verbosity(verbosity)
    text = caplog.text
    assert "step=7" in text
    for name in losses.METRIC_NAMES:
        assert f"{name}=" in text


# ------------------------------------------------------ Keras wrapper
def test_keras_loss_equals_pure_function():
    labels, x = _random_batch(11, 20, 6, True, False)
    expected = losses.semi_hard_triplet_loss(labels, x, margin=0.3,
                                             distance="euclidean")
    loss_fn = losses.SemiHardTripletLoss(margin=0.3, distance="euclidean")
    for y_true in (labels, labels[:, None], labels.astype(np.float32)):
        np.testing.assert_allclose(loss_fn(y_true, x).numpy(),
                                   expected.numpy(), atol=1e-7)
    multi, x = _random_batch(12, 20, 6, True, True)
    np.testing.assert_allclose(
        loss_fn(multi, x).numpy(),
        losses.semi_hard_triplet_loss(multi, x, margin=0.3,
                                      distance="euclidean").numpy(),
        atol=1e-7)


def test_keras_loss_validates_arguments():
    with pytest.raises(ValueError, match="margin"):
        losses.SemiHardTripletLoss(margin=-1.0)
    with pytest.raises(ValueError, match="distance"):
        losses.SemiHardTripletLoss(distance="cosine")
    labels, x = _random_batch(13, 6, 2, True, False)
    with pytest.raises(ValueError, match="sample_weight"):
        losses.SemiHardTripletLoss()(labels, x, sample_weight=np.ones(6))


def test_keras_loss_serialisation_round_trip():
    loss_fn = losses.SemiHardTripletLoss(margin=0.7, distance="euclidean",
                                         name="triplet")
    config = loss_fn.get_config()
    assert config == {"name": "triplet", "margin": 0.7,
                      "distance": "euclidean"}
    clone = losses.SemiHardTripletLoss.from_config(config)
    serialized = keras.saving.serialize_keras_object(loss_fn)
    serialized = json.loads(json.dumps(serialized))  # Must survive JSON.
    restored = keras.saving.deserialize_keras_object(serialized)
    assert (keras.saving.get_registered_name(losses.SemiHardTripletLoss)
            == "triplet_audio>SemiHardTripletLoss")
    labels, x = _random_batch(14, 16, 4, False, False)
    expected = loss_fn(labels, x).numpy()
    for other in (clone, restored):
        assert isinstance(other, losses.SemiHardTripletLoss)
        assert other.get_config() == config
        assert other(labels, x).numpy() == expected


def test_keras_model_evaluate_reports_the_loss():
    labels, x = _random_batch(15, 24, 5, False, False)
    model = keras.Sequential([keras.Input((5,)),
                              keras.layers.Dense(4, name="embedding")])
    model.compile(loss=losses.SemiHardTripletLoss(margin=1.0))
    reported = model.evaluate(x, labels, batch_size=24, verbose=0)
    expected = losses.semi_hard_triplet_loss(labels, model(x), margin=1.0)
    np.testing.assert_allclose(reported, expected.numpy(), rtol=1e-5)
