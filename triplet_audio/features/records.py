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
"""

import json
import os
import re
import struct
import tempfile

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
    """A shard is truncated or holds a record that fails its checksum."""


def record_frames(path):
    """Yields (offset, payload length) of each record, reading only headers.

    Args:
      path: a TFRecord file.

    Raises:
      CorruptShardError: naming `path` and the byte offset, if a header or
        payload runs past the end of the file.
    """
    size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                raise CorruptShardError(
                    "%s: truncated record header at byte %d (file has %d bytes)"
                    % (path, offset, size))
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + 12 + length + 4
            if end > size:
                raise CorruptShardError(
                    "%s: truncated record at byte %d: needs %d bytes, file has %d"
                    % (path, offset, end, size))
            yield offset, length
            offset = end
            f.seek(offset)


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


# How TensorFlow's record reader reports a checksum mismatch, without the
# file: the offset is where the record starts (a bad header) or where its
# payload starts, 12 bytes on (a bad payload).
_CORRUPT_RECORD_AT = re.compile(r"corrupted record at (\d+)")


def _record_is_intact(path, offset, length):
    # TensorFlow's own reader checks the CRCs of this one record, copied
    # into a file of its own.
    with open(path, "rb") as f:
        f.seek(offset)
        framed = f.read(12 + length + 4)
    with tempfile.TemporaryDirectory() as scratch:
        single = os.path.join(scratch, "record.tfrecord")
        with open(single, "wb") as f:
            f.write(framed)
        try:
            for _ in tf.data.TFRecordDataset(single):
                pass
        except tf.errors.DataLossError:
            return False
    return True


def locate_corrupt_records(paths, error):
    """Finds which shard a checksum error of `tf.data` came from.

    TensorFlow's reader says "corrupted record at <offset>" without the
    file. This walks the record headers of `paths` (one seek per record) and
    checks the record at that offset (its start or its payload's) in each
    shard that has one.

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
            frames = dict(record_frames(path))
        except (CorruptShardError, OSError):
            continue  # named by the framing check, or gone
        for start in (reported, reported - 12):
            if start in frames and not _record_is_intact(path, start,
                                                         frames[start]):
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
    hint = ("rerun with --skip_corrupt to skip corrupt records (each is "
            "logged), or re-extract the shard")
    found = locate_corrupt_records(paths, error)
    if found:
        return CorruptShardError("%s; %s" % ("; ".join(
            "%s: corrupt record at byte %d (checksum mismatch)" % hit
            for hit in found), hint))
    message = getattr(error, "message", str(error))
    return CorruptShardError(
        "a record in one of %d shards (%s%s) is corrupt: %s; %s" % (
            len(paths), ", ".join(paths[:3]), ", ..." if len(paths) > 3
            else "", message, hint))


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
      skip_corrupt: if True, a corrupt shard (truncated framing) is left out
        and a corrupt record (bad checksum) ends its shard there, each with a
        logged warning: tf.data cannot resume a shard after a bad record, so
        the records after it in that shard are lost. If False (default), a
        truncated shard raises CorruptShardError naming it and a corrupt
        record raises tf.errors.DataLossError during iteration.
      check_framing: scan each shard's record headers up front (cheap) so a
        truncated shard is named before training starts.
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
      CorruptShardError: when a shard is truncated and `skip_corrupt` is False.
    """
    paths = list_shards(file_pattern)
    if check_framing:
        good = []
        for path in paths:
            try:
                check_shard_framing(path)
                good.append(path)
            except CorruptShardError as e:
                if not skip_corrupt:
                    raise
                logging.warning("skipping corrupt shard: %s", e)
        if not good:
            raise CorruptShardError("every shard matching %r is corrupt" %
                                    file_pattern)
        paths = good
    return records_from_paths(
        paths, skip_corrupt=skip_corrupt, num_parallel_reads=num_parallel_reads,
        shuffle_files=shuffle_files, seed=seed, cycle_length=cycle_length,
        deterministic=deterministic, prefetch=prefetch)


def records_from_paths(paths, skip_corrupt=False, num_parallel_reads=None,
                       shuffle_files=False, seed=None, cycle_length=None,
                       deterministic=True, prefetch=True):
    """Like `read_records` on an explicit list (or tensor) of shard paths."""
    files = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths)))
    if shuffle_files:
        files = files.shuffle(len(paths), seed=seed,
                              reshuffle_each_iteration=True)
    autotune = tf.data.AUTOTUNE

    def _one_shard(path):
        ds = tf.data.TFRecordDataset(path)
        if skip_corrupt:
            ds = ds.ignore_errors(log_warning=True)
        return ds

    ds = files.interleave(
        _one_shard,
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
