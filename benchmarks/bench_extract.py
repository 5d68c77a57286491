"""Whole-extraction throughput: audio files -> shards, as bin/extract_features.

Runs `extract.run` (the library behind bin/extract_features, local runner)
on a directory of real recordings (by default the 3,000 8 kHz FSDD spoken
digits, ~22 min of audio in files of ~0.44 s: a worst case of per-file
overhead) once per --workers value, each in its own subprocess of this
script, into a fresh temporary directory.

Figures per configuration, the per-core target printed beside them:

  * end to end: audio seconds per wall second (real-time factor), the same
    per core (divided by the worker count), files per second; this includes
    spawning the workers and importing TensorFlow in each, which a corpus of
    hours amortises but 22 minutes of audio does not;
  * while busy: audio seconds per second a worker spent writing shards
    (start-up excluded), i.e. per core when each worker has one;
  * per CPU second: audio seconds per CPU second of every process involved,
    start-up included (a per-core figure that does not trust the worker
    count).

With one worker the extraction runs in the calling process; this script
pins TensorFlow to one thread there first, so that one worker is one core as
it is for the spawned workers.

With --long_files=N the recordings are first concatenated (a seeded draw,
with repeats) into N files of --long_seconds each, 16-bit WAV at the input
rate, in a temporary directory: the per-file costs of sub-second clips then
fall away, as they do on a corpus of long recordings (the usual case).

  .venv/bin/python benchmarks/bench_extract.py [--data_dir=DIR]
      [--workers=1,2] [--num_shards=8] [--long_files=240 --long_seconds=60]
      [--output_json=PATH]
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

TARGET_RTF_PER_CORE = 500.0

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO_ROOT, os.pardir, "shared", "data", "fsdd", "recordings"),
    "Directory of audio files to extract (searched recursively).")
_WORKERS = flags.DEFINE_list(
    "workers", ["1", "2"], "Worker counts to time, one run each.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "Shards to write.",
                                   lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "If set, also write the figures as JSON here.")
_LONG_FILES = flags.DEFINE_integer(
    "long_files", 0, "If > 0, time N long files made by concatenating the "
    "recordings of --data_dir instead of the recordings themselves.",
    lower_bound=0)
_LONG_SECONDS = flags.DEFINE_float(
    "long_seconds", 60.0, "Length of each --long_files file in seconds.")
_CHILD = flags.DEFINE_integer(
    "child_workers", None, "Internal: run one configuration in this process "
    "and print its figures as JSON.")


def _cpu_seconds():
    """User + system CPU time of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime +
            children.ru_stime)


def _write_long_files(source_dir, target_dir, count, seconds, seed=0):
    """Concatenates random recordings into `count` files of `seconds` each."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import soundfile  # pylint: disable=g-import-not-at-top
    clips, rate = [], None
    for root, _, names in os.walk(source_dir):
        for name in sorted(names):
            try:
                audio, clip_rate = soundfile.read(os.path.join(root, name),
                                                  dtype="float32")
            except RuntimeError:
                continue  # not audio
            if audio.ndim == 1 and clip_rate == (rate or clip_rate):
                rate = clip_rate
                clips.append(audio)
    if not clips:
        raise app.UsageError("--data_dir: no mono audio in %s" % source_dir)
    rng = np.random.default_rng(seed)
    for n in range(count):
        pieces, total = [], 0
        while total < seconds * rate:
            pieces.append(clips[rng.integers(len(clips))])
            total += pieces[-1].shape[0]
        soundfile.write(os.path.join(target_dir, "long%05d.wav" % n),
                        np.concatenate(pieces), rate, subtype="PCM_16")


def _run_child(workers):
    """Times one extraction in this process; returns its figures."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if workers == 1:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from triplet_audio.features import extract  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as out:
        config = extract.ExtractConfig(
            input=_DATA_DIR.value, output_dir=out,
            num_shards=_NUM_SHARDS.value, workers=workers)
        cpu_before, wall_before = _cpu_seconds(), time.monotonic()
        summary = extract.run(config)
        wall = time.monotonic() - wall_before
        cpu = _cpu_seconds() - cpu_before
    totals = summary["totals"]
    busy = summary["busy_seconds"]
    return {
        "workers": workers,
        "files": totals["files"],
        "failed": totals["failed"],
        "audio_seconds": totals["audio_seconds"],
        "wall_seconds": wall,
        "startup_seconds": summary["startup_seconds"],
        "busy_seconds": busy,
        "cpu_seconds": cpu,
        "rtf": totals["audio_seconds"] / wall,
        "rtf_per_core": totals["audio_seconds"] / wall / workers,
        "rtf_per_cpu_second": totals["audio_seconds"] / cpu,
        "files_per_second": totals["files"] / wall,
        "busy_rtf_per_core": totals["audio_seconds"] / busy,
        "busy_files_per_second_per_core": totals["files"] / busy,
    }


def _print_row(r):
    target = TARGET_RTF_PER_CORE
    def verdict(value):
        return "target %.0f x: %s" % (target,
                                      "met" if value >= target else "NOT met")

    print("workers=%d: %d files (%d failed), %.1f s of audio in %.2f s wall "
          "(first file done after %.2f s), workers busy %.2f s, %.2f CPU s" %
          (r["workers"], r["files"], r["failed"], r["audio_seconds"],
           r["wall_seconds"], r["startup_seconds"], r["busy_seconds"],
           r["cpu_seconds"]))
    print("  end to end   : %7.1f x real time, %7.1f x per core (%s), "
          "%7.1f files/s" % (r["rtf"], r["rtf_per_core"],
                             verdict(r["rtf_per_core"]),
                             r["files_per_second"]))
    print("  while busy   :          %7.1f x per core (%s), %7.1f files/s "
          "per core" % (r["busy_rtf_per_core"],
                        verdict(r["busy_rtf_per_core"]),
                        r["busy_files_per_second_per_core"]))
    print("  per CPU second of all processes: %7.1f x real time (%s)" %
          (r["rtf_per_cpu_second"], verdict(r["rtf_per_cpu_second"])))


def main(argv):
    del argv
    if _CHILD.value is not None:
        print(json.dumps(_run_child(_CHILD.value)))
        return 0
    if not os.path.isdir(_DATA_DIR.value):
        raise app.UsageError("--data_dir: no directory %s" % _DATA_DIR.value)
    with tempfile.TemporaryDirectory() as long_dir:
        data_dir = _DATA_DIR.value
        if _LONG_FILES.value:
            _write_long_files(data_dir, long_dir, _LONG_FILES.value,
                              _LONG_SECONDS.value)
            data_dir = long_dir
            print("long files: %d x %.0f s concatenated from %s" % (
                _LONG_FILES.value, _LONG_SECONDS.value, _DATA_DIR.value))
        return _benchmark(data_dir)


def _benchmark(data_dir):
    """Times each worker count on `data_dir`; prints and writes figures."""
    print("bench_extract: %s, %d shards, %d CPU cores on this machine" %
          (data_dir, _NUM_SHARDS.value, os.cpu_count()))
    rows = []
    for workers in (int(w) for w in _WORKERS.value):
        # A fresh process per configuration: TF's thread pools are sized
        # once, and no run inherits another's warm caches.
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__),
             "--data_dir=" + data_dir,
             "--num_shards=%d" % _NUM_SHARDS.value,
             "--child_workers=%d" % workers],
            capture_output=True, text=True, check=False)
        if child.returncode:
            sys.stderr.write(child.stderr[-3000:])
            return child.returncode
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        _print_row(rows[-1])
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w") as f:
            json.dump({"target_rtf_per_core": TARGET_RTF_PER_CORE,
                       "data_dir": _DATA_DIR.value,
                       "long_files": _LONG_FILES.value,
                       "long_seconds": _LONG_SECONDS.value,
                       "runs": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    app.run(main)
