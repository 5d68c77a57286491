"""Times the semi-hard triplet loss against the naive O(B^3) form.

Forward + backward (gradient with respect to the embeddings) of
`losses.semi_hard_triplet_loss` at several batch sizes, next to a naive
implementation that compares d(a, n) with d(a, p) for every triplet through
B x B x B masks (the form of tf-addons' `triplet_semihard_loss`), and the
loss's share of a ResNet-50 training step (`models.build_model`). Prints a
table with the ratios and the target (naive / ours >= 10x at B=768).

  .venv/bin/python benchmarks/bench_loss.py [--jit] [--repeats=5]
      [--batch_sizes=192,768,3072] [--naive_batch_sizes=192,768] [--noresnet]
      [--output_json=PATH]

An empty --naive_batch_sizes= skips the naive form. Calls are timed after a
warm-up call (tracing, XLA compilation), taking turns between the two forms.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top
from triplet_audio import constants as C
from triplet_audio.model import losses
# pylint: enable=g-import-not-at-top

_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["192", "768", "3072"], "Batch sizes B for our loss.")
_NAIVE_BATCH_SIZES = flags.DEFINE_list(
    "naive_batch_sizes", ["192", "768"],
    "Batch sizes for the naive B^3 form (memory grows as 6 B^3 bytes and "
    "more: 768 needs several GB).")
_EMBEDDING_SIZE = flags.DEFINE_integer("embedding_size", 128,
                                       "Embedding dimension D.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Timed calls per measurement, after one warm-up call.")
_JIT = flags.DEFINE_boolean("jit", False,
                            "Compile both losses with XLA (jit_compile).")
_RESNET = flags.DEFINE_boolean(
    "resnet", True,
    "Also time a ResNet-50 training step (needs triplet_audio.model.models).")
_RESNET_BATCH_SIZE = flags.DEFINE_integer("resnet_batch_size", 192,
                                          "Batch size of the ResNet-50 step.")
_RESNET_STEPS = flags.DEFINE_integer(
    "resnet_steps", 2, "Timed ResNet-50 steps (after one warm-up step).")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "If set, also write the figures as JSON here.")

MARGIN = 0.2
TARGET_BATCH_SIZE = 768
TARGET_SPEEDUP = 10.0
"""Target: ours at least 10x faster than the naive form at B=768."""


def naive_semi_hard_triplet_loss(labels, embeddings, margin=MARGIN):
    """The O(B^3) reference form: B x B x B masks over (a, p, n).

    Same rule, squared distances and [B] class ids only; anchors without
    negatives are left out as in `losses.semi_hard_triplet_loss`.
    """
    dist = losses.pairwise_distances(embeddings)
    b = tf.shape(dist)[0]
    off_diagonal = tf.logical_not(tf.cast(tf.eye(b), tf.bool))
    same = tf.equal(labels[:, None], labels[None, :])
    positive = tf.logical_and(same, off_diagonal)
    negative = tf.logical_not(same)  # Excludes the diagonal already.
    d_ap = dist[:, :, None]  # [a, p, 1]
    d_an = dist[:, None, :]  # [a, 1, n]
    semi_hard = tf.logical_and(negative[:, None, :], d_an > d_ap)  # [a, p, n]
    closest_farther = tf.reduce_min(
        tf.where(semi_hard, d_an, float("inf")), axis=2)
    farthest = tf.reduce_max(tf.where(negative, dist, -float("inf")), axis=1,
                             keepdims=True)
    mined = tf.where(tf.reduce_any(semi_hard, axis=2), closest_farther,
                     farthest)
    has_negative = tf.reduce_any(negative, axis=1, keepdims=True)
    weight = tf.cast(tf.logical_and(positive, has_negative), tf.float32)
    # Where weight is 0, mined may be -inf: keep it out of the sum.
    hinge = tf.where(weight > 0, tf.nn.relu(dist - mined + margin), 0.0)
    return tf.reduce_sum(hinge) / tf.maximum(tf.reduce_sum(weight), 1.0)


def _forward_backward(loss_fn):
    @tf.function(jit_compile=_JIT.value)
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = loss_fn(labels, embeddings)
        return loss, tape.gradient(loss, embeddings)
    return step


def _time_once(fn, *args):
    """(wall seconds, process CPU seconds) of one call, results fetched."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    # Results are computed asynchronously on accelerators.
    tf.nest.map_structure(lambda t: t.numpy(), result)
    return time.perf_counter() - wall, time.process_time() - cpu


def _interleaved(fns, args, repeats):
    """Times each of `fns` on `args`, taking turns after one warm-up each.

    Taking turns spreads load from other processes over all of them.

    Returns:
      One dict per fn: min / median wall seconds, median CPU seconds.
    """
    for fn in fns:
        fn(*args)  # Trace, compile, warm up.
    runs = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_runs in zip(fns, runs):
            fn_runs.append(_time_once(fn, *args))
    return [{"min_seconds": min(w for w, _ in fn_runs),
             "median_seconds": statistics.median(w for w, _ in fn_runs),
             "median_cpu_seconds": statistics.median(c for _, c in fn_runs)}
            for fn_runs in runs]


def _cpu_model():
    # Imported here: benchmarks/ is on sys.path when a benchmark runs as a
    # script, which is the only way they run.
    from machine import cpu_model  # pylint: disable=g-import-not-at-top
    return cpu_model()


def _batch(b, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # About three examples per class, as a triplet sampler produces.
    labels = rng.integers(0, max(2, b // 3), size=b).astype(np.int32)
    return tf.constant(labels), tf.constant(x)


def _resnet_step(batch_size):
    """Times a ResNet-50 train step; None if triplet_audio.model.models is absent."""
    try:
        # Imported here so that the loss figures need only losses.py.
        from triplet_audio.model import models  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        print(f"ResNet-50 step: skipped, no triplet_audio.model.models ({e})")
        return None
    model = models.build_model("resnet50", _EMBEDDING_SIZE.value, seed=0)
    optimizer = keras.optimizers.Adam(1e-4)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal(
        (batch_size,) + tuple(C.WINDOW_SHAPE)).astype(np.float32))
    labels, _ = _batch(batch_size, 1)

    @tf.function(jit_compile=_JIT.value)
    def train_step(x, labels):
        with tf.GradientTape() as tape:
            loss = losses.semi_hard_triplet_loss(
                labels, model(x, training=True), margin=MARGIN)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return _interleaved([train_step], (x, labels), _RESNET_STEPS.value)[0]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: " + " ".join(argv[1:]))
    d = _EMBEDDING_SIZE.value
    ours = _forward_backward(
        lambda y, x: losses.semi_hard_triplet_loss(y, x, margin=MARGIN))
    naive = _forward_backward(naive_semi_hard_triplet_loss)
    device = tf.config.list_logical_devices()[-1].name
    summary = {"device": device, "cpu": _cpu_model(),
               "cores": os.cpu_count(), "jit_compile": _JIT.value,
               "embedding_size": d, "repeats": _REPEATS.value, "loss": {}}
    print(f"semi-hard triplet loss, forward + backward, D={d}; {device}, "
          f"{summary['cpu']}, {summary['cores']} cores; "
          f"jit_compile={_JIT.value}; {_REPEATS.value} interleaved runs each")
    print(f"{'B':>6} {'ours min ms':>12} {'ours med ms':>12} "
          f"{'naive min ms':>13} {'naive/ours':>11} {'(CPU s)':>8} "
          f"{'|loss diff|':>12}")
    for b in sorted(int(v) for v in _BATCH_SIZES.value):
        labels, x = _batch(b, d)
        with_naive = str(b) in _NAIVE_BATCH_SIZES.value
        figures = _interleaved([ours, naive] if with_naive else [ours],
                               (labels, x), _REPEATS.value)
        row = {"ours": figures[0]}
        line = (f"{b:>6} {1e3 * figures[0]['min_seconds']:>12.2f} "
                f"{1e3 * figures[0]['median_seconds']:>12.2f}")
        if with_naive:
            row["naive"] = figures[1]
            row["naive_over_ours"] = (figures[1]["min_seconds"]
                                      / figures[0]["min_seconds"])
            row["naive_over_ours_cpu"] = (figures[1]["median_cpu_seconds"]
                                          / figures[0]["median_cpu_seconds"])
            row["loss_abs_diff"] = abs(float(ours(labels, x)[0])
                                       - float(naive(labels, x)[0]))
            line += (f" {1e3 * figures[1]['min_seconds']:>13.2f}"
                     f" {row['naive_over_ours']:>10.1f}x"
                     f" {row['naive_over_ours_cpu']:>7.1f}x"
                     f" {row['loss_abs_diff']:>12.2e}")
        summary["loss"][b] = row
        print(line, flush=True)
    print(f"(ratios: fastest wall times, and median process CPU seconds; "
          f"load average {os.getloadavg()[0]:.1f})")
    if str(TARGET_BATCH_SIZE) in _NAIVE_BATCH_SIZES.value and (
            TARGET_BATCH_SIZE in summary["loss"]):
        ratio = summary["loss"][TARGET_BATCH_SIZE]["naive_over_ours"]
        verdict = "meets" if ratio >= TARGET_SPEEDUP else "MISSES"
        summary["meets_target"] = ratio >= TARGET_SPEEDUP
        print(f"naive / ours at B={TARGET_BATCH_SIZE}: {ratio:.1f}x "
              f"(target >= {TARGET_SPEEDUP:.0f}x: {verdict})")

    if _RESNET.value:
        b = _RESNET_BATCH_SIZE.value
        step = _resnet_step(b)
        if step is not None:
            if b not in summary["loss"]:
                labels, x = _batch(b, d)
                summary["loss"][b] = {"ours": _interleaved(
                    [ours], (labels, x), _REPEATS.value)[0]}
            loss_seconds = summary["loss"][b]["ours"]["min_seconds"]
            summary["resnet50_step"] = dict(step, batch_size=b)
            summary["loss_fraction_of_resnet50_step"] = (
                loss_seconds / step["min_seconds"])
            print(f"ResNet-50 train step (model + loss + Adam) at B={b}: "
                  f"{step['min_seconds']:.2f} s (fastest of "
                  f"{_RESNET_STEPS.value}); the loss's forward + backward "
                  f"({1e3 * loss_seconds:.2f} ms) is "
                  f"{100 * summary['loss_fraction_of_resnet50_step']:.3f}% "
                  f"of it")
    summary["load_average_1min"] = os.getloadavg()[0]
    from machine import write_json  # pylint: disable=g-import-not-at-top
    write_json(_OUTPUT_JSON.value, summary)


if __name__ == "__main__":
    app.run(main)
