"""Retrieval quality through an index: precision@k and mAP@k, no sampling.

The paper's QbE protocol samples 100 + 100 segments per class, which keeps
the pairwise scoring cheap but leaves most of a large eval set unused. Here
every labelled segment of the set is a query, searched through a
recording-level `index.SoundIndex` of the whole set (exact up to
`exact_max_vectors` segments, a graph index above), its own segment left
out:

  for a query q and each class c it has, a hit is relevant when it has c;
  precision@k(q, c) = relevant hits among the top k / k;
  AP@k(q, c) = sum over ranks i <= k of precision@i * rel_i / min(k, R),
               R = the other segments with c;
  per class: the means over its queries; the reported figures are the
  means over classes (macro, as QbE mAP), with classes that have fewer
  than two segments left out.

No TensorFlow here.
"""

import time

from absl import logging
import numpy as np

from triplet_audio.config import search as search_config
from triplet_audio.search import index as index_lib
from triplet_audio.serving import embeddings_io

PART = "retrieval_at_k"
"""Its key in bin/evaluate's results.json (with --retrieval_k=K > 0)."""


def average_precision_at_k(relevant, k, num_relevant):
    """AP@k of ranked relevance rows.

    Args:
      relevant: bool [Q, K'] (K' <= k), relevance of each query's hits, best
        first.
      k: the cut-off.
      num_relevant: int [Q], relevant items each query could find.

    Returns:
      float64 [Q] (0 where num_relevant is 0).
    """
    relevant = np.asarray(relevant, bool)[:, :k]
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks
    denom = np.minimum(k, np.asarray(num_relevant))
    total = (precision * relevant).sum(axis=1)
    return np.where(denom > 0, total / np.maximum(denom, 1), 0.0)


def retrieval_at_k(emb_set, k=10, index_type=search_config.AUTO,
                   exact_max_vectors=search_config.EXACT_MAX_VECTORS,
                   batch=4096):
    """precision@k and mAP@k of every labelled segment of `emb_set` as a query.

    Args:
      emb_set: an `EmbeddingSet` (segments = recordings, with labels).
      k: the cut-off.
      index_type: kind of the recording-level index searched.
      exact_max_vectors: with "auto", the largest exact index.
      batch: queries searched at once.

    Returns:
      dict: k, map_at_k, precision_at_k (means over classes), chance
      (mean over classes of the expected precision of a random ranking),
      per_class {name: {ap_at_k, precision_at_k, queries}}, queries,
      skipped (classes with fewer than two segments), index_type, seconds.
    """
    start = time.perf_counter()
    identity = {"fingerprint": "evaluation", "export_dir": None,
                "representation": emb_set.representation, "frontend": None}
    index = index_lib.SoundIndex.build(
        emb_set, identity, level=search_config.RECORDING,
        index_type=index_type, exact_max_vectors=exact_max_vectors)
    labels = emb_set.labels.astype(bool)
    num_segments, num_classes = labels.shape
    counts = labels.sum(axis=0)
    queries = np.flatnonzero(labels.any(axis=1) &
                             (labels & (counts >= 2)).any(axis=1))
    k = int(min(k, num_segments - 1))
    if k < 1 or not queries.size:
        logging.warning("retrieval@k: no segment has a class shared with "
                        "another segment; nothing to evaluate")
        return {"k": k, "map_at_k": float("nan"),
                "precision_at_k": float("nan"), "chance": float("nan"),
                "per_class": {}, "queries": 0, "skipped": [],
                "index_type": index.index_type,
                "seconds": time.perf_counter() - start}
    vectors = segment_vectors(emb_set)
    ap_sum = np.zeros(num_classes)
    precision_sum = np.zeros(num_classes)
    query_count = np.zeros(num_classes, np.int64)
    for first in range(0, queries.size, batch):
        rows = queries[first:first + batch]
        _, found = index.search(vectors[rows], k + 1)
        # Drop each query's own segment (or, when the index did not return
        # it, the last hit), keeping k hits in rank order.
        keep = (found != rows[:, None]) & (found >= 0)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        hits = np.where(np.take_along_axis(keep, order, axis=1),
                        np.take_along_axis(found, order, axis=1), -1)
        for c in np.flatnonzero(counts >= 2):
            has = labels[rows, c]
            if not has.any():
                continue
            hit_rows = hits[has]
            relevant = np.where(hit_rows >= 0,
                                labels[np.maximum(hit_rows, 0), c], False)
            ap = average_precision_at_k(relevant, k,
                                        np.full(has.sum(), counts[c] - 1))
            ap_sum[c] += ap.sum()
            precision_sum[c] += (relevant.sum(axis=1) / k).sum()
            query_count[c] += has.sum()
    evaluated = np.flatnonzero(query_count > 0)
    names = emb_set.class_names
    per_class = {
        str(names[c]): {"ap_at_k": float(ap_sum[c] / query_count[c]),
                        "precision_at_k": float(precision_sum[c] /
                                                query_count[c]),
                        "queries": int(query_count[c])}
        for c in evaluated}
    chance = (counts[evaluated] - 1) / max(num_segments - 1, 1)
    result = {
        "k": k,
        "map_at_k": float(np.mean([v["ap_at_k"] for v in per_class.values()
                                   ])),
        "precision_at_k": float(np.mean([v["precision_at_k"]
                                         for v in per_class.values()])),
        "chance": float(np.mean(chance)),
        "per_class": per_class,
        "queries": int(queries.size),
        "skipped": [str(names[c]) for c in range(num_classes)
                    if counts[c] < 2],
        "index_type": index.index_type,
        "seconds": time.perf_counter() - start,
    }
    logging.info("retrieval through an index of %d segments (%s): "
                 "precision@%d %.3f, mAP@%d %.3f (chance precision %.3f) over "
                 "%d classes, %d queries, %.1f s", num_segments,
                 index.index_type, k,
                 result["precision_at_k"], k, result["map_at_k"],
                 result["chance"], len(per_class), result["queries"],
                 result["seconds"])
    return result


def segment_vectors(emb_set):
    """Unit segment vectors: means of the unit windows, re-normalised (what
    a recording-level index holds)."""
    return index_lib.normalize(embeddings_io.segment_means(
        emb_set, values=index_lib.normalize(emb_set.embeddings)))
