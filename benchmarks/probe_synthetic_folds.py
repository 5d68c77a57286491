#!/usr/bin/env python3
"""The linear probe on a fold layout built from the demo's synthetic corpus.

Writes an ESC-50 layout (meta/esc50.csv, audio/) whose clips are the demo
synthesiser's scenes with one class each (`demo.synthetic`), then runs the
user's binaries on it, as subprocesses:

  bin/extract_features --input_format=esc50      the fold layout -> corpus
  bin/embed --representation=logmel              the log-mel baseline
  bin/evaluate --protocol=linear_probe           5-fold cross-validation

and, with --train_export, the same for one trained export: bin/make_corpus
(the demo's multi-label train split, other audio than the fold layout's),
bin/extract_features, bin/train --flagfile=flags/demo.cfg
--sampler=SAMPLER, bin/export, bin/embed --saved_model. It prints each
representation's accuracy, mean +- std over the 5 folds, per classifier.

    .venv/bin/python benchmarks/probe_synthetic_folds.py --work_dir=/tmp/probe
        [--classes=14] [--per_class_per_fold=4] [--seconds=5]
        [--train_export --sampler=noise --num_train=300]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from testdata import make_datasets  # pylint: disable=wrong-import-position
from triplet_audio import constants as C  # pylint: disable=wrong-import-position
from triplet_audio.demo import synthetic  # pylint: disable=wrong-import-position


def build_layout(root, classes, per_class_per_fold, seconds, seed):
    """The ESC-50 layout of single-class synthetic scenes."""
    names = synthetic.CLASS_NAMES[:classes]
    rows = make_datasets.esc50_rows(names, 5, per_class_per_fold)
    pool = None
    if hasattr(synthetic, "environment_pool"):
        pool = synthetic.environment_pool(seed)

    def audio(category, index):
        rng = np.random.default_rng([seed, index])
        kwargs = {"environments": pool} if pool is not None else {}
        wave, _ = synthetic.synthesize_recording(
            rng, seconds, classes=[category], vocabulary=names, **kwargs)
        return synthetic.to_pcm16(wave), C.SAMPLE_RATE

    make_datasets.make_esc50(root, audio_fn=audio, rows=rows)
    return len(rows)


def run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.monotonic()
    done = subprocess.run([sys.executable] + list(args), cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit("%s failed:\n%s" % (" ".join(args[:2]), done.stderr[-3000:]))
    return time.monotonic() - start


def binary(name):
    return os.path.join(REPO, "bin", name)


def probe(work, name, embed_args, classifiers):
    emb = os.path.join(work, "emb", name + ".npz")
    out = os.path.join(work, "eval", name)
    seconds = run(binary("embed"), "--input=" + os.path.join(work, "corpus"),
                  "--output=" + emb, *embed_args)
    seconds += run(binary("evaluate"), "--train=" + emb,
                   "--protocol=linear_probe", "--output_dir=" + out,
                   "--probe_classifiers=" + classifiers)
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["linear_probe"], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--per_class_per_fold", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logmel_classifiers", default="linear",
                        help="The MLP on 6,144-d log-mel is slow on a CPU.")
    parser.add_argument("--train_export", action="store_true")
    parser.add_argument("--sampler", default="noise")
    parser.add_argument("--num_train", type=int, default=300)
    args = parser.parse_args()
    work = os.path.abspath(args.work_dir)
    layout = os.path.join(work, "esc50_synthetic")
    timings = {}
    start = time.monotonic()
    clips = build_layout(layout, args.classes, args.per_class_per_fold,
                         args.seconds, args.seed)
    timings["layout"] = time.monotonic() - start
    timings["extract"] = run(
        binary("extract_features"), "--input=" + layout,
        "--input_format=auto", "--output_dir=" + os.path.join(work, "corpus"),
        "--num_shards=4")
    results = {}
    results["logmel"], timings["logmel"] = probe(
        work, "logmel", ["--representation=logmel"], args.logmel_classifiers)
    if args.train_export:
        train_corpus = os.path.join(work, "train_corpus")
        start = time.monotonic()
        run(binary("make_corpus"), "--output_dir=" + train_corpus,
            "--num_train=%d" % args.num_train, "--num_eval=14",
            "--workers=0")
        run(binary("extract_features"),
            "--input=" + os.path.join(train_corpus, "train.csv"),
            "--output_dir=" + os.path.join(work, "train_features"),
            "--num_shards=4")
        model_dir = os.path.join(work, "runs", args.sampler)
        run(binary("train"), "--flagfile=" + os.path.join(REPO, "flags",
                                                           "demo.cfg"),
            "--sampler=" + args.sampler,
            "--train_data=" + os.path.join(work, "train_features"),
            "--model_dir=" + model_dir)
        export_dir = os.path.join(work, "exports", args.sampler)
        run(binary("export"), "--model_dir=" + model_dir,
            "--export_dir=" + export_dir, "--overwrite")
        timings["train_export"] = time.monotonic() - start
        results[args.sampler], timings[args.sampler] = probe(
            work, args.sampler, ["--saved_model=" + export_dir],
            "linear,mlp_1x512")
    print("Linear probe, 5-fold CV on %d single-class synthetic clips "
          "(%d classes, %g s each; chance %.3f):" % (
              clips, args.classes, args.seconds, 1.0 / args.classes))
    print("| representation | classifier | accuracy (mean ± std) | folds |")
    print("|---|---|---|---|")
    for name, probe_result in results.items():
        for model in ("linear", "mlp_1x512"):
            if model in probe_result:
                entry = probe_result[model]
                print("| %s | %s | %.3f ± %.3f | %s |" % (
                    name, entry["architecture"], entry["mean"], entry["std"],
                    " ".join("%.3f" % s for s in entry["scores"])))
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    with open(os.path.join(work, "probe_summary.json"), "w") as f:
        json.dump({"results": results, "timings": timings}, f, indent=1)


if __name__ == "__main__":
    main()
