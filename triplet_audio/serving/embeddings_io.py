"""On-disk format for the window embeddings of a labelled corpus.

`bin/embed` writes it, `bin/evaluate` reads it; the log-mel baseline uses the
same format (D = 96 * 64 = 6144, representation "logmel"), so every
representation is evaluated by the same code.

A corpus is one `.npz` file, or shards `NAME-00000-of-00004.npz` (each shard
holds whole segments, with its own segment table). The writer names its
files after the output path PATH it is given, with or without ".npz": NAME
is PATH less a final ".npz", the single file NAME.npz. A reader given the
same PATH finds the same files (`resolve_paths`), so `bin/evaluate` accepts
every `--output` that `bin/embed` accepted. Keys of every file:

  embeddings     float32 or float16 [N, D]  one row per 0.96 s window
  segment_index  int64 [N]                  row of the window's segment in
                                            this file's segment table
  start_times    float32 [N]                window start, seconds from the
                                            start of its segment
  segment_ids    str [S]                    recording / clip ids
  labels         uint8 [S, C]               multi-hot segment labels
  split          str [S]                    split names ("" where unknown)
  class_names    str [C]                    the class vocabulary
  representation str []                     "logmel" or a model name
  metadata       str []                     JSON object (may be "{}")
  format_version int64 []                   `FORMAT_VERSION`

Strings are stored as NumPy unicode arrays, so reading never needs pickle.
Every segment owns at least one window; a segment mean is therefore always
defined.
"""

import dataclasses
import glob
import json
import os
import re

from absl import logging
import numpy as np

from triplet_audio.features import inputs

FORMAT_VERSION = 1

EMBEDDINGS = "embeddings"
SEGMENT_INDEX = "segment_index"
START_TIMES = "start_times"
SEGMENT_IDS = "segment_ids"
LABELS = "labels"
SPLIT = "split"
CLASS_NAMES = "class_names"
REPRESENTATION = "representation"
METADATA = "metadata"
FORMAT_VERSION_KEY = "format_version"

REQUIRED_KEYS = (EMBEDDINGS, SEGMENT_INDEX, START_TIMES, SEGMENT_IDS, LABELS,
                 SPLIT, CLASS_NAMES, REPRESENTATION)

_SHARD_RE = re.compile(
    r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.npz$")
_TEMP_SUFFIX = ".incomplete"


class EmbeddingFormatError(ValueError):
    """An embeddings file (or set of shards) is malformed; names the file."""


@dataclasses.dataclass
class EmbeddingSet:
    """Window embeddings of a labelled corpus.

    Arrays are coerced to the documented dtypes on construction and then
    validated; an inconsistent set raises `EmbeddingFormatError` naming
    `source`.

    Attributes:
      embeddings: float32 or float16 [N, D] window embeddings.
      segment_index: int64 [N] index into the segment table of each window.
      start_times: float32 [N] start time (seconds) of each window within its
        segment.
      segment_ids: str [S] segment (recording) ids.
      labels: uint8 [S, C] multi-hot labels of each segment.
      split: str [S] split name of each segment ("" where unknown).
      class_names: str [C] class vocabulary.
      representation: Name of the representation ("logmel" or a model name).
      metadata: JSON-serialisable dict (model path, front-end parameters...).
      source: Where the set was read from (file or glob); used in errors only
        and never written.
    """

    embeddings: np.ndarray
    segment_index: np.ndarray
    start_times: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: np.ndarray
    representation: str
    metadata: dict = dataclasses.field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self):
        self.embeddings = np.asarray(self.embeddings)
        if self.embeddings.dtype not in (np.float16, np.float32):
            # float64 (or ints) from a caller: store what the format allows.
            self.embeddings = self.embeddings.astype(np.float32)
        self.segment_index = np.asarray(self.segment_index)
        self.start_times = np.asarray(self.start_times, dtype=np.float32)
        self.segment_ids = np.asarray(self.segment_ids, dtype=np.str_)
        self.labels = np.asarray(self.labels)
        self.split = np.asarray(self.split, dtype=np.str_)
        self.class_names = np.asarray(self.class_names, dtype=np.str_)
        self.representation = str(self.representation)
        self.metadata = dict(self.metadata or {})
        self.validate()
        self.segment_index = self.segment_index.astype(np.int64, copy=False)
        self.labels = self.labels.astype(np.uint8, copy=False)

    @property
    def num_windows(self):
        """N, the number of windows."""
        return self.embeddings.shape[0]

    @property
    def num_segments(self):
        """S, the number of segments."""
        return self.segment_ids.shape[0]

    @property
    def num_classes(self):
        """C, the number of classes."""
        return self.class_names.shape[0]

    @property
    def dim(self):
        """D, the embedding dimension."""
        return self.embeddings.shape[1]

    def _fail(self, message):
        raise EmbeddingFormatError("%s: %s" % (self.source, message))

    def validate(self):
        """Checks shapes, dtypes, index ranges and finiteness.

        Raises:
          EmbeddingFormatError: naming `source` and the first problem found.
        """
        emb = self.embeddings
        if emb.ndim != 2:
            self._fail("embeddings must be [N, D], got shape %s" % (emb.shape,))
        n, d = emb.shape
        if n == 0 or d == 0:
            self._fail("embeddings are empty (shape %s)" % (emb.shape,))
        if not np.issubdtype(self.segment_index.dtype, np.integer):
            self._fail("segment_index must be integer, got %s" %
                       self.segment_index.dtype)
        for name, arr in ((SEGMENT_INDEX, self.segment_index),
                          (START_TIMES, self.start_times)):
            if arr.shape != (n,):
                self._fail("%s has shape %s, expected (%d,) (one per window)"
                           % (name, arr.shape, n))
        if self.segment_ids.ndim != 1:
            self._fail("segment_ids must be 1-D, got shape %s" %
                       (self.segment_ids.shape,))
        s = self.segment_ids.shape[0]
        if self.class_names.ndim != 1:
            self._fail("class_names must be 1-D, got shape %s" %
                       (self.class_names.shape,))
        c = self.class_names.shape[0]
        if self.labels.shape != (s, c):
            self._fail("labels have shape %s, expected (%d, %d) "
                       "(segments, classes)" % (self.labels.shape, s, c))
        if self.split.shape != (s,):
            self._fail("split has shape %s, expected (%d,) (one per segment)"
                       % (self.split.shape, s))
        if self.labels.size and not np.isin(self.labels, (0, 1)).all():
            self._fail("labels must be multi-hot 0/1")
        if self.segment_index.min() < 0 or self.segment_index.max() >= s:
            self._fail("segment_index outside [0, %d)" % s)
        windows_per_segment = np.bincount(self.segment_index, minlength=s)
        if (windows_per_segment == 0).any():
            empty = self.segment_ids[windows_per_segment == 0]
            self._fail("%d segment(s) have no window, e.g. %r"
                       % (empty.size, str(empty[0])))
        if len(set(self.segment_ids.tolist())) != s:
            self._fail("segment_ids are not unique")
        if len(set(self.class_names.tolist())) != c:
            self._fail("class_names are not unique")
        if not np.isfinite(self.start_times).all():
            self._fail("start_times contain NaN or Inf")
        # Row-wise check keeps the peak memory of a big float16 log-mel set low.
        bad = _first_non_finite_row(emb)
        if bad is not None:
            self._fail("embeddings contain NaN or Inf (window %d, segment %r)"
                       % (bad, str(self.segment_ids[self.segment_index[bad]])))
        try:
            json.dumps(self.metadata)
        except TypeError as e:
            self._fail("metadata is not JSON-serialisable: %s" % e)


def _first_non_finite_row(x, chunk=65536):
    """Index of the first row of `x` with a NaN/Inf, or None."""
    for start in range(0, x.shape[0], chunk):
        ok = np.isfinite(x[start:start + chunk]).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None


def segment_means(emb_set, values=None):
    """Mean of each segment's windows.

    Args:
      emb_set: an `EmbeddingSet`.
      values: optional [N, K] per-window values to average instead of
        `emb_set.embeddings` (e.g. classifier scores).

    Returns:
      float32 [S, D] (or [S, K]) array; row s is the mean over the windows of
      segment s. Accumulates in float32 even for float16 embeddings.
    """
    x = emb_set.embeddings if values is None else np.asarray(values)
    return _group_means(x, emb_set.segment_index, emb_set.num_segments)


def _group_means(x, group, num_groups):
    """float32 [num_groups, K] means of the rows of `x` per `group` index."""
    counts = np.bincount(group, minlength=num_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if np.any(np.diff(group) < 0):
        # Rows must be grouped for reduceat; files written segment by segment
        # already are, which spares a copy of a big log-mel array.
        x = x[np.argsort(group, kind="stable")]
    # reduceat over grouped rows: one pass, no [S, N] indicator matrix.
    sums = np.add.reduceat(x, starts, axis=0, dtype=np.float32)
    return sums / counts[:, None].astype(np.float32)


def _output_stem(path):
    """NAME of the files written for output `path`: `path` less ".npz"."""
    return path[:-4] if path.endswith(".npz") else path


def single_file_path(path):
    """The one file `write_embeddings(path, ...)` writes when not sharding.

    Args:
      path: the output path as given to `write_embeddings`, with or without
        ".npz", e.g. "x/eval" or "x/eval.npz".

    Returns:
      e.g. "x/eval.npz" for either.
    """
    return _output_stem(path) + ".npz"


def shard_path(path, index, num_shards):
    """Path of shard `index` of `num_shards` for the output `path`.

    Args:
      path: the output path as given to `write_embeddings`, e.g. "x/eval.npz"
        or "x/eval".
      index: shard number, 0-based.
      num_shards: total number of shards.

    Returns:
      e.g. "x/eval-00002-of-00004.npz" for either.
    """
    return "%s-%05d-of-%05d.npz" % (_output_stem(path), index, num_shards)


def _shard_glob(path):
    """Glob of every shard set the writer may have written for `path`."""
    return glob.escape(_output_stem(path)) + "-?????-of-?????.npz"


def write_embeddings(path, emb_set, num_shards=1, compress=False):
    """Writes `emb_set` to one `.npz` file or to `num_shards` shards.

    Each file is written under a temporary name and renamed into place, so a
    reader never sees a half-written shard.

    Args:
      path: output file; ".npz" is appended if missing. With num_shards > 1
        the shards are named by `shard_path(path, i, num_shards)`.
      emb_set: the `EmbeddingSet` to write.
      num_shards: number of files; segments are split into contiguous groups
        of about equal window counts, a segment never spans two shards. Capped
        at the number of segments.
      compress: use `np.savez_compressed` (slower; float embeddings rarely
        shrink much).

    Returns:
      The list of paths written.
    """
    path = single_file_path(path)
    emb_set.validate()
    num_shards = max(1, min(int(num_shards), emb_set.num_segments))
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if num_shards == 1:
        _write_one(path, emb_set, compress)
        _remove_stale(path, [path])
        return [path]
    # Balance shards by windows (what dominates the size), cutting only at
    # segment boundaries.
    counts = np.bincount(emb_set.segment_index, minlength=emb_set.num_segments)
    cum = np.cumsum(counts)
    targets = cum[-1] * np.arange(1, num_shards) / num_shards
    cuts = np.searchsorted(cum, targets, side="left") + 1
    cuts = np.unique(np.clip(cuts, 1, emb_set.num_segments - 1))
    bounds = [0] + cuts.tolist() + [emb_set.num_segments]
    num_shards = len(bounds) - 1
    paths = []
    for i in range(num_shards):
        shard = _subset_segments(emb_set, np.arange(bounds[i], bounds[i + 1]))
        out = shard_path(path, i, num_shards)
        _write_one(out, shard, compress)
        paths.append(out)
    _remove_stale(path, paths)
    logging.info("Wrote %d windows of %d segments to %d shards %s",
                 emb_set.num_windows, emb_set.num_segments, num_shards,
                 shard_path(path, 0, num_shards))
    return paths


def _remove_stale(path, written):
    """Deletes earlier outputs of `path` that `written` did not replace.

    Without this, re-writing with another shard count would leave two
    complete shard sets that a reader would merge (duplicate segments).
    """
    candidates = inputs.expand_globs(_shard_glob(path))
    candidates.append(single_file_path(path))
    for old in candidates:
        if old not in written and os.path.isfile(old):
            logging.warning("Removing stale embeddings file %s", old)
            os.remove(old)


def subset_segments(emb_set, segments):
    """An `EmbeddingSet` restricted to some segments and their windows.

    Args:
      emb_set: the full `EmbeddingSet`.
      segments: int array of segment rows to keep (their order is kept).

    Returns:
      A new `EmbeddingSet` whose segment table is `segments` of `emb_set`.
    """
    return _subset_segments(emb_set, np.asarray(segments, dtype=np.int64))


def _subset_segments(emb_set, segments):
    remap = np.full(emb_set.num_segments, -1, dtype=np.int64)
    remap[segments] = np.arange(segments.size)
    new_index = remap[emb_set.segment_index]
    keep = new_index >= 0
    return EmbeddingSet(
        embeddings=emb_set.embeddings[keep],
        segment_index=new_index[keep],
        start_times=emb_set.start_times[keep],
        segment_ids=emb_set.segment_ids[segments],
        labels=emb_set.labels[segments],
        split=emb_set.split[segments],
        class_names=emb_set.class_names,
        representation=emb_set.representation,
        metadata=emb_set.metadata,
        source=emb_set.source)


def _write_one(path, emb_set, compress):
    tmp = path + _TEMP_SUFFIX
    arrays = {
        EMBEDDINGS: emb_set.embeddings,
        SEGMENT_INDEX: emb_set.segment_index.astype(np.int64),
        START_TIMES: emb_set.start_times.astype(np.float32),
        SEGMENT_IDS: emb_set.segment_ids,
        LABELS: emb_set.labels.astype(np.uint8),
        SPLIT: emb_set.split,
        CLASS_NAMES: emb_set.class_names,
        REPRESENTATION: np.array(emb_set.representation, dtype=np.str_),
        METADATA: np.array(json.dumps(emb_set.metadata, sort_keys=True),
                           dtype=np.str_),
        FORMAT_VERSION_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
    }
    save = np.savez_compressed if compress else np.savez
    # A file object stops NumPy from appending ".npz" to the temporary name.
    with open(tmp, "wb") as f:
        save(f, **arrays)
    os.replace(tmp, path)


def resolve_paths(path_or_glob):
    """Lists the files a path, glob or directory stands for.

    In this order:
      1. an existing file: read alone (even a single shard);
      2. an output path as it was given to `write_embeddings` (`bin/embed
         --output`), with or without ".npz": the single file or the shard
         set written for it (`single_file_path`, `shard_path`);
      3. a directory: all its `.npz` files;
      4. a glob.
    Shards named `-NNNNN-of-MMMMM.npz` found by 2-4 must be complete.

    Args:
      path_or_glob: str or path-like.

    Returns:
      Sorted list of file paths.

    Raises:
      EmbeddingFormatError: nothing matches, a set of shards is incomplete,
        or an output path has both a single file and shards (the writer
        never leaves both).
    """
    p = os.fspath(path_or_glob)
    if os.path.isfile(p):
        # One named file is read alone, even a single shard.
        return [p]
    paths = _written_files(p)
    if not paths and (os.path.isdir(p) or inputs.is_glob(p)):
        paths = inputs.expand_globs(p, directory_glob="*.npz")
    paths = [x for x in paths if not x.endswith(_TEMP_SUFFIX)]
    if not paths:
        raise EmbeddingFormatError(
            "%s: no embeddings file matches (looked for %s, %s-NNNNN-of-"
            "MMMMM.npz and, for a directory or glob, the .npz files it names)"
            % (p, single_file_path(p), _output_stem(p)))
    _check_shards_complete(paths, p)
    return paths


def _written_files(path):
    """The files `write_embeddings(path, ...)` wrote that exist, sorted."""
    single = single_file_path(path)
    shards = inputs.expand_globs(_shard_glob(path), keep=os.path.isfile)
    if os.path.isfile(single):
        if shards:
            raise EmbeddingFormatError(
                "%s: both %s and shards %s exist (the writer leaves one or "
                "the other); remove the stale one" % (path, single, shards[0]))
        return [single]
    return shards


def _check_shards_complete(paths, pattern):
    groups = {}
    for path in paths:
        m = _SHARD_RE.match(path)
        if m:
            key = (m.group("stem"), int(m.group("count")))
            groups.setdefault(key, set()).add(int(m.group("index")))
    for (stem, count), found in groups.items():
        missing = sorted(set(range(count)) - found)
        if missing:
            raise EmbeddingFormatError(
                "%s: shard set %s-*-of-%05d.npz is missing shard(s) %s"
                % (pattern, stem, count, missing[:5]))


def _read_one(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise EmbeddingFormatError("%s: missing key(s) %s"
                                           % (path, missing))
            version = int(data[FORMAT_VERSION_KEY]) if (
                FORMAT_VERSION_KEY in data.files) else FORMAT_VERSION
            if version > FORMAT_VERSION:
                raise EmbeddingFormatError(
                    "%s: format_version %d is newer than this reader (%d)"
                    % (path, version, FORMAT_VERSION))
            metadata = {}
            if METADATA in data.files:
                metadata = json.loads(str(data[METADATA]) or "{}")
            return EmbeddingSet(
                embeddings=data[EMBEDDINGS],
                segment_index=data[SEGMENT_INDEX],
                start_times=data[START_TIMES],
                segment_ids=data[SEGMENT_IDS],
                labels=data[LABELS],
                split=data[SPLIT],
                class_names=data[CLASS_NAMES],
                representation=str(data[REPRESENTATION]),
                metadata=metadata,
                source=path)
    except EmbeddingFormatError:
        raise
    except (OSError, ValueError, KeyError) as e:
        # np.load's errors (bad zip, pickled object arrays, bad JSON) do not
        # say which file; ours do.
        raise EmbeddingFormatError("%s: unreadable embeddings file: %s"
                                   % (path, e)) from e


def read_embeddings(path_or_glob):
    """Reads one file or a set of shards into a single `EmbeddingSet`.

    Args:
      path_or_glob: a `.npz` file, a glob, a directory of `.npz` files, or the
        output path given to `write_embeddings` when it wrote shards.

    Returns:
      An `EmbeddingSet`; shards are concatenated in file-name order, their
      segment tables appended (segment_index offset accordingly).

    Raises:
      EmbeddingFormatError: naming the offending file on any inconsistency
        (missing keys, NaN, shape mismatch, shards with different class
        vocabularies, representations or dimensions, duplicate segment ids).
    """
    paths = resolve_paths(path_or_glob)
    parts = [_read_one(p) for p in paths]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for part in parts[1:]:
        if not np.array_equal(part.class_names, first.class_names):
            raise EmbeddingFormatError("%s: class_names differ from %s"
                                       % (part.source, first.source))
        if part.representation != first.representation:
            raise EmbeddingFormatError(
                "%s: representation %r differs from %r in %s"
                % (part.source, part.representation, first.representation,
                   first.source))
        if part.dim != first.dim:
            raise EmbeddingFormatError("%s: dimension %d differs from %d in %s"
                                       % (part.source, part.dim, first.dim,
                                          first.source))
    offsets = np.cumsum([0] + [p.num_segments for p in parts[:-1]])
    dtype = np.result_type(*[p.embeddings.dtype for p in parts])
    merged = EmbeddingSet(
        embeddings=np.concatenate([p.embeddings.astype(dtype, copy=False)
                                   for p in parts]),
        segment_index=np.concatenate([p.segment_index + o
                                      for p, o in zip(parts, offsets)]),
        start_times=np.concatenate([p.start_times for p in parts]),
        segment_ids=np.concatenate([p.segment_ids for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        split=np.concatenate([p.split for p in parts]),
        class_names=first.class_names,
        representation=first.representation,
        metadata=first.metadata,
        source=str(path_or_glob))
    logging.info("Read %d windows of %d segments (%s, D=%d) from %d files",
                 merged.num_windows, merged.num_segments,
                 merged.representation, merged.dim, len(paths))
    return merged
