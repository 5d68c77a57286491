"""Queries of an index (by audio or by a recording); hits per recording.

A `Query` is one or more unit vectors (the windows of a clip) with where
they came from. `Searcher` makes queries (from an audio file or part of one,
an uploaded waveform, or a recording id of the index) and answers them:
`search` returns the top-k *recordings*, each once, scored by its
best-matching vector, with its best-matching moments (windows) listed.

Query audio is embedded with the export that made the index's vectors and no
other: `QueryEmbedder` checks the export's fingerprint against the index's
before loading anything (`exports.check_same`), then embeds windows exactly
as bin/embed does (this package's front end, then the SavedModel's
`embed_logmel` signature). A clip shorter than one window is zero-padded to
one window, as the export's `serving_default` does, and the query says so.

How a query of several windows is searched (`pooling`):
  mean  the mean of its windows, re-normalised (the paper's segment
        embedding): one vector.
  max   every window on its own; a recording scores the best pair.

TensorFlow is imported only when audio is embedded.
"""

import csv
import dataclasses
import io
import json
import os

from absl import logging
import numpy as np

from triplet_audio import constants as C
from triplet_audio.config import jsonio
from triplet_audio.config import search as search_config
from triplet_audio.search import exports
from triplet_audio.search import index as index_lib

KIND_FILE = "file"
KIND_RECORDING = "recording"
KIND_UPLOAD = "upload"

_EMBED_BATCH = 256


class QueryError(ValueError):
    """A query cannot be made or answered; the message says why."""


@dataclasses.dataclass
class Query:
    """What is searched for.

    Attributes:
      kind: "file", "recording" or "upload".
      name: the file path, recording id or upload name.
      vectors: float32 [W, D] unit window vectors.
      starts: float32 [W] window start times (s) in the query's source.
      start, end: the part of the source queried (s; end None for its end).
      padded: the audio was shorter than one window and was zero-padded.
      exclude: recording row left out of the hits (a recording of the index
        queried by id), or None.
      source_path: the audio file of the query, when known.
    """
    kind: str
    name: str
    vectors: np.ndarray
    starts: np.ndarray
    start: float = 0.0
    end: float = None
    padded: bool = False
    exclude: int = None
    source_path: str = None

    def describe(self):
        """The query as JSON-ready data."""
        return {"kind": self.kind, "name": self.name,
                "source_path": self.source_path, "start": self.start,
                "end": self.end, "windows": int(self.vectors.shape[0]),
                "padded": self.padded}


# ------------------------------------------------------------- embedding ---


class QueryEmbedder:
    """Embeds query audio with the export (or front end) that made an index.

    Attributes:
      identity: the identity of the export embedding queries.
    """

    def __init__(self, index_identity, saved_model=None, index_dir=None):
        """Checks the export against the index's, then loads it.

        Args:
          index_identity: the identity recorded in the index.
          saved_model: the export to embed with; default: the index's.
          index_dir: the index, for messages.

        Raises:
          exports.ExportMismatchError: `saved_model` is another export (or
            the index holds log-mel vectors and an export was given).
          FileNotFoundError: the export cannot be found.
        """
        logmel = index_identity.get("representation") == exports.LOGMEL and (
            not index_identity.get("export_dir"))
        if saved_model:
            identity = exports.export_identity(saved_model)
        elif logmel:
            identity = exports.logmel_identity()
        else:
            path = index_identity.get("export_dir")
            if not path or not os.path.isdir(path):
                raise FileNotFoundError(
                    "the export index %s was built with (%s) is gone; pass "
                    "--saved_model=DIR naming it" % (index_dir, path))
            identity = exports.export_identity(path)
        exports.check_same(index_identity, identity, index_dir)
        self.identity = identity
        self._fn = None
        # pylint: disable=g-import-not-at-top
        import tensorflow as tf
        from triplet_audio.features import frontend
        from triplet_audio.features import records
        # pylint: enable=g-import-not-at-top
        self._tf = tf
        if identity.get("frontend"):
            records.check_frontend_params(
                identity["frontend"], "export %s" % identity.get("export_dir"),
                remedy="search with the code that made it")
        self._windows_fn = tf.function(
            lambda w: frontend.waveform_to_windows(w, pad_short=True),
            input_signature=[tf.TensorSpec([None], tf.float32)],
            reduce_retracing=True, autograph=False)
        if identity.get("export_dir"):
            path = os.path.join(identity["export_dir"],
                                exports.SAVED_MODEL_SUBDIR)
            self._loaded = tf.saved_model.load(path)
            self._fn = self._loaded.signatures["embed_logmel"]
            logging.info("loaded %s", exports.describe(identity))

    def windows(self, waveform):
        """Log-mel windows [W, 96, 64] of a 16 kHz waveform (padded if short).

        Long waveforms are cut on window boundaries into pieces of
        `constants.MAX_WINDOWS_PER_RECORD` windows, as bin/embed does.
        """
        from triplet_audio.features import frontend  # pylint: disable=g-import-not-at-top
        waveform = np.asarray(waveform, np.float32)
        total = frontend.num_windows_for_samples(waveform.shape[0])
        if waveform.shape[0] < C.MIN_WINDOW_SAMPLES:
            return self._windows_fn(waveform).numpy()
        pieces = []
        for first in range(0, total, C.MAX_WINDOWS_PER_RECORD):
            count = min(C.MAX_WINDOWS_PER_RECORD, total - first)
            start = first * C.WINDOW_HOP_SAMPLES
            piece = waveform[start:start + frontend.samples_for_windows(count)]
            pieces.append(self._windows_fn(piece).numpy())
        return np.concatenate(pieces)

    def embed_windows(self, windows):
        """[W, D] unit vectors of log-mel windows."""
        if self._fn is None:  # The log-mel baseline.
            return index_lib.normalize(windows.reshape(windows.shape[0], -1))
        out = [self._fn(logmel=self._tf.constant(
            windows[i:i + _EMBED_BATCH]))["embeddings"].numpy()
               for i in range(0, windows.shape[0], _EMBED_BATCH)]
        return index_lib.normalize(np.concatenate(out))

    def embed_waveform(self, waveform):
        """(unit vectors [W, D], start times [W], padded) of a waveform.

        Raises:
          QueryError: on an empty waveform or non-finite samples.
        """
        waveform = np.asarray(waveform, np.float32).reshape(-1)
        if waveform.size == 0:
            raise QueryError("the query audio is empty")
        if not np.isfinite(waveform).all():
            raise QueryError("the query audio has NaN or Inf samples")
        windows = self.windows(waveform)
        starts = np.arange(windows.shape[0], dtype=np.float32) * np.float32(
            C.WINDOW_SECONDS)
        return (self.embed_windows(windows), starts,
                waveform.shape[0] < C.MIN_WINDOW_SAMPLES)


# -------------------------------------------------------------- searching ---


class Searcher:
    """Answers queries on one index (see the module docstring).

    Attributes:
      index: the `index.SoundIndex`.
      saved_model: the export given to embed queries (None: the index's).
    """

    def __init__(self, sound_index, saved_model=None, embedder=None):
        self.index = sound_index
        self.saved_model = saved_model
        self._embedder = embedder

    @property
    def embedder(self):
        """The `QueryEmbedder`, loaded on first use."""
        if self._embedder is None:
            self._embedder = QueryEmbedder(
                self.index.identity, self.saved_model,
                index_dir=self.index.directory)
        return self._embedder

    def check_export(self):
        """Checks (and loads) the query export now rather than at a query."""
        return self.embedder

    # ---------------------------------------------------------- queries
    def query_waveform(self, waveform, name, kind=KIND_UPLOAD, start=0.0,
                       end=None, source_path=None):
        """A query of a 16 kHz waveform (already cut to the queried part)."""
        vectors, starts, padded = self.embedder.embed_waveform(waveform)
        if padded:
            logging.warning(
                "query %s is %.3f s, shorter than one window (%.3f s): "
                "zero-padded to one window, as the export does", name,
                np.asarray(waveform).size / C.SAMPLE_RATE,
                C.MIN_WINDOW_SAMPLES / C.SAMPLE_RATE)
        return Query(kind=kind, name=name, vectors=vectors,
                     starts=starts + np.float32(start), start=start, end=end,
                     padded=padded, source_path=source_path)

    def query_file(self, path, start=None, end=None):
        """A query of an audio file, or of [start, end) seconds of it.

        Raises:
          QueryError: the part asked for is empty.
          audio_io.AudioError: the file is unusable (a ValueError).
        """
        from triplet_audio.features import audio_io  # pylint: disable=g-import-not-at-top
        self.check_export()  # Another export is refused before any work.
        if not os.path.isfile(path):
            raise FileNotFoundError("query %s does not exist" % path)
        waveform = audio_io.load_audio(path)
        if waveform.size == 0:
            raise QueryError("query %s holds no audio" % path)
        waveform, start, end = _cut(waveform, start, end, path)
        return self.query_waveform(waveform, path, kind=KIND_FILE,
                                   start=start, end=end,
                                   source_path=os.path.abspath(path))

    def query_recording(self, recording_id, start=None, end=None):
        """A query by a recording of the index (its stored window vectors).

        Its own recording is left out of the hits.

        Raises:
          QueryError: the id is unknown, or no window overlaps the range.
        """
        try:
            row = self.index.recording_row(recording_id)
        except KeyError as e:
            raise QueryError(str(e.args[0])) from e
        windows = self.index.windows_of(row)
        starts = self.index.window_start[windows]
        keep = np.ones(windows.size, bool)
        if start is not None:
            keep &= starts + C.WINDOW_SECONDS > start
        if end is not None:
            keep &= starts < end
        if not keep.any():
            raise QueryError(
                "no window of recording %r overlaps [%s, %s] s (it has %d "
                "windows from %.2f to %.2f s)" % (
                    recording_id, start, end, windows.size, starts.min(),
                    starts.max() + C.WINDOW_SECONDS))
        vectors = np.asarray(self.index.window_vectors[windows[keep]],
                             np.float32)
        path = self.index.source_paths[row] or None
        return Query(kind=KIND_RECORDING, name=str(recording_id),
                     vectors=index_lib.normalize(vectors),
                     starts=starts[keep], start=start or 0.0, end=end,
                     exclude=row, source_path=path)

    # ----------------------------------------------------------- search
    def search(self, query, k=10, moments=3, labels=(),
               pooling=search_config.MEAN, ef_search=0, nprobe=0):
        """The top-k recordings for `query`, each once.

        Args:
          query: a `Query`.
          k: recordings to return.
          moments: best-matching windows listed per recording.
          labels: keep only recordings with one of these label names.
          pooling: "mean" or "max" (module docstring).
          ef_search, nprobe: approximate search settings (0: the index's).

        Returns:
          list of hit dicts, best first: rank, recording, source_path,
          score (cosine similarity of the best-matching vector), labels,
          split, moments [{start, end, score[, query_start]}].

        Raises:
          QueryError: unknown labels, or no recording qualifies.
          index.SearchIndexError: the index is empty.
        """
        index = self.index
        if index.num_vectors == 0:
            raise index_lib.SearchIndexError(
                "the index %s is empty: it holds no vector" % index.directory)
        if pooling == search_config.MEAN:
            vectors = index_lib.normalize(query.vectors.mean(axis=0,
                                                             keepdims=True))
        elif pooling == search_config.MAX:
            vectors = query.vectors
        else:
            raise QueryError("pooling: %r is not one of %s" % (
                pooling, ", ".join(search_config.POOLINGS)))
        rows = None
        eligible = index.num_vectors
        if labels:
            try:
                recordings = index.recordings_with_labels(list(labels))
            except KeyError as e:
                raise QueryError(str(e.args[0])) from e
            if query.exclude is not None:
                recordings = recordings[recordings != query.exclude]
            if not recordings.size:
                raise QueryError("no recording of the index has the label(s) "
                                 "%s" % ", ".join(labels))
            rows = index.vector_rows(recordings)
            eligible = rows.size
        excluded = 0 if query.exclude is None or rows is not None else (
            1 if index.level == index_lib.RECORDING else
            int(index.num_windows[query.exclude]))
        if eligible - excluded <= 0:
            raise QueryError("the index holds no recording besides the "
                             "query's own")
        per_recording = 1 if index.level == index_lib.RECORDING else moments
        fetch = k * per_recording * 2 + excluded
        while True:
            fetch = min(fetch, eligible)
            sims, found = index.search(vectors, fetch, rows,
                                       ef_search=ef_search, nprobe=nprobe)
            best = self._best_per_recording(sims, found, query.exclude,
                                            vectors)
            if len(best) >= k or fetch >= eligible:
                break
            fetch *= 4
        ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
        return [self._hit(rank, row, score, vectors, query, moments, pooling)
                for rank, (row, score) in enumerate(ranked, 1)]

    def _best_per_recording(self, sims, found, exclude, vectors):
        """{recording row: best similarity} over every query vector's hits.

        An ivfpq index ranks by quantised similarities: its hits are
        re-scored exactly (`SoundIndex.exact_similarities`), so every kind
        reports cosine similarities.
        """
        valid = found >= 0
        if self.index.index_type == index_lib.IVFPQ and valid.any():
            unique, inverse = np.unique(found[valid], return_inverse=True)
            exact = self.index.exact_similarities(unique, vectors)
            sims = sims.copy()
            sims[valid] = exact[inverse, np.nonzero(valid)[0]]
        sims, found = sims[valid], found[valid]
        if self.index.level == index_lib.WINDOW:
            recordings = self.index.window_recording[found]
        else:
            recordings = found
        if exclude is not None:
            keep = recordings != exclude
            sims, recordings = sims[keep], recordings[keep]
        best = {}
        for row, sim in zip(recordings.tolist(), sims.tolist()):
            if sim > best.get(row, -np.inf):
                best[row] = sim
        return best

    def _hit(self, rank, row, score, vectors, query, moments, pooling):
        index = self.index
        windows = index.windows_of(row)
        window_vectors = np.asarray(index.window_vectors[windows], np.float32)
        pair = window_vectors @ vectors.T  # [hit's windows, query vectors]
        best_query = pair.argmax(axis=1)
        window_scores = pair.max(axis=1)
        order = np.argsort(-window_scores, kind="stable")[:moments]
        found = []
        for w in order:
            start = float(index.window_start[windows[w]])
            moment = {"start": round(start, 3),
                      "end": round(start + C.WINDOW_SECONDS, 3),
                      "score": round(float(window_scores[w]), 4)}
            if pooling == search_config.MAX:
                moment["query_start"] = round(
                    float(query.starts[best_query[w]]), 3)
            found.append(moment)
        return {
            "rank": rank,
            "recording": str(index.recording_ids[row]),
            "source_path": str(index.source_paths[row]) or None,
            "score": round(float(score), 4),
            "labels": index.labels_of(row),
            "split": str(index.split[row]),
            "moments": found,
            "row": int(row),
        }


def _cut(waveform, start, end, name):
    """[start, end) seconds of a 16 kHz waveform, and the bounds used."""
    duration = waveform.size / C.SAMPLE_RATE
    if start is None and end is None:
        return waveform, 0.0, None
    first = 0 if start is None else int(round(start * C.SAMPLE_RATE))
    last = waveform.size if end is None else min(
        waveform.size, int(round(end * C.SAMPLE_RATE)))
    if first >= last:
        raise QueryError("query %s: [%s, %s] s is empty (the audio is %.3f s)"
                         % (name, start, end, duration))
    return waveform[first:last], first / C.SAMPLE_RATE, (
        None if end is None else last / C.SAMPLE_RATE)


# ---------------------------------------------------------------- output ---


def results_json(index_dir, results):
    """The JSON document of `results` ([{"query": ..., "hits": [...]}])."""
    doc = {"index": index_dir, "queries": [
        {"query": r["query"], "hits": [_public(h) for h in r["hits"]]}
        for r in results]}
    return json.dumps(jsonio.to_jsonable(doc), indent=2, sort_keys=True,
                      allow_nan=False) + "\n"


def _public(hit):
    return {k: v for k, v in hit.items() if k != "row"}


CSV_COLUMNS = ("query", "rank", "recording", "source_path", "score",
               "labels", "best_start", "moments")


def results_csv(results):
    """One CSV row per hit (moments as start:score;start:score)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        for hit in r["hits"]:
            writer.writerow([
                r["query"]["name"], hit["rank"], hit["recording"],
                hit["source_path"] or "", "%.4f" % hit["score"],
                ";".join(hit["labels"]),
                "%.2f" % hit["moments"][0]["start"],
                ";".join("%.2f:%.4f" % (m["start"], m["score"])
                         for m in hit["moments"])])
    return out.getvalue()


def results_table(results):
    """A readable table per query."""
    lines = []
    for r in results:
        q = r["query"]
        part = ("" if not q["start"] and q["end"] is None else
                " [%.2f-%s s]" % (q["start"], "end" if q["end"] is None
                                  else "%.2f" % q["end"]))
        lines.append("query: %s %s%s (%d window%s%s)" % (
            q["kind"], q["name"], part, q["windows"],
            "" if q["windows"] == 1 else "s",
            ", zero-padded to one window" if q["padded"] else ""))
        rows = [("rank", "score", "recording", "labels", "best moments (s)")]
        for hit in r["hits"]:
            rows.append((
                str(hit["rank"]), "%.3f" % hit["score"], hit["recording"],
                ",".join(hit["labels"]) or "-",
                "  ".join("%.2f (%.3f)" % (m["start"], m["score"])
                          for m in hit["moments"])))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            lines.append("  ".join([row[0].rjust(widths[0]),
                                    row[1].rjust(widths[1]),
                                    row[2].ljust(widths[2]),
                                    row[3].ljust(widths[3]), row[4]]).rstrip())
        if not r["hits"]:
            lines.append("  (no hits)")
        lines.append("")
    return "\n".join(lines)


FORMATTERS = {"table": lambda index_dir, results: results_table(results),
              "json": results_json,
              "csv": lambda index_dir, results: results_csv(results)}


def run_search(config):
    """What bin/search does without --serve: the formatted results (text).

    Args:
      config: a `SearchConfig` (validated, with `require_query`).

    Returns:
      the output text (table, JSON or CSV).
    """
    config.require_query()
    searcher = Searcher(index_lib.SoundIndex.load(config.index),
                        saved_model=config.saved_model)
    queries = [(searcher.query_recording, rid) for rid in config.recording]
    if config.query:
        searcher.check_export()  # Refuses another export before any work.
        queries += [(searcher.query_file, path) for path in config.query]
    results = []
    for make, what in queries:
        query = make(what, config.query_start, config.query_end)
        hits = searcher.search(query, k=config.k, moments=config.moments,
                               labels=config.label, pooling=config.pooling,
                               ef_search=config.ef_search,
                               nprobe=config.nprobe)
        results.append({"query": query.describe(), "hits": hits})
    return FORMATTERS[config.format](config.index, results)
