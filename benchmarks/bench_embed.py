"""Embedding throughput of exported SavedModels on real recordings.

For each model (random weights: throughput does not depend on them) this
exports a SavedModel with `export.export_saved_model`, loads it back with
`tf.saved_model.load`, and times on the FSDD recordings (8 kHz spoken
digits, 0.1-2.3 s each, read with soundfile and resampled to 16 kHz with
soxr):

  * serving_default, one call per clip (what a serving client does): the
    front end and the model run inside the SavedModel; clips shorter than
    one window are zero-padded to one window, as the signature does.
  * embed_logmel, batched (what bin/embed does): the windows of every clip
    are computed once with the package's front end (timed separately) and
    embedded --batch_size windows per call.

Figures are audio seconds per wall second (real-time factor, the real
audio duration, not the padded one) and windows per second. Batched runs are
repeated --repeats times and the fastest run is reported (the least
disturbed on a shared machine); the per-clip pass runs once over
--per_clip_files clips.

  .venv/bin/python benchmarks/bench_embed.py [--data_dir=DIR]
      [--models=small,resnet50] [--max_files=3000] [--per_clip_files=300]
      [--batch_size=512] [--repeats=3] [--output_json=PATH]
"""

import glob
import json
import os
import platform
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from triplet_audio import constants as C  # pylint: disable=g-import-not-at-top

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO_ROOT, os.pardir, "shared", "data", "fsdd", "recordings"),
    "Directory of audio files (any format libsndfile reads).")
_MODELS = flags.DEFINE_list("models", ["small", "resnet50"],
                            "Models to export and time (models.MODEL_NAMES).")
_MAX_FILES = flags.DEFINE_integer("max_files", 3000,
                                  "Clips embedded in the batched runs.",
                                  lower_bound=1)
_PER_CLIP_FILES = flags.DEFINE_integer(
    "per_clip_files", 300, "Clips sent one by one to serving_default.",
    lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 512,
                                   "Windows per embed_logmel call.",
                                   lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed batched runs per model.",
                                lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "If set, also write the figures as JSON.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the clip order.")


def _load_clips(data_dir, max_files, seed):
    """16 kHz float32 mono clips of up to `max_files` files, seeded order."""
    import soundfile  # pylint: disable=g-import-not-at-top
    import soxr  # pylint: disable=g-import-not-at-top
    paths = sorted(p for p in glob.glob(os.path.join(data_dir, "*"))
                   if os.path.isfile(p))
    if not paths:
        sys.exit("no files in %s" % data_dir)
    order = np.random.default_rng(seed).permutation(len(paths))
    clips = []
    for i in order[:max_files]:
        audio, rate = soundfile.read(paths[i], dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != C.SAMPLE_RATE:
            audio = soxr.resample(audio, rate, C.SAMPLE_RATE)
        clips.append(np.ascontiguousarray(audio, dtype=np.float32))
    return clips


def _machine():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "gpus": [g.name for g in gpus],
        "tensorflow": tf.__version__,
    }


def _bench_model(name, clips, windows, batch_size, repeats, per_clip_files,
                 workdir):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
    from triplet_audio.model import models  # pylint: disable=g-import-not-at-top
    model = models.build_model(name, seed=0)
    export_dir = os.path.join(workdir, name)
    saved = export.export_saved_model(model, export_dir)
    params = model.count_params()
    del model
    loaded = tf.saved_model.load(saved)
    serve = loaded.signatures["serving_default"]
    embed = loaded.signatures["embed_logmel"]

    # Batched embed_logmel over every window; warm-up on one batch first.
    embed(logmel=tf.constant(windows[:batch_size]))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, windows.shape[0], batch_size):
            out = embed(logmel=tf.constant(windows[first:first + batch_size]))
            out["embeddings"].numpy()
        times.append(time.perf_counter() - start)

    # serving_default, one clip per call.
    per_clip = clips[:per_clip_files]
    serve(waveform=tf.constant(per_clip[0]))
    start = time.perf_counter()
    for clip in per_clip:
        serve(waveform=tf.constant(clip))["clip_embedding"].numpy()
    per_clip_seconds = time.perf_counter() - start
    per_clip_audio = sum(c.shape[0] for c in per_clip) / C.SAMPLE_RATE
    return {
        "params": int(params),
        "batched_seconds": min(times),
        "batched_seconds_all": times,
        "per_clip_clips": len(per_clip),
        "per_clip_audio_seconds": per_clip_audio,
        "per_clip_seconds": per_clip_seconds,
    }


def main(argv):
    del argv
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from triplet_audio.features import frontend  # pylint: disable=g-import-not-at-top

    machine = _machine()
    clips = _load_clips(_DATA_DIR.value, _MAX_FILES.value, _SEED.value)
    audio_seconds = sum(c.shape[0] for c in clips) / C.SAMPLE_RATE

    windows_fn = tf.function(
        lambda x: frontend.waveform_to_windows(x, pad_short=True),
        input_signature=[tf.TensorSpec([None], tf.float32)])
    windows_fn(tf.constant(clips[0]))  # Tracing.
    start = time.perf_counter()
    windows = np.concatenate([windows_fn(tf.constant(c)).numpy()
                              for c in clips])
    frontend_seconds = time.perf_counter() - start

    results = {"machine": machine, "clips": len(clips),
               "audio_seconds": audio_seconds,
               "windows": int(windows.shape[0]),
               "frontend_seconds": frontend_seconds,
               "batch_size": _BATCH_SIZE.value, "models": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for name in _MODELS.value:
            results["models"][name] = _bench_model(
                name, clips, windows, _BATCH_SIZE.value, _REPEATS.value,
                _PER_CLIP_FILES.value, workdir)

    print("machine: %s, %d CPUs, load average %s, GPUs %s, TF %s" % (
        machine["cpu"], machine["cpu_count"], machine["load_average"],
        machine["gpus"] or "none", machine["tensorflow"]))
    print("data: %d clips, %.1f s of audio (mean %.2f s), %d windows "
          "(short clips padded to one)" % (
              len(clips), audio_seconds, audio_seconds / len(clips),
              windows.shape[0]))
    print("front end (package, per clip): %.2f s, %.0f x real time" % (
        frontend_seconds, audio_seconds / frontend_seconds))
    header = ("model", "params", "embed_logmel x RT", "windows/s",
              "front end + embed_logmel x RT", "serving_default x RT",
              "clips/s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in results["models"].items():
        batched = r["batched_seconds"]
        r["batched_rtf"] = audio_seconds / batched
        r["batched_windows_per_second"] = windows.shape[0] / batched
        r["end_to_end_rtf"] = audio_seconds / (batched + frontend_seconds)
        r["per_clip_rtf"] = r["per_clip_audio_seconds"] / r["per_clip_seconds"]
        r["per_clip_clips_per_second"] = (r["per_clip_clips"] /
                                          r["per_clip_seconds"])
        print("| %s | %.1fM | %.0f | %.0f | %.0f | %.1f | %.1f |" % (
            name, r["params"] / 1e6, r["batched_rtf"],
            r["batched_windows_per_second"], r["end_to_end_rtf"],
            r["per_clip_rtf"], r["per_clip_clips_per_second"]))
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    app.run(main)
