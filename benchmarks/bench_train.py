"""Training throughput, and the triplet loss's share of a ResNet-50 step.

Times the real train step of `trainer.train` (`trainer.make_train_step`:
forward, semi-hard triplet loss, backward, Adam update, in one tf.function)
on fixed in-memory batches of random log-mel windows, so the figures are the
model's and the loss's, without the input pipeline (see bench_pipeline.py for
that). Prints:

1. windows/s of a train step for each --models at each --batch_sizes. The
   design asks for B = 64 and 192; a batch holds whole triplets, so the
   defaults are 66 (the multiple of 3 nearest 64) and 192.
2. forward + backward of `losses.semi_hard_triplet_loss` (gradient with
   respect to the embeddings, with the mining metrics the step computes) at
   --loss_batch_sizes, and its share of a ResNet-50 train step of the same B.
   Steps larger than --max_step_batch are not run but extrapolated linearly
   in B from the largest one measured (the model's cost is linear in B; the
   loss's is not, which is the point of measuring it alone), and so is a step
   whose estimated memory exceeds what is available. Extrapolated figures are
   marked.

  .venv/bin/python benchmarks/bench_train.py [--models=small,resnet50]
      [--batch_sizes=66,192] [--loss_batch_sizes=192,768,3072]
      [--max_step_batch=768] [--steps=3] [--output_json=PATH]

Each measurement is one warm-up call (tracing) and then --steps timed calls
(--large_steps for ResNet-50 steps above 192 windows); figures use the
fastest call, medians and process CPU seconds are printed beside them.
"""

import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top
from triplet_audio import constants as C
from triplet_audio.model import losses
from triplet_audio.model import models
from triplet_audio.sampling import pipeline
from triplet_audio.training import trainer
# pylint: enable=g-import-not-at-top

_MODELS = flags.DEFINE_list("models", ["small", "resnet50"],
                            "Embedding networks to time.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["66", "192"],
    "Throughput batch sizes in windows (multiples of 3).")
_LOSS_BATCH_SIZES = flags.DEFINE_list(
    "loss_batch_sizes", ["192", "768", "3072"],
    "Batch sizes of the loss's share of a ResNet-50 step.")
_MAX_STEP_BATCH = flags.DEFINE_integer(
    "max_step_batch", 768,
    "Largest ResNet-50 step actually run for the loss share; larger ones are "
    "extrapolated.")
_STEPS = flags.DEFINE_integer("steps", 3,
                              "Timed train steps per measurement.")
_LARGE_STEPS = flags.DEFINE_integer(
    "large_steps", 1,
    "Timed ResNet-50 steps at batch sizes above 192 (each takes tens of "
    "seconds on a CPU).")
_LOSS_REPEATS = flags.DEFINE_integer("loss_repeats", 5,
                                     "Timed calls of the loss alone.")
_EMBEDDING_SIZE = flags.DEFINE_integer("embedding_size", 128,
                                       "Embedding dimension D.")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "If set, also write the figures as JSON here.")

# Fraction of the available memory a ResNet-50 step may be estimated to use.
_MEMORY_HEADROOM = 0.7


def _cpu_model():
    # Imported here: benchmarks/ is on sys.path when a benchmark runs as a
    # script, which is the only way they run.
    from machine import cpu_model  # pylint: disable=g-import-not-at-top
    return cpu_model()


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _batch(batch_size, seed=0):
    """Random log-mel windows and labels in the pipeline's triplet layout."""
    rng = np.random.default_rng(seed)
    windows = rng.normal(-2.0, 1.5, (batch_size,) + C.WINDOW_SHAPE)
    k = batch_size // 3
    # Triplet i: anchor and positive share label 2i, the negative has 2i + 1,
    # as the noise / translation / mixing samplers label them.
    labels = np.stack([2 * np.arange(k), 2 * np.arange(k),
                       2 * np.arange(k) + 1], axis=1).reshape(-1)
    return (tf.constant(windows.astype(np.float32)),
            tf.constant(labels.astype(np.int64)))


def _time_calls(fn, args, repeats):
    """One warm-up call, then `repeats` timed calls with results fetched."""
    fn(*args)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"min_seconds": min(walls),
            "median_seconds": statistics.median(walls),
            "median_cpu_seconds": statistics.median(cpus),
            "timed_calls": repeats}


class _Trainer:
    """A model, its optimizer and `trainer.make_train_step`, as `train` has."""

    def __init__(self, model_name):
        self.config = trainer.TrainConfig(
            train_data="(in-memory batches)", model_dir="(none)",
            sampler=pipeline.SamplerConfig(sampler="noise"), model=model_name,
            embedding_size=_EMBEDDING_SIZE.value, learning_rate=1e-4,
            lr_schedule="constant", mixed_precision="none", jit_compile=False)
        self.config.validate()
        trainer.set_precision_policy(self.config.mixed_precision)
        strategy = tf.distribute.get_strategy()
        self.model = models.build_model(model_name, self.config.embedding_size,
                                        seed=0)
        optimizer, _ = trainer.make_optimizer(self.config)
        optimizer.build(self.model.trainable_variables)
        self.params = self.model.count_params()
        self._step = trainer.make_train_step(self.config, strategy,
                                              self.model, optimizer)

    def time_step(self, batch_size, repeats):
        batch = _batch(batch_size)
        figures = _time_calls(lambda b: self._step(b)["loss"], (batch,),
                              repeats)
        figures["windows_per_second"] = batch_size / figures["min_seconds"]
        figures["windows_per_second_median"] = (
            batch_size / figures["median_seconds"])
        # Less sensitive than wall time to other processes on the cores.
        figures["windows_per_cpu_second"] = (
            batch_size / figures["median_cpu_seconds"])
        return figures


def _loss_forward_backward():
    @tf.function
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss, metrics = losses.semi_hard_triplet_loss(
                labels, embeddings, margin=0.2, return_metrics=True)
        return loss, metrics, tape.gradient(loss, embeddings)
    return step


def _embeddings(batch_size, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return tf.constant(x)


def _ints(values):
    return sorted(int(v) for v in values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: " + " ".join(argv[1:]))
    logging.set_verbosity(logging.WARNING)
    # One trace per batch size is expected, not the retracing TF warns about.
    tf.get_logger().setLevel("ERROR")
    for b in _ints(_BATCH_SIZES.value) + _ints(_LOSS_BATCH_SIZES.value):
        if b % 3:
            raise app.UsageError(f"batch size {b} is not a multiple of 3")
    device = tf.config.list_logical_devices()[-1].name
    summary = {"device": device, "cpu": _cpu_model(), "cores": os.cpu_count(),
               "tensorflow": tf.__version__,
               "load_average_1min_start": os.getloadavg()[0],
               "throughput": {}, "loss_share": {}}
    print(f"train step (trainer.make_train_step: model + semi-hard loss + "
          f"Adam, float32, no XLA) on in-memory batches; {device}, "
          f"{summary['cpu']}, {summary['cores']} cores, TF {tf.__version__}, "
          f"load average {summary['load_average_1min_start']:.1f}")
    print(f"{'model':>9} {'params':>7} {'B':>5} {'step min s':>11} "
          f"{'step med s':>11} {'CPU s':>7} {'windows/s':>10} "
          f"{'(median)':>9} {'per CPU s':>10}")

    trainers = {}
    step_rows = {}
    rss_before = _peak_rss_bytes()
    for name in _MODELS.value:
        trainers[name] = _Trainer(name)
        rows = summary["throughput"].setdefault(name, {})
        for b in _ints(_BATCH_SIZES.value):
            row = trainers[name].time_step(b, _STEPS.value)
            rows[b] = row
            print(f"{name:>9} {trainers[name].params / 1e6:>6.1f}M {b:>5} "
                  f"{row['min_seconds']:>11.3f} {row['median_seconds']:>11.3f} "
                  f"{row['median_cpu_seconds']:>7.2f} "
                  f"{row['windows_per_second']:>10.1f} "
                  f"{row['windows_per_second_median']:>9.1f} "
                  f"{row['windows_per_cpu_second']:>10.1f}", flush=True)
        if name == "resnet50":
            step_rows = dict(rows)
    for name in _MODELS.value:
        rows = summary["throughput"][name]
        if len(rows) > 1:
            low, high = min(rows), max(rows)
            gain = (rows[high]["windows_per_second"] /
                    rows[low]["windows_per_second"])
            print(f"{name}: B={high} gives {gain:.2f}x the windows/s of "
                  f"B={low}")
    if "small" in summary["throughput"] and "resnet50" in summary["throughput"]:
        for b in _ints(_BATCH_SIZES.value):
            ratio = (summary["throughput"]["small"][b]["windows_per_second"] /
                     summary["throughput"]["resnet50"][b]["windows_per_second"])
            print(f"small / resnet50 windows/s at B={b}: {ratio:.1f}x")

    # The loss's share of a ResNet-50 step.
    print()
    print(f"semi-hard triplet loss forward + backward (D="
          f"{_EMBEDDING_SIZE.value}, with mining metrics) against a ResNet-50 "
          f"train step of the same B")
    print(f"{'B':>5} {'loss min ms':>12} {'loss med ms':>12} "
          f"{'ResNet-50 step s':>17} {'loss share':>11}")
    resnet = trainers.get("resnet50")
    loss_fn = _loss_forward_backward()

    def rss_per_window():
        # Peak memory per window of the largest step so far (an upper bound:
        # it includes the models), to decide whether a larger step fits.
        return max(_peak_rss_bytes() - rss_before, 0) / max(step_rows)

    for b in _ints(_LOSS_BATCH_SIZES.value):
        labels = _batch(b)[1]
        loss = _time_calls(loss_fn, (labels, _embeddings(
            b, _EMBEDDING_SIZE.value)), _LOSS_REPEATS.value)
        row = {"loss": loss}
        step = step_rows.get(b)
        note = ""
        if step is None and resnet is not None:
            needed = rss_per_window() * b if step_rows else 0
            available = _available_bytes()
            fits = available is None or needed < _MEMORY_HEADROOM * available
            if b <= _MAX_STEP_BATCH.value and fits:
                step = resnet.time_step(
                    b, _LARGE_STEPS.value if b > 192 else _STEPS.value)
                step_rows[b] = step
            elif step_rows:
                base = max(step_rows)
                step = {"min_seconds":
                        step_rows[base]["min_seconds"] * b / base,
                        "extrapolated_from_batch": base}
                why = [f"B > --max_step_batch={_MAX_STEP_BATCH.value}"
                       ] if b > _MAX_STEP_BATCH.value else []
                if not fits:
                    why.append(f"needs ~{needed / 2 ** 30:.0f} GiB, "
                               f"{available / 2 ** 30:.0f} GiB available")
                step["why_extrapolated"] = "; ".join(why)
                note = (f" (step extrapolated linearly from B={base}: "
                        f"{step['why_extrapolated']})")
        if step is not None:
            row["resnet50_step"] = step
            row["loss_fraction_of_step"] = (loss["min_seconds"] /
                                            step["min_seconds"])
            step_text = f"{step['min_seconds']:>17.2f}"
            share_text = f"{100 * row['loss_fraction_of_step']:>10.2f}%"
        else:
            step_text, share_text = f"{'-':>17}", f"{'-':>11}"
        summary["loss_share"][b] = row
        print(f"{b:>5} {1e3 * loss['min_seconds']:>12.2f} "
              f"{1e3 * loss['median_seconds']:>12.2f} {step_text} "
              f"{share_text}{note}", flush=True)
    summary["load_average_1min_end"] = os.getloadavg()[0]
    summary["peak_rss_bytes"] = _peak_rss_bytes()
    print(f"(fastest calls; load average {summary['load_average_1min_end']:.1f}"
          f", peak RSS {summary['peak_rss_bytes'] / 2 ** 30:.1f} GiB)")
    from machine import write_json  # pylint: disable=g-import-not-at-top
    write_json(_OUTPUT_JSON.value, summary)


if __name__ == "__main__":
    app.run(main)
