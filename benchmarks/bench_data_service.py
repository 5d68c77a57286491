"""Triplet pipeline throughput: local against 1 and 2 tf.data service workers.

Writes a synthetic corpus (default 500 recordings x 10 random windows, 8
shards) to a temporary directory, then times the training input of one
sampler (`pipeline.make_triplet_dataset`, batch 192) as the trainer sees it:

  local      the pipeline in this process (what bin/train does by default);
  N workers  an in-process dispatcher and N `bin/data_service --role=worker`
             subprocesses on localhost, read through
             `data_service.maybe_distribute` (what bin/train
             --tf_data_service does: one seeded stream per worker).

For each, after --warmup_batches (job start-up, pipeline start-up) it reads
--batches batches and prints windows/s delivered to the trainer (3 per
triplet), the ratio to local, the CPU seconds of the trainer process and of
the workers, windows per CPU-second of all of them, and how many of the
batches were distinct (a served stream that repeats would show here).

All processes share this machine's cores: on a 2-core machine the local
pipeline already keeps both busy, so the service cannot beat it here (the
ratio is bounded by the cores, and serialising batches over gRPC costs CPU);
the figures show the overhead, the scaling needs workers on other machines.

  .venv/bin/python benchmarks/bench_data_service.py
  .venv/bin/python benchmarks/bench_data_service.py --workers=0,1,2 \\
      --sampler=noise --batches=200 --output_json=/tmp/service.json
"""

import json
import os
import platform
import shutil
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

_NUM_RECORDINGS = flags.DEFINE_integer("num_recordings", 500,
                                       "Recordings in the synthetic corpus.")
_WINDOWS = flags.DEFINE_integer("windows_per_recording", 10,
                                "Windows per recording.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "Shards of the corpus.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"],
                             "Worker counts to measure; 0 is the local "
                             "pipeline.")
_SAMPLER = flags.DEFINE_string("sampler", "noise", "Sampler to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 192,
                                   "Windows per batch (3 per triplet).")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 1024,
                                       "SamplerConfig.shuffle_buffer.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 20,
                               "Batches read before timing.")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed.")
_CORPUS_DIR = flags.DEFINE_string(
    "corpus_dir", None, "Use (or create) the corpus here and keep it; default "
    "a temporary directory removed at the end.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "Also write the figures here as JSON.")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _has_shards(directory):
    from triplet_audio.features import records  # pylint: disable=g-import-not-at-top
    try:
        return bool(records.list_shards(directory))
    except FileNotFoundError:
        return False


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        # The command name may hold spaces; the fields after it do not.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _start_workers(count, dispatcher_port, log_dir):
    """Starts `count` bin/data_service workers; returns their Popen objects."""
    procs = []
    for i in range(count):
        # A file, not a pipe: a pipe nobody drains would block the worker.
        log = open(os.path.join(log_dir, "worker%d.log" % i), "w+")
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "bin", "data_service"),
             "--role=worker", "--dispatcher=localhost:%d" % dispatcher_port,
             "--worker_host=localhost"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log))
        log.close()
    for i, proc in enumerate(procs):
        path = os.path.join(log_dir, "worker%d.log" % i)
        while True:
            with open(path) as f:
                if "worker listening on" in f.read():
                    break
            if proc.poll() is not None:
                with open(path) as f:
                    raise RuntimeError("worker exited: %s" % f.read()[-2000:])
            time.sleep(0.2)
    return procs


def _stop(procs):
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(ds, workers):
    """Reads warm-up then timed batches; returns the figures."""
    it = iter(ds)
    for _ in range(_WARMUP.value):
        next(it)
    seen = set()
    cpu0 = [_cpu_seconds(p.pid) for p in workers]
    own0 = time.process_time()
    wall0 = time.perf_counter()
    for _ in range(_BATCHES.value):
        windows, labels = next(it)
        # A cheap fingerprint: labels and the first frame of every window.
        seen.add(labels.numpy().tobytes() +
                 windows[:, 0, :].numpy().tobytes())
    wall = time.perf_counter() - wall0
    own = time.process_time() - own0
    worker_cpu = sum(_cpu_seconds(p.pid) - c for p, c in zip(workers, cpu0))
    out = _BATCHES.value * _BATCH_SIZE.value
    return {"windows_per_s": out / wall, "wall_s": wall,
            "trainer_cpu_s": own, "worker_cpu_s": worker_cpu,
            "windows_per_cpu_s": out / max(own + worker_cpu, 1e-9),
            "distinct_batches": len(seen), "batches": _BATCHES.value}


def run_config(corpus, num_workers):
    """Times the input with `num_workers` service workers (0: local)."""
    # pylint: disable=g-import-not-at-top
    from triplet_audio.sampling import data_service
    from triplet_audio.sampling import pipeline
    # pylint: enable=g-import-not-at-top
    config = pipeline.SamplerConfig(sampler=_SAMPLER.value,
                                    shuffle_buffer=_SHUFFLE_BUFFER.value)

    def make_dataset(seed):
        return pipeline.make_triplet_dataset(corpus, config,
                                             _BATCH_SIZE.value, seed=seed)

    if num_workers == 0:
        return _measure(data_service.maybe_distribute(make_dataset, None), [])
    dispatcher = data_service.start_dispatcher()
    port = data_service.server_port(dispatcher)
    workers = []
    log_dir = tempfile.mkdtemp(prefix="bench_service_logs_")
    try:
        workers = _start_workers(num_workers, port, log_dir)
        # The job starts with the workers registered by then.
        while dispatcher._num_workers() < num_workers:  # pylint: disable=protected-access
            time.sleep(0.1)
        # One stream per worker: the pipeline is built once per stream.
        ds = data_service.maybe_distribute(
            make_dataset, "grpc://localhost:%d" % port,
            num_streams=num_workers)
        return _measure(ds, workers)
    finally:
        _stop(workers)
        dispatcher.stop()
        dispatcher.join()
        shutil.rmtree(log_dir, ignore_errors=True)


def main(argv):
    del argv
    counts = [int(c) for c in _WORKERS.value]
    corpus = _CORPUS_DIR.value or tempfile.mkdtemp(prefix="bench_service_")
    try:
        if not _has_shards(corpus):
            random_corpus.write_corpus(corpus, _NUM_RECORDINGS.value,
                                       _WINDOWS.value, _NUM_SHARDS.value)
        results = {}
        for count in counts:
            results[count] = run_config(corpus, count)
    finally:
        if _CORPUS_DIR.value is None:
            shutil.rmtree(corpus, ignore_errors=True)
    local = results.get(0, {}).get("windows_per_s")
    cores = len(os.sched_getaffinity(0))
    print("tf.data service throughput, sampler %s, batch %d, %s, %d cores, "
          "load average %.1f" % (_SAMPLER.value, _BATCH_SIZE.value,
                                 platform.machine(), cores,
                                 os.getloadavg()[0]))
    print("| input | windows/s | x local | trainer CPU s | worker CPU s | "
          "windows per CPU s | distinct batches |")
    print("|---|---|---|---|---|---|---|")
    for count, r in results.items():
        name = "local" if count == 0 else "%d worker%s" % (
            count, "s" if count > 1 else "")
        ratio = "%.2f" % (r["windows_per_s"] / local) if local else "-"
        print("| %s | %.0f | %s | %.1f | %.1f | %.0f | %d / %d |" % (
            name, r["windows_per_s"], ratio, r["trainer_cpu_s"],
            r["worker_cpu_s"], r["windows_per_cpu_s"], r["distinct_batches"],
            r["batches"]))
    print("Note: every process shares these %d cores, so the ratio to local "
          "is bounded by the cores (the local pipeline already uses them "
          "all); scaling needs workers on other machines." % cores)
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w") as f:
            json.dump({"sampler": _SAMPLER.value,
                       "batch_size": _BATCH_SIZE.value, "cores": cores,
                       "load_average": os.getloadavg()[0],
                       "results": {str(k): v for k, v in results.items()}},
                      f, indent=2)


if __name__ == "__main__":
    app.run(main)
