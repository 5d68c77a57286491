"""Tests of extract and bin/extract_features on the generated fixtures."""

import json
import logging as std_logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from testdata import make_fixtures as F
from triplet_audio.features import audio_io
from triplet_audio import constants as C
from triplet_audio.features import extract
from triplet_audio.features import frontend
from triplet_audio.features import inputs
from triplet_audio.features import records
from triplet_audio.features import shards

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO_ROOT, "bin", "extract_features")
WINDOW_SECONDS = C.WINDOW_HOP_SAMPLES / float(C.SAMPLE_RATE)


def _audio(fixtures_dir, rel=""):
    return os.path.join(fixtures_dir, F.AUDIO_DIR, rel)


def _read_all(corpus):
    """Every record of a corpus as NumPy dicts, in shard order."""
    out = []
    for path in records.list_shards(corpus):
        for ex in records.records_from_paths([path]).as_numpy_iterator():
            ex["shard"] = os.path.basename(path)
            out.append(ex)
    return out


@pytest.fixture(scope="module")
def dir_run(fixtures_dir, tmp_path_factory):
    """One extraction of the fixture directory (every good and bad file)."""
    out = str(tmp_path_factory.mktemp("dir_run"))
    config = extract.ExtractConfig(input=_audio(fixtures_dir), output_dir=out,
                                   num_shards=3, workers=1)
    return out, extract.run(config)


@pytest.fixture(scope="module")
def csv_run(fixtures_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("csv_run"))
    config = extract.ExtractConfig(
        input=os.path.join(fixtures_dir, F.LABELS_CSV), output_dir=out,
        num_shards=2, workers=1)
    return out, extract.run(config)


def test_manifest_counts_match_the_records(dir_run):
    out, summary = dir_run
    with open(os.path.join(out, records.MANIFEST_NAME)) as f:
        manifest = json.load(f)
    assert manifest == {k: v for k, v in summary.items() if k not in (
        "resumed_shards", "seconds", "startup_seconds", "busy_seconds")}
    assert manifest["frontend"] == C.frontend_params()
    assert manifest["num_shards"] == 3
    examples = _read_all(out)
    totals = manifest["totals"]
    assert totals["records"] == len(examples)
    assert totals["windows"] == sum(int(e[records.NUM_WINDOWS])
                                    for e in examples)
    assert totals["recordings"] == len({e[records.RECORDING_ID]
                                        for e in examples})
    assert totals["files"] == len(F.GOOD) + sum(len(v) for v in F.BAD.values())
    for shard in manifest["shards"]:
        mine = [e for e in examples if e["shard"] == shard["name"]]
        assert shard["records"] == len(mine)
        assert shard["windows"] == sum(int(e[records.NUM_WINDOWS])
                                       for e in mine)
        summary_path = os.path.join(
            out, shards.shard_summary_name(manifest["shards"].index(shard),
                                            3))
        with open(summary_path) as f:
            assert json.load(f)["records"] == shard["records"]
    assert not [n for n in os.listdir(out) if n.endswith(records.TEMP_SUFFIX)]


def test_record_windows_equal_the_whole_file_front_end(dir_run, fixtures_dir):
    out, _ = dir_run
    examples = _read_all(out)
    assert {e[records.SOURCE_PATH].decode() for e in examples} == {
        _audio(fixtures_dir, rel) for rel in F.GOOD}
    for e in examples:
        path = e[records.SOURCE_PATH].decode()
        expected = frontend.waveform_to_windows(
            audio_io.load_audio(path)).numpy()
        # Same samples through the same graph: equal to float rounding; a
        # window placed one sample off would differ by orders more.
        np.testing.assert_allclose(e[records.LOGMEL], expected, rtol=0,
                                   atol=1e-5)
        np.testing.assert_allclose(
            e[records.START_TIMES],
            np.arange(expected.shape[0]) * WINDOW_SECONDS, atol=1e-6)
        assert e[records.CHUNK_INDEX] == 0
        rel = os.path.relpath(path, _audio(fixtures_dir))
        assert e[records.RECORDING_ID].decode() == os.path.splitext(rel)[0]
    # The ~3 s file gives three different windows.
    long_file = [e for e in examples if e[records.SOURCE_PATH].decode() ==
                 _audio(fixtures_dir, F.LONG)]
    assert long_file[0][records.NUM_WINDOWS] == 3


def test_bad_files_fail_with_their_reason_and_good_ones_survive(
        dir_run, fixtures_dir):
    _, summary = dir_run
    failures = {f["path"]: f["error"] for f in summary["failures"]}
    expected = {_audio(fixtures_dir, rel): kind
                for kind, rels in F.BAD.items() for rel in rels}
    assert set(failures) == set(expected)
    for path, kind in expected.items():
        assert failures[path].startswith(kind + ":"), failures[path]
    assert summary["totals"]["recordings"] == len(F.GOOD)
    assert summary["skipped"] == []
    assert summary["warnings"] == [
        {"path": _audio(fixtures_dir, F.SILENT),
         "warning": "silent: every sample is zero"}]


def test_exit_code_policy(dir_run):
    _, summary = dir_run
    assert summary["totals"]["failed"] > 0
    assert extract.exit_code(summary, strict=False) == 0
    assert extract.exit_code(summary, strict=True) == 1
    nothing = dict(summary, totals=dict(summary["totals"], recordings=0))
    assert extract.exit_code(nothing, strict=False) == 1


def test_csv_labels_splits_and_vocabulary(csv_run, fixtures_dir):
    out, summary = csv_run
    names = sorted({l for _, labels, _ in F.CSV_ROWS
                    for l in labels.split(";") if l})
    assert summary["classes"] == names
    rows = {_audio(fixtures_dir, rel): (labels, split)
            for rel, labels, split in F.CSV_ROWS}
    examples = _read_all(out)
    assert len(examples) == summary["totals"]["records"] > 0
    for e in examples:
        labels, split = rows[e[records.SOURCE_PATH].decode()]
        got = sorted(names[i] for i in e[records.LABELS])
        assert got == sorted(l for l in labels.split(";") if l)
        assert e[records.SPLIT].decode() == split
    failed = {f["path"]: f["error"] for f in summary["failures"]}
    assert set(failed) == {_audio(fixtures_dir, F.MISSING),
                           _audio(fixtures_dir, "bad/truncated.wav")}
    assert failed[_audio(fixtures_dir, F.MISSING)].startswith(
        audio_io.KIND_UNREADABLE)


def test_short_clip_is_padded_or_skipped(fixtures_dir, tmp_path):
    path = _audio(fixtures_dir, F.SHORT)
    item = inputs.InputItem(path, "short")
    serialized, result = shards.process_file(item, pad_short=True)
    assert result.status == shards.STATUS_OK and len(serialized) == 1
    got = records.example_to_numpy(
        tf.train.Example.FromString(serialized[0]))
    expected = frontend.waveform_to_windows(audio_io.load_audio(path),
                                            pad_short=True).numpy()
    np.testing.assert_allclose(got[records.LOGMEL], expected, atol=1e-5)

    serialized, result = shards.process_file(item, pad_short=False)
    assert serialized == [] and result.status == shards.STATUS_SKIPPED
    assert "shorter than one window" in result.reason

    # Skipped is not failed: a run of only short clips still "succeeds" at
    # nothing, and says so.
    src = tmp_path / "in"
    src.mkdir()
    os.symlink(path, src / "short.wav")
    os.symlink(_audio(fixtures_dir, F.TONES[8000]), src / "tone.wav")
    summary = extract.run(extract.ExtractConfig(
        input=str(src), output_dir=str(tmp_path / "out"), num_shards=1,
        workers=1, pad_short=False))
    assert [s["path"] for s in summary["skipped"]] == [str(src / "short.wav")]
    assert summary["failures"] == []
    assert summary["totals"]["recordings"] == 1


def test_long_recording_is_chunked(tmp_path, monkeypatch):
    # A small record limit stands in for a > 4 min recording; small blocks
    # make the stream buffer carry samples across several front-end calls.
    monkeypatch.setattr(C, "MAX_WINDOWS_PER_RECORD", 3)
    rate, seconds = 22050, 10.3
    path = str(tmp_path / "long.flac")
    rng = np.random.default_rng(1)
    sf.write(path, 0.2 * rng.standard_normal(int(rate * seconds)), rate,
             format="FLAC")
    item = inputs.InputItem(path, "long", labels=(2,), split="train")
    serialized, result = shards.process_file(item, block_frames=5000)
    chunks = [records.example_to_numpy(tf.train.Example.FromString(s))
              for s in serialized]
    expected = frontend.waveform_to_windows(audio_io.load_audio(path)).numpy()
    assert expected.shape[0] == 10
    assert [c[records.CHUNK_INDEX] for c in chunks] == [0, 1, 2, 3]
    assert [c[records.NUM_WINDOWS] for c in chunks] == [3, 3, 3, 1]
    assert result.num_records == 4 and result.num_windows == 10
    assert {c[records.RECORDING_ID] for c in chunks} == {"long"}
    assert all(list(c[records.LABELS]) == [2] for c in chunks)
    starts = np.concatenate([c[records.START_TIMES] for c in chunks])
    np.testing.assert_allclose(starts, np.arange(10) * WINDOW_SECONDS,
                               atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([c[records.LOGMEL] for c in chunks]), expected,
        rtol=0, atol=1e-5)


def _make_resume_input(root, fixtures_dir):
    """16 short files of distinct content, plus one broken one."""
    rng = np.random.default_rng(7)
    for i in range(16):
        t = np.arange(int(8000 * (1.0 + (i % 3)))) / 8000.0
        x = 0.3 * np.sin(2 * np.pi * (300 + 97 * i) * t) + 0.01 * (
            rng.standard_normal(t.shape[0]))
        sf.write(os.path.join(root, "clip_%02d.wav" % i), x, 8000,
                 subtype="PCM_16")
    os.symlink(_audio(fixtures_dir, "bad/nan.wav"),
               os.path.join(root, "broken.wav"))


def _binary(*args):
    return [sys.executable, BINARY] + list(args)


def _listing(directory):
    return sorted(os.listdir(directory))


def test_kill_and_resume_gives_the_uninterrupted_output(tmp_path,
                                                        fixtures_dir):
    src = tmp_path / "in"
    src.mkdir()
    _make_resume_input(str(src), fixtures_dir)
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")

    # The binary with a pool of two workers, in its own session so that the
    # kill takes the workers with it.
    proc = subprocess.Popen(
        _binary("--input=%s" % src, "--output_dir=" + killed,
                "--num_shards=8", "--workers=2"),
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        visible = []
        while proc.poll() is None and not visible:
            try:
                visible = records.list_shards(killed)
            except FileNotFoundError:
                time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    proc.stderr.close()
    assert not os.path.exists(os.path.join(killed, records.MANIFEST_NAME))
    visible = records.list_shards(killed)
    assert 1 <= len(visible) < 8
    for shard in visible:  # Whatever is visible is complete.
        records.check_shard_framing(shard)
        assert os.path.exists(shard[:-len(records.SHARD_SUFFIX)] +
                              records.SUMMARY_SUFFIX)
    first = os.stat(visible[0])

    def config(out):
        return extract.ExtractConfig(input=str(src), output_dir=out,
                                     num_shards=8, workers=1)

    resumed = extract.run(config(killed))
    assert resumed["resumed_shards"] >= len(visible)
    after = os.stat(visible[0])  # Kept, not rewritten.
    assert (after.st_ino, after.st_mtime_ns) == (first.st_ino,
                                                 first.st_mtime_ns)
    extract.run(config(clean))

    assert _listing(killed) == _listing(clean)
    assert records.MANIFEST_NAME in _listing(clean)
    assert len(records.list_shards(clean)) == 8
    for name in _listing(clean):
        with open(os.path.join(killed, name), "rb") as a, open(
                os.path.join(clean, name), "rb") as b:
            assert a.read() == b.read(), name


@pytest.mark.parametrize("args,flag", [
    (["--input=x", "--output_dir=y", "--num_shards=0"], "--num_shards"),
    (["--output_dir=y"], "--input"),
    (["--input=x"], "--output_dir"),
    (["--input=x", "--output_dir=y", "--workers=-1"], "--workers"),
])
def test_bad_flags_exit_non_zero_naming_the_flag(args, flag):
    result = subprocess.run(_binary(*args), cwd=REPO_ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if flag in l]
    assert lines, result.stderr
    assert "Traceback" not in result.stderr


def test_main_reports_unusable_settings(tmp_path, fixtures_dir, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def config(**kw):
        kw.setdefault("input", _audio(fixtures_dir))
        kw.setdefault("output_dir", str(tmp_path / "out"))
        return lambda: extract.ExtractConfig(**kw)

    cases = [
        (config(runner="NoSuchRunner"), "runner:"),
        (config(output_dir=str(blocker / "out")), "output_dir:"),
        (config(input=str(tmp_path / "nope")), "input:"),
        (config(extensions=","), "extensions:"),
        (config(num_shards=0), "num_shards:"),
    ]
    for make_config, message in cases:
        caplog.clear()
        assert extract.main(make_config) == 2
        errors = [r.getMessage() for r in caplog.records
                  if r.levelno >= std_logging.ERROR]
        # One line, naming the field (= the flag) first.
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert message in errors[0], errors


@pytest.mark.parametrize("kwargs,field", [
    ({"num_shards": 0}, "num_shards"),
    ({"num_shards": True}, "num_shards"),
    ({"workers": -1}, "workers"),
    ({"input": ""}, "input"),
    ({"output_dir": None}, "output_dir"),
    ({"extensions": ()}, "extensions"),
    ({"runner": ""}, "runner"),
])
def test_config_validation_names_the_field(kwargs, field):
    args = dict(input="in", output_dir="out")
    args.update(kwargs)
    with pytest.raises(ValueError, match="^" + field):
        extract.ExtractConfig(**args)


def test_config_normalises_extensions_and_workers():
    config = extract.ExtractConfig(input="in", output_dir="out",
                                   extensions=".WAV, flac")
    assert config.extensions == ("wav", "flac")
    assert config.resolved_workers == os.cpu_count()
    assert extract.ExtractConfig("in", "out", workers=3).resolved_workers == 3


def test_discover_directory_glob_and_csv(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("b.wav", "a.WAV", "sub/c.flac", "sub/c.wav", "notes.txt",
                ".hidden/x.wav", "sub/._c.wav"):
        (root / rel).write_bytes(b"")
    items, classes = inputs.discover_inputs(str(root), ("wav", "flac"))
    assert classes == []
    assert [i.recording_id for i in items] == [
        "a", "b", "sub/c.flac", "sub/c.wav"]  # c.* keep their extension.
    assert [i.path for i in items] == sorted(i.path for i in items)

    items, _ = inputs.discover_inputs(str(root / "sub" / "*.wav"))
    assert [i.recording_id for i in items] == ["c"]

    csv_path = root / "list.csv"
    csv_path.write_text("b.wav,dog;cat,train\nsub/c.wav,cat\n\n")
    items, classes = inputs.discover_inputs(str(csv_path))
    assert classes == ["cat", "dog"]  # No header row here.
    assert [(i.recording_id, i.labels, i.split) for i in items] == [
        ("b", (0, 1), "train"), ("sub/c", (0,), "")]

    csv_path.write_text("path,labels\nb.wav,x\nsub/../b.wav,y\n")
    with pytest.raises(inputs.ExtractError, match="twice"):
        inputs.discover_inputs(str(csv_path))
    csv_path.write_text("path,labels,split\n")
    with pytest.raises(inputs.ExtractError, match="^input: CSV"):
        inputs.discover_inputs(str(csv_path))
    with pytest.raises(inputs.ExtractError, match="^input: no files"):
        inputs.discover_inputs(str(root / "sub"), ("mp3",))


def test_output_dir_of_another_extraction_is_refused(tmp_path, fixtures_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / records.shard_name(0, 5)).write_bytes(b"")
    config = extract.ExtractConfig(input=_audio(fixtures_dir, "tones"),
                                   output_dir=str(out), num_shards=2,
                                   workers=1)
    with pytest.raises(inputs.ExtractError, match="another extraction"):
        extract.run(config)


def test_rerun_on_other_inputs_redoes_stale_shards(tmp_path, fixtures_dir):
    out = str(tmp_path / "out")
    first = extract.run(extract.ExtractConfig(
        input=_audio(fixtures_dir, "tones"), output_dir=out, num_shards=2,
        workers=1))
    assert first["resumed_shards"] == 0
    second = extract.run(extract.ExtractConfig(
        input=_audio(fixtures_dir, "speechlike"), output_dir=out,
        num_shards=2, workers=1))
    assert second["resumed_shards"] == 0
    sources = {e[records.SOURCE_PATH].decode() for e in _read_all(out)}
    assert sources == {_audio(fixtures_dir, rel) for rel in F.GOOD
                       if rel.startswith("speechlike/")}
    third = extract.run(extract.ExtractConfig(
        input=_audio(fixtures_dir, "speechlike"), output_dir=out,
        num_shards=2, workers=1))
    assert third["resumed_shards"] == 2
