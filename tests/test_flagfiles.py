"""One smoke test per flag file in flags/ (the LEAF pattern), and includes.

Every `flags/*.cfg` must parse with bin/train's own flag definitions
(`commands.define_flags("train")`, what bin/train and triplet-audio-train
define) and parser (`mains.parse_flags`), and resolve to a valid TrainConfig
carrying the paper's hyperparameters; each is then trained for a few steps on
a tiny corpus, shrunk by command-line overrides, and must leave a checkpoint.
A new flag file fails here until it gets an entry in EXPECTED.

The Table 1 files include flags/paper_base.cfg (`--flagfile=paper_base.cfg`):
`mains.parse_flags` resolves an include against the including file's
directory, so they parse from any working directory, and each resolves to
exactly the settings pinned in TABLE_1.
"""

import glob
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

from triplet_audio.config import flagfiles
from triplet_audio.config import options
from triplet_audio.cli import commands
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
# Flag files that only other flag files include (not a run on their own).
INCLUDED = {"paper_base.cfg": ("noise.cfg", "translation.cfg", "mixing.cfg",
                               "proximity.cfg", "supervised.cfg",
                               "joint.cfg")}

# What each Table 1 file resolved to before paper_base.cfg existed (each file
# then spelled out all its lines): the lines every run shared, then the
# file's own. A file must resolve to exactly these settings, every flag's
# value and whether it was set.
PAPER_COMMON = (
    "--model=resnet50", "--embedding_size=128", "--batch_size=768",
    "--margin=0.2", "--distance=squared", "--optimizer=adam",
    "--learning_rate=3e-4", "--lr_schedule=cosine", "--warmup_steps=2000",
    "--steps=200000", "--checkpoint_every=2000", "--log_every=100",
    "--mixed_precision=bf16", "--jit_compile", "--shuffle_buffer=16384",
    "--seed=0")
TABLE_1 = {
    "noise.cfg": ("--sampler=noise", "--noise_sigma=0.5"),
    "translation.cfg": ("--sampler=translation",
                        "--translation_max_shift=10"),
    "mixing.cfg": ("--sampler=mixing", "--mixing_alpha=0.25"),
    "proximity.cfg": ("--sampler=proximity", "--proximity_dt=inf"),
    "supervised.cfg": ("--sampler=supervised",),
    "joint.cfg": ("--sampler=joint",
                  "--joint_weights=noise=1,translation=1,mixing=1,proximity=1",
                  "--noise_sigma=0.5", "--translation_max_shift=10",
                  "--mixing_alpha=0.25", "--proximity_dt=inf"),
}

# Shrinks any flag file to a CPU smoke run (later flags win).
TINY = ("--model=small", "--batch_size=24", "--steps=3", "--nojit_compile",
        "--mixed_precision=none", "--warmup_steps=0", "--shuffle_buffer=64")


commands.define_flags("train")


def _flag_files():
    """Every flag file in flags/ (bin/train's and other binaries')."""
    return sorted(os.path.basename(p)
                  for p in glob.glob(os.path.join(FLAGS_DIR, "*.cfg")))


@pytest.fixture(name="parse")
def fixture_parse(monkeypatch, tmp_path):
    """Parses a bin/train command line into FLAGS; restored afterwards.

    With bin/train's parser (includes resolved), from an unrelated directory:
    flag files must not depend on the working directory.
    """
    monkeypatch.chdir(tmp_path)
    with flagsaver.flagsaver():
        yield lambda args: mains.parse_flags(["bin/train"] + list(args))


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
    assert set(_flag_files()) == (set(EXPECTED) | set(OTHER_BINARIES) |
                                  set(INCLUDED))
    assert set(SAMPLER_FILES) <= set(EXPECTED)
    assert set(TABLE_1) == set(INCLUDED["paper_base.cfg"])


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


# ------------------------------------------------------ Table 1 and includes


def _state():
    """Every flag's (value, times set): what a parse leaves in FLAGS."""
    return {name: (FLAGS[name].value, FLAGS[name].present) for name in FLAGS}


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_table_1_file_resolves_to_the_pinned_settings(parse, name):
    parse(["--flagfile=" + os.path.join(FLAGS_DIR, name)])
    resolved = _state()
    FLAGS.unparse_flags()
    parse(list(PAPER_COMMON) + list(TABLE_1[name]))
    assert resolved == _state()


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_table_1_file_states_only_what_differs(name):
    with open(os.path.join(FLAGS_DIR, name)) as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    # The include first, so that the file's own lines override it.
    assert lines == ["--flagfile=paper_base.cfg"] + list(TABLE_1[name])


def test_command_line_flag_file_is_relative_to_the_working_directory(
        parse, monkeypatch):
    # absl's rule for a --flagfile on the command line, unchanged.
    with pytest.raises(SystemExit) as raised:  # The fixture's cwd is empty.
        parse(["--flagfile=flags/proximity.cfg"])
    assert str(raised.value.code).startswith(
        "error: cannot read flag file flags/proximity.cfg: ")
    monkeypatch.chdir(REPO_ROOT)
    parse(["--flagfile=flags/proximity.cfg"])
    assert (FLAGS.sampler, FLAGS.model, FLAGS.steps) == (
        "proximity", "resnet50", 200000)


def _write(path, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_includes_are_relative_to_the_including_file(tmp_path, monkeypatch):
    _write(tmp_path / "cfg" / "base.cfg", "# comment", "--steps=10",
           "--seed=1")
    _write(tmp_path / "cfg" / "sub" / "leaf.cfg", "--margin=0.5")
    _write(tmp_path / "cfg" / "sub" / "mid.cfg", "--flagfile=leaf.cfg",
           "--flagfile=../base.cfg", "   --seed=2", "")
    top = _write(tmp_path / "cfg" / "top.cfg", "// comment",
                 "--flagfile=sub/mid.cfg", "--flagfile=" + str(
                     tmp_path / "cfg" / "sub" / "leaf.cfg"))
    monkeypatch.chdir(tmp_path / "cfg" / "sub")  # Not where top.cfg is.
    expanded = flagfiles.expand_flagfiles(
        ["prog", "--steps=1", "--flagfile=" + top, "--seed=3", "--",
         "--flagfile=" + top])
    # In place, in order: a later setting wins; nothing after "--".
    assert expanded == ["prog", "--steps=1", "--margin=0.5", "--steps=10",
                        "--seed=1", "--seed=2", "--margin=0.5", "--seed=3",
                        "--", "--flagfile=" + top]
    # A command-line --flagfile PATH (two arguments) too, relative to the
    # working directory; "~" is expanded as absl does.
    assert flagfiles.expand_flagfiles(["prog", "--flagfile", "mid.cfg"]) == [
        "prog", "--margin=0.5", "--steps=10", "--seed=1", "--seed=2"]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert flagfiles.expand_flagfiles(["prog", "--flagfile=~/cfg/base.cfg"]) == [
        "prog", "--steps=10", "--seed=1"]
    assert flagfiles.flag_file_sources(top) == [
        top, os.path.join(tmp_path, "cfg", "sub/mid.cfg"),
        os.path.join(tmp_path, "cfg", "sub", "leaf.cfg"),
        os.path.join(tmp_path, "cfg", "sub", "../base.cfg"),
        str(tmp_path / "cfg" / "sub" / "leaf.cfg")]


@pytest.mark.parametrize("files,message", [
    ({"a.cfg": ["--flagfile=b.cfg"], "b.cfg": ["--flagfile=a.cfg"]},
     "a.cfg includes itself"),
    ({"a.cfg": ["--flagfile=gone.cfg"]},
     "cannot read flag file %s: No such file or directory (included by %s)"),
    ({"a.cfg": ["--flagfile", "b.cfg"]}, "--flagfile=FILE on one line"),
])
def test_bad_includes_end_in_one_line(parse, tmp_path, files, message):
    for name, lines in files.items():
        _write(tmp_path / "cfg" / name, *lines)
    top = str(tmp_path / "cfg" / "a.cfg")
    with pytest.raises(SystemExit) as raised:
        parse(["--flagfile=" + top])
    if "%s" in message:
        message %= (os.path.join(tmp_path, "cfg", "gone.cfg"), top)
    # sys.exit(str): status 1, the string is the one line on stderr.
    err = raised.value.code
    assert isinstance(err, str) and err.startswith("error: "), err
    assert message in err and "\n" not in err, err
