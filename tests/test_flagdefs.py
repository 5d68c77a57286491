"""flagdefs: every binary's flag group can be defined in one process."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("corpus", "extract", "embed", "evaluate", "sampler", "train",
          "export", "inspect", "demo", "data_service", "index", "search")


@pytest.mark.parametrize("order", [GROUPS, GROUPS[::-1],
                                   GROUPS[1::2] + GROUPS[::2]])
def test_all_flag_groups_coexist(order):
    # A fresh interpreter per order: absl's FLAGS is process-global.
    code = ("from triplet_audio.cli import flagdefs as f\n" +
            "".join("f.define_%s_flags()\n" % g for g in order) +
            "print(sorted(f.FLAGS)[:1])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_shared_flags_are_defined_once_in_the_module():
    """A flag name shared by groups must go through _define_if_missing."""
    with open(os.path.join(REPO, "triplet_audio", "cli", "flagdefs.py")) as f:
        text = f.read()
    for name in ("output_dir", "workers", "seed", "input", "model_dir",
                 "train_data", "output"):
        direct = text.count('DEFINE_string("%s"' % name) + text.count(
            'DEFINE_integer("%s"' % name)
        assert direct == 0, name


def test_groups_are_idempotent():
    code = ("from triplet_audio.cli import flagdefs as f\n"
            + "".join("f.define_%s_flags()\nf.define_%s_flags()\n" % (g, g)
                      for g in GROUPS))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
