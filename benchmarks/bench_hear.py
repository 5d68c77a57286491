"""HEAR API on long audio, and TFLite against the SavedModel on one core.

Exports a model (random weights: time and memory do not depend on them;
`--model=small` by default) with every TFLite variant, or uses
`--export_dir`, then measures, each in a fresh subprocess so that peak
memory is the measurement's own:

  * `triplet_audio.hear` scene and timestamp embeddings of one sound of
    `--minutes` minutes (default 20, seeded noise): wall time, the process's
    peak resident memory (ru_maxrss) before (model loaded, audio made,
    warm-up call on the sound's first minute) and after, and the audio's
    own size;
  * on one core (the process pinned to one CPU, TensorFlow with one intra-
    and one inter-op thread, the TFLite interpreter with num_threads=1):
    windows per second of the SavedModel's serving_default and of each
    TFLite model on the same `--tflite_seconds` of audio (log-mel front end
    and model in both), best of `--repeats`;
  * the file sizes of the SavedModel, model.keras and the TFLite models.

  .venv/bin/python benchmarks/bench_hear.py [--minutes=20] [--model=small]
      [--export_dir=DIR] [--timestamp_hop_seconds=0.05]
      [--tflite_seconds=120] [--repeats=3] [--output_json=PATH]
"""

import json
import os
import platform
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import machine  # pylint: disable=g-import-not-at-top,wrong-import-position

_MINUTES = flags.DEFINE_float("minutes", 20.0, "Length of the sound.",
                              lower_bound=0.01)
_MODEL = flags.DEFINE_string("model", "small", "Model to export and time.")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "Use this export (with its TFLite models) instead of "
    "exporting a random --model.")
_HOP = flags.DEFINE_float("timestamp_hop_seconds", 0.05,
                          "Hop of the timestamp embeddings.")
_TFLITE_SECONDS = flags.DEFINE_float(
    "tflite_seconds", 120.0, "Audio per timed TFLite / SavedModel run.",
    lower_bound=1.0)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (best is kept).",
                                lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "Also write the figures here.")

# Child: argv = export_dir minutes mode hop. Prints one JSON line.
_HEAR_CHILD = r'''
import json, resource, sys, time
import numpy as np
from triplet_audio import hear

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

export_dir, minutes, mode, hop = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
model = hear.load_model(export_dir, timestamp_hop_seconds=hop)
audio = np.empty((1, int(minutes * 60 * 16000)), np.float32)
rng = np.random.default_rng(0)
for i in range(0, audio.shape[1], 1 << 20):
    piece = audio[0, i:i + (1 << 20)]
    piece[:] = 0.1 * rng.standard_normal(piece.shape)
fn = (hear.get_scene_embeddings if mode == "scene"
      else hear.get_timestamp_embeddings)
fn(audio[:, :16000 * 60], model)  # warm-up: one full call
before = peak_mb()
start = time.perf_counter()
out = fn(audio, model)
seconds = time.perf_counter() - start
shape = list((out if mode == "scene" else out[0]).shape)
windows = shape[1] if mode != "scene" else (
    1 + ((audio.shape[1] - 400) // 160 - 96) // 96)
print(json.dumps({"mode": mode, "seconds": seconds, "shape": shape,
                  "windows": windows, "peak_before_mb": before,
                  "peak_mb": peak_mb(), "audio_mb": audio.nbytes / 2.0 ** 20}))
'''

# Child: argv = export_dir seconds repeats. One core. Prints one JSON line.
_CORE_CHILD = r'''
import json, os, sys, time, warnings
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
export_dir, seconds, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
meta = json.load(open(os.path.join(export_dir, "metadata.json")))
waveform = (0.1 * np.random.default_rng(0).standard_normal(
    int(seconds * 16000))).astype(np.float32)
loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
serve = loaded.signatures["serving_default"]
runs = {"saved_model": lambda: serve(waveform=tf.constant(waveform))[
    "window_embeddings"].numpy()}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for variant, info in sorted(meta.get("tflite", {}).items()):
        interpreter = tf.lite.Interpreter(
            model_path=os.path.join(export_dir, info["file"]), num_threads=1)
        runner = interpreter.get_signature_runner()
        runs["tflite_" + variant] = (
            lambda runner=runner: runner(waveform=waveform)["window_embeddings"])
result = {}
for name, run in runs.items():
    windows = run().shape[0]  # warm-up (traces, allocates)
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
    result[name] = {"windows": windows, "best_seconds": min(times),
                    "windows_per_second": windows / min(times)}
print(json.dumps(result))
'''


def _child(code, *args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _export(root):
    from triplet_audio.config import serving as serving_config  # pylint: disable=g-import-not-at-top
    from triplet_audio.model import models  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
    export_dir = os.path.join(root, "export")
    export.export_saved_model(
        models.build_model(_MODEL.value, seed=0), export_dir,
        tflite_variants=serving_config.TFLITE_VARIANTS)
    return export_dir


def _sizes(export_dir):
    meta = json.load(open(os.path.join(export_dir, "metadata.json")))
    saved = os.path.join(export_dir, meta["saved_model"])
    sizes = {"saved_model": sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, names in os.walk(saved) for f in names),
             "model.keras": os.path.getsize(
                 os.path.join(export_dir, meta["keras_model"]))}
    for variant, info in meta.get("tflite", {}).items():
        sizes["tflite_" + variant] = info["bytes"]
    return sizes, meta


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        export_dir = _EXPORT_DIR.value or _export(root)
        sizes, meta = _sizes(export_dir)
        hear_results = [
            _child(_HEAR_CHILD, export_dir, _MINUTES.value, mode, _HOP.value)
            for mode in ("scene", "timestamps")]
        core = _child(_CORE_CHILD, export_dir, _TFLITE_SECONDS.value,
                      _REPEATS.value)
    load = os.getloadavg()
    print("machine: %s, %d cores, load average %.2f %.2f %.2f; TF model %s "
          "(D=%d), python %s" % (
              machine.cpu_model(), os.cpu_count(), load[0], load[1], load[2],
              meta["model"]["name"], meta["embedding_size"],
              platform.python_version()))
    print("\nHEAR API, one sound of %.1f minutes (%.0f MB of float32 audio)"
          % (_MINUTES.value, hear_results[0]["audio_mb"]))
    print("| call | windows | wall s | windows/s | peak RSS before MB | "
          "peak RSS MB | added MB |")
    print("|---|---|---|---|---|---|---|")
    for r in hear_results:
        print("| %s | %d | %.1f | %.0f | %.0f | %.0f | %.0f |" % (
            "get_scene_embeddings" if r["mode"] == "scene" else
            "get_timestamp_embeddings (hop %g s)" % _HOP.value,
            r["windows"], r["seconds"], r["windows"] / r["seconds"],
            r["peak_before_mb"], r["peak_mb"],
            r["peak_mb"] - r["peak_before_mb"]))
    print("\nOne core, %.0f s of audio (%d windows), best of %d" % (
        _TFLITE_SECONDS.value, core["saved_model"]["windows"],
        _REPEATS.value))
    print("| model | windows/s | x SavedModel | file MB |")
    print("|---|---|---|---|")
    base = core["saved_model"]["windows_per_second"]
    for name, r in core.items():
        size = sizes.get(name, sizes["saved_model"])
        print("| %s | %.0f | %.2f | %.2f |" % (
            name, r["windows_per_second"], r["windows_per_second"] / base,
            size / 1e6))
    print("\nfiles: " + ", ".join("%s %.2f MB" % (k, v / 1e6)
                                  for k, v in sizes.items()))
    machine.write_json(_OUTPUT_JSON.value, {
        "machine": {"cpu": machine.cpu_model(), "cores": os.cpu_count(),
                    "load_average": load},
        "model": meta["model"], "minutes": _MINUTES.value,
        "timestamp_hop_seconds": _HOP.value, "hear": hear_results,
        "one_core": core, "sizes": sizes})


if __name__ == "__main__":
    app.run(main)
