"""Record schema, writer helpers and the sharded corpus reader.

The one home of the on-disk format. A corpus directory holds

  shard-NNNNN-of-MMMMM.tfrecord   tf.train.Example records, one per recording
                                  (or per chunk of at most
                                  `constants.MAX_WINDOWS_PER_RECORD` windows of
                                  a long recording)
  shard-NNNNN-of-MMMMM.json       per-shard summary (counts, failures), written
                                  before the shard is renamed into place
  manifest.json                   front-end parameters, class vocabulary, counts
                                  per shard and every failed file with its reason
                                  (readers refuse a corpus made with another
                                  front end: `load_corpus_manifest`)
  shard-NNNNN-of-MMMMM.tfrecord.classidx.npz
                                  class index of the shard's labelled records,
                                  made by the supervised sampler on first use
                                  (`class_index`)

Example features (keys are the constants below):

  logmel        bytes   float32 little-endian [num_windows, 96, 64]
  num_windows   int64   W
  start_times   float   [W] start of each window in seconds from the start of
                        the recording (not of the chunk)
  recording_id  bytes   stable id of the recording (all its chunks share it)
  chunk_index   int64   0 for the first chunk of a recording
  labels        int64   [L] class indices into the manifest's vocabulary (may
                        be empty)
  split         bytes   optional split name from the input CSV ("" if none)
  source_path   bytes   the audio file the record came from

Only in records of strongly labelled segments (AudioSet's strong labels,
`inputs.InputItem.events`; absent from every other record, whose bytes are
unchanged by their existence):

  window_labels        int64 [sum of counts] class indices of each window,
                       window after window
  window_label_counts  int64 [W] how many of them belong to each window

A window carries a class when one of its events overlaps the window's
0.975 s of audio (`window_labels_of_events`); `example_window_labels` reads
them back.

`parse_example` decodes one serialized record into the dict the samplers
consume; nothing downstream of it sees the file format.

Damaged shards. TensorFlow's reader checks each record's length and payload
checksums; `check_shards` walks the lengths (one seek per record) and
compares the count with the shard's summary, which is how a cut at a record
boundary shows. Without --skip_corrupt every reader names the shard and the
byte offset of the first bad record. With it, `read_records` (tf.data) and
`iter_shard` read every intact record and count each skipped span once in
`SKIPPED` (`skip_report()`): a bad payload or length costs its own record,
a cut the cut record and the records the summary says are missing.
"""

import dataclasses
import json
import os
import re
import struct
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.features import inputs

LOGMEL = "logmel"
NUM_WINDOWS = "num_windows"
START_TIMES = "start_times"
RECORDING_ID = "recording_id"
CHUNK_INDEX = "chunk_index"
LABELS = "labels"
SPLIT = "split"
SOURCE_PATH = "source_path"
WINDOW_LABELS = "window_labels"
WINDOW_LABEL_COUNTS = "window_label_counts"

SHARD_SUFFIX = ".tfrecord"
MANIFEST_NAME = "manifest.json"
TEMP_SUFFIX = ".incomplete"
SUMMARY_SUFFIX = ".json"
# Beside each shard once the supervised sampler has read it
# (`class_index.index_path`): its labelled records' byte offsets and labels.
CLASS_INDEX_SUFFIX = ".classidx.npz"

_FEATURES = {
    LOGMEL: tf.io.FixedLenFeature([], tf.string),
    NUM_WINDOWS: tf.io.FixedLenFeature([], tf.int64),
    START_TIMES: tf.io.VarLenFeature(tf.float32),
    RECORDING_ID: tf.io.FixedLenFeature([], tf.string),
    CHUNK_INDEX: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    LABELS: tf.io.VarLenFeature(tf.int64),
    SPLIT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    SOURCE_PATH: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def shard_name(index, num_shards):
    """File name of shard `index` of `num_shards`."""
    return "shard-%05d-of-%05d%s" % (index, num_shards, SHARD_SUFFIX)


def window_labels_of_events(events, start_times):
    """Per-window labels of strongly labelled events.

    Args:
      events: iterable of (start_s, end_s, class index), times from the start
        of the recording (segment).
      start_times: [W] window starts in seconds, same origin.

    Returns:
      list of W sorted tuples of distinct class indices: the classes of the
      events that overlap [start, start + 0.975 s) of each window by more
      than zero.
    """
    span = C.MIN_WINDOW_SAMPLES / float(C.SAMPLE_RATE)
    out = []
    for start in np.asarray(start_times, np.float64).reshape(-1):
        end = start + span
        out.append(tuple(sorted({int(c) for a, b, c in events
                                 if min(end, float(b)) > max(start,
                                                             float(a))})))
    return out


def example_window_labels(example):
    """The per-window labels of a tf.train.Example, or None if it has none.

    Args:
      example: a tf.train.Example (Python object).

    Returns:
      list of W tuples of class indices, or None for a record without
      `WINDOW_LABEL_COUNTS`.
    """
    f = example.features.feature
    if WINDOW_LABEL_COUNTS not in f:
        return None
    counts = list(f[WINDOW_LABEL_COUNTS].int64_list.value)
    flat = list(f[WINDOW_LABELS].int64_list.value)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return [tuple(flat[offsets[i]:offsets[i + 1]])
            for i in range(len(counts))]


def make_example(logmel, start_times, recording_id, labels=(), chunk_index=0,
                 split="", source_path="", window_labels=None):
    """Builds one record.

    Args:
      logmel: float array [W, 96, 64].
      start_times: float array [W], seconds from the start of the recording.
      recording_id: str.
      labels: iterable of int class indices.
      chunk_index: int, index of this chunk within the recording.
      split: str, optional split name.
      source_path: str, the audio file.
      window_labels: None, or W iterables of class indices (strong labels;
        see the module docstring).

    Returns:
      tf.train.Example.

    Raises:
      ValueError: if shapes disagree or the windows are not finite.
    """
    logmel = np.asarray(logmel, dtype="<f4")
    if logmel.ndim != 3 or logmel.shape[1:] != C.WINDOW_SHAPE:
        raise ValueError("logmel must be [W, %d, %d], got %s" %
                         (C.WINDOW_SHAPE + (logmel.shape,)))
    start_times = np.asarray(start_times, dtype=np.float32).reshape(-1)
    if start_times.shape[0] != logmel.shape[0]:
        raise ValueError("%d start times for %d windows" %
                         (start_times.shape[0], logmel.shape[0]))
    if not np.all(np.isfinite(logmel)):
        raise ValueError("non-finite log-mel values in %s" % recording_id)

    def _bytes(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

    feature = {
        LOGMEL: _bytes(logmel.tobytes()),
        NUM_WINDOWS: _ints([logmel.shape[0]]),
        START_TIMES: tf.train.Feature(
            float_list=tf.train.FloatList(value=start_times.tolist())),
        RECORDING_ID: _bytes(recording_id.encode("utf-8")),
        CHUNK_INDEX: _ints([int(chunk_index)]),
        LABELS: _ints(int(l) for l in labels),
        SPLIT: _bytes(split.encode("utf-8")),
        SOURCE_PATH: _bytes(source_path.encode("utf-8")),
    }
    if window_labels is not None:
        window_labels = [sorted(int(c) for c in w) for w in window_labels]
        if len(window_labels) != logmel.shape[0]:
            raise ValueError("%d window label lists for %d windows" %
                             (len(window_labels), logmel.shape[0]))
        feature[WINDOW_LABELS] = _ints(c for w in window_labels for c in w)
        feature[WINDOW_LABEL_COUNTS] = _ints(len(w) for w in window_labels)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized):
    """Decodes one serialized record into tensors (works inside tf.data).

    Args:
      serialized: scalar string tensor.

    Returns:
      dict with `logmel` float32 [W, 96, 64], `num_windows` int64 [],
      `start_times` float32 [W], `recording_id` string [], `chunk_index` int64
      [], `labels` int64 [L], `split` string [], `source_path` string [].
    """
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    logmel = tf.io.decode_raw(parsed[LOGMEL], tf.float32, little_endian=True)
    logmel = tf.reshape(logmel, [-1, C.WINDOW_FRAMES, C.NUM_MEL_BANDS])
    return {
        LOGMEL: logmel,
        NUM_WINDOWS: parsed[NUM_WINDOWS],
        START_TIMES: tf.sparse.to_dense(parsed[START_TIMES]),
        RECORDING_ID: parsed[RECORDING_ID],
        CHUNK_INDEX: parsed[CHUNK_INDEX],
        LABELS: tf.sparse.to_dense(parsed[LABELS]),
        SPLIT: parsed[SPLIT],
        SOURCE_PATH: parsed[SOURCE_PATH],
    }


def example_to_numpy(example):
    """Decodes a tf.train.Example (Python object) into NumPy values."""
    f = example.features.feature
    logmel = np.frombuffer(f[LOGMEL].bytes_list.value[0], dtype="<f4")
    return {
        LOGMEL: logmel.reshape((-1,) + C.WINDOW_SHAPE),
        NUM_WINDOWS: f[NUM_WINDOWS].int64_list.value[0],
        START_TIMES: np.asarray(f[START_TIMES].float_list.value, np.float32),
        RECORDING_ID: f[RECORDING_ID].bytes_list.value[0].decode("utf-8"),
        CHUNK_INDEX: f[CHUNK_INDEX].int64_list.value[0],
        LABELS: np.asarray(f[LABELS].int64_list.value, np.int64),
        SPLIT: f[SPLIT].bytes_list.value[0].decode("utf-8"),
        SOURCE_PATH: f[SOURCE_PATH].bytes_list.value[0].decode("utf-8"),
    }


class CorruptShardError(ValueError):
    """A shard is truncated or holds a record that fails its checksum.

    Attributes:
      path: the shard, when known.
      offset: byte offset of the first bad record, when known.
    """

    def __init__(self, message, path=None, offset=None):
        super().__init__(message)
        self.path = path
        self.offset = offset


HEADER_BYTES = 12
"""TFRecord framing before each payload: its length (uint64 LE) and the
length's masked CRC32C (uint32)."""
_FOOTER_BYTES = 4  # the payload's masked CRC32C
FRAME_BYTES = HEADER_BYTES + _FOOTER_BYTES
"""Bytes of framing around each record's payload."""

# tf.data's own default read buffer for TFRecord files.
_READ_BUFFER_BYTES = 256 * 1024
_RESYNC_CHUNK_BYTES = 8 << 20
_SKIP_HINT = ("rerun with --skip_corrupt to skip corrupt records (each is "
              "logged and counted), or re-extract the shard")


def _crc32c_table():
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table[i] = c
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked(crc):
    # TFRecord stores CRCs rotated and offset ("masked"), so that a CRC of
    # data that itself holds CRCs does not degenerate.
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def masked_crc32c(data):
    """The masked CRC32C that TFRecord framing stores.

    A table-driven reference, a byte at a time: for headers (8 bytes) and
    tests; TensorFlow's reader checks payloads.

    Args:
      data: bytes.

    Returns:
      int in [0, 2**32).
    """
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = int(table[(crc ^ byte) & 0xFF]) ^ (crc >> 8)
    return _masked(crc ^ 0xFFFFFFFF)


def _masked_crc32c_of_headers(data, positions):
    """masked_crc32c(data[p:p + 8]) for every p of `positions`, vectorized."""
    crc = np.full(len(positions), 0xFFFFFFFF, np.uint32)
    for k in range(8):
        crc = _CRC32C_TABLE[(crc ^ data[positions + k]) & 0xFF] ^ (crc >> 8)
    crc = (crc ^ np.uint32(0xFFFFFFFF)).astype(np.uint64)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record_frames(path):
    """Yields (offset, payload length) of each record, reading only headers.

    The walk follows the lengths without checking their checksums (the
    reader does), so it is one seek per record.

    Args:
      path: a TFRecord file.

    Raises:
      CorruptShardError: naming `path` and the byte offset, if a header or
        payload runs past the end of the file (a damaged length header is
        named as such).
    """
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                _raise_framing_error(f, path, size, offset, (
                    "truncated record header at byte %d (file has %d bytes)"
                    % (offset, size)))
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + FRAME_BYTES + length
            if end > size:
                _raise_framing_error(f, path, size, offset, (
                    "truncated record at byte %d: needs %d bytes, file has %d"
                    % (offset, end, size)))
            yield offset, length
            offset = end
            f.seek(offset)


def _first_bad_header(f, size):
    """(offset, kind) of the first record whose header is bad, or None."""
    offset = 0
    while offset < size:
        f.seek(offset)
        header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            return offset, SKIP_TRUNCATED
        length, crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != crc:
            return offset, SKIP_HEADER
        if offset + FRAME_BYTES + length > size:
            return offset, SKIP_TRUNCATED
        offset += FRAME_BYTES + length
    return None


def _raise_framing_error(f, path, size, offset, message):
    # The walk broke at `offset`, but a damaged length an earlier record
    # may have sent it there: name the first record whose header is bad.
    first = _first_bad_header(f, size)
    if first is not None and first[1] == SKIP_HEADER:
        offset = first[0]
        message = ("corrupt record header at byte %d (%s)" %
                   (offset, SKIP_HEADER))
    raise CorruptShardError("%s: %s" % (path, message), path=path,
                            offset=offset)


def check_shard_framing(path):
    """Walks a TFRecord file's length headers without reading payloads.

    Cheap (one seek per record), so the reader can name a truncated shard
    before tf.data meets it mid-epoch.

    Args:
      path: a TFRecord file.

    Returns:
      int, number of records.

    Raises:
      CorruptShardError: naming `path` and the byte offset, if a header or
        payload runs past the end of the file.
    """
    return sum(1 for _ in record_frames(path))


def shard_summary_records(path):
    """The record count the extractor's summary of shard `path` gives.

    Args:
      path: a shard path (its summary is the `.json` beside it).

    Returns:
      int, or None without a readable summary holding a "records" count.
    """
    summary = path[:-len(SHARD_SUFFIX)] + SUMMARY_SUFFIX
    if not path.endswith(SHARD_SUFFIX) or not os.path.isfile(summary):
        return None
    try:
        with open(summary) as f:
            count = json.load(f).get("records")
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and count >= 0 else None


# What a skipped span of a shard was (`SkippedRecords.kind`).
SKIP_CHECKSUM = "payload checksum mismatch"
SKIP_HEADER = "length checksum mismatch"
SKIP_TRUNCATED = "truncated record"
SKIP_MISSING = "records missing from the end (per the shard summary)"
SKIP_UNREADABLE = "unreadable shard"


@dataclasses.dataclass(frozen=True)
class SkippedRecords:
    """Records of one shard that the reader skipped.

    Attributes:
      path: the shard.
      offset: byte offset where the skipped span starts (for
        SKIP_MISSING, the end of the file).
      kind: one of the SKIP_* strings.
      records: how many records the span held (-1: unknown, SKIP_UNREADABLE).
      num_bytes: bytes of the span.
      next_offset: where reading went on (None: it did not).
    """
    path: str
    offset: int
    kind: str
    records: int
    num_bytes: int
    next_offset: object = None

    def describe(self):
        return "%s: %s record%s skipped at byte %d (%s, %d bytes)%s" % (
            self.path, "?" if self.records < 0 else self.records,
            "" if self.records == 1 else "s", self.offset, self.kind,
            self.num_bytes, "" if self.next_offset is None else
            "; reading on at byte %d" % self.next_offset)


class SkipLog:
    """What `--skip_corrupt` readers skipped, each span counted once.

    A span read again (the next epoch, another input pipeline of this
    process) is not counted again: the figures are records lost from the
    corpus, not per epoch. Thread-safe (tf.data calls in from its threads).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._spans = {}

    def add(self, span):
        key = (span.path, span.offset, span.kind)
        with self._lock:
            if key in self._spans:
                return
            self._spans[key] = span
        logging.warning("skipping corrupt records (--skip_corrupt): %s",
                        span.describe())

    def spans(self, path=None):
        """The skipped spans (of `path` only, if given), in shard order."""
        with self._lock:
            spans = list(self._spans.values())
        return sorted((s for s in spans if path is None or s.path == path),
                      key=lambda s: (s.path, s.offset))

    def report(self):
        """A JSON-able summary: records skipped, shards, and every span."""
        spans = self.spans()
        return {
            "records": sum(max(s.records, 0) for s in spans),
            "shards": len({s.path for s in spans}),
            "unknown_record_counts": sum(s.records < 0 for s in spans),
            "spans": [dataclasses.asdict(s) for s in spans],
        }

    def reset(self):
        with self._lock:
            self._spans.clear()


SKIPPED = SkipLog()
"""Every span that this process's `skip_corrupt` readers skipped."""


def skip_report():
    """`SKIPPED.report()`: what --skip_corrupt skipped so far (JSON-able)."""
    return SKIPPED.report()


def _records_from(path, offset):
    """A TFRecordDataset of `path` starting at byte `offset` (a record's)."""
    variant = tf.raw_ops.TFRecordDatasetV2(
        filenames=path, compression_type="",
        buffer_size=tf.constant(_READ_BUFFER_BYTES, tf.int64),
        byte_offsets=tf.cast(offset, tf.int64))
    ds = tf.data.experimental.from_variant(variant,
                                           tf.TensorSpec([], tf.string))
    if tf.executing_eagerly():
        # tf.data's rewrites of an outermost dataset serialize it, and this
        # op's serialization drops byte_offsets; there is nothing to rewrite.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        options.autotune.enabled = False
        ds = ds.with_options(options)
    return ds


def _record_is_intact(path, offset):
    # TensorFlow's own reader checks both CRCs of this one record.
    try:
        for _ in _records_from(path, offset).take(1):
            pass
    except tf.errors.DataLossError:
        return False
    return True


def _resync(f, offset, size):
    """The first offset after `offset` where a well-framed record starts.

    A candidate needs a length whose checksum matches and a frame that fits
    in the file (a false match in random bytes: about 2**-64 per byte), so
    a damaged header costs exactly its own record.

    Returns:
      int, or None when no header follows.
    """
    start = offset + 1
    while start + FRAME_BYTES <= size:
        f.seek(start)
        data = np.frombuffer(f.read(min(_RESYNC_CHUNK_BYTES + HEADER_BYTES,
                                        size - start)), np.uint8)
        positions = len(data) - HEADER_BYTES + 1
        if positions <= 0:
            return None
        # Lengths under 4 GiB first (cheap), then their checksums.
        small = np.ones(positions, bool)
        for k in range(4, 8):
            small &= data[k:k + positions] == 0
        candidates = np.flatnonzero(small)
        if len(candidates):
            length = np.zeros(len(candidates), np.uint64)
            for k in range(4):
                length |= data[candidates + k].astype(np.uint64) << np.uint64(
                    8 * k)
            stored = np.zeros(len(candidates), np.uint64)
            for k in range(4):
                stored |= data[candidates + 8 + k].astype(
                    np.uint64) << np.uint64(8 * k)
            fits = (start + candidates + FRAME_BYTES + length) <= size
            good = fits & (_masked_crc32c_of_headers(data, candidates) ==
                           stored)
            if good.any():
                return start + int(candidates[np.argmax(good)])
        start += positions
    return None


def diagnose_record(path, offset):
    """What is wrong with the record at `offset`, and where reading goes on.

    Args:
      path: a TFRecord file.
      offset: where a record starts (where the reader stopped).

    Returns:
      `SkippedRecords` of the bad record, or None when the record reads
      intact (a transient read error).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            return SkippedRecords(path, offset, SKIP_TRUNCATED, 1,
                                  size - offset)
        length, crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != crc:
            following = _resync(f, offset, size)
            return SkippedRecords(
                path, offset, SKIP_HEADER, 1,
                (size if following is None else following) - offset,
                following)
    end = offset + FRAME_BYTES + length
    if end > size:
        return SkippedRecords(path, offset, SKIP_TRUNCATED, 1, size - offset)
    if _record_is_intact(path, offset):
        return None
    return SkippedRecords(path, offset, SKIP_CHECKSUM, 1, end - offset,
                          end if end < size else None)


def _frames_before(path, stop):
    """{offset: payload length} of the records starting before byte `stop`.

    Only for a part of the shard that the reader has read (or whose
    headers checked out): the walk trusts the lengths.
    """
    frames = {}
    offset = 0
    with open(path, "rb") as f:
        while offset < stop:
            f.seek(offset)
            (length,) = struct.unpack("<Q", f.read(8))
            frames[offset] = length
            offset += FRAME_BYTES + length
    return frames


def iter_shard(path, skip_corrupt=False, start=0, log=None):
    """Yields (offset, serialized record) of a shard's intact records.

    TensorFlow's reader checks both checksums of every record. What a bad
    record costs with `skip_corrupt` (each span logged once and added to
    `log`):

      * payload or payload-checksum damage: that record only; reading goes
        on with the next record (the framing is intact);
      * length or length-checksum damage: that record only; reading goes on
        at the next offset where a well-framed record starts (`_resync`);
      * truncation: the cut record, and, when the shard's summary says how
        many records the shard had, the records missing after it
        (SKIP_MISSING); the reader cannot count those without a summary.

    So records read + records counted == the records written, whenever the
    shard has a summary or its end is intact.

    Args:
      path: a TFRecord shard.
      skip_corrupt: skip and count bad records instead of raising.
      start: the byte offset of a record to start at.
      log: the `SkipLog` to count in (default `SKIPPED`).

    Yields:
      (byte offset of the record, serialized record bytes).

    Raises:
      CorruptShardError: naming the shard, the offset and what is wrong with
        the first bad record, unless `skip_corrupt`.
    """
    log = SKIPPED if log is None else log
    size = os.path.getsize(path)
    offset = start
    seen = 0  # records read or skipped from `start`
    while offset < size:
        error = None
        try:
            for serialized in _records_from(path, offset).as_numpy_iterator():
                yield offset, serialized
                seen += 1
                offset += FRAME_BYTES + len(serialized)
        except tf.errors.DataLossError as e:
            error = e
        if offset >= size:
            break
        # A bad record, or a header cut short (which TensorFlow's reader
        # takes for the end of the file).
        span = diagnose_record(path, offset)
        if span is None:
            raise CorruptShardError(
                "%s: read error at byte %d, but the record there is intact: "
                "%s" % (path, offset, error), path=path, offset=offset)
        if not skip_corrupt:
            raise CorruptShardError(
                "%s: corrupt record at byte %d (%s); %s" % (
                    path, offset, span.kind, _SKIP_HINT),
                path=path, offset=offset) from error
        log.add(span)
        seen += span.records
        if span.next_offset is None:
            break
        offset = span.next_offset
    expected = shard_summary_records(path)
    if expected is not None:
        missing = expected - seen - len(_frames_before(path, start))
        if missing > 0:
            if not skip_corrupt:
                raise CorruptShardError(
                    "%s: %d of its summary's %d records are missing from "
                    "the end (truncated); %s" % (path, missing, expected,
                                                 _SKIP_HINT), path=path,
                    offset=size)
            log.add(SkippedRecords(path, size, SKIP_MISSING, missing, 0))


# Where each --skip_corrupt stream of a damaged shard goes on reading:
# {path: int64 [S, 2] (offset, records) of its intact runs after the first
# bad record}. Set by the shard's end marker, read by its continuation
# (`_shard_with_skips`); the plan is a function of the file, so streams of
# the same shard agree.
_PLANS = {}
_PLANS_LOCK = threading.Lock()
_NO_RUNS = np.zeros([0, 2], np.int64)


def _runs_after(path, end):
    """(offset, records) runs of intact records after a bad one at `end`."""
    runs = []
    for offset, serialized in iter_shard(path, skip_corrupt=True, start=end):
        if runs and runs[-1][2] == offset:
            runs[-1][1] += 1
        else:
            runs.append([offset, 1, 0])
        runs[-1][2] = offset + FRAME_BYTES + len(serialized)
    return np.asarray([r[:2] for r in runs], np.int64).reshape(-1, 2)


def _plan_rest(path, end):
    """numpy_function: plans the rest of `path` after tf.data stopped."""
    path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
    end = int(end)
    try:
        runs = _NO_RUNS if end >= os.path.getsize(path) else _runs_after(
            path, end)
    except OSError as e:
        SKIPPED.add(SkippedRecords(path, end, SKIP_UNREADABLE, -1, 0))
        logging.warning("%s: unreadable (%s)", path, e)
        runs = _NO_RUNS
    with _PLANS_LOCK:
        if len(runs):
            _PLANS[path] = runs
        else:
            _PLANS.pop(path, None)
    return np.int64(len(runs))


def _planned_runs(path):
    path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
    with _PLANS_LOCK:
        return _PLANS.get(path, _NO_RUNS)


def _shard_with_skips(path):
    """The records of one shard, bad ones skipped and counted (tf.data).

    tf.data reads the shard at full speed up to its first bad record (if
    any: it then ends the shard, `ignore_errors`); a scan tracks the byte
    offset reached, and only there, once per damaged shard, Python finds
    the intact runs after it (`_runs_after`), which tf.data reads on.
    """
    first = tf.data.TFRecordDataset(path).ignore_errors()
    marked = first.map(lambda record: (record, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(True))))

    def track(end, item):
        record, last = item
        size = tf.cast(tf.strings.length(record), tf.int64) + FRAME_BYTES
        runs = tf.cond(last, lambda: tf.numpy_function(
            _plan_rest, [path, end], tf.int64, stateful=True),
                       lambda: tf.constant(0, tf.int64))
        return (end + tf.where(last, tf.constant(0, tf.int64), size),
                (record, last, runs))

    read = marked.scan(tf.constant(0, tf.int64), track).filter(
        lambda record, last, runs: tf.logical_not(last)).map(
            lambda record, last, runs: record)

    def rest(shard):
        runs = tf.reshape(tf.numpy_function(_planned_runs, [shard], tf.int64,
                                            stateful=True), [-1, 2])
        return tf.data.Dataset.from_tensor_slices(runs).flat_map(
            lambda run: _records_from(shard, run[0]).take(run[1]))

    return read.concatenate(tf.data.Dataset.from_tensors(path).flat_map(rest))


# How TensorFlow's record reader reports a bad record, without the file:
# the offset is where the record starts (a bad or cut header) or where its
# payload starts, 12 bytes on (a bad payload).
_CORRUPT_RECORD_AT = re.compile(r"(?:corrupted|truncated) record at (\d+)")


def locate_corrupt_records(paths, error):
    """Finds which shard a checksum error of `tf.data` came from.

    TensorFlow's reader says "corrupted record at <offset>" without the
    file. This walks the record headers of `paths` (checking their
    checksums) and checks the record at that offset (its start or its
    payload's) in each shard that has one.

    Args:
      paths: the shard paths that were being read.
      error: the `tf.errors.DataLossError` (or its message).

    Returns:
      list of (path, offset) of corrupt records found; empty when the
      message has no offset or no shard matches.
    """
    match = _CORRUPT_RECORD_AT.search(str(error))
    if not match:
        return []
    reported = int(match.group(1))
    found = []
    for path in paths:
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                bad_header = _first_bad_header(f, size)
            if bad_header is not None and bad_header[0] == reported:
                found.append((path, reported))
                continue
            frames = _frames_before(
                path, size if bad_header is None else bad_header[0])
        except (OSError, struct.error):
            continue  # gone, or damaged elsewhere
        for start in (reported, reported - HEADER_BYTES):
            if start in frames and not _record_is_intact(path, start):
                found.append((path, start))
                break
    return found


def data_loss_error(paths, error):
    """A `CorruptShardError` naming the shard behind a `DataLossError`.

    Args:
      paths: the shard paths that were being read.
      error: the `tf.errors.DataLossError` raised while reading them.

    Returns:
      `CorruptShardError` to raise (from `error`).
    """
    found = locate_corrupt_records(paths, error)
    if found:
        return CorruptShardError("%s; %s" % ("; ".join(
            "%s: corrupt record at byte %d (checksum mismatch)" % hit
            for hit in found), _SKIP_HINT), path=found[0][0],
                                 offset=found[0][1])
    message = getattr(error, "message", str(error))
    return CorruptShardError(
        "a record in one of %d shards (%s%s) is corrupt: %s; %s" % (
            len(paths), ", ".join(paths[:3]), ", ..." if len(paths) > 3
            else "", message, _SKIP_HINT))


def check_shards(paths, skip_corrupt=False):
    """Checks shards' framing and summary counts before reading them.

    Cheap: one seek per record, and the summary beside each shard.

    Args:
      paths: shard paths.
      skip_corrupt: log damaged shards and keep them (the reader reads their
        intact records and counts the rest, `iter_shard`) instead of
        raising; count the records a shard lacks against its summary (cut
        at a record boundary: the file alone cannot show it).

    Returns:
      the paths to read: all of them, less the shards whose very first
      record is damaged when no shard has an intact first record (then
      the list is empty).

    Raises:
      CorruptShardError: naming the shard and the byte offset, on damaged
        framing or fewer records than the shard's summary says, unless
        `skip_corrupt`.
    """
    readable = []
    for path in paths:
        try:
            frames = check_shard_framing(path)
        except CorruptShardError as e:
            if not skip_corrupt:
                raise
            logging.warning("%s; reading its intact records "
                            "(--skip_corrupt)", e)
            readable.append(e.offset != 0)
            continue
        readable.append(True)
        expected = shard_summary_records(path)
        if expected is not None and frames < expected:
            size = os.path.getsize(path)
            if not skip_corrupt:
                raise CorruptShardError(
                    "%s: %d records, but its summary says %d: truncated at "
                    "byte %d; %s" % (path, frames, expected, size,
                                     _SKIP_HINT), path=path, offset=size)
            SKIPPED.add(SkippedRecords(path, size, SKIP_MISSING,
                                       expected - frames, 0))
    return list(paths) if any(readable) else []


def list_shards(file_pattern):
    """Expands a glob, directory or comma-separated list into sorted shards.

    Every directory the shards are in that holds a manifest.json is checked
    to have been extracted with this code's front end
    (`load_corpus_manifest`); shards without a manifest are read as they
    are.

    Args:
      file_pattern: a corpus directory, a glob (`**` matches any depth), or
        comma-separated globs.

    Returns:
      sorted list of paths.

    Raises:
      FileNotFoundError: naming the pattern when nothing matches.
      FrontendMismatchError: naming the corpus and the parameters, when a
        manifest says the shards were made with another front end.
      ValueError: naming the manifest if it is not valid JSON.
    """
    # The shard summaries and the manifest sit beside the shards, so a
    # natural glob such as "corpus/shard-*" matches them too.
    paths = inputs.expand_globs(
        file_pattern, split_commas=True, directory_glob="*" + SHARD_SUFFIX,
        keep=lambda p: not p.endswith((TEMP_SUFFIX, SUMMARY_SUFFIX,
                                       CLASS_INDEX_SUFFIX)))
    if not paths:
        raise FileNotFoundError("no TFRecord shards match %r" % (file_pattern,))
    for directory in sorted({os.path.dirname(p) for p in paths}):
        if os.path.isfile(os.path.join(directory or ".", MANIFEST_NAME)):
            load_corpus_manifest(directory or ".")
    return paths


def read_records(file_pattern, skip_corrupt=False, check_framing=True,
                 num_parallel_reads=None, shuffle_files=False, seed=None,
                 cycle_length=None, deterministic=True, prefetch=True):
    """A tf.data pipeline of parsed records from a shard glob.

    Shards are read by a parallel interleave, records parsed by a parallel map,
    and the result prefetched.

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      skip_corrupt: if True, every intact record is read and every bad one
        is skipped, logged and counted once in `SKIPPED` (`skip_report()`):
        a record with a bad payload or length checksum costs that record
        only (reading goes on after it), a truncated shard its cut record
        and the records its summary says are missing (`iter_shard`). If
        False (default), damaged framing or a shard shorter than its
        summary raises CorruptShardError naming the shard and byte offset,
        and a bad checksum raises tf.errors.DataLossError during iteration
        (`data_loss_error` names the shard).
      check_framing: check each shard's framing and summary count up front
        (`check_shards`, cheap) so a truncated shard is named before
        training starts.
      num_parallel_reads: shards read at once (default AUTOTUNE).
      shuffle_files: shuffle the shard order (seeded).
      seed: seed for the shard shuffle.
      cycle_length: interleave cycle length (default: min(#shards, 8)).
      deterministic: keep a deterministic output order.
      prefetch: add a final prefetch.

    Returns:
      tf.data.Dataset of `parse_example` dicts.

    Raises:
      FileNotFoundError: when no shard matches.
      CorruptShardError: when a shard is truncated and `skip_corrupt` is
        False, or when the first record of every shard is damaged.
    """
    paths = list_shards(file_pattern)
    if check_framing:
        paths = check_shards(paths, skip_corrupt)
        if not paths:
            raise CorruptShardError("every shard matching %r is corrupt" %
                                    file_pattern)
    return records_from_paths(
        paths, skip_corrupt=skip_corrupt, num_parallel_reads=num_parallel_reads,
        shuffle_files=shuffle_files, seed=seed, cycle_length=cycle_length,
        deterministic=deterministic, prefetch=prefetch)


def records_from_paths(paths, skip_corrupt=False, num_parallel_reads=None,
                       shuffle_files=False, seed=None, cycle_length=None,
                       deterministic=True, prefetch=True):
    """Like `read_records` on an explicit list of shard paths.

    With `skip_corrupt`, each shard is read by `_shard_with_skips` (intact
    shards at tf.data's speed, plus a cheap scan of each record's length;
    Python runs only at each shard's end and, once per damaged shard, to
    plan the rest), and a record that passes its checksums but does not
    parse is dropped with tf.data's warning (not counted: no damage to the
    bytes on disk can make one).
    """
    files = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths)))
    if shuffle_files:
        files = files.shuffle(len(paths), seed=seed,
                              reshuffle_each_iteration=True)
    autotune = tf.data.AUTOTUNE
    ds = files.interleave(
        _shard_with_skips if skip_corrupt else tf.data.TFRecordDataset,
        cycle_length=cycle_length or max(1, min(len(paths), 8)),
        num_parallel_calls=num_parallel_reads or autotune,
        deterministic=deterministic)
    ds = ds.map(parse_example, num_parallel_calls=autotune,
                deterministic=deterministic)
    if skip_corrupt:
        ds = ds.ignore_errors(log_warning=True)
    if prefetch:
        ds = ds.prefetch(autotune)
    return ds


def load_manifest(corpus_dir):
    """Reads a corpus directory's manifest.json, as it is.

    Readers of the corpus's shards use `load_corpus_manifest`, which also
    checks the front end.

    Args:
      corpus_dir: the corpus directory (or a glob inside it, or a path to the
        manifest itself).

    Returns:
      dict.

    Raises:
      FileNotFoundError: naming the directory if it has no manifest.
      ValueError: naming the manifest if it is not valid JSON.
    """
    path = _manifest_path(corpus_dir)
    if not os.path.exists(path):
        raise FileNotFoundError("no %s in %s" % (MANIFEST_NAME,
                                                 os.path.dirname(path)))
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError("%s is not valid JSON: %s" % (path, e)) from e


def _manifest_path(corpus_dir):
    """Where the manifest of `corpus_dir` (as for `load_manifest`) is."""
    corpus_dir = str(corpus_dir)
    if corpus_dir.endswith(MANIFEST_NAME):
        return corpus_dir
    if not os.path.isdir(corpus_dir):
        corpus_dir = os.path.dirname(corpus_dir.split(",")[0])
    return os.path.join(corpus_dir, MANIFEST_NAME)


def load_corpus_manifest(corpus_dir):
    """The manifest of a corpus about to be read, checked against this code.

    Args:
      corpus_dir: as for `load_manifest`.

    Returns:
      the manifest dict, or None when the corpus has none (bare shards are
      read as they are).

    Raises:
      FrontendMismatchError: naming the corpus and the parameters, when its
        manifest records front-end parameters other than this code's
        (`constants.frontend_params`). A manifest without them (not written
        by bin/extract_features) is not checked.
      ValueError: naming the manifest if it is not valid JSON.
    """
    try:
        manifest = load_manifest(corpus_dir)
    except FileNotFoundError:
        return None
    if isinstance(manifest, dict) and "frontend" in manifest:
        check_frontend_params(manifest["frontend"], "corpus %s" % (
            os.path.dirname(_manifest_path(corpus_dir)) or "."))
    return manifest


def corpus_classes(corpus_dir):
    """The class vocabulary of a corpus (its manifest's), [] without one.

    Args:
      corpus_dir: as for `load_manifest`.

    Raises:
      FrontendMismatchError: as `load_corpus_manifest`.
    """
    manifest = load_corpus_manifest(corpus_dir) or {}
    return [str(c) for c in manifest.get("classes", [])]


class FrontendMismatchError(ValueError):
    """Data made with other front-end parameters than this code's."""


_MISSING = object()


def check_frontend_params(found, source, remedy="re-extract it"):
    """Checks recorded front-end parameters against this code's.

    Log-mel windows made with another front end (another mel range, hop,
    log offset, ...) are different features: a model trained on them, or
    windows compared with them, would be silently wrong.

    Args:
      found: the parameters a corpus manifest or an export's metadata
        recorded (`constants.frontend_params()` of the code that made it).
      source: what recorded them, for the message, e.g. "corpus /x".
      remedy: what the user should do, ending the message.

    Raises:
      FrontendMismatchError: naming `source`, each differing parameter with
        both values, and `remedy`, e.g. "corpus /x was made with
        mel_upper_hz=8000.0, this code uses 7500.0; re-extract it".
    """
    expected = C.frontend_params()
    if not isinstance(found, dict):
        raise FrontendMismatchError(
            "%s records front-end parameters %r, not a mapping; %s" %
            (source, found, remedy))
    names = [k for k in expected if found.get(k, _MISSING) != expected[k]]
    names += sorted(k for k in found if k not in expected)
    if not names:
        return

    def show(params, name):
        value = params.get(name, _MISSING)
        return "(none)" if value is _MISSING else repr(value)

    if len(names) == 1:
        (name,) = names
        raise FrontendMismatchError(
            "%s was made with %s=%s, this code uses %s; %s" % (
                source, name, show(found, name), show(expected, name),
                remedy))
    raise FrontendMismatchError(
        "%s was made with %s; this code uses %s; %s" % (
            source,
            ", ".join("%s=%s" % (n, show(found, n)) for n in names),
            ", ".join("%s=%s" % (n, show(expected, n)) for n in names),
            remedy))
