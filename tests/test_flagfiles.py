"""One smoke test per flag file in flags/ (the LEAF pattern).

Every `flags/*.cfg` must parse with bin/train's own flag definitions (the
script is loaded as a module, so a flag it stops defining breaks the test)
and resolve to a valid TrainConfig carrying the paper's hyperparameters; each
is then trained for a few steps on a tiny corpus, shrunk by command-line
overrides, and must leave a checkpoint. A new flag file fails here until it
gets an entry in EXPECTED.

Flag files are self-contained (absl resolves a nested --flagfile against the
working directory), so they parse from any directory.
"""

import glob
import importlib.machinery
import importlib.util
import json
import math
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio.config import options
from triplet_audio.cli import mains
from triplet_audio import constants as C
from triplet_audio.cli import flagdefs
from triplet_audio.features import records
from triplet_audio.training import trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_DIR = os.path.join(REPO_ROOT, "flags")
BIN_TRAIN = os.path.join(REPO_ROOT, "bin", "train")
FLAGS = flags.FLAGS

# Table 1 of the paper (section 3.2): the sampler settings every paper run
# uses, whether its file sets them or inherits the defaults.
PAPER_SAMPLER = {"noise_sigma": 0.5, "translation_max_shift": 10,
                 "mixing_alpha": 0.25, "proximity_dt": math.inf}
PAPER_MODEL = {"model": "resnet50", "embedding_size": 128,
               "distance": "squared"}

# file -> (the --sampler a user adds on the command line, or None when the
# file sets it; the TrainConfig fields it must resolve to).
EXPECTED = {
    "demo.cfg": ("proximity", {"model": "small", "mixed_precision": "none",
                               "jit_compile": False}),
    "noise.cfg": (None, PAPER_MODEL),
    "translation.cfg": (None, PAPER_MODEL),
    "mixing.cfg": (None, PAPER_MODEL),
    "proximity.cfg": (None, PAPER_MODEL),
    "supervised.cfg": (None, PAPER_MODEL),
    "joint.cfg": (None, PAPER_MODEL),
}
SAMPLER_FILES = tuple(name + ".cfg" for name in options.SAMPLERS)
# Flag files of other binaries, smoke-tested beside them.
OTHER_BINARIES = {"demo_pipeline.cfg": "bin/demo (tests/test_demo.py)"}

# Shrinks any flag file to a CPU smoke run (later flags win).
TINY = ("--model=small", "--batch_size=24", "--steps=3", "--nojit_compile",
        "--mixed_precision=none", "--warmup_steps=0", "--shuffle_buffer=64")


def _load_bin_train():
    """Executes bin/train's module body: its flag definitions, not main()."""
    loader = importlib.machinery.SourceFileLoader("bin_train", BIN_TRAIN)
    spec = importlib.util.spec_from_loader("bin_train", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


_load_bin_train()


def _flag_files():
    """Every flag file in flags/ (bin/train's and other binaries')."""
    return sorted(os.path.basename(p)
                  for p in glob.glob(os.path.join(FLAGS_DIR, "*.cfg")))


@pytest.fixture(name="parse")
def fixture_parse(monkeypatch, tmp_path):
    """Parses a bin/train command line into FLAGS; restored afterwards.

    Runs from an unrelated directory: flag files must not depend on the
    working directory.
    """
    monkeypatch.chdir(tmp_path)
    with flagsaver.flagsaver():
        yield lambda args: FLAGS(["bin/train"] + list(args))


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory):
    """Twelve labelled recordings of four random windows (three classes).

    Enough for one batch of 8 triplets per pass of every sampler: supervised
    spends several windows on each triplet.
    """
    directory = str(tmp_path_factory.mktemp("corpus"))
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(os.path.join(
            directory, records.shard_name(0, 1))) as writer:
        for r in range(12):
            logmel = rng.normal(-2.0, 1.0, (4,) + C.WINDOW_SHAPE)
            example = records.make_example(
                logmel.astype(np.float32), np.arange(4) * C.WINDOW_SECONDS,
                "rec%d" % r, labels=[r % 3])
            writer.write(example.SerializeToString())
    with open(os.path.join(directory, records.MANIFEST_NAME), "w") as f:
        json.dump({"classes": ["a", "b", "c"]}, f)
    return directory


def _command_line(name, corpus, model_dir):
    sampler, _ = EXPECTED[name]
    args = ["--flagfile=" + os.path.join(FLAGS_DIR, name),
            "--train_data=" + corpus, "--model_dir=" + model_dir]
    if sampler:
        args.append("--sampler=" + sampler)
    return args


def test_every_flag_file_has_a_smoke_test():
    assert set(_flag_files()) == set(EXPECTED) | set(OTHER_BINARIES)
    assert set(SAMPLER_FILES) <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flag_file_resolves_to_a_valid_paper_config(parse, name):
    parse(_command_line(name, "/data/corpus", "/tmp/run"))
    config = flagdefs.train_config_from_flags()
    _, fields = EXPECTED[name]
    for field, value in fields.items():
        assert getattr(config, field) == value, field
    if name in SAMPLER_FILES:
        assert config.sampler.sampler == name[:-len(".cfg")]
    if name != "demo.cfg":
        for field, value in PAPER_SAMPLER.items():
            assert getattr(config.sampler, field) == value, field
    if name == "joint.cfg":
        # The four unsupervised samplers, equally weighted.
        weights = config.sampler.joint_weights
        assert set(weights) == set(options.UNSUPERVISED_SAMPLERS)
        assert len(set(weights.values())) == 1 and min(weights.values()) > 0
    # Paper runs must fit their warm-up, batches and checkpoints in the run.
    assert config.warmup_steps < config.steps
    assert config.checkpoint_every <= config.steps
    assert config.validate() is config


def test_command_line_overrides_the_flag_file(parse):
    parse(_command_line("noise.cfg", "/data/corpus", "/tmp/run") +
          ["--noise_sigma=0.25"] + list(TINY))
    config = flagdefs.train_config_from_flags()
    assert config.sampler.noise_sigma == 0.25
    assert (config.model, config.batch_size, config.steps) == ("small", 24, 3)


@pytest.mark.parametrize("name", SAMPLER_FILES)
def test_paper_flag_file_trains_and_checkpoints(parse, corpus, tmp_path, name):
    # In-process through bin/train's entry point (mains.train_main), which
    # saves a process start per file; the demo file goes through the binary.
    model_dir = str(tmp_path / "run")
    parse(_command_line(name, corpus, model_dir) + list(TINY))
    assert mains.train_main() == 0
    config = trainer.load_config(model_dir)
    assert config.sampler.sampler == name[:-len(".cfg")]
    assert config.model == "small"
    _, _, step = trainer.restore_model(model_dir)
    assert step == 3


def test_demo_flag_file_trains_and_checkpoints_with_bin_train(corpus,
                                                               tmp_path):
    model_dir = str(tmp_path / "run")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, BIN_TRAIN] + _command_line("demo.cfg", corpus,
                                                    model_dir) + list(TINY),
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, trainer.SUMMARY_NAME)) as f:
        summary = json.load(f)
    assert summary["step"] == 3 and not summary["interrupted"]
    assert tf.train.latest_checkpoint(os.path.join(
        model_dir, trainer.CHECKPOINT_SUBDIR)).endswith("ckpt-3")
    assert trainer.load_config(model_dir).sampler.sampler == "proximity"
