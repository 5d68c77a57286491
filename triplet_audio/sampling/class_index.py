"""Supervised triplets drawn from the whole class: an index of windows by class.

Why an index. Pairing windows of one class as they leave a shuffle buffer
pairs them with whatever else of that class is in the buffer. For a class
that is rare relative to the buffer that is mostly the anchor's own recording
(its windows arrive together), so at AudioSet scale (a 16k-window buffer over
~30M windows, a long tail of 527 classes) the "supervised" topline would pair
almost only within clips and partly become a proximity sampler. And a stream
weights classes by frequency, while the paper samples per class. Uniform
class choice over a long tail means reading rare windows hundreds of times
more often than common ones, which no single pass over the corpus can do
without holding it in memory. So the supervised sampler does not stream: it
draws windows by index and reads them by byte offset.

The index (one `<shard>.classidx.npz` beside each shard, see
`records.CLASS_INDEX_SUFFIX`) holds, per labelled record, the byte offset of
window 0's float32 payload inside the shard, its window count, its labels and
its recording id. It is built by one pass over the shard with TensorFlow's
record reader (so record checksums are checked once), the first time the
supervised sampler reads the shard, and rebuilt when the shard's size or
modification time changes. About 30 bytes per record plus 4 per label: an
AudioSet-sized corpus (2M clips) indexes in ~100 MB.

A triplet (`draw_triplets`, NumPy, seeded per batch):

  class c     uniform over the classes with at least two windows (default,
              as the paper), or in proportion to their windows
              (`class_sampling="frequency"`),
  anchor,     two distinct windows drawn uniformly from all of c's windows,
  positive    across recordings: P(same recording) is what uniform sampling
              of the class gives, whatever the buffer,
  negative    a window drawn uniformly from the labelled windows that share
              no class with the anchor (rejection sampling): the loss calls
              any two windows sharing a label positives.

Reading a window is one `pread` of 96 x 64 x 4 = 24,576 bytes: no record is
parsed, so the cost per window does not depend on the record's length.
"""

import dataclasses
import os
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.features import records

CLASS_SAMPLING = ("uniform", "frequency")
"""How the supervised sampler chooses a triplet's class: uniform over classes
(the paper) or in proportion to each class's windows."""

# 2: the spans skipped under --skip_corrupt are kept (`skipped_spans`).
_VERSION = 2
_WINDOW_BYTES = int(np.prod(C.WINDOW_SHAPE)) * 4
_SKIP_KINDS = (records.SKIP_CHECKSUM, records.SKIP_HEADER,
               records.SKIP_TRUNCATED, records.SKIP_MISSING,
               records.SKIP_UNREADABLE)
# Negative candidates drawn per anchor and round, and rounds before giving up
# (a class that co-occurs with every labelled window has no negative).
_NEGATIVE_CANDIDATES = 8
_NEGATIVE_ROUNDS = 64


def index_path(shard_path):
    """Where the class index of `shard_path` is kept."""
    return shard_path + records.CLASS_INDEX_SUFFIX


def _stat(path):
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def _scan_shard(path, skip_corrupt):
    """One pass over a shard: the labelled records' index arrays.

    With `skip_corrupt`, bad records are skipped and counted as
    `records.iter_shard` says; the spans skipped are kept in the index (the
    `skipped_*` arrays), so a run that loads it counts them again.
    """
    log = records.SkipLog()
    offsets, counts, ptr, labels, rids = [], [], [0], [], []
    for frame_offset, serialized in records.iter_shard(path, skip_corrupt,
                                                       log=log):
        feature = tf.train.Example.FromString(serialized).features.feature
        # A label listed twice would count the record twice in its class.
        record_labels = sorted(set(feature[records.LABELS].int64_list.value))
        if not record_labels:
            continue  # unlabelled: "unknown", never an anchor or negative
        payload = feature[records.LOGMEL].bytes_list.value[0]
        at = serialized.find(payload)
        if at < 0 or len(payload) % _WINDOW_BYTES:
            raise records.CorruptShardError(
                "%s: record at byte %d has no readable log-mel payload" %
                (path, frame_offset), path=path, offset=frame_offset)
        offsets.append(frame_offset + records.HEADER_BYTES + at)
        counts.append(len(payload) // _WINDOW_BYTES)
        labels.extend(record_labels)
        ptr.append(len(labels))
        rids.append(feature[records.RECORDING_ID].bytes_list.value[0])
    spans = log.spans()
    for span in spans:
        records.SKIPPED.add(span)
    return {
        "offsets": np.asarray(offsets, np.int64),
        "windows": np.asarray(counts, np.int32),
        "label_ptr": np.asarray(ptr, np.int64),
        "labels": np.asarray(labels, np.int64),
        "recording_ids": np.asarray(rids, dtype=object).astype(bytes)
                         if rids else np.zeros([0], "S1"),
        "skipped_spans": np.asarray(
            [[s.offset, s.records, s.num_bytes, _SKIP_KINDS.index(s.kind)]
             for s in spans], np.int64).reshape(-1, 4),
    }


def _skipped_spans(path, index):
    """The `records.SkippedRecords` an index of `path` was built without."""
    return [records.SkippedRecords(path, int(offset), _SKIP_KINDS[kind],
                                   int(count), int(num_bytes))
            for offset, count, num_bytes, kind in index["skipped_spans"]]


def shard_index(path, skip_corrupt=False):
    """The class index of one shard, read from beside it or built and saved.

    Args:
      path: a TFRecord shard.
      skip_corrupt: index the shard's intact records, skipping and counting
        (in `records.SKIPPED`, also when the index is loaded again) the bad
        ones, instead of raising.

    Returns:
      dict of NumPy arrays (see `_scan_shard`).

    Raises:
      records.CorruptShardError: naming the shard and the byte offset of its
        first bad record (also when an index built with `skip_corrupt` is
        loaded without it), unless `skip_corrupt`.
    """
    cached = index_path(path)
    size, mtime = _stat(path)
    index = None
    if os.path.exists(cached):
        try:
            with np.load(cached, allow_pickle=False) as data:
                meta = data["meta"]
                if (int(meta[0]) == _VERSION and int(meta[1]) == size and
                        int(meta[2]) == mtime):
                    index = {k: data[k] for k in data.files if k != "meta"}
        except (OSError, ValueError, KeyError) as e:
            logging.warning("%s: unreadable class index (%s); rebuilding",
                            cached, e)
    if index is not None:
        spans = _skipped_spans(path, index)
        if spans and not skip_corrupt:
            raise records.CorruptShardError(
                "%s; rerun with --skip_corrupt to skip corrupt records, or "
                "re-extract the shard" % spans[0].describe(), path=path,
                offset=spans[0].offset)
        for span in spans:
            records.SKIPPED.add(span)
        return index
    logging.info("building the class index of %s", path)
    index = _scan_shard(path, skip_corrupt)
    temp = cached + records.TEMP_SUFFIX
    try:
        with open(temp, "wb") as f:
            np.savez(f, meta=np.asarray([_VERSION, size, mtime], np.int64),
                     **index)
        os.replace(temp, cached)
    except OSError as e:  # a read-only corpus: keep it in memory only
        logging.warning("cannot save the class index beside %s (%s); it will "
                        "be rebuilt next time", path, e)
    return index


@dataclasses.dataclass
class ClassIndex:
    """Labelled records of a set of shards, indexed by class.

    Attributes:
      paths: shard paths.
      num_classes: vocabulary size C.
      shard: int32 [R] shard of each record.
      offsets: int64 [R] byte offset of window 0's payload in its shard.
      windows: int64 [R] windows per record.
      label_ptr, labels: CSR of each record's classes.
      recording_ids: bytes [R].
    """
    paths: list
    num_classes: int
    shard: np.ndarray
    offsets: np.ndarray
    windows: np.ndarray
    label_ptr: np.ndarray
    labels: np.ndarray
    recording_ids: np.ndarray

    def __post_init__(self):
        self.windows = self.windows.astype(np.int64)
        per_record = np.diff(self.label_ptr)
        record_of_label = np.repeat(np.arange(len(self.windows)), per_record)
        # Class lists: the records of each class, in record order, with the
        # cumulative window count that maps a window slot to its record.
        order = np.argsort(self.labels, kind="stable")
        self.class_records = record_of_label[order]
        self.class_ptr = np.searchsorted(self.labels[order],
                                         np.arange(self.num_classes + 1))
        self.class_cum = np.cumsum(self.windows[self.class_records])
        starts = np.concatenate([[0], self.class_cum])
        self.class_windows = (starts[self.class_ptr[1:]] -
                              starts[self.class_ptr[:-1]])
        self._class_start = starts[self.class_ptr[:-1]]
        self.record_cum = np.cumsum(self.windows)
        # Classes as bit sets, for the negatives' "shares no class" test.
        words = max(1, (self.num_classes + 63) // 64)
        self.bits = np.zeros([len(self.windows), words], np.uint64)
        np.bitwise_or.at(self.bits, (record_of_label, self.labels // 64),
                         np.left_shift(np.uint64(1),
                                       (self.labels % 64).astype(np.uint64)))

    @property
    def num_records(self):
        return len(self.windows)

    @property
    def total_windows(self):
        """Labelled windows."""
        return int(self.record_cum[-1]) if len(self.record_cum) else 0

    def eligible_classes(self):
        """Classes with at least two windows (an anchor-positive pair)."""
        return np.flatnonzero(self.class_windows >= 2)

    def class_probabilities(self, class_sampling="uniform"):
        """P(class) of a triplet under `class_sampling`, float64 [C]."""
        p = np.zeros(self.num_classes)
        eligible = self.eligible_classes()
        if class_sampling == "uniform":
            p[eligible] = 1.0
        elif class_sampling == "frequency":
            p[eligible] = self.class_windows[eligible]
        else:
            raise ValueError("--class_sampling: must be one of %s, got %r" %
                             (", ".join(CLASS_SAMPLING), class_sampling))
        return p / p.sum() if p.sum() else p

    def labels_multi_hot(self, rows):
        """float32 [len(rows), C] multi-hot labels of records `rows`."""
        rows = np.asarray(rows).reshape(-1)
        lengths = self.label_ptr[rows + 1] - self.label_ptr[rows]
        firsts = np.repeat(self.label_ptr[rows], lengths)
        within = np.arange(lengths.sum()) - np.repeat(
            np.cumsum(lengths) - lengths, lengths)
        out = np.zeros([len(rows), self.num_classes], np.float32)
        out[np.repeat(np.arange(len(rows)), lengths),
            self.labels[firsts + within]] = 1.0
        return out

    def class_window(self, classes, slots):
        """(record, window in record) of window `slots` of `classes`."""
        position = self._class_start[classes] + slots
        entry = np.searchsorted(self.class_cum, position, side="right")
        before = self.class_cum[entry] - self.windows[self.class_records[entry]]
        return self.class_records[entry], position - before

    def any_window(self, positions):
        """(record, window in record) of labelled window numbers."""
        record = np.searchsorted(self.record_cum, positions, side="right")
        return record, positions - (self.record_cum[record] -
                                    self.windows[record])


def load(paths, num_classes, skip_corrupt=False, record_shard=None):
    """The class index of a list of shards.

    Args:
      paths: shard paths (`pipeline.shard_paths`).
      num_classes: vocabulary size C.
      skip_corrupt: see `shard_index`.
      record_shard: optional (num_pipelines, pipeline_id): keep every
        num-th record only (fewer shards than input pipelines).

    Returns:
      `ClassIndex`.

    Raises:
      ValueError: naming the shard and recording whose label is outside
        [0, num_classes), or when no class has two windows.
    """
    parts = []
    for number, path in enumerate(paths):
        part = shard_index(path, skip_corrupt)
        bad = (part["labels"] < 0) | (part["labels"] >= num_classes)
        if bad.any():
            record = np.searchsorted(part["label_ptr"], np.argmax(bad),
                                     side="right") - 1
            raise ValueError(
                "%s: recording %r has label %d, outside the manifest's "
                "vocabulary of %d classes" % (
                    path, part["recording_ids"][record].decode("utf-8",
                                                               "replace"),
                    part["labels"][np.argmax(bad)], num_classes))
        parts.append((number, part))
    shard = np.concatenate([np.full(len(p["windows"]), n, np.int32)
                            for n, p in parts])
    offsets = np.concatenate([p["offsets"] for _, p in parts])
    windows = np.concatenate([p["windows"] for _, p in parts])
    rids = np.concatenate([p["recording_ids"].astype(object)
                           for _, p in parts]) if parts else np.zeros([0])
    lengths = np.concatenate([np.diff(p["label_ptr"]) for _, p in parts])
    labels = np.concatenate([p["labels"] for _, p in parts])
    keep = np.ones(len(windows), bool)
    if record_shard is not None:
        num, pipeline_id = record_shard
        keep = np.arange(len(windows)) % num == pipeline_id
    keep &= windows > 0
    label_keep = np.repeat(keep, lengths)
    lengths = lengths[keep]
    index = ClassIndex(
        paths=list(paths), num_classes=int(num_classes), shard=shard[keep],
        offsets=offsets[keep], windows=windows[keep],
        label_ptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        labels=labels[label_keep], recording_ids=rids[keep])
    if not len(index.eligible_classes()):
        raise ValueError("--sampler=supervised: no class of %s has two "
                         "labelled windows" % (", ".join(paths[:3]),))
    logging.info("class index: %d labelled records, %d windows, %d of %d "
                 "classes with pairs", index.num_records, index.total_windows,
                 len(index.eligible_classes()), num_classes)
    return index


def draw_triplets(index, rng, k, class_sampling="uniform"):
    """Draws k supervised triplets as (record, window) pairs.

    Args:
      index: `ClassIndex`.
      rng: `np.random.Generator`.
      k: triplets.
      class_sampling: one of `CLASS_SAMPLING`.

    Returns:
      (classes int64 [k], records int64 [k, 3], windows int64 [k, 3]): the
      class and the (anchor, positive, negative) records and windows.

    Raises:
      ValueError: when some anchor's classes co-occur with every labelled
        window, so that it has no negative.
    """
    p = index.class_probabilities(class_sampling)
    classes = rng.choice(index.num_classes, size=k, p=p)
    n = index.class_windows[classes]
    first = rng.integers(0, n)
    second = rng.integers(0, n - 1)
    second += second >= first  # distinct slots, uniform over ordered pairs
    rec_a, win_a = index.class_window(classes, first)
    rec_p, win_p = index.class_window(classes, second)
    rec_n = np.full(k, -1, np.int64)
    win_n = np.zeros(k, np.int64)
    todo = np.arange(k)
    for _ in range(_NEGATIVE_ROUNDS):
        if not len(todo):
            break
        picks = rng.integers(0, index.total_windows,
                             size=(len(todo), _NEGATIVE_CANDIDATES))
        cand_rec, cand_win = index.any_window(picks)
        ok = ~np.any(index.bits[cand_rec] &
                     index.bits[rec_a[todo]][:, None, :], axis=-1)
        found = ok.any(axis=1)
        choice = np.argmax(ok, axis=1)
        rows = np.arange(len(todo))
        rec_n[todo[found]] = cand_rec[rows, choice][found]
        win_n[todo[found]] = cand_win[rows, choice][found]
        todo = todo[~found]
    if len(todo):
        record = rec_a[todo[0]]
        raise ValueError(
            "--sampler=supervised: no negative for recording %r: almost "
            "every labelled window shares one of its classes %s" % (
                index.recording_ids[record].decode("utf-8", "replace"),
                np.flatnonzero(index.labels_multi_hot([record])[0]).tolist()))
    return (classes, np.stack([rec_a, rec_p, rec_n], axis=1),
            np.stack([win_a, win_p, win_n], axis=1))


class WindowReader:
    """Reads windows by byte offset, one `pread` each (thread-safe)."""

    def __init__(self, index):
        self._index = index
        self._fds = {}
        self._lock = threading.Lock()

    def _fd(self, shard):
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = os.open(self._index.paths[shard], os.O_RDONLY)
                    self._fds[shard] = fd
        return fd

    def read(self, rows, windows):
        """float32 [n, 96, 64]: window `windows[i]` of record `rows[i]`."""
        rows = np.asarray(rows).reshape(-1)
        windows = np.asarray(windows).reshape(-1)
        out = np.empty((len(rows),) + C.WINDOW_SHAPE, "<f4")
        offsets = self._index.offsets[rows] + windows * _WINDOW_BYTES
        for i, (row, offset) in enumerate(zip(rows, offsets)):
            shard = int(self._index.shard[row])
            got = os.preadv(self._fd(shard), [memoryview(out[i]).cast("B")],
                            int(offset))
            if got != _WINDOW_BYTES:
                raise records.CorruptShardError(
                    "%s: window at byte %d is cut short (%d of %d bytes); was "
                    "the shard rewritten while training?" % (
                        self._index.paths[shard], offset, got, _WINDOW_BYTES))
        return out.astype(np.float32, copy=False)

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass
