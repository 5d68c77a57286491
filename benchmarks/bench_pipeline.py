"""Throughput of the triplet input pipeline, per sampler, against parse-only.

Generates a synthetic corpus (default 2000 recordings x 10 windows of random
log-mels with 1-2 labels each, 8 shards) in a temporary directory, then for 1
and 2 cores times one pass of

  parse     records.records_from_paths + flatten to windows, batched
            (`pipeline.make_window_dataset`, no shuffle): the floor, and
  <sampler> `pipeline.make_triplet_dataset(..., repeat=False)` for every
            sampler (joint reads the corpus once per mixed sampler),
  floor     the mixing pipeline with a positive that is a copy of its
            anchor: what the shuffle, the pairing and the batch layout cost
            before a sampler computes anything,

(supervised does not stream: it draws windows by class index and reads each
by byte offset, so its "read" is nominal, one pass being half the labelled
windows as triplets; compare its "out" and cores/GPU) and prints windows/s:
"read" = corpus windows consumed per second (the same
unit as parse-only; the overhead ratio parse/read - 1 uses it), "out" =
windows delivered to the model per second (3 per triplet), and read windows
per CPU-second of the process (the figure least disturbed by other jobs on
the machine). Target: overhead <= 30% over parse-only for every sampler.
"cores/GPU" sets the delivered windows per core against the ~15k windows/s
ResNet-50 trains on per H100.

Each core count runs in its own subprocess (TF sizes its thread pools once,
at start-up) pinned with sched_setaffinity, with TF intra/inter-op threads
and the tf.data private thread pool set to the core count. Inside it, after a
warm-up pass each, the pipelines take turns for --repeats rounds so load from
other processes falls on all alike; the table shows the fastest and the
median round.

  .venv/bin/python benchmarks/bench_pipeline.py
  .venv/bin/python benchmarks/bench_pipeline.py --num_recordings=500 \\
      --cores=1 --repeats=2 --output_json=/tmp/pipeline.json
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import random_corpus  # pylint: disable=g-import-not-at-top,wrong-import-position

_NUM_RECORDINGS = flags.DEFINE_integer("num_recordings", 2000,
                                       "Recordings in the synthetic corpus.")
_WINDOWS = flags.DEFINE_integer("windows_per_recording", 10,
                                "Windows per recording.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "Shards of the corpus.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10,
                                    "Label vocabulary of the corpus.")
_CORES = flags.DEFINE_list("cores", ["1", "2"], "Core counts to measure.")
_SAMPLERS = flags.DEFINE_list(
    "samplers", ["noise", "translation", "mixing", "proximity", "supervised",
                 "joint"], "Samplers to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 192,
                                   "Windows per batch (3 per triplet).")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 1024,
                                       "SamplerConfig.shuffle_buffer.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per pipeline.")
_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir", None, "Use (or create) the corpus here and keep it; default "
    "a temporary directory removed at the end.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "Also write the figures here as JSON.")
_CHILD_CORES = flags.DEFINE_integer(
    "child_cores", 0, "Internal: run the measurements of one core count.")

TARGET_OVERHEAD = 0.30
# What ResNet-50 consumes on one H100 (the figure, low end): the
# "cores/GPU" column is this over the windows delivered per second per core.
GPU_WINDOWS_PER_S = 15000.0


def _child(cores):
    """Measures every pipeline on `cores` cores; prints one JSON line."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from triplet_audio.config import options as config_options  # pylint: disable=g-import-not-at-top
    from triplet_audio.sampling import pipeline  # pylint: disable=g-import-not-at-top
    from triplet_audio.sampling import samplers  # pylint: disable=g-import-not-at-top
    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1

    corpus = _CORPUS_DIR.value
    corpus_windows = _NUM_RECORDINGS.value * _WINDOWS.value
    batch = _BATCH_SIZE.value

    def parse_only():
        ds = pipeline.make_window_dataset(corpus).batch(batch).prefetch(
            tf.data.AUTOTUNE)
        return ds.with_options(options)

    def sampler_ds(name):
        config = pipeline.SamplerConfig(sampler=name,
                                        shuffle_buffer=_SHUFFLE_BUFFER.value)
        ds = pipeline.make_triplet_dataset(corpus, config, batch, seed=0,
                                           repeat=False)
        return ds.with_options(options)

    def floor_ds():
        # Datasets trace their functions when built, so the stand-in
        # positive only needs to be in place while this one is built.
        original = samplers.mixing_positive
        samplers.mixing_positive = lambda anchor, negative, alpha: (
            tf.identity(anchor))
        try:
            return sampler_ds("mixing")
        finally:
            samplers.mixing_positive = original

    def reads(name):
        if name != "joint":
            return corpus_windows
        parts = pipeline.SamplerConfig(sampler="joint").active_joint_samplers()
        return corpus_windows * len(parts)

    pipelines = [("parse", parse_only, corpus_windows),
                 ("floor", floor_ds, corpus_windows)]
    for name in _SAMPLERS.value:
        if name not in config_options.SAMPLERS:
            raise ValueError("--samplers: unknown sampler %r" % name)
        pipelines.append((name, lambda n=name: sampler_ds(n), reads(name)))

    def one_pass(make):
        ds = make()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = 0
        for element in ds:
            windows = element[0] if isinstance(element, tuple) else (
                element["logmel"])
            out += int(windows.shape[0])
        return (time.perf_counter() - wall0, time.process_time() - cpu0, out)

    for _, make, _ in pipelines:  # warm-up: tracing, page cache
        one_pass(make)
    runs = {name: [] for name, _, _ in pipelines}
    for _ in range(_REPEATS.value):
        for name, make, _ in pipelines:
            runs[name].append(one_pass(make))
    result = {}
    for name, _, read in pipelines:
        walls = [r[0] for r in runs[name]]
        cpus = [r[1] for r in runs[name]]
        out = runs[name][0][2]
        best = min(walls)
        result[name] = {
            "read_windows": read,
            "out_windows": out,
            "wall_s_best": best,
            "wall_s_median": statistics.median(walls),
            "cpu_s_best": min(cpus),
            "read_per_s": read / best,
            "read_per_s_median": read / statistics.median(walls),
            "out_per_s": out / best,
            "read_per_cpu_s": read / min(cpus),
        }
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(cores):
    argv = [sys.executable, os.path.abspath(__file__),
            "--child_cores=%d" % cores, "--corpus_dir=%s" % _CORPUS_DIR.value]
    for flag in (_NUM_RECORDINGS, _WINDOWS, _BATCH_SIZE, _SHUFFLE_BUFFER,
                 _REPEATS):
        argv.append("--%s=%s" % (flag.name, flag.value))
    argv.append("--samplers=%s" % ",".join(_SAMPLERS.value))
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError("measurement on %d cores failed:\n%s" %
                       (cores, proc.stderr[-3000:]))


def _table(cores, result):
    parse = result["parse"]
    lines = ["%d core(s)" % cores,
             "%-12s %12s %12s %12s %12s %12s %10s %10s %9s" % (
                 "pipeline", "read win/s", "(median)", "per core",
                 "out win/s", "read/CPU-s", "overhead", "(CPU)",
                 "cores/GPU")]
    for name, r in result.items():
        if name == "parse":
            overhead = overhead_cpu = "-"
        else:
            o = parse["read_per_s"] / r["read_per_s"] - 1
            oc = parse["read_per_cpu_s"] / r["read_per_cpu_s"] - 1
            r["overhead"], r["overhead_cpu"] = o, oc
            mark = "" if o <= TARGET_OVERHEAD else " !"
            overhead = "%+.0f%%%s" % (100 * o, mark)
            overhead_cpu = "%+.0f%%" % (100 * oc)
        r["cores_per_gpu"] = GPU_WINDOWS_PER_S / (r["out_per_s"] / cores)
        lines.append(
            "%-12s %12.0f %12.0f %12.0f %12.0f %12.0f %10s %10s %9.1f" % (
                name, r["read_per_s"], r["read_per_s_median"],
                r["read_per_s"] / cores, r["out_per_s"], r["read_per_cpu_s"],
                overhead, overhead_cpu, r["cores_per_gpu"]))
    lines.append("cores/GPU: cores of this kind that deliver the %.0f "
                 "windows/s ResNet-50 trains on per H100" % GPU_WINDOWS_PER_S)
    return "\n".join(lines)


def main(argv):
    del argv
    if _CHILD_CORES.value:
        _child(_CHILD_CORES.value)
        return
    temp = None
    if _CORPUS_DIR.value is None:
        temp = tempfile.mkdtemp(prefix="bench_pipeline_")
        flags.FLAGS.corpus_dir = temp
    try:
        corpus = _CORPUS_DIR.value
        if not os.path.exists(os.path.join(corpus, "manifest.json")):
            t0 = time.perf_counter()
            n = random_corpus.write_corpus(
                corpus, _NUM_RECORDINGS.value, _WINDOWS.value,
                _NUM_SHARDS.value, _NUM_CLASSES.value)
            print("wrote %d windows (%d recordings, %d shards) in %.1f s" % (
                n, _NUM_RECORDINGS.value, _NUM_SHARDS.value,
                time.perf_counter() - t0))
        available = len(os.sched_getaffinity(0))
        print("machine: %s, %s, %d cores available, load average %.1f / "
              "%.1f / %.1f" % ((platform.processor() or platform.machine(),
                                platform.python_version(), available) +
                               os.getloadavg()))
        print("batch %d windows, shuffle_buffer %d, best of %d rounds; "
              "target overhead <= %d%%\n" % (
                  _BATCH_SIZE.value, _SHUFFLE_BUFFER.value, _REPEATS.value,
                  100 * TARGET_OVERHEAD))
        results = {}
        for cores in (int(c) for c in _CORES.value):
            if cores > available:
                print("skipping %d cores: only %d available" % (cores,
                                                                available))
                continue
            results[cores] = _run_child(cores)
            print(_table(cores, results[cores]) + "\n", flush=True)
        if _OUTPUT_JSON.value:
            with open(_OUTPUT_JSON.value, "w") as f:
                json.dump({"results": results,
                           "load_average": os.getloadavg(),
                           "cores_available": available}, f, indent=2)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
