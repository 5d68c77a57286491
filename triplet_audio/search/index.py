"""A nearest-neighbour index of audio embeddings, with what each vector is.

`SoundIndex` holds a faiss index of unit vectors (cosine similarity is their
inner product) and, beside each vector, its recording (id, source path,
labels, split) and start time. A vector is one 0.96 s window (level
"window") or one recording, the mean of its windows re-normalised (level
"recording"). Every window's vector is also kept (float16, memory-mapped
when loaded), so the best-matching moments of a recording, and a query by a
recording of the index, need no model at either level.

Index kinds (`config.search.INDEX_TYPES`): exact (faiss IndexFlatIP holds
the vectors; a search without a filter runs `exact_top_k`, one BLAS product
per block with a vectorised top-k, near the BLAS bound where faiss's per-query
heaps were 3-6x slower), hnsw (IndexHNSWFlat: a graph, approximate) and ivfpq
(IndexIVFPQ: k-means cells of product-quantised codes, approximate and
compressed; its hits are re-scored from the stored window vectors).

On disk, an index directory DIR holds

  index.json            what the index is (`info`: level, kind, parameters,
                        dimension, counts, the export and front end that made
                        its vectors, the class names, the inputs added) and
                        which version directory is current
  vNNNNNN/vectors.faiss the faiss index (row i = vector i)
  vNNNNNN/windows.npz   per window: recording row, start time, vector row
  vNNNNNN/window_vectors.npy  float16 [W, D] unit window vectors
  vNNNNNN/recordings.npz      per recording: id, source path, labels
                              (CSR: label_ptr, label_idx), split, first
                              window and window count

A write builds a new version directory under a temporary name, renames it,
then replaces index.json (`jsonio.write_json`: temporary file, fsync,
rename), which is the commit: a build killed at any point leaves index.json
naming the old version, which stays whole and loadable. The next write
removes what a killed one left.

No TensorFlow here.
"""

import logging as std_logging
import os
import re
import shutil
import time

from absl import logging
import numpy as np

# faiss's loader logs, at INFO, each SIMD build it probes before the one it
# loads (wheels since 1.9 dispatch AVX2 / AVX-512 at run time in one
# library): noise on every binary's stderr.
std_logging.getLogger("faiss.loader").setLevel(std_logging.WARNING)
# faiss's OpenMP threads spin while they wait by default; where the cores are
# shared (other jobs, a web server's threads) that made exact search 2-3x
# slower in benchmarks/bench_search.py. Read when faiss's own libgomp starts;
# a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import faiss  # pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order

from triplet_audio.config import jsonio
from triplet_audio.config import search as search_config
from triplet_audio import constants as C
from triplet_audio.serving import embeddings_io

FORMAT = "triplet-audio-index"
FORMAT_VERSION = 1
INFO_NAME = "index.json"
VECTORS_NAME = "vectors.faiss"
WINDOWS_NAME = "windows.npz"
WINDOW_VECTORS_NAME = "window_vectors.npy"
RECORDINGS_NAME = "recordings.npz"
INCOMPLETE = ".incomplete"
_VERSION_RE = re.compile(r"^v(\d{6})(\.incomplete)?$")

EXACT = search_config.EXACT
HNSW = search_config.HNSW
IVFPQ = search_config.IVFPQ
AUTO = search_config.AUTO
WINDOW = search_config.WINDOW
RECORDING = search_config.RECORDING

_ADD_CHUNK = 65536
_BLOCK_ELEMENTS = 1 << 24
PQ_BITS = 8
MIN_POINTS_PER_CENTROID = 39
"""faiss's k-means needs this many training points per centroid."""
MIN_IVFPQ_VECTORS = MIN_POINTS_PER_CENTROID * (1 << PQ_BITS)
"""The fewest vectors ivfpq's 8-bit codes train on."""


class SearchIndexError(ValueError):
    """An index cannot be built, read or searched; the message says why."""


def normalize(x, chunk=_ADD_CHUNK):
    """float32 copy of `x` with unit rows (zero rows stay zero), by chunks."""
    x = np.asarray(x)
    out = np.empty(x.shape, np.float32)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].astype(np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[start:start + chunk] = part / np.maximum(norms, 1e-12)
    return out


def _above(sims, threshold, tile=64):
    """(rows, cols) of the entries of `sims` [Q, B] above `threshold` [Q].

    Few entries qualify once a query's k-th best is known, so they are found
    through the maxima of `width / tile` groups of `tile` columns each (the
    groups strided, so the maxima are an elementwise maximum of `tile`
    contiguous slices: one SIMD pass), and only the groups whose maximum
    qualifies are looked into. A `nonzero` over the whole block, or maxima
    over contiguous tiles, cost more than the matrix product itself.
    """
    nq, width = sims.shape
    full = width - width % tile
    groups = full // tile
    rows, cols = [], []
    if groups:
        strided = sims[:, :full].reshape(nq, tile, groups)
        row, group = np.nonzero(strided.max(axis=1) > threshold[:, None])
        hit, step = np.nonzero(strided[row, :, group] > threshold[row, None])
        rows.append(row[hit])
        cols.append(step * groups + group[hit])
    if full < width:  # The last columns, fewer than a tile.
        rest_row, rest_col = np.nonzero(sims[:, full:] > threshold[:, None])
        rows.append(rest_row)
        cols.append(rest_col + full)
    return np.concatenate(rows), np.concatenate(cols)


def exact_top_k(vectors, queries, k, block_elements=_BLOCK_ELEMENTS):
    """Exact top-k inner products of `queries` against `vectors`.

    One BLAS product per block of vectors (sized so a block of similarities
    holds `block_elements` floats), as faiss's IndexFlatIP does; but where
    faiss feeds every similarity through a per-query heap (measured 3-6x
    slower than the product itself on 2 cores), here a block's similarities
    are compared at once with each query's current k-th best, and only the
    few that beat it are merged: after the first block nearly all are
    rejected at memory speed, so batched search runs near the BLAS bound.

    Args:
      vectors: float32 [N, D].
      queries: float32 [Q, D].
      k: neighbours per query (capped at N).
      block_elements: similarities computed per block.

    Returns:
      (similarities float32 [Q, k], rows int64 [Q, k]), best first.
    """
    n, nq = vectors.shape[0], queries.shape[0]
    k = min(int(k), n)
    block = max(1024, block_elements // max(nq, 1))
    best_s = best_i = None
    # Reused buffers: a fresh block each time costs page faults and zeroing.
    buffer = np.empty((nq, min(block, n)), np.float32)
    for start in range(0, n, block):
        part_vectors = vectors[start:start + block]
        sims = buffer[:, :part_vectors.shape[0]]
        np.matmul(queries, part_vectors.T, out=sims)
        if best_s is None:
            if sims.shape[1] > k:
                part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                best_s = np.take_along_axis(sims, part, axis=1)
                best_i = part.astype(np.int64)
            else:  # A first block of fewer than k: the rest fill in.
                best_s = np.full((nq, k), -np.inf, np.float32)
                best_i = np.full((nq, k), -1, np.int64)
                best_s[:, :sims.shape[1]] = sims
                best_i[:, :sims.shape[1]] = np.arange(sims.shape[1])
            continue
        rows, cols = _above(sims, best_s.min(axis=1))
        if not rows.size:
            continue
        # Merge the newcomers with the touched queries' current best.
        touched = np.unique(rows)
        cand_row = np.concatenate([np.repeat(np.arange(touched.size), k),
                                   np.searchsorted(touched, rows)])
        cand_s = np.concatenate([best_s[touched].ravel(), sims[rows, cols]])
        cand_i = np.concatenate([best_i[touched].ravel(), cols + start])
        order = np.lexsort((-cand_s, cand_row))
        cand_row, cand_s, cand_i = (cand_row[order], cand_s[order],
                                    cand_i[order])
        rank = np.arange(cand_row.size) - np.searchsorted(cand_row,
                                                          cand_row)
        keep = rank < k
        merged_s = np.empty((touched.size, k), np.float32)
        merged_i = np.empty((touched.size, k), np.int64)
        merged_s[cand_row[keep], rank[keep]] = cand_s[keep]
        merged_i[cand_row[keep], rank[keep]] = cand_i[keep]
        best_s[touched], best_i[touched] = merged_s, merged_i
    order = np.argsort(-best_s, axis=1, kind="stable")
    return (np.take_along_axis(best_s, order, axis=1),
            np.take_along_axis(best_i, order, axis=1))


def resolve_index_type(index_type, num_vectors, exact_max_vectors):
    """The kind `auto` stands for at `num_vectors` (others are themselves).

    Up to `exact_max_vectors`: exact. Above: ivfpq, which on the benchmark's
    1M vectors (benchmarks/bench_search.py) built 5x faster than hnsw, used
    0.08x the memory of the raw vectors (hnsw 1.3x) and reached recall@10
    0.97-0.99 at 50-85x exact speed where hnsw stayed below 0.9; hnsw for a
    set too small to train ivfpq's codes.
    """
    if index_type != AUTO:
        return index_type
    if num_vectors <= exact_max_vectors:
        return EXACT
    return IVFPQ if num_vectors >= MIN_IVFPQ_VECTORS else HNSW


def _ivf_nlist(requested, num_vectors):
    if requested:
        return int(requested)
    nlist = int(2 * np.sqrt(num_vectors))
    return max(1, min(nlist, num_vectors // MIN_POINTS_PER_CENTROID))


def _new_faiss_index(index_type, dim, params, num_vectors, sample, seed):
    """An empty (trained, for ivfpq) faiss index of `index_type`.

    Args:
      index_type: "exact", "hnsw" or "ivfpq".
      dim: D.
      params: the index parameters; ivf_nlist is set to the value used.
      num_vectors: how many vectors will be added (sizes ivfpq's cells).
      sample: callable(sorted rows) -> float32 unit vectors of those rows,
        for ivfpq's training.
      seed: seeds the training sample and k-means.
    """
    if index_type == EXACT:
        return faiss.IndexFlatIP(dim)
    if index_type == HNSW:
        index = faiss.IndexHNSWFlat(dim, int(params["hnsw_m"]),
                                    faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["hnsw_ef_construction"])
        index.hnsw.efSearch = int(params["hnsw_ef_search"])
        return index
    if index_type == IVFPQ:
        pq_m = int(params["pq_m"])
        if dim % pq_m:
            raise SearchIndexError("--pq_m=%d does not divide the embedding "
                                   "size %d" % (pq_m, dim))
        n = num_vectors
        nlist = _ivf_nlist(params.get("ivf_nlist"), n)
        need = MIN_POINTS_PER_CENTROID * max(nlist, 1 << PQ_BITS)
        if n < need:
            raise SearchIndexError(
                "--index_type=ivfpq needs at least %d vectors to train %d "
                "cells and %d-bit codes, got %d; use --index_type=exact or "
                "hnsw" % (need, nlist, PQ_BITS, n))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, PQ_BITS,
                                 faiss.METRIC_INNER_PRODUCT)
        index.nprobe = int(params["ivf_nprobe"])
        size = min(n, max(need, 50 * nlist))
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=size, replace=False))
        index.cp.seed = int(seed)
        index.pq.cp.seed = int(seed)
        start = time.perf_counter()
        index.train(np.ascontiguousarray(sample(rows)))
        logging.info("ivfpq: trained %d cells and %d x %d-bit codes on %d "
                     "vectors in %.1f s", nlist, pq_m, PQ_BITS, size,
                     time.perf_counter() - start)
        params["ivf_nlist"] = nlist
        return index
    raise SearchIndexError("unknown index type %r" % (index_type,))


def _add(faiss_index, vectors):
    for start in range(0, vectors.shape[0], _ADD_CHUNK):
        faiss_index.add(np.ascontiguousarray(
            vectors[start:start + _ADD_CHUNK], np.float32))


def _sorted_windows(emb_set):
    """Window rows of `emb_set` grouped by segment, in time order."""
    return np.lexsort((emb_set.start_times, emb_set.segment_index))


class SoundIndex:
    """Vectors of windows or recordings and what each one is.

    Attributes:
      info: the index.json fields (level, index_type, params, dim, counts,
        export, frontend, class_names, sources).
      faiss_index: the faiss index; vector row i is window i (level window)
        or recording i (level recording).
      window_recording: int32 [W], recording row of each window.
      window_start: float32 [W], start time (s) of each window in its
        recording.
      window_vectors: float16 [W, D] unit window vectors.
      recording_ids, source_paths, split: str [R].
      label_ptr, label_idx: the labels of recording r are
        class_names[label_idx[label_ptr[r]:label_ptr[r + 1]]].
      first_window, num_windows: int64 [R], the windows of recording r are
        rows first_window[r] ... + num_windows[r] (contiguous, in time
        order).
      directory: where it was loaded from or last saved (None before).
    """

    def __init__(self, info, faiss_index, window_recording, window_start,
                 window_vectors, recordings):
        self.info = info
        self.faiss_index = faiss_index
        self.window_recording = np.asarray(window_recording, np.int32)
        self.window_start = np.asarray(window_start, np.float32)
        self.window_vectors = window_vectors
        self.recording_ids = np.asarray(recordings["ids"], np.str_)
        self.source_paths = np.asarray(recordings["source_paths"], np.str_)
        self.split = np.asarray(recordings["split"], np.str_)
        self.label_ptr = np.asarray(recordings["label_ptr"], np.int64)
        self.label_idx = np.asarray(recordings["label_idx"], np.int32)
        self.first_window = np.asarray(recordings["first_window"], np.int64)
        self.num_windows = np.asarray(recordings["num_windows"], np.int64)
        self.directory = None
        self._row_of = None

    # ------------------------------------------------------------ building
    @classmethod
    def build(cls, emb_set, identity, level=WINDOW, index_type=AUTO,
              params=None, source_paths=None,
              exact_max_vectors=search_config.EXACT_MAX_VECTORS, seed=0,
              source=None):
        """Builds an index of every window (or recording) of `emb_set`.

        Args:
          emb_set: an `embeddings_io.EmbeddingSet`.
          identity: the identity of the export that made its vectors
            (`exports.export_identity` / `identity_of_embeddings`).
          level: "window" or "recording".
          index_type: "auto", "exact", "hnsw" or "ivfpq".
          params: the index parameters (`IndexConfig.index_params()`);
            defaults are `IndexConfig`'s.
          source_paths: optional {recording id: audio file}.
          exact_max_vectors: the size up to which "auto" means exact.
          seed: seeds the ivfpq training sample and k-means.
          source: what the vectors were read from, recorded in the index.

        Returns:
          a `SoundIndex` (not saved; see `save`).

        Raises:
          SearchIndexError: on an unusable level, kind or parameter.
        """
        if level not in search_config.LEVELS:
            raise SearchIndexError("level: %r is not one of %s" % (
                level, ", ".join(search_config.LEVELS)))
        if index_type not in search_config.INDEX_TYPES:
            raise SearchIndexError("index_type: %r is not one of %s" % (
                index_type, ", ".join(search_config.INDEX_TYPES)))
        params = dict(search_config.IndexConfig().index_params(),
                      **(params or {}))
        num_vectors = (emb_set.num_windows if level == WINDOW
                       else emb_set.num_segments)
        kind = resolve_index_type(index_type, num_vectors, exact_max_vectors)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "level": level,
            "index_type": kind,
            "index_type_requested": index_type,
            "params": params,
            "metric": "cosine (inner product of unit vectors)",
            "dim": int(emb_set.dim),
            "representation": emb_set.representation,
            "export": {k: v for k, v in identity.items() if k != "metadata"},
            "export_metadata": identity.get("metadata") or {},
            "frontend": identity.get("frontend") or C.frontend_params(),
            "window_seconds": C.WINDOW_SECONDS,
            "class_names": [],
            "sources": [],
            "seed": int(seed),
        }
        start = time.perf_counter()
        tables = cls._window_tables(emb_set, 0)
        if level == WINDOW:
            # Window vectors go to faiss chunk by chunk as they are
            # normalised: the build never holds a second full float32 copy.
            order = tables["order"]
            faiss_index = _new_faiss_index(
                kind, emb_set.dim, params, num_vectors,
                lambda rows: normalize(emb_set.embeddings[order[rows]]),
                seed)
            window_vectors, _ = cls._unit_windows(emb_set, tables, level,
                                                  faiss_index)
        else:
            window_vectors, recordings = cls._unit_windows(emb_set, tables,
                                                           level)
            faiss_index = _new_faiss_index(
                kind, emb_set.dim, params, num_vectors,
                lambda rows: recordings[rows], seed)
            _add(faiss_index, recordings)
        empty = {"ids": [], "source_paths": [], "split": [],
                 "label_ptr": [0], "label_idx": [], "first_window": [],
                 "num_windows": []}
        index = cls(info, faiss_index, np.zeros(0, np.int32),
                    np.zeros(0, np.float32),
                    np.zeros((0, emb_set.dim), np.float16), empty)
        index._append(emb_set, tables, window_vectors, source_paths, source)
        info["build_seconds"] = round(time.perf_counter() - start, 3)
        logging.info("built an index of %d %s vectors (%s, D=%d) in %.1f s",
                     index.num_vectors, level, kind, index.dim,
                     info["build_seconds"])
        return index

    @staticmethod
    def _window_tables(emb_set, first_recording):
        """Window order (grouped by segment, in time order) and tables."""
        order = _sorted_windows(emb_set)
        segment = emb_set.segment_index[order]
        counts = np.bincount(segment, minlength=emb_set.num_segments)
        return {
            "order": order,
            "segment": segment,
            "recording": (segment + first_recording).astype(np.int32),
            "start": emb_set.start_times[order].astype(np.float32),
            "num_windows": counts.astype(np.int64),
        }

    @staticmethod
    def _unit_windows(emb_set, tables, level, faiss_index=None):
        """float16 unit window vectors, and (level recording) unit means.

        Works chunk by chunk; each float32 chunk of unit window vectors is
        also added to `faiss_index` when one is given.

        Returns:
          (float16 [W, D] in `tables["order"]`, float32 [S, D] unit
          recording vectors or None).
        """
        order, segment = tables["order"], tables["segment"]
        in_order = bool(np.all(order[1:] > order[:-1]))
        out = np.empty((order.size, emb_set.dim), np.float16)
        sums = (np.zeros((emb_set.num_segments, emb_set.dim), np.float32)
                if level == RECORDING else None)
        for start in range(0, order.size, _ADD_CHUNK):
            stop = start + _ADD_CHUNK
            # bin/embed writes windows in order: a slice, no gather, then.
            part = normalize(emb_set.embeddings[start:stop] if in_order
                             else emb_set.embeddings[order[start:stop]])
            out[start:stop] = part
            if faiss_index is not None:
                faiss_index.add(part)
            if sums is not None:
                seg = segment[start:stop]
                firsts = np.concatenate([[0], np.flatnonzero(np.diff(seg)) +
                                         1])
                sums[seg[firsts]] += np.add.reduceat(part, firsts, axis=0)
        return out, (normalize(sums) if sums is not None else None)

    def add(self, emb_set, source_paths=None, source=None):
        """Adds the recordings of `emb_set` the index does not hold yet.

        Recordings are matched by id; those already indexed are skipped (so
        re-embedding a grown folder and adding it adds only what is new).
        The faiss index is extended in place: nothing is rebuilt (an ivfpq
        index keeps the cells and codes it was trained with).

        Args:
          emb_set: an `EmbeddingSet` of the same representation and dimension.
          source_paths: optional {recording id: audio file}.
          source: what the vectors were read from, recorded in the index.

        Returns:
          (recordings added, recordings skipped).

        Raises:
          SearchIndexError: when the dimension or representation differs.
        """
        if emb_set.dim != self.dim:
            raise SearchIndexError("%s has dimension %d, the index %d" % (
                emb_set.source, emb_set.dim, self.dim))
        if emb_set.representation != self.info["representation"]:
            raise SearchIndexError(
                "%s holds %r vectors, the index %r" % (
                    emb_set.source, emb_set.representation,
                    self.info["representation"]))
        known = self._rows()
        new = np.array([i for i, rid in enumerate(emb_set.segment_ids)
                        if str(rid) not in known], np.int64)
        skipped = emb_set.num_segments - new.size
        if skipped:
            logging.info("%d of %d recordings of %s are indexed already; "
                         "skipped", skipped, emb_set.num_segments,
                         emb_set.source)
        if not new.size:
            return 0, skipped
        if new.size < emb_set.num_segments:
            emb_set = embeddings_io.subset_segments(emb_set, new)
        start = time.perf_counter()
        tables = self._window_tables(emb_set, self.num_recordings)
        window_vectors, recordings = self._unit_windows(
            emb_set, tables, self.level,
            self.faiss_index if self.level == WINDOW else None)
        if recordings is not None:
            _add(self.faiss_index, recordings)
        self._append(emb_set, tables, window_vectors, source_paths, source)
        logging.info("added %d recordings (%d windows) in %.1f s",
                     emb_set.num_segments, emb_set.num_windows,
                     time.perf_counter() - start)
        return int(new.size), int(skipped)

    def _append(self, emb_set, windows, window_vectors, source_paths,
                source):
        """Appends the tables of `emb_set`'s recordings (their vectors are in
        faiss already): `windows` from `_window_tables`."""
        # Labels by name: a vocabulary new to the index is appended to it.
        class_names = list(self.info["class_names"])
        position = {name: i for i, name in enumerate(class_names)}
        remap = []
        for name in emb_set.class_names.tolist():
            if name not in position:
                position[name] = len(class_names)
                class_names.append(name)
            remap.append(position[name])
        remap = np.asarray(remap, np.int32)
        rows, cols = np.nonzero(emb_set.labels)
        counts = np.bincount(rows, minlength=emb_set.num_segments)
        label_idx = remap[cols] if cols.size else np.zeros(0, np.int32)
        label_ptr = self.label_ptr[-1] + np.cumsum(counts)
        paths = source_paths or {}
        first = self.window_recording.size + np.concatenate(
            [[0], np.cumsum(windows["num_windows"])[:-1]])
        self.info["class_names"] = class_names
        self.recording_ids = np.concatenate(
            [self.recording_ids, emb_set.segment_ids.astype(np.str_)])
        self.source_paths = np.concatenate([self.source_paths, np.asarray(
            [paths.get(str(r), "") for r in emb_set.segment_ids], np.str_)])
        self.split = np.concatenate([self.split, emb_set.split])
        self.label_ptr = np.concatenate([self.label_ptr, label_ptr])
        self.label_idx = np.concatenate([self.label_idx, label_idx])
        self.first_window = np.concatenate([self.first_window, first])
        self.num_windows = np.concatenate([self.num_windows,
                                           windows["num_windows"]])
        self.window_recording = np.concatenate([self.window_recording,
                                                windows["recording"]])
        self.window_start = np.concatenate([self.window_start,
                                            windows["start"]])
        self.window_vectors = window_vectors if not len(
            self.window_vectors) else np.concatenate(
                [np.asarray(self.window_vectors), window_vectors])
        self._row_of = None
        self.info["sources"].append({
            "embeddings": source or emb_set.source,
            "recordings": int(emb_set.num_segments),
            "windows": int(emb_set.num_windows),
            "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        self._update_counts()

    def _update_counts(self):
        self.info["vectors"] = int(self.faiss_index.ntotal)
        self.info["recordings"] = int(self.recording_ids.size)
        self.info["windows"] = int(self.window_recording.size)

    # ----------------------------------------------------------- properties
    @property
    def level(self):
        """"window" or "recording"."""
        return self.info["level"]

    @property
    def index_type(self):
        """"exact", "hnsw" or "ivfpq"."""
        return self.info["index_type"]

    @property
    def dim(self):
        """The vector dimension D."""
        return int(self.info["dim"])

    @property
    def num_vectors(self):
        """Vectors in the faiss index."""
        return int(self.faiss_index.ntotal)

    @property
    def num_recordings(self):
        """Recordings indexed."""
        return int(self.recording_ids.size)

    @property
    def class_names(self):
        """The label vocabulary (list of str)."""
        return list(self.info["class_names"])

    @property
    def identity(self):
        """The identity of the export that made the vectors."""
        return dict(self.info["export"],
                    metadata=self.info.get("export_metadata") or {})

    def _rows(self):
        if self._row_of is None:
            self._row_of = {rid: i for i, rid in
                            enumerate(self.recording_ids.tolist())}
        return self._row_of

    def recording_row(self, recording_id):
        """The row of a recording id.

        Raises:
          KeyError: naming the id when the index does not hold it.
        """
        row = self._rows().get(str(recording_id))
        if row is None:
            raise KeyError("recording %r is not in the index" %
                           (recording_id,))
        return row

    def labels_of(self, row):
        """The label names of recording `row`."""
        names = self.info["class_names"]
        return [names[i] for i in
                self.label_idx[self.label_ptr[row]:self.label_ptr[row + 1]]]

    def windows_of(self, row):
        """Window rows of recording `row` (in time order)."""
        return np.arange(self.first_window[row],
                         self.first_window[row] + self.num_windows[row])

    def recordings_with_labels(self, names):
        """Recording rows having any of the label `names`.

        Raises:
          KeyError: naming the labels the index does not know.
        """
        position = {n: i for i, n in enumerate(self.info["class_names"])}
        unknown = [n for n in names if n not in position]
        if unknown:
            raise KeyError("unknown label(s) %s (the index knows: %s)" % (
                ", ".join(map(repr, unknown)),
                ", ".join(self.info["class_names"]) or "none"))
        wanted = np.zeros(max(len(position), 1), bool)
        wanted[[position[n] for n in names]] = True
        has = np.zeros(self.num_recordings, bool)
        owner = np.repeat(np.arange(self.num_recordings),
                          np.diff(self.label_ptr))
        has[owner[wanted[self.label_idx]]] = True
        return np.flatnonzero(has)

    def vector_rows(self, recording_rows):
        """Vector rows (of the faiss index) of some recordings."""
        recording_rows = np.asarray(recording_rows, np.int64)
        if self.level == RECORDING:
            return recording_rows
        if not recording_rows.size:
            return np.zeros(0, np.int64)
        return np.concatenate([self.windows_of(r) for r in recording_rows])

    def exact_similarities(self, rows, queries):
        """Cosine similarities [len(rows), Q] of vector rows to unit queries.

        From the stored unit window vectors (float16, so within ~1e-3):
        what an ivfpq index's hits, ranked by approximate (quantised)
        similarities, are re-scored with.
        """
        rows = np.asarray(rows, np.int64)
        if self.level == WINDOW:
            vectors = np.asarray(self.window_vectors[rows], np.float32)
        else:
            vectors = normalize(np.stack([np.asarray(
                self.window_vectors[self.windows_of(r)], np.float32).mean(
                    axis=0) for r in rows])) if rows.size else np.zeros(
                        (0, self.dim), np.float32)
        return vectors @ np.asarray(queries, np.float32).T

    # ------------------------------------------------------------ searching
    def search(self, queries, k, vector_rows=None, ef_search=0, nprobe=0):
        """Top-k vectors by cosine similarity.

        Args:
          queries: [Q, D] query vectors (normalised here).
          k: neighbours per query (capped at the index size).
          vector_rows: optional int array: search only these vector rows.
          ef_search: hnsw candidate list size (0: the index's; raised to k).
          nprobe: ivfpq cells visited (0: the index's).

        Returns:
          (similarities float32 [Q, k'], rows int64 [Q, k']), best first;
          rows of -1 where fewer than k' vectors qualify.

        Raises:
          SearchIndexError: on an empty index or a query of another dimension.
        """
        if self.num_vectors == 0:
            raise SearchIndexError("the index %s is empty: it holds no "
                                   "vector" % (self.directory or ""))
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if queries.shape[1] != self.dim:
            raise SearchIndexError(
                "query vectors have dimension %d, the index %d" % (
                    queries.shape[1], self.dim))
        k = int(min(k, self.num_vectors))
        selector = None
        if vector_rows is not None:
            vector_rows = np.ascontiguousarray(vector_rows, np.int64)
            if not vector_rows.size:
                return (np.zeros((queries.shape[0], 0), np.float32),
                        np.zeros((queries.shape[0], 0), np.int64))
            selector = faiss.IDSelectorBatch(vector_rows)
        if self.index_type == EXACT and selector is None:
            vectors = faiss.rev_swig_ptr(self.faiss_index.get_xb(),
                                         self.num_vectors * self.dim)
            return exact_top_k(vectors.reshape(self.num_vectors, self.dim),
                               normalize(queries), k)
        if self.index_type == HNSW:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(ef_search or
                                      self.info["params"]["hnsw_ef_search"]),
                                  k)
        elif self.index_type == IVFPQ:
            params = faiss.SearchParametersIVF()
            params.nprobe = int(nprobe or self.info["params"]["ivf_nprobe"])
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        sims, rows = self.faiss_index.search(normalize(queries), k,
                                             params=params)
        return sims, rows.astype(np.int64)

    # ---------------------------------------------------------- saving
    def save(self, directory):
        """Writes the index to `directory` atomically (see the module doc).

        Args:
          directory: the index directory (created if missing).

        Returns:
          directory.
        """
        os.makedirs(directory, exist_ok=True)
        info_path = os.path.join(directory, INFO_NAME)
        current = None
        if os.path.exists(info_path):
            current = jsonio.read_json(info_path).get("current")
        numbers = [int(m.group(1)) for m in map(
            _VERSION_RE.match, os.listdir(directory)) if m]
        version = "v%06d" % (max(numbers + [0]) + 1)
        tmp = os.path.join(directory, version + INCOMPLETE)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        self._write_files(tmp)
        _fsync_dir(tmp)
        os.replace(tmp, os.path.join(directory, version))
        info = dict(self.info, current=version)
        jsonio.write_json(info_path, info)  # The commit.
        _fsync_dir(directory)
        for name in os.listdir(directory):
            if _VERSION_RE.match(name) and name != version:
                shutil.rmtree(os.path.join(directory, name),
                              ignore_errors=True)
        logging.info("index written to %s (%s, was %s)", directory, version,
                     current or "none")
        self.directory = directory
        return directory

    def _write_files(self, out):
        faiss.write_index(self.faiss_index, os.path.join(out, VECTORS_NAME))
        _save_npz(os.path.join(out, WINDOWS_NAME),
                  recording=self.window_recording, start=self.window_start)
        with open(os.path.join(out, WINDOW_VECTORS_NAME), "wb") as f:
            np.save(f, np.asarray(self.window_vectors, np.float16))
            f.flush()
            os.fsync(f.fileno())
        _save_npz(os.path.join(out, RECORDINGS_NAME),
                  ids=self.recording_ids, source_paths=self.source_paths,
                  split=self.split, label_ptr=self.label_ptr,
                  label_idx=self.label_idx, first_window=self.first_window,
                  num_windows=self.num_windows)
        _fsync_file(os.path.join(out, VECTORS_NAME))

    @classmethod
    def load(cls, directory, mmap=True):
        """Reads the index a directory's index.json names.

        Args:
          directory: an index directory written by `save` (bin/index).
          mmap: memory-map the window vectors (read on demand).

        Returns:
          a `SoundIndex`.

        Raises:
          FileNotFoundError: `directory` holds no index.
          SearchIndexError: it is of another format or version, or unreadable.
        """
        info_path = os.path.join(directory, INFO_NAME)
        if not os.path.isfile(info_path):
            raise FileNotFoundError(
                "%s holds no index (no %s): build one with bin/index"
                % (directory, INFO_NAME))
        info = jsonio.read_json(info_path)
        if info.get("format") != FORMAT:
            raise SearchIndexError("%s is not a triplet-audio index" %
                                   info_path)
        if int(info.get("format_version", 0)) > FORMAT_VERSION:
            raise SearchIndexError(
                "%s: format_version %s is newer than this code (%d)" % (
                    info_path, info.get("format_version"), FORMAT_VERSION))
        data = os.path.join(directory, info.pop("current"))
        try:
            faiss_index = faiss.read_index(os.path.join(data, VECTORS_NAME))
            with np.load(os.path.join(data, WINDOWS_NAME)) as w:
                window_recording, window_start = w["recording"], w["start"]
            window_vectors = np.load(os.path.join(data, WINDOW_VECTORS_NAME),
                                     mmap_mode="r" if mmap else None)
            with np.load(os.path.join(data, RECORDINGS_NAME)) as r:
                recordings = {k: r[k] for k in r.files}
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise SearchIndexError("index %s is unreadable: %s" % (
                directory, e)) from e
        index = cls(info, faiss_index, window_recording, window_start,
                    window_vectors, recordings)
        index._update_counts()
        index.directory = directory
        return index


def _save_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    try:
        _fsync_file(path)
    except OSError:  # Some file systems cannot fsync a directory.
        pass


def exists(directory):
    """Whether `directory` holds an index."""
    return os.path.isfile(os.path.join(directory, INFO_NAME))
