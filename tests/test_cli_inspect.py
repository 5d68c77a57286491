"""bin/inspect_triplets: flags -> a PNG grid of sampled triplets."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.features import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(path, num_recordings=8, windows=4):
    os.makedirs(path)
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(
            os.path.join(path, records.shard_name(0, 1))) as writer:
        for r in range(num_recordings):
            logmel = rng.normal(size=(windows,) + C.WINDOW_SHAPE) - 2.0
            start = np.arange(windows) * C.WINDOW_SECONDS
            writer.write(records.make_example(
                logmel, start, "rec%d" % r).SerializeToString())
    return path


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "bin",
                                                        "inspect_triplets")]
                          + list(args), capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_writes_png_grid(tmp_path):
    corpus = _corpus(str(tmp_path / "corpus"))
    out = str(tmp_path / "grid.png")
    proc = _run("--train_data=" + corpus, "--sampler=translation",
                "--output=" + out, "--num_triplets=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out) > 5000


def test_bad_flags_one_line_error(tmp_path):
    corpus = _corpus(str(tmp_path / "corpus"))
    proc = _run("--train_data=" + corpus, "--sampler=bogus",
                "--output=" + str(tmp_path / "x.png"))
    assert proc.returncode != 0
    assert "--sampler" in proc.stderr.strip().splitlines()[-1]
    proc = _run("--sampler=noise", "--output=" + str(tmp_path / "x.png"))
    assert proc.returncode != 0
    assert "--train_data" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(str(tmp_path / "x.png"))


def test_corrupt_record_is_a_one_line_error_naming_the_shard(tmp_path):
    corpus = _corpus(str(tmp_path / "corpus"))
    shard = records.list_shards(corpus)[0]
    with open(shard, "r+b") as f:  # a payload byte of the first record
        f.seek(12 + 100)
        byte = f.read(1)
        f.seek(12 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    out = str(tmp_path / "grid.png")
    proc = _run("--train_data=" + corpus, "--sampler=noise",
                "--output=" + out, "--num_triplets=3")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "%s: corrupt record at byte 0" % shard in last, last
    assert "--skip_corrupt" in last
    assert not os.path.exists(out)
