"""Wall time of the paper's evaluation protocol at a realistic scale.

Builds synthetic train and eval `EmbeddingSet`s shaped like a mid-sized
corpus embedded by a triplet model (default 10,000 segments x 10 windows x
128-d each, 100 classes, 1-3 labels per segment, unit-norm window
embeddings clustered around class centroids), then runs
`metrics.evaluate` with the default (paper) protocol and prints the wall
time of each part, its share of the total, and the mAP it produced.

  .venv/bin/python benchmarks/bench_evaluate.py [--segments=10000]
      [--windows=10] [--dim=128] [--classes=100] [--output_json=PATH]
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from triplet_audio.serving import embeddings_io
from triplet_audio.evaluation import metrics
# pylint: enable=g-import-not-at-top,wrong-import-position

TARGET_SECONDS_PER_CLASSIFIER = 120.0

_SEGMENTS = flags.DEFINE_integer("segments", 10000,
                                 "Segments in each of the train and eval sets.")
_WINDOWS = flags.DEFINE_integer("windows", 10, "Windows per segment.")
_DIM = flags.DEFINE_integer("dim", 128, "Embedding dimension D.")
_CLASSES = flags.DEFINE_integer("classes", 100, "Number of classes C.")
_SIGNAL = flags.DEFINE_float(
    "signal", 0.1,
    "Weight of the class centroids against unit window noise; sets how hard "
    "the synthetic task is (mAPs well below 1 at the default).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic data.")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "If set, also write the figures as JSON here.")


def synthetic_set(num_segments, windows, dim, num_classes, signal, seed,
                  prefix):
    """A labelled corpus of unit-norm window embeddings.

    Args:
      num_segments: S.
      windows: windows per segment.
      dim: D.
      num_classes: C.
      signal: centroid weight against unit Gaussian noise per window.
      seed: data seed (centroids are shared across seeds).
      prefix: segment id prefix (train and eval ids must differ).

    Returns:
      An `embeddings_io.EmbeddingSet`.
    """
    rng = np.random.default_rng(seed)
    centroids = np.random.default_rng(12345).normal(size=(num_classes, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    num_labels = rng.integers(1, 4, size=num_segments)
    labels = np.zeros((num_segments, num_classes), np.uint8)
    for s, k in enumerate(num_labels):
        labels[s, rng.choice(num_classes, size=k, replace=False)] = 1
    segment_index = np.repeat(np.arange(num_segments), windows)
    emb = (signal * np.sqrt(dim) * (labels[segment_index] @ centroids) +
           rng.normal(size=(segment_index.size, dim)))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return embeddings_io.EmbeddingSet(
        embeddings=emb.astype(np.float32), segment_index=segment_index,
        start_times=np.tile(np.arange(windows) * 0.96, num_segments),
        segment_ids=["%s%06d" % (prefix, i) for i in range(num_segments)],
        labels=labels, split=[prefix] * num_segments,
        class_names=["class_%03d" % c for c in range(num_classes)],
        representation="synthetic")


def main(argv):
    del argv
    start = time.perf_counter()
    args = (_SEGMENTS.value, _WINDOWS.value, _DIM.value, _CLASSES.value,
            _SIGNAL.value)
    train_set = synthetic_set(*args, seed=_SEED.value, prefix="train")
    eval_set = synthetic_set(*args, seed=_SEED.value + 1, prefix="eval")
    build_s = time.perf_counter() - start
    config = metrics.EvaluationConfig()
    results = metrics.evaluate(train_set, eval_set, config)
    timings = results["timings"]
    total = timings["total"]

    print("bench_evaluate: %d segments x %d windows x %d-d, %d classes "
          "(train and eval each); data built in %.1f s; %d CPU cores, "
          "load average %.1f" % (_SEGMENTS.value, _WINDOWS.value, _DIM.value,
                                  _CLASSES.value, build_s, os.cpu_count(),
                                  os.getloadavg()[0]))
    print("config: epochs=%d batch=%d lr=%g; few-shot %d draws x %d/class, "
          "%d epochs" % (config.epochs, config.batch_size,
                         config.learning_rate, config.fewshot_draws,
                         config.fewshot_per_class, config.fewshot_epochs))
    print("%-18s %9s %7s %7s" % ("part", "wall_s", "share", "mAP"))
    for part in metrics.ALL_PARTS:
        print("%-18s %9.1f %6.1f%% %7.3f" % (
            part, timings[part], 100.0 * timings[part] / total,
            results[part]["map"]))
    print("%-18s %9.1f" % ("total", total))
    print("QbE chance %.3f; few-shot std %.3f over draws %s" % (
        results["qbe"]["chance"], results["fewshot"]["std"],
        ", ".join("%.3f" % m for m in results["fewshot"]["maps"])))
    for part in (metrics.CLASSIFIER_1X512, metrics.CLASSIFIER_2X512):
        print("%s: %.1f s vs target <= %.0f s (ratio %.2f)" % (
            part, timings[part], TARGET_SECONDS_PER_CLASSIFIER,
            timings[part] / TARGET_SECONDS_PER_CLASSIFIER))
    if _OUTPUT_JSON.value:
        summary = {
            "shape": {"segments": _SEGMENTS.value, "windows": _WINDOWS.value,
                      "dim": _DIM.value, "classes": _CLASSES.value},
            "timings": timings,
            "map": {p: results[p]["map"] for p in metrics.ALL_PARTS},
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        }
        with open(_OUTPUT_JSON.value, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    app.run(main)
