"""Tests of triplet_audio.features.records: schema round trip, shard listing, reader."""

import collections
import json
import os
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.features import records

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Records per shard of the `corpus` fixture; uneven on purpose.
_SHARD_SIZES = (4, 3, 5)

# Bytes of TFRecord framing around each payload: length (8), its CRC (4),
# then the payload's CRC (4).
_HEADER_BYTES = 12


def _logmel(num_windows, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(-2.0, 1.5, (num_windows,) + C.WINDOW_SHAPE).astype(
        np.float32)


def _start_times(num_windows, first=0.0):
    return first + C.WINDOW_SECONDS * np.arange(num_windows, dtype=np.float32)


def _write_shard(path, examples):
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def _record_offsets(path):
    """Byte offset and payload length of every record of a TFRecord file."""
    with open(path, "rb") as f:
        data = f.read()
    offsets = []
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        offsets.append((offset, length))
        offset += _HEADER_BYTES + length + 4
    return offsets


def _ids(dataset):
    return collections.Counter(
        r[records.RECORDING_ID].decode("utf-8")
        for r in dataset.as_numpy_iterator())


@pytest.fixture
def corpus(tmp_path):
    """A corpus dir of 3 shards, its summaries, manifest and a temp file.

    Returns:
      (directory, list of shard paths, list of recording ids per shard).
    """
    paths, ids = [], []
    for shard, size in enumerate(_SHARD_SIZES):
        shard_ids = ["rec-%d-%d" % (shard, i) for i in range(size)]
        examples = [
            records.make_example(_logmel(1 + i % 2, seed=10 * shard + i),
                                 _start_times(1 + i % 2), rid, labels=[shard])
            for i, rid in enumerate(shard_ids)]
        path = str(tmp_path / records.shard_name(shard, len(_SHARD_SIZES)))
        _write_shard(path, examples)
        with open(path[:-len(records.SHARD_SUFFIX)] + ".json", "w") as f:
            json.dump({"num_records": size}, f)
        paths.append(path)
        ids.append(shard_ids)
    with open(tmp_path / records.MANIFEST_NAME, "w") as f:
        json.dump({"vocabulary": ["a", "b", "c"]}, f)
    # A writer's unfinished shard: garbage that must never be read.
    with open(tmp_path / (records.shard_name(3, 4) + records.TEMP_SUFFIX),
              "wb") as f:
        f.write(b"\xff" * 100)
    return str(tmp_path), paths, ids


# --- schema -------------------------------------------------------------


_ROUND_TRIP_CASES = [
    dict(num_windows=1, labels=(), recording_id="plain", split="",
         source_path=""),
    dict(num_windows=3, labels=(7,), recording_id="spk01/utt 3", split="train",
         source_path="/data/a.wav"),
    dict(num_windows=2, labels=(0, 3, 526), recording_id="récit-日本語-🎵",
         split="évaluation", source_path="/données/音声/ü.flac"),
    dict(num_windows=0, labels=(), recording_id="empty", split="",
         source_path=""),
]


@pytest.mark.parametrize("case", _ROUND_TRIP_CASES,
                         ids=lambda c: "%dw_%dlabels" % (c["num_windows"],
                                                         len(c["labels"])))
def test_round_trip_is_exact(case):
    w = case["num_windows"]
    logmel = _logmel(w, seed=w)
    starts = _start_times(w, first=12.48)
    example = records.make_example(
        logmel, starts, case["recording_id"], labels=case["labels"],
        chunk_index=w, split=case["split"], source_path=case["source_path"])
    parsed = records.parse_example(
        tf.constant(example.SerializeToString()))

    assert parsed[records.LOGMEL].dtype == tf.float32
    np.testing.assert_array_equal(parsed[records.LOGMEL].numpy(), logmel)
    assert parsed[records.NUM_WINDOWS].numpy() == w
    np.testing.assert_array_equal(parsed[records.START_TIMES].numpy(), starts)
    assert parsed[records.RECORDING_ID].numpy().decode("utf-8") == (
        case["recording_id"])
    assert parsed[records.CHUNK_INDEX].numpy() == w
    assert parsed[records.LABELS].dtype == tf.int64
    assert parsed[records.LABELS].numpy().tolist() == list(case["labels"])
    assert parsed[records.SPLIT].numpy().decode("utf-8") == case["split"]
    assert parsed[records.SOURCE_PATH].numpy().decode("utf-8") == (
        case["source_path"])

    # The pure-Python decoder agrees with the TF one, key for key.
    as_numpy = records.example_to_numpy(example)
    assert set(as_numpy) == set(parsed)
    for key, value in parsed.items():
        value = value.numpy()
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        np.testing.assert_array_equal(as_numpy[key], value, err_msg=key)


def test_logmel_bytes_are_little_endian_float32():
    logmel = _logmel(2, seed=3)
    example = records.make_example(logmel, _start_times(2), "r")
    raw = example.features.feature[records.LOGMEL].bytes_list.value[0]
    np.testing.assert_array_equal(
        np.frombuffer(raw, "<f4").reshape(logmel.shape), logmel)


def test_parse_example_in_dataset_map_equals_eager():
    serialized = [
        records.make_example(_logmel(w, seed=w), _start_times(w), "r%d" % w,
                             labels=range(w)).SerializeToString()
        for w in (1, 2, 3)]
    mapped = list(tf.data.Dataset.from_tensor_slices(serialized)
                  .map(records.parse_example).as_numpy_iterator())
    for s, got in zip(serialized, mapped):
        eager = records.parse_example(tf.constant(s))
        for key, value in eager.items():
            np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("logmel_shape,num_starts", [
    (C.WINDOW_SHAPE, 1),  # missing the window axis
    ((1, C.NUM_MEL_BANDS, C.WINDOW_FRAMES), 1),  # transposed
    ((1, C.WINDOW_FRAMES, C.NUM_MEL_BANDS - 1), 1),
    ((2, C.WINDOW_FRAMES, C.NUM_MEL_BANDS), 1),  # start times disagree
    ((1, C.WINDOW_FRAMES, C.NUM_MEL_BANDS), 3),
])
def test_make_example_rejects_bad_shapes(logmel_shape, num_starts):
    with pytest.raises(ValueError):
        records.make_example(np.zeros(logmel_shape, np.float32),
                             np.zeros(num_starts), "r")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_make_example_rejects_non_finite(bad):
    logmel = _logmel(2, seed=0)
    logmel[1, 50, 3] = bad
    with pytest.raises(ValueError, match="bad-recording"):
        records.make_example(logmel, _start_times(2), "bad-recording")


# --- listing and reading shards -------------------------------------------


def test_read_records_directory_yields_every_record(corpus):
    directory, _, ids = corpus
    assert _ids(records.read_records(directory)) == collections.Counter(
        sum(ids, []))


def test_read_records_glob_and_comma_forms(corpus):
    directory, paths, ids = corpus
    every = collections.Counter(sum(ids, []))
    assert _ids(records.read_records(
        os.path.join(directory, "shard-*"))) == every
    assert _ids(records.read_records(
        os.path.join(directory, "*"))) == every
    # Comma-separated, overlapping globs: each shard is read once.
    pattern = ",".join([paths[0], os.path.join(directory, "shard-0000[12]*"),
                        " " + paths[2], ""])
    assert _ids(records.read_records(pattern)) == every
    assert _ids(records.read_records(paths[1])) == collections.Counter(ids[1])


def test_read_records_with_shuffled_files_still_reads_everything(corpus):
    directory, _, ids = corpus
    ds = records.read_records(directory, shuffle_files=True, seed=3,
                              deterministic=False)
    assert _ids(ds) == collections.Counter(sum(ids, []))


def test_list_shards_ignores_temp_and_summary_files(corpus):
    directory, paths, _ = corpus
    for pattern in (directory, os.path.join(directory, "*"),
                    os.path.join(directory, "shard-*")):
        assert records.list_shards(pattern) == sorted(paths), pattern


@pytest.mark.parametrize("suffix", ["", "/*.tfrecord", "/nothing-*"])
def test_list_shards_names_the_pattern_when_nothing_matches(tmp_path, suffix):
    pattern = str(tmp_path / "empty") + suffix
    os.makedirs(tmp_path / "empty")
    with open(tmp_path / "empty" / ("x.tfrecord" + records.TEMP_SUFFIX),
              "w") as f:
        f.write("partial")
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
        records.list_shards(pattern)
    with pytest.raises(FileNotFoundError):
        records.read_records(pattern)


@pytest.mark.parametrize("cut", ["payload", "header"])
def test_truncated_shard_is_named_or_skipped(corpus, cut):
    directory, paths, ids = corpus
    offsets = _record_offsets(paths[1])
    assert [records.check_shard_framing(p) for p in paths] == list(
        _SHARD_SIZES)
    last_offset, _ = offsets[-1]
    keep = last_offset + (_HEADER_BYTES + 10 if cut == "payload" else 5)
    with open(paths[1], "r+b") as f:
        f.truncate(keep)

    with pytest.raises(records.CorruptShardError) as raised:
        records.read_records(directory)
    assert paths[1] in str(raised.value)

    records.SKIPPED.reset()
    ds = records.read_records(directory, skip_corrupt=True)
    # The records before the cut are intact and read; the cut one is counted.
    assert _ids(ds) == collections.Counter(ids[0] + ids[1][:-1] + ids[2])
    assert records.skip_report()["records"] == 1


def test_every_shard_truncated_raises(corpus):
    directory, paths, _ = corpus
    for path in paths:
        with open(path, "r+b") as f:
            f.truncate(_HEADER_BYTES + 1)
    with pytest.raises(records.CorruptShardError, match="every shard"):
        records.read_records(directory, skip_corrupt=True)


def _flip_payload_byte(path, record_index, where="payload"):
    offset, length = _record_offsets(path)[record_index]
    # "header": a byte of the length's own checksum, so the framing still
    # walks and only the reader's header check can catch it.
    position = (offset + 9 if where == "header"
                else offset + _HEADER_BYTES + length // 2)
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_flipped_byte_raises_data_loss_naming_the_shard(corpus, where):
    directory, paths, _ = corpus
    _flip_payload_byte(paths[1], record_index=1, where=where)
    # The framing is intact, so only the reader's checksums can catch it.
    assert records.check_shard_framing(paths[1]) == _SHARD_SIZES[1]
    with pytest.raises(tf.errors.DataLossError) as raised:
        list(records.read_records(directory))
    # TensorFlow's message has the offset but not the file; the shard is
    # found from the offset.
    offset = _record_offsets(paths[1])[1][0]
    assert records.locate_corrupt_records(paths, raised.value) == [
        (paths[1], offset)]
    error = records.data_loss_error(paths, raised.value)
    assert isinstance(error, records.CorruptShardError)
    assert "%s: corrupt record at byte %d" % (paths[1], offset) in str(error)
    assert "--skip_corrupt" in str(error)


def test_data_loss_without_a_located_record_lists_the_shards(corpus):
    _, paths, _ = corpus
    # Intact shards: whatever record the offset names passes its checksum.
    offset = _record_offsets(paths[0])[1][0]
    message = "corrupted record at %d" % offset
    assert records.locate_corrupt_records(paths, message) == []
    assert records.locate_corrupt_records(paths, "no offset here") == []
    error = str(records.data_loss_error(paths, message))
    assert "one of %d shards" % len(paths) in error and paths[0] in error
    assert message in error and "--skip_corrupt" in error


_READ_IDS_SCRIPT = textwrap.dedent("""
    import json, sys
    from triplet_audio.features import records
    ds = records.read_records(sys.argv[1], skip_corrupt=True)
    print(json.dumps([r[records.RECORDING_ID].decode("utf-8")
                      for r in ds.as_numpy_iterator()]))
""")


def test_flipped_byte_is_skipped_without_hanging(corpus):
    directory, paths, ids = corpus
    _flip_payload_byte(paths[1], record_index=1)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    # A subprocess, so that a reader stuck retrying the bad record fails the
    # test instead of hanging the whole run.
    try:
        result = subprocess.run(
            [sys.executable, "-c", _READ_IDS_SCRIPT, directory], env=env,
            capture_output=True, text=True, timeout=180, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("read_records(skip_corrupt=True) hung on a corrupt record")
    last_line = result.stdout.strip().splitlines()[-1]
    got = collections.Counter(json.loads(last_line))
    assert all(n == 1 for n in got.values())
    # Every other shard is read in full, and the records before the bad one.
    assert set(ids[0] + ids[2] + ids[1][:1]) <= set(got)
    assert ids[1][1] not in got
    assert set(got) <= set(sum(ids, []))


# --- manifest -------------------------------------------------------------


def test_load_manifest_accepts_dir_glob_and_path(corpus):
    directory, paths, _ = corpus
    want = {"vocabulary": ["a", "b", "c"]}
    assert records.load_manifest(directory) == want
    assert records.load_manifest(os.path.join(directory, "shard-*")) == want
    assert records.load_manifest(",".join(paths)) == want
    assert records.load_manifest(
        os.path.join(directory, records.MANIFEST_NAME)) == want


def test_load_manifest_missing_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        records.load_manifest(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        records.load_manifest(str(tmp_path / "shard-*"))


def test_load_manifest_invalid_json_names_the_file(tmp_path):
    path = tmp_path / records.MANIFEST_NAME
    path.write_text('{"vocabulary": [')
    with pytest.raises(ValueError, match=re.escape(str(path))):
        records.load_manifest(str(tmp_path))


# --- front-end parameters checked on read ---------------------------------


def _write_manifest(directory, **frontend_changes):
    """A manifest as extraction writes it, front end changed as given."""
    frontend = dict(C.frontend_params(), **frontend_changes)
    with open(os.path.join(directory, records.MANIFEST_NAME), "w") as f:
        json.dump({"frontend": frontend, "classes": ["a", "b", "c"]}, f)


def test_check_frontend_params_names_both_values():
    records.check_frontend_params(C.frontend_params(), "corpus /x")
    changed = dict(C.frontend_params(), mel_upper_hz=8000.0)
    with pytest.raises(records.FrontendMismatchError) as e:
        records.check_frontend_params(changed, "corpus /x")
    assert str(e.value) == ("corpus /x was made with mel_upper_hz=8000.0, "
                            "this code uses %r; re-extract it" %
                            C.MEL_UPPER_HZ)
    assert isinstance(e.value, ValueError)  # A user error for the binaries.
    # Several: each named, in both lists; missing and unknown ones too.
    changed.update(num_mel_bands=128, new_knob=1)
    del changed["log_offset"]
    with pytest.raises(records.FrontendMismatchError,
                       match=re.escape(
                           "export /e was made with num_mel_bands=128, "
                           "mel_upper_hz=8000.0, log_offset=(none), "
                           "new_knob=1; this code uses num_mel_bands=64, "
                           "mel_upper_hz=7500.0, log_offset=0.01, "
                           "new_knob=(none); retrain")):
        records.check_frontend_params(changed, "export /e", remedy="retrain")


def test_a_corpus_of_another_front_end_is_refused_by_every_reader(corpus):
    directory, paths, _ = corpus
    _write_manifest(directory, mel_upper_hz=8000.0)
    message = re.escape("corpus %s was made with mel_upper_hz=8000.0, this "
                        "code uses 7500.0; re-extract it" % directory)
    for read in (records.list_shards, records.read_records,
                 records.load_corpus_manifest):
        for pattern in (directory, os.path.join(directory, "shard-*"),
                        ",".join(paths)):
            with pytest.raises(records.FrontendMismatchError, match=message):
                read(pattern)
    # A glob that reaches shards of two corpora checks both.
    other = os.path.join(directory, "other")
    os.makedirs(other)
    _write_shard(os.path.join(other, records.shard_name(0, 1)), [
        records.make_example(_logmel(1, 0), _start_times(1), "x")])
    _write_manifest(directory)
    _write_manifest(other, window_frames=48)
    with pytest.raises(records.FrontendMismatchError,
                       match=re.escape("corpus %s was made with "
                                       "window_frames=48" % other)):
        records.list_shards("%s,%s" % (directory, other))


def test_corpora_with_this_front_end_or_without_one_are_read(corpus):
    directory, paths, ids = corpus
    # The fixture's manifest records no front end (not bin/extract_features
    # output): read as it is.
    assert records.load_corpus_manifest(directory) == {
        "vocabulary": ["a", "b", "c"]}
    assert records.list_shards(directory) == sorted(paths)
    _write_manifest(directory)
    assert records.load_corpus_manifest(directory)["frontend"] == (
        C.frontend_params())
    assert _ids(records.read_records(directory)) == collections.Counter(
        sum(ids, []))
    # Bare shards: no manifest at all.
    os.remove(os.path.join(directory, records.MANIFEST_NAME))
    assert records.load_corpus_manifest(directory) is None
    assert records.list_shards(directory) == sorted(paths)


def test_list_shards_in_a_directory_with_wildcard_characters(tmp_path):
    directory = tmp_path / "run[1]"
    nested = directory / "part"
    os.makedirs(nested)
    examples = [records.make_example(_logmel(1, 0), _start_times(1), "x")]
    top = str(directory / records.shard_name(0, 1))
    deep = str(nested / records.shard_name(0, 1))
    _write_shard(top, examples)
    _write_shard(deep, examples)
    assert records.list_shards(str(directory)) == [top]
    # `**` means any depth, as for audio inputs.
    assert records.list_shards(
        os.path.join(str(tmp_path), "**", "*.tfrecord")) == sorted(
            [top, deep])


def test_training_refuses_a_corpus_of_another_front_end(corpus, tmp_path):
    directory, _, _ = corpus
    _write_manifest(directory, mel_upper_hz=8000.0)
    model_dir = str(tmp_path / "run")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bin", "train"),
         "--train_data=" + directory, "--model_dir=" + model_dir,
         "--sampler=proximity", "--model=small", "--steps=1",
         "--batch_size=6"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: corpus %s was made with mel_upper_hz=8000.0, this code uses "
        "7500.0; re-extract it" % directory), result.stderr[-3000:]
