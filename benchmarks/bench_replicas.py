"""Training throughput with 1 vs 2 replicas, local and global mining.

Times the real train step (`trainer.make_train_step`: forward, semi-hard
triplet loss, backward, Adam update) of the small model on a fixed in-memory
batch of random log-mel windows, in three configurations:

  1 replica     the default strategy on the whole CPU;
  2 replicas    MirroredStrategy over 2 logical CPU devices (what
                `bin/train --strategy=mirrored --cpu_replicas=2` makes), with
                --mining=local and with --mining=global.

and prints windows/s and the ratios 2 replicas / 1 replica and global /
local. Logical CPU devices share the machine's cores and its one intra-op
thread pool: 1 replica already spreads each op over every core, so on 2
physical cores the gain of 2 replicas is bounded by what op-level
parallelism leaves idle (little for convolutions), and the figures measure
mostly the cost of replication (two smaller ops instead of one large,
all-reduce of the gradients, and for global mining the all-gather). A real
speed-up needs a device per replica (GPUs, TPU cores, workers).

  .venv/bin/python benchmarks/bench_replicas.py [--batch_size=96]
      [--steps=10] [--rounds=3] [--output_json=PATH]

Logical devices must be set before TensorFlow initialises, so every
configuration runs in its own subprocess (this script with --child). The
configurations take turns for --rounds rounds, so load from other processes
falls on all of them alike; each child makes one warm-up call (tracing) and
then --steps timed calls. Figures use the fastest child's median step, and
windows per process CPU second (less sensitive to other processes) are
printed beside them.
"""

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 96, "Global batch in windows (a multiple of 6: whole "
    "triplets on each of 2 replicas).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per child.")
_ROUNDS = flags.DEFINE_integer("rounds", 3,
                               "Rounds of the three configurations.")
_MODEL = flags.DEFINE_string("model", "small", "Embedding network.")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "If set, also write the figures as JSON here.")
_CHILD = flags.DEFINE_string(
    "child", None, "Internal: run one configuration, 'REPLICAS,MINING', and "
    "print its figures as JSON.")

CONFIGS = ((1, "local"), (2, "local"), (2, "global"))


def _name(replicas, mining):
    if replicas == 1:
        return "1 replica"
    return "%d replicas, %s mining" % (replicas, mining)


def _run_child(replicas, mining):
    """Times one configuration in this process; returns its figures."""
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    from triplet_audio import constants as C
    from triplet_audio.model import models
    from triplet_audio.sampling import pipeline
    from triplet_audio.training import trainer
    # pylint: enable=g-import-not-at-top
    tf.get_logger().setLevel("ERROR")
    batch_size = _BATCH_SIZE.value
    config = trainer.TrainConfig(
        train_data="(in-memory batch)", model_dir="(none)",
        sampler=pipeline.SamplerConfig(sampler="noise"), model=_MODEL.value,
        batch_size=batch_size, learning_rate=1e-4, lr_schedule="constant",
        strategy="mirrored" if replicas > 1 else "default",
        cpu_replicas=replicas if replicas > 1 else 0, mining=mining)
    config.validate()
    strategy = trainer.make_strategy(config)
    assert strategy.num_replicas_in_sync == replicas
    with strategy.scope():
        model = models.build_model(config.model, config.embedding_size,
                                   seed=0)
        optimizer, _ = trainer.make_optimizer(config)
        optimizer.build(model.trainable_variables)
    step = trainer.make_train_step(config, strategy, model, optimizer)

    rng = np.random.default_rng(0)
    windows = rng.normal(-2.0, 1.5, (batch_size,) + C.WINDOW_SHAPE)
    k = batch_size // 3
    # The samplers' layout: triplet i is (anchor 2i, positive 2i, negative
    # 2i + 1); ids are unique over the global batch, as the pipeline's are.
    labels = np.stack([2 * np.arange(k), 2 * np.arange(k),
                       2 * np.arange(k) + 1], axis=1).reshape(-1)
    data = tf.data.Dataset.from_tensor_slices(
        (windows.astype(np.float32), labels.astype(np.int64))).batch(
            batch_size)
    if replicas > 1:
        data = strategy.experimental_distribute_dataset(data)
    batch = next(iter(data))

    float(step(batch)["loss"])  # Warm-up: tracing.
    walls, cpus = [], []
    for _ in range(_STEPS.value):
        wall, cpu = time.perf_counter(), time.process_time()
        float(step(batch)["loss"])
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"replicas": replicas, "mining": mining,
            "median_seconds": statistics.median(walls),
            "min_seconds": min(walls),
            "median_cpu_seconds": statistics.median(cpus)}


def _machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: " + " ".join(argv[1:]))
    if _BATCH_SIZE.value % 6:
        raise app.UsageError("--batch_size must be a multiple of 6")
    if _CHILD.value:
        replicas, mining = _CHILD.value.split(",")
        print(json.dumps(_run_child(int(replicas), mining)))
        return
    logging.set_verbosity(logging.WARNING)
    machine = _machine()
    print("machine: %s, %d cores, load average %.1f (CPU only)" %
          (machine["cpu"], machine["cores"], machine["load_average"]))
    print("model %s, global batch %d windows, %d timed steps x %d rounds" %
          (_MODEL.value, _BATCH_SIZE.value, _STEPS.value, _ROUNDS.value))
    runs = {c: [] for c in CONFIGS}
    for r in range(_ROUNDS.value):
        for replicas, mining in CONFIGS:
            command = [sys.executable, os.path.abspath(__file__),
                       "--child=%d,%s" % (replicas, mining),
                       "--batch_size=%d" % _BATCH_SIZE.value,
                       "--steps=%d" % _STEPS.value,
                       "--model=%s" % _MODEL.value]
            result = subprocess.run(command, capture_output=True, text=True,
                                    check=False, cwd=REPO_ROOT)
            if result.returncode:
                sys.exit("child %s failed:\n%s" %
                         (_name(replicas, mining), result.stderr[-3000:]))
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            runs[(replicas, mining)].append(figures)
            logging.warning("round %d %s: %.3f s/step", r + 1,
                            _name(replicas, mining), figures["median_seconds"])
    b = _BATCH_SIZE.value
    table = {}
    print("\n| configuration | windows/s | windows/CPU-s | s/step (median "
          "of fastest child) |")
    print("|---|---|---|---|")
    for config in CONFIGS:
        best = min(runs[config], key=lambda f: f["median_seconds"])
        cpu = statistics.median(f["median_cpu_seconds"]
                                for f in runs[config])
        table[config] = {"windows_per_second": b / best["median_seconds"],
                         "windows_per_cpu_second": b / cpu,
                         "seconds_per_step": best["median_seconds"],
                         "runs": runs[config]}
        print("| %s | %.0f | %.0f | %.3f |" % (
            _name(*config), table[config]["windows_per_second"],
            table[config]["windows_per_cpu_second"], best["median_seconds"]))
    one = table[(1, "local")]["windows_per_second"]
    local = table[(2, "local")]["windows_per_second"]
    glob = table[(2, "global")]["windows_per_second"]
    ratios = {"2_local_over_1": local / one, "2_global_over_1": glob / one,
              "global_over_local": glob / local}
    print("\n2 replicas / 1 replica: local mining %.2fx, global mining %.2fx;"
          " global / local %.2fx" % (ratios["2_local_over_1"],
                                     ratios["2_global_over_1"],
                                     ratios["global_over_local"]))
    print("(logical CPU devices share the %d cores: this bounds the gain; "
          "see the module docstring)" % machine["cores"])
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w") as f:
            json.dump({"machine": machine, "batch_size": b,
                       "model": _MODEL.value,
                       "configs": {_name(*c): v for c, v in table.items()},
                       "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
