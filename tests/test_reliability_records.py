"""Corrupt TFRecord shards: every bad record named, or skipped and counted.

The reference is independent of the reader: shards are written here with
known records, the framing of the intact file is walked here, specific bytes
are corrupted, and the records a reader must return are the known records
less the damaged ones.
"""

import collections
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.features import records
from triplet_audio.sampling import class_index

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RECORDS_PER_SHARD = 6


@pytest.fixture(autouse=True)
def _fresh_skip_log():
    records.SKIPPED.reset()
    yield
    records.SKIPPED.reset()


def _crc32c_bitwise(data):
    """CRC32C bit by bit (no table): a reference of the reader's own."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _write_shard(path, prefix, count, labels=True, summary=True):
    """A shard of `count` known records; returns their serialized bytes."""
    rng = np.random.default_rng(len(prefix) + count)
    serialized = []
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(count):
            windows = 1 + i % 2
            example = records.make_example(
                rng.normal(-2.0, 1.0, (windows,) + C.WINDOW_SHAPE),
                C.WINDOW_SECONDS * np.arange(windows), "%s-%d" % (prefix, i),
                labels=[i % 3] if labels else [])
            serialized.append(example.SerializeToString())
            writer.write(serialized[-1])
    if summary:  # as the extractor writes it (shards._shard_summary)
        with open(path[:-len(records.SHARD_SUFFIX)] + records.SUMMARY_SUFFIX,
                  "w") as f:
            json.dump({"records": count}, f)
    return serialized


def _frames(path):
    """(offset, payload length) of each record of an intact file."""
    with open(path, "rb") as f:
        data = f.read()
    frames, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        frames.append((offset, length))
        offset += 16 + length
    return frames


def _flip(path, position, bit=0):
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ (1 << bit)]))


# Where in record `r` (offset, length) each kind of damage goes, and what
# the reader calls it.
_DAMAGE = {
    "payload": (lambda offset, length: offset + 12 + length // 3,
                records.SKIP_CHECKSUM),
    "payload_crc": (lambda offset, length: offset + 12 + length + 2,
                    records.SKIP_CHECKSUM),
    "length_low_bit": (lambda offset, length: offset, records.SKIP_HEADER),
    "length_high_byte": (lambda offset, length: offset + 6,
                         records.SKIP_HEADER),
    "length_crc": (lambda offset, length: offset + 9, records.SKIP_HEADER),
}


@pytest.fixture
def corpus(tmp_path):
    """Two shards with summaries: (directory, paths, serialized per shard)."""
    paths, serialized = [], []
    for shard in range(2):
        path = str(tmp_path / records.shard_name(shard, 2))
        serialized.append(_write_shard(path, "s%d" % shard,
                                       _RECORDS_PER_SHARD))
        paths.append(path)
    return str(tmp_path), paths, serialized


def _ids(serialized):
    return sorted(tf.train.Example.FromString(s).features.feature[
        records.RECORDING_ID].bytes_list.value[0].decode() for s in serialized)


def _stream_ids(directory):
    return sorted(r[records.RECORDING_ID].decode("utf-8") for r in
                  records.read_records(directory, skip_corrupt=True,
                                       deterministic=True).as_numpy_iterator())


def test_masked_crc32c_is_the_one_tensorflow_writes(corpus):
    _, paths, serialized = corpus
    with open(paths[0], "rb") as f:
        data = f.read()
    for (offset, length), payload in zip(_frames(paths[0]), serialized[0]):
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        (payload_crc,) = struct.unpack(
            "<I", data[offset + 12 + length:offset + 16 + length])
        header = data[offset:offset + 8]
        assert records.masked_crc32c(header) == length_crc
        assert _crc32c_bitwise(header) == length_crc
        assert records.masked_crc32c(payload[:4096]) == _crc32c_bitwise(
            payload[:4096])
        assert records.masked_crc32c(payload) == payload_crc


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_a_bad_record_costs_itself_only(tmp_path, damage):
    where, kind = _DAMAGE[damage]
    # Shard i has its record bad_records[i] damaged (first, middle, last).
    bad_records = (0, 2, _RECORDS_PER_SHARD - 1)
    paths, intact, bad_offsets = [], [], []
    for shard, record in enumerate(bad_records):
        path = str(tmp_path / records.shard_name(shard, len(bad_records)))
        serialized = _write_shard(path, "s%d" % shard, _RECORDS_PER_SHARD)
        offset, length = _frames(path)[record]
        _flip(path, where(offset, length), bit=3)
        paths.append(path)
        intact.append(serialized[:record] + serialized[record + 1:])
        bad_offsets.append(offset)

        # Without --skip_corrupt: an error naming the shard and the offset.
        with pytest.raises(records.CorruptShardError) as raised:
            list(records.iter_shard(path))
        assert "%s: corrupt record at byte %d (%s)" % (
            path, offset, kind) in str(raised.value)
        assert (raised.value.path, raised.value.offset) == (path, offset)

        # With it: exactly the intact records, byte for byte, at their
        # offsets, and the bad one counted.
        got = list(records.iter_shard(path, skip_corrupt=True))
        assert [s for _, s in got] == intact[-1]
        assert [o for o, _ in got] == [o for i, (o, _) in enumerate(
            _frames_before_damage(serialized)) if i != record]
        (span,) = records.SKIPPED.spans(path)
        assert (span.offset, span.kind, span.records) == (offset, kind, 1)
        assert span.num_bytes == 16 + len(serialized[record])

    # The tf.data reader training uses reads the same records.
    records.SKIPPED.reset()
    assert _stream_ids(str(tmp_path)) == _ids(sum(intact, []))
    assert records.skip_report()["records"] == len(bad_records)
    assert [(s.path, s.offset, s.kind) for s in records.SKIPPED.spans()] == [
        (path, offset, kind) for path, offset in zip(paths, bad_offsets)]


def _frames_before_damage(serialized):
    """Offsets of records written back to back (from their sizes alone)."""
    offset = 0
    for payload in serialized:
        yield offset, len(payload)
        offset += 16 + len(payload)


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_without_skip_corrupt_the_stream_error_names_the_shard(corpus,
                                                               damage):
    directory, paths, _ = corpus
    where, _ = _DAMAGE[damage]
    offset, length = _frames(paths[1])[3]
    _flip(paths[1], where(offset, length), bit=5)
    try:
        list(records.read_records(directory).as_numpy_iterator())
    except records.CorruptShardError as e:  # the up-front framing check
        error = e
    except tf.errors.DataLossError as e:
        error = records.data_loss_error(paths, e)
    else:
        pytest.fail("a corrupt record was read without an error")
    assert "%s: corrupt record" % paths[1] in str(error)
    assert error.offset == offset


@pytest.mark.parametrize("cut", ["header", "payload", "boundary", "empty"])
def test_truncation_counts_the_cut_record_and_the_missing_ones(corpus, cut):
    directory, paths, serialized = corpus
    offset, length = _frames(paths[1])[3]
    keep = {"header": offset + 7, "payload": offset + 12 + length // 2,
            "boundary": offset, "empty": 0}[cut]
    with open(paths[1], "r+b") as f:
        f.truncate(keep)
    read = 0 if cut == "empty" else 3

    with pytest.raises(records.CorruptShardError) as raised:
        records.read_records(directory)
    assert paths[1] in str(raised.value)
    with pytest.raises(records.CorruptShardError, match=paths[1]):
        list(records.iter_shard(paths[1]))

    got = [s for _, s in records.iter_shard(paths[1], skip_corrupt=True)]
    assert got == serialized[1][:read]
    spans = records.SKIPPED.spans()
    assert sum(s.records for s in spans) == _RECORDS_PER_SHARD - read
    assert {s.path for s in spans} == {paths[1]}
    if cut in ("header", "payload"):
        assert (spans[0].offset, spans[0].kind, spans[0].records) == (
            offset, records.SKIP_TRUNCATED, 1)

    records.SKIPPED.reset()
    assert _stream_ids(directory) == _ids(serialized[0] +
                                          serialized[1][:read])
    assert records.skip_report()["records"] == _RECORDS_PER_SHARD - read


def test_without_a_summary_the_cut_record_is_counted(tmp_path):
    path = str(tmp_path / records.shard_name(0, 1))
    serialized = _write_shard(path, "solo", 4, summary=False)
    offset, length = _frames(path)[2]
    with open(path, "r+b") as f:
        f.truncate(offset + 12 + length - 1)
    got = [s for _, s in records.iter_shard(path, skip_corrupt=True)]
    assert got == serialized[:2]
    (span,) = records.SKIPPED.spans()
    assert (span.offset, span.kind, span.records) == (
        offset, records.SKIP_TRUNCATED, 1)


def test_adjacent_and_repeated_damage_in_one_shard(corpus):
    directory, paths, serialized = corpus
    frames = _frames(paths[0])
    _flip(paths[0], frames[1][0] + 3, bit=1)                      # length
    _flip(paths[0], frames[2][0] + 12 + 50)                       # payload
    _flip(paths[0], frames[4][0] + 10, bit=7)                     # its CRC
    intact = [s for i, s in enumerate(serialized[0]) if i not in (1, 2, 4)]
    got = [s for _, s in records.iter_shard(paths[0], skip_corrupt=True)]
    assert got == intact
    assert [(s.offset, s.kind) for s in records.SKIPPED.spans()] == [
        (frames[1][0], records.SKIP_HEADER),
        (frames[2][0], records.SKIP_CHECKSUM),
        (frames[4][0], records.SKIP_HEADER)]
    records.SKIPPED.reset()
    # Two epochs: each span is counted once, not per pass.
    ds = records.read_records(directory, skip_corrupt=True).repeat(2)
    ids = collections.Counter(r[records.RECORDING_ID].decode()
                              for r in ds.as_numpy_iterator())
    assert sorted(ids) == _ids(intact + serialized[1])
    assert set(ids.values()) == {2}
    report = records.skip_report()
    assert (report["records"], report["shards"]) == (3, 1)
    assert [s["offset"] for s in report["spans"]] == [
        frames[1][0], frames[2][0], frames[4][0]]


def test_a_damaged_first_record_of_every_shard_is_refused(corpus):
    directory, paths, _ = corpus
    for path in paths:
        _flip(path, 6)  # a high length byte: the walk runs off the end
    with pytest.raises(records.CorruptShardError, match="every shard"):
        records.read_records(directory, skip_corrupt=True)


def test_class_index_counts_skips_and_keeps_them_in_its_cache(corpus):
    _, paths, _ = corpus
    frames = _frames(paths[0])
    _flip(paths[0], frames[2][0] + 12 + 70)
    with pytest.raises(records.CorruptShardError, match="byte %d" %
                       frames[2][0]):
        class_index.shard_index(paths[0])
    index = class_index.shard_index(paths[0], skip_corrupt=True)
    assert len(index["windows"]) == _RECORDS_PER_SHARD - 1
    expected = [1 + i % 2 for i in range(_RECORDS_PER_SHARD) if i != 2]
    assert index["windows"].tolist() == expected
    assert [(s.offset, s.records) for s in records.SKIPPED.spans()] == [
        (frames[2][0], 1)]
    # A later run loads the cached index: the skip is counted again, and a
    # run without --skip_corrupt still refuses the shard.
    records.SKIPPED.reset()
    cached = class_index.shard_index(paths[0], skip_corrupt=True)
    assert cached["windows"].tolist() == expected
    assert [(s.offset, s.records) for s in records.SKIPPED.spans()] == [
        (frames[2][0], 1)]
    with pytest.raises(records.CorruptShardError, match=paths[0]):
        class_index.shard_index(paths[0])


_READ_SCRIPT = textwrap.dedent("""
    import json, sys
    from triplet_audio.features import records
    ds = records.read_records(sys.argv[1], skip_corrupt=True)
    ids = [r[records.RECORDING_ID].decode() for r in ds.as_numpy_iterator()]
    print(json.dumps({"ids": sorted(ids),
                      "skipped": records.skip_report()["records"]}))
""")


def test_damage_everywhere_never_hangs(corpus):
    directory, paths, serialized = corpus
    frames = _frames(paths[1])
    # Every other record of shard 1 damaged in a different place, and the
    # file cut in its last record.
    for i, damage in zip((0, 2, 4), ("length_high_byte", "payload_crc",
                                     "length_crc")):
        _flip(paths[1], _DAMAGE[damage][0](*frames[i]), bit=2)
    with open(paths[1], "r+b") as f:
        f.truncate(frames[-1][0] + 20)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    try:
        result = subprocess.run(
            [sys.executable, "-c", _READ_SCRIPT, directory], env=env,
            capture_output=True, text=True, timeout=180, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("read_records(skip_corrupt=True) hung on damaged shards")
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["ids"] == _ids(serialized[0] + [serialized[1][i]
                                               for i in (1, 3)])
    assert got["skipped"] == 4


def test_a_shard_copy_is_read_in_full_when_intact(corpus, tmp_path):
    _, paths, serialized = corpus
    copy = str(tmp_path / "copy" / os.path.basename(paths[0]))
    os.makedirs(os.path.dirname(copy))
    shutil.copy(paths[0], copy)
    got = [s for _, s in records.iter_shard(copy, skip_corrupt=True)]
    assert got == serialized[0]
    assert not records.SKIPPED.spans()
