"""The installed commands (setup.py's entry points) and bin/*: one code path.

setup.py installs triplet-audio-NAME for each bin/NAME (and `triplet-audio
NAME`), all functions of triplet_audio/cli/commands.py; bin/NAME calls the
same function. The installed commands are run by name from the environment's
bin directory (skipped, saying why, where the package is not installed:
`pip install -e .`, which `make test` does).
"""

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import setuptools

from triplet_audio.cli import commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin")
BINARIES = sorted(n for n in os.listdir(BIN) if not n.startswith((".", "_")))
# Children print no TensorFlow start-up lines, so stderr is theirs alone.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _setup_kwargs():
    """The keyword arguments setup.py passes to setuptools.setup."""
    with mock.patch.object(setuptools, "setup") as setup:
        code = compile(open(os.path.join(REPO, "setup.py")).read(),
                       "setup.py", "exec")
        exec(code, {"__name__": "__main__",  # pylint: disable=exec-used
                    "__file__": os.path.join(REPO, "setup.py")})
    return setup.call_args.kwargs


def _console_scripts():
    """{command name: "module:function"} from setup.py."""
    scripts = _setup_kwargs()["entry_points"]["console_scripts"]
    return dict(re.fullmatch(r"\s*(\S+)\s*=\s*(\S+)\s*", s).groups()
                for s in scripts)


def _installed(name):
    """Path of an installed command, or skips the test."""
    for path in (os.path.join(os.path.dirname(sys.executable), name),
                 shutil.which(name)):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.skip("%s is not installed (not beside %s, not on the PATH): "
                "run `pip install -e .` (make test does)"
                % (name, sys.executable))


def _run(argv, cwd=REPO):
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300, check=False)


def _one_line(stderr):
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_every_binary_is_installed_under_a_namespaced_name():
    kwargs = _setup_kwargs()
    assert "scripts" not in kwargs  # No bare train, export, ... on the PATH.
    expected = {"triplet-audio-" + b.replace("_", "-"): "%s:%s" % (
        commands.__name__, b) for b in BINARIES}
    expected["triplet-audio"] = commands.__name__ + ":main"
    assert _console_scripts() == expected
    assert sorted(commands.COMMANDS) == BINARIES


def test_entry_points_resolve_to_callables():
    for name, target in _console_scripts().items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


@pytest.mark.parametrize("name", BINARIES)
def test_bin_file_calls_the_installed_function(name):
    with open(os.path.join(BIN, name)) as f:
        calls = re.findall(r"commands\.(\w+)\(\)", f.read())
    assert calls == [name]
    assert commands.COMMANDS[name] is getattr(commands, name)


def test_installed_entry_points_are_setup_pys():
    try:
        dist = importlib.metadata.distribution("triplet-audio")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("triplet-audio is not installed: run `pip install -e .`")
    installed = {e.name: e.value for e in dist.entry_points
                 if e.group == "console_scripts"}
    assert installed == _console_scripts(), (
        "the installed entry points are stale: run `pip install -e .`")


def test_installed_train_help_is_bin_trains():
    proc = _run([_installed("triplet-audio-train"), "--help"])
    checkout = _run([sys.executable, os.path.join("bin", "train"), "--help"])
    assert "--sampler:" in proc.stdout and "--train_data:" in proc.stdout
    # absl's --help exits 1, both ways; the text differs only in the name of
    # the program above the flags.
    assert proc.returncode == checkout.returncode, proc.stderr[-3000:]
    assert proc.stdout.replace(
        os.path.join(os.path.dirname(_installed("triplet-audio-train")),
                     "triplet-audio-train") + ":",
        "bin/train:") == checkout.stdout


def test_installed_evaluate_with_a_missing_flag_fails_in_one_line(tmp_path):
    proc = _run([_installed("triplet-audio-evaluate"),
                 "--train=%s" % (tmp_path / "train.npz")], cwd=tmp_path)
    assert proc.returncode != 0
    assert _one_line(proc.stderr) == "error: --eval is required"
    assert not list(tmp_path.iterdir())


def test_installed_train_reads_a_table_1_file_from_anywhere(tmp_path):
    # paper_base.cfg, included by noise.cfg, is found beside it: the error is
    # the missing --train_data, after every flag file was read.
    proc = _run([_installed("triplet-audio-train"),
                 "--flagfile=" + os.path.join(REPO, "flags", "noise.cfg"),
                 "--model_dir=%s" % (tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--train_data" in last, (
        proc.stderr[-3000:])
    assert not (tmp_path / "run").exists()


def test_triplet_audio_runs_sub_commands(tmp_path):
    program = _installed("triplet-audio")
    listing = _run([program, "--help"])
    assert listing.returncode == 0
    for name in BINARIES:
        assert name.replace("_", "-") in listing.stdout, name
    proc = _run([program, "evaluate", "--train=x.npz"], cwd=tmp_path)
    assert proc.returncode != 0
    assert _one_line(proc.stderr) == "error: --eval is required"
    proc = _run([program, "fly"], cwd=tmp_path)
    assert proc.returncode != 0
    assert _one_line(proc.stderr).startswith("error: unknown command 'fly'")
    assert _run([program], cwd=tmp_path).returncode != 0
