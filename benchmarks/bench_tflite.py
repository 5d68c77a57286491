"""QbE mAP of the TFLite models beside the SavedModel's, on the demo corpus.

Runs the user's binaries on the demo's synthetic corpus (the sizes of
flags/demo_pipeline.cfg: 300 train / 240 eval recordings of 10 s), trains
one model with flags/demo.cfg (`--sampler`, default supervised: the
topline, whose retrieval has the most to lose), exports it with
`bin/export --tflite` (float32, float16, int8), then embeds the eval
recordings' audio

  * with the SavedModel: `bin/embed --saved_model` (the package's front end
    and the `embed_logmel` signature), and
  * with each TFLite model, run by the TFLite interpreter on each
    recording's 16 kHz waveform (front end inside the model),

and scores each with the demo's QbE protocol (`metrics.qbe_map` on segment
means: 100 + 100 segments per class at most, classes with at least 15
positives, seed 0). It also prints how close each TFLite model's segment
embeddings are to the SavedModel's (cosine). Every step is skipped when its
output exists in `--work_dir`, so a rerun only re-scores.

  .venv/bin/python benchmarks/bench_tflite.py [--work_dir=DIR]
      [--sampler=supervised] [--num_train=300] [--num_eval=240]
      [--output_json=PATH]
"""

import json
import os
import subprocess
import sys
import time
import warnings

from absl import app
from absl import flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import machine  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/bench_tflite",
                                "Corpus, run, export and embeddings.")
_SAMPLER = flags.DEFINE_string("sampler", "supervised", "Sampler to train.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 300, "Train recordings.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 240, "Eval recordings.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None,
                                   "Also write the figures here.")

QBE = {"num_pos": 100, "num_neg": 100, "seed": 0, "min_count": 15}
"""The demo's QbE settings (flags/demo_pipeline.cfg)."""


def _run(binary, *args):
    path = os.path.join(REPO_ROOT, "bin", binary)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, path] + list(args), cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError("%s failed:\n%s" % (binary, proc.stderr[-3000:]))
    print("%s: %.0f s" % (binary, time.monotonic() - start), flush=True)


def _prepare(work):
    corpus = os.path.join(work, "corpus")
    features = os.path.join(work, "features_train")
    run_dir = os.path.join(work, "run")
    export_dir = os.path.join(work, "export")
    embeddings = os.path.join(work, "saved_model_eval.npz")
    if not os.path.exists(os.path.join(corpus, "eval.csv")):
        _run("make_corpus", "--output_dir=" + corpus,
             "--num_train=%d" % _NUM_TRAIN.value,
             "--num_eval=%d" % _NUM_EVAL.value, "--seed=0", "--workers=2")
    if not os.path.exists(os.path.join(features, "manifest.json")):
        _run("extract_features", "--input=" + os.path.join(corpus,
                                                           "train.csv"),
             "--output_dir=" + features, "--num_shards=4", "--workers=2")
    if not os.path.exists(os.path.join(export_dir, "metadata.json")):
        _run("train", "--flagfile=" + os.path.join(REPO_ROOT, "flags",
                                                   "demo.cfg"),
             "--sampler=" + _SAMPLER.value, "--train_data=" + features,
             "--model_dir=" + run_dir)
        _run("export", "--model_dir=" + run_dir, "--export_dir=" + export_dir,
             "--tflite", "--overwrite")
    if not os.path.exists(embeddings):
        _run("embed", "--input=" + os.path.join(corpus, "eval.csv"),
             "--saved_model=" + export_dir, "--output=" + embeddings)
    return corpus, export_dir, embeddings


def _tflite_segments(path, items):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from triplet_audio.features import audio_io  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path, num_threads=2)
    runner = interpreter.get_signature_runner()
    out = {}
    for item in items:
        waveform = audio_io.load_audio(item.path)
        out[item.recording_id] = runner(waveform=waveform)["clip_embedding"]
    return out


def main(argv):
    del argv
    from triplet_audio.evaluation import metrics  # pylint: disable=g-import-not-at-top
    from triplet_audio.features import inputs  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import embeddings_io  # pylint: disable=g-import-not-at-top
    work = _WORK_DIR.value
    os.makedirs(work, exist_ok=True)
    corpus, export_dir, embeddings = _prepare(work)
    saved = embeddings_io.read_embeddings(embeddings)
    ids = [str(s) for s in saved.segment_ids]
    reference = embeddings_io.segment_means(saved)
    labels = saved.labels
    results = {"saved_model": metrics.qbe_map(
        reference, labels, class_names=list(saved.class_names), **QBE)}
    meta = json.load(open(os.path.join(export_dir, "metadata.json")))
    items, _ = inputs.discover_inputs(os.path.join(corpus, "eval.csv"))
    agreement = {}
    for variant, info in sorted(meta["tflite"].items()):
        start = time.monotonic()
        by_id = _tflite_segments(os.path.join(export_dir, info["file"]),
                                 items)
        means = np.stack([by_id[i] for i in ids])
        results["tflite_" + variant] = metrics.qbe_map(
            means, labels, class_names=list(saved.class_names), **QBE)
        cosine = np.sum(metrics.cosine_normalize(means) *
                        metrics.cosine_normalize(reference), axis=1)
        agreement[variant] = {"min_cosine": float(cosine.min()),
                              "mean_cosine": float(cosine.mean()),
                              "seconds": time.monotonic() - start,
                              "bytes": info["bytes"]}
    load = os.getloadavg()
    print("\nmachine: %s, %d cores, load average %.2f; model %s (%s, step "
          "%s), %d eval segments, %d classes scored" % (
              machine.cpu_model(), os.cpu_count(), load[0],
              meta["model"]["name"], _SAMPLER.value, meta["step"], len(ids),
              results["saved_model"]["num_classes"]))
    print("| model | QbE mAP | chance | min / mean cosine to SavedModel "
          "(segments) | file MB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        variant = name.replace("tflite_", "")
        a = agreement.get(variant)
        print("| %s | %.4f | %.3f | %s | %s |" % (
            name, r["map"], r["chance"],
            "%.6f / %.6f" % (a["min_cosine"], a["mean_cosine"]) if a else "-",
            "%.2f" % (a["bytes"] / 1e6) if a else "-"))
    machine.write_json(_OUTPUT_JSON.value, {
        "machine": {"cpu": machine.cpu_model(), "cores": os.cpu_count(),
                    "load_average": load},
        "sampler": _SAMPLER.value, "step": meta["step"],
        "qbe": {k: {"map": v["map"], "chance": v["chance"],
                    "num_classes": v["num_classes"]}
                for k, v in results.items()},
        "agreement": agreement})


if __name__ == "__main__":
    app.run(main)
