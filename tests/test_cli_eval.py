"""bin/embed and bin/evaluate as a user runs them: subprocesses, tiny data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.serving import embeddings_io
from triplet_audio.evaluation import metrics
from triplet_audio.serving import export
from triplet_audio.model import models
from triplet_audio.features import records
from triplet_audio.evaluation import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBED = os.path.join(REPO, "bin", "embed")
EVALUATE = os.path.join(REPO, "bin", "evaluate")
CLASSES = ["hum", "hiss", "click"]
WINDOWS_PER_RECORDING = 2

# Small enough for a few seconds of evaluation, big enough for every part:
# QbE needs >= 2 positives and negatives per class, few-shot 2 per class.
EVAL_FLAGS = ["--qbe_num_pos=3", "--qbe_num_neg=3", "--qbe_min_count=2",
              "--classifier_epochs=2", "--fewshot_epochs=2",
              "--fewshot_per_class=2", "--fewshot_draws=2"]


def _run(binary, *args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, binary] + list(args), cwd=REPO,
                          env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _write_corpus(corpus_dir, split, per_class, seed):
    """A corpus whose windows have a class-dependent level (learnable)."""
    rng = np.random.default_rng(seed)
    os.makedirs(corpus_dir)
    path = os.path.join(corpus_dir, records.shard_name(0, 1))
    with tf.io.TFRecordWriter(path) as writer:
        for c in range(len(CLASSES)):
            for i in range(per_class):
                windows = (rng.normal(-2.0 + c, 1.0, (WINDOWS_PER_RECORDING,) +
                                      C.WINDOW_SHAPE)).astype(np.float32)
                starts = np.arange(WINDOWS_PER_RECORDING) * C.WINDOW_SECONDS
                writer.write(records.make_example(
                    windows, starts, "%s/%s_%d" % (split, CLASSES[c], i),
                    labels=[c], split=split).SerializeToString())
    with open(os.path.join(corpus_dir, records.MANIFEST_NAME), "w") as f:
        json.dump({"frontend": C.frontend_params(), "classes": CLASSES}, f)
    return corpus_dir


# The --output of each split as a user writes it: train without ".npz" (what
# issue 11's user ran: bin/embed --output=emb/train wrote emb/train.npz),
# eval as the README shows it. bin/evaluate then gets the same PATHs.
OUTPUT_NAMES = {"train": "train", "eval": "eval.npz"}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Train and eval embeddings written by bin/embed (log-mel baseline).

    Returns:
      (root, {split: the --output PATH given to bin/embed}).
    """
    root = tmp_path_factory.mktemp("cli")
    paths = {}
    for split, per_class, seed in (("train", 6, 0), ("eval", 4, 1)):
        corpus = _write_corpus(str(root / "features" / split), split,
                               per_class, seed)
        paths[split] = str(root / "emb" / OUTPUT_NAMES[split])
        proc = _run(EMBED, "--input=" + corpus, "--output=" + paths[split],
                    "--representation=logmel")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root, paths


def test_embed_names_its_output_after_the_path_given(embedded):
    root, _ = embedded
    # One file each: PATH.npz, the ".npz" appended only where missing.
    assert sorted(os.listdir(root / "emb")) == ["eval.npz", "train.npz"]


def test_embed_writes_the_logmel_baseline(embedded):
    _, paths = embedded
    emb_set = embeddings_io.read_embeddings(paths["eval"])
    assert emb_set.representation == "logmel"
    assert emb_set.num_segments == 4 * len(CLASSES)
    assert emb_set.num_windows == 4 * len(CLASSES) * WINDOWS_PER_RECORDING
    assert emb_set.class_names.tolist() == CLASSES
    assert emb_set.labels.sum(axis=0).tolist() == [4, 4, 4]


def test_evaluate_writes_results_report_and_plots(embedded):
    # bin/embed --output=PATH, then bin/evaluate --train=PATH --eval=PATH2 with
    # the PATHs exactly as given to bin/embed (DESIGN.md's command-line
    # contract), one of them without ".npz".
    root, paths = embedded
    out = root / "results"
    proc = _run(EVALUATE, "--train=" + paths["train"],
                "--eval=" + paths["eval"], "--output_dir=" + str(out),
                "--name=baseline", *EVAL_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / report.RESULTS_NAME).read_text())
    # Each PATH was read whole: 6 train and 4 eval segments per class.
    counts = results["counts"]
    assert (counts["train"]["segments"], counts["eval"]["segments"]) == (
        6 * len(CLASSES), 4 * len(CLASSES))
    expected_keys = {metrics.QBE: {"map", "chance"},
                     metrics.CLASSIFIER_1X512: {"map"},
                     metrics.CLASSIFIER_2X512: {"map"},
                     metrics.FEWSHOT: {"map", "std"}}
    for part, keys in expected_keys.items():
        assert keys <= set(results[part]), part
        for key in keys:
            assert 0.0 <= results[part][key] <= 1.0, (part, key)
    assert results["name"] == "baseline"
    assert results["representation"] == "logmel"
    # The flags reached the evaluation.
    config = results["config"]
    assert (config["qbe_num_pos"], config["qbe_min_count"], config["epochs"],
            config["fewshot_draws"]) == (3, 2, 2, 2)
    assert len(results[metrics.FEWSHOT]["maps"]) == 2
    # Three classes with 4 eval segments each: all pass --qbe_min_count=2.
    assert results[metrics.QBE]["num_classes"] == 3
    markdown = (out / report.REPORT_NAME).read_text()
    assert "| baseline" in markdown
    for name in (report.PER_CLASS_PLOT_NAME, report.PROJECTION_PLOT_NAME):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vectors = np.loadtxt(out / report.PROJECTOR_DIR / report.VECTORS_TSV,
                         delimiter="\t")
    assert vectors.shape == (4 * len(CLASSES), C.WINDOW_FRAMES *
                             C.NUM_MEL_BANDS)


def test_embed_with_saved_model(embedded, tmp_path):
    root, _ = embedded
    model = models.build_model("small", embedding_size=8, seed=0)
    export_dir = str(tmp_path / "export")
    export.export_saved_model(model, export_dir)
    # Sharded, and named without ".npz": read back by the same PATH.
    out = str(tmp_path / "eval")
    proc = _run(EMBED, "--input=" + str(root / "features" / "eval"),
                "--output=" + out, "--saved_model=" + export_dir,
                "--embed_batch_size=5", "--num_output_shards=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    emb_set = embeddings_io.read_embeddings(out)
    assert emb_set.representation == "small"
    assert emb_set.dim == 8
    assert emb_set.num_segments == 4 * len(CLASSES)
    assert embeddings_io.resolve_paths(out) == [
        out + "-00000-of-00002.npz", out + "-00001-of-00002.npz"]


def _one_line_error(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-2000:]
    return lines


# Each of these is refused before TensorFlow loads: exactly one line.
@pytest.mark.parametrize("binary,args,words", [
    (EMBED, ["--output=x.npz", "--representation=logmel"], "--input"),
    (EMBED, ["--input=x", "--representation=logmel"], "--output"),
    (EMBED, ["--input=x", "--output=y"], "neither"),
    (EMBED, ["--input=x", "--output=y", "--representation=logmel",
             "--saved_model=z"], "both"),
    (EMBED, ["--input=x", "--output=y", "--representation=mfcc"], "mfcc"),
    (EMBED, ["--input=x", "--output=y", "--representation=logmel",
             "--embed_batch_size=0"], "embed_batch_size"),
    (EMBED, ["--no_such_flag=1"], "no_such_flag"),
    (EVALUATE, ["--train=a", "--eval=b"], "--output_dir"),
    (EVALUATE, ["--train=a", "--eval=b", "--output_dir=c",
                "--qbe_num_pos=0"], "qbe_num_pos"),
    (EVALUATE, ["--train=a", "--eval=b", "--output_dir=c", "extra"],
     "positional"),
])
def test_bad_flags_exit_with_one_line(binary, args, words):
    lines = _one_line_error(_run(binary, *args))
    assert len(lines) == 1, lines
    assert words in lines[0]


@pytest.mark.parametrize("binary", [EMBED, EVALUATE])
def test_missing_files_exit_with_one_line(binary, tmp_path):
    if binary == EMBED:
        args = ["--input=" + str(tmp_path / "nothing"),
                "--output=" + str(tmp_path / "o.npz"),
                "--representation=logmel"]
    else:
        args = ["--train=" + str(tmp_path / "none.npz"),
                "--eval=" + str(tmp_path / "none.npz"),
                "--output_dir=" + str(tmp_path / "out")]
    lines = _one_line_error(_run(binary, *args))
    assert "nothing" in lines[-1] or "none.npz" in lines[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("binary,flags", [
    (EMBED, ["input", "output", "saved_model", "representation",
             "embed_batch_size", "num_output_shards"]),
    (EVALUATE, ["train", "eval", "output_dir", "name", "eval_seed",
                "qbe_num_pos", "qbe_num_neg", "qbe_min_count",
                "classifier_epochs", "fewshot_epochs", "fewshot_per_class",
                "fewshot_draws"]),
])
def test_help_documents_every_flag(binary, flags):
    proc = _run(binary, "--help")
    for name in flags:
        assert "--%s:" % name in proc.stdout, name


def test_flag_groups_coexist_in_one_process():
    # --input and --output_dir are shared by several binaries' groups; a
    # process (e.g. a test) may define them all.
    code = ("from triplet_audio.cli import flagdefs as f; "
            "f.define_embed_flags(); f.define_extract_flags(); "
            "f.define_evaluate_flags(); f.define_corpus_flags(); "
            "f.define_export_flags(); "
            "f.FLAGS(['x', '--input=i', '--output=o', "
            "'--representation=logmel', '--output_dir=d']); "
            "print(f.embed_args_from_flags()['input'], f.FLAGS.output_dir)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["i", "d"]
