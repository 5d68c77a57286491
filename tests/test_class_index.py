"""The supervised sampler draws from the whole class (class_index + pipeline).

Each test corpus stamps every window with its record number and window index
in its first two cells, so a window read back through the pipeline names its
recording. The expected figures are computed here from the corpus
specification alone (not from the index): under uniform sampling of an
ordered pair of distinct windows of class c, P(same recording) is
(sum_r n_rc^2 - N_c) / (N_c^2 - N_c), n_rc being recording r's windows.
"""

import json
import os

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from triplet_audio.sampling import class_index
from triplet_audio import constants as C
from triplet_audio.sampling import pipeline
from triplet_audio.features import records


def _write(directory, specs, num_shards, num_classes):
    """specs: (recording id, [windows per chunk], labels). Returns the
    record number -> recording id map."""
    os.makedirs(directory, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(
        directory, records.shard_name(i, num_shards)))
        for i in range(num_shards)]
    owner = []
    for r, (rid, chunks, labels) in enumerate(specs):
        start = 0
        for chunk, count in enumerate(chunks):
            logmel = np.zeros((count,) + C.WINDOW_SHAPE, np.float32)
            logmel[:, 0, 0] = len(owner)
            logmel[:, 0, 1] = np.arange(count)
            example = records.make_example(
                logmel, (start + np.arange(count)) * C.WINDOW_SECONDS, rid,
                labels=labels, chunk_index=chunk)
            writers[r % num_shards].write(example.SerializeToString())
            owner.append(rid)
            start += count
    for w in writers:
        w.close()
    with open(os.path.join(directory, records.MANIFEST_NAME), "w") as f:
        json.dump({"classes": ["c%d" % i for i in range(num_classes)]}, f)
    return owner


def _demo_specs(rng):
    # The demo's corpus: 300 recordings of 10 windows, 14 classes, 1-3 each.
    return [("rec%03d" % r, [10],
             tuple(rng.choice(14, size=rng.integers(1, 4), replace=False)))
            for r in range(300)]


def _zipf_specs(rng, num_classes=120, num_recordings=400):
    # Long tail: class c drawn with weight 1 / (c + 1); 1-2 classes per
    # recording, 1-12 windows, one recording in two chunks, a few unlabelled.
    weights = 1.0 / np.arange(1, num_classes + 1)
    weights /= weights.sum()
    specs = []
    for r in range(num_recordings):
        labels = () if r % 50 == 7 else tuple(rng.choice(
            num_classes, size=rng.integers(1, 3), replace=False, p=weights))
        chunks = [6, 5] if r == 3 else [int(rng.integers(1, 13))]
        specs.append(("z%03d" % r, chunks, labels))
    return specs


def _expected(specs, num_classes, class_sampling):
    """(P(class) [C], P(anchor and positive share a recording))."""
    per_class = [dict() for _ in range(num_classes)]
    for rid, chunks, labels in specs:
        for c in labels:
            per_class[c][rid] = per_class[c].get(rid, 0) + sum(chunks)
    sizes = np.array([sum(d.values()) for d in per_class], float)
    same = np.array([
        (sum(n * n for n in d.values()) - s) / (s * s - s) if s >= 2 else 0.0
        for d, s in zip(per_class, sizes)])
    weight = (sizes >= 2).astype(float)
    if class_sampling == "frequency":
        weight *= sizes
    p = weight / weight.sum()
    return p, float(np.sum(p * same))


def _draw_through_pipeline(directory, owner, specs, num_classes, triplets,
                           class_sampling="uniform", seed=0):
    """Anchor/positive/negative recordings and the class of each triplet."""
    labels_of = {rid: set(labels) for rid, _, labels in specs}
    config = pipeline.SamplerConfig(sampler="supervised", shuffle_buffer=16,
                                    class_sampling=class_sampling)
    ds = pipeline.make_triplet_dataset(directory, config, 3 * 250, seed=seed,
                                       num_classes=num_classes)
    rows = []
    for windows, hot in ds.take(triplets // 250):
        windows, hot = windows.numpy(), hot.numpy()
        ids = [owner[int(w)] for w in windows[:, 0, 0]]
        for i in range(0, len(ids), 3):
            a, p, n = ids[i:i + 3]
            # The labels travel with their windows.
            for j, rid in enumerate((a, p, n)):
                assert set(np.flatnonzero(hot[i + j])) == labels_of[rid]
            rows.append((a, p, n, (windows[i, 0, 0], windows[i, 0, 1]),
                         (windows[i + 1, 0, 0], windows[i + 1, 0, 1])))
    return rows


@pytest.mark.parametrize("setting", ["demo", "zipf"])
def test_pairs_span_recordings_as_uniform_sampling_of_the_class(
        tmp_path, setting):
    rng = np.random.default_rng(1)
    num_classes = 14 if setting == "demo" else 120
    specs = _demo_specs(rng) if setting == "demo" else _zipf_specs(rng)
    owner = _write(str(tmp_path), specs, 4, num_classes)
    rows = _draw_through_pipeline(str(tmp_path), owner, specs, num_classes,
                                  6000)
    labels_of = {rid: set(labels) for rid, _, labels in specs}
    same = 0
    for a, p, n, wa, wp in rows:
        assert wa != wp  # never the anchor itself
        assert labels_of[a] & labels_of[p]
        assert labels_of[n] and not labels_of[a] & labels_of[n]
        same += a == p
    _, expected = _expected(specs, num_classes, "uniform")
    share = same / len(rows)
    # 6,000 pairs: the standard error is under 0.0065.
    assert abs(share - expected) < 0.03, (share, expected)


def _class_counts(directory, num_classes, class_sampling, triplets):
    index = class_index.load(records.list_shards(directory), num_classes)
    classes, _, _ = class_index.draw_triplets(
        index, np.random.default_rng(5), triplets, class_sampling)
    return np.bincount(classes, minlength=num_classes)


@pytest.mark.parametrize("class_sampling", ["uniform", "frequency"])
def test_class_histogram_matches_the_chosen_weighting(tmp_path,
                                                      class_sampling):
    rng = np.random.default_rng(2)
    specs = _zipf_specs(rng)
    _write(str(tmp_path), specs, 3, 120)
    counts = _class_counts(str(tmp_path), 120, class_sampling, 60000)
    p, _ = _expected(specs, 120, class_sampling)
    assert np.all(counts[p == 0] == 0)
    observed, expected = counts[p > 0], 60000 * p[p > 0]
    assert stats.chisquare(observed, expected).pvalue > 1e-4
    # Under the long tail the two weightings differ: the test can tell.
    other = "frequency" if class_sampling == "uniform" else "uniform"
    q, _ = _expected(specs, 120, other)
    assert stats.chisquare(observed, 60000 * q[p > 0]).pvalue < 1e-9


def test_frequency_weighting_through_the_pipeline(tmp_path):
    rng = np.random.default_rng(3)
    specs = _zipf_specs(rng, num_classes=100, num_recordings=300)
    owner = _write(str(tmp_path), specs, 2, 100)
    rows = _draw_through_pipeline(str(tmp_path), owner, specs, 100, 3000,
                                  class_sampling="frequency", seed=4)
    labels_of = {rid: set(labels) for rid, _, labels in specs}
    same = sum(a == p for a, p, _, _, _ in rows) / len(rows)
    _, expected = _expected(specs, 100, "frequency")
    assert abs(same - expected) < 0.04, (same, expected)
    assert all(labels_of[a] & labels_of[p] for a, p, _, _, _ in rows)


def test_index_reads_back_every_window(tmp_path):
    rng = np.random.default_rng(4)
    specs = _zipf_specs(rng, num_classes=10, num_recordings=30)
    owner = _write(str(tmp_path), specs, 3, 10)
    index = class_index.load(records.list_shards(str(tmp_path)), 10)
    reader = class_index.WindowReader(index)
    rows = np.repeat(np.arange(index.num_records), index.windows)
    within = np.arange(index.total_windows) - np.repeat(
        index.record_cum - index.windows, index.windows)
    windows = reader.read(rows, within)
    reader.close()
    # Every labelled window once, and the unlabelled ones not at all.
    labelled = {(r, w) for r, rid in enumerate(owner)
                for w in range(C.MAX_WINDOWS_PER_RECORD)
                if dict((s[0], s[2]) for s in specs)[rid]}
    got = {(int(a), int(b)) for a, b in windows[:, 0, :2]}
    assert len(got) == index.total_windows
    assert got <= labelled
    assert index.total_windows == sum(
        sum(chunks) for _, chunks, labels in specs if labels)
    assert np.all(windows[:, 1:] == 0)


def test_index_is_kept_beside_the_shard_and_rebuilt_when_it_changes(
        tmp_path):
    specs = [("a", [3], (0,)), ("b", [2], (1,)), ("c", [2], (0, 1))]
    _write(str(tmp_path), specs, 1, 2)
    shard = records.list_shards(str(tmp_path))[0]
    first = class_index.shard_index(shard)
    cached = class_index.index_path(shard)
    assert os.path.exists(cached)
    assert records.list_shards(str(tmp_path) + "/shard-*") == [shard]
    # A re-extracted shard with other records: the stale index is not used.
    _write(str(tmp_path), specs[:2], 1, 2)
    again = class_index.shard_index(shard)
    assert len(first["windows"]) == 3 and len(again["windows"]) == 2


def test_draws_are_seeded(tmp_path):
    rng = np.random.default_rng(6)
    specs = _demo_specs(rng)[:60]
    _write(str(tmp_path), specs, 2, 14)
    config = pipeline.SamplerConfig(sampler="supervised")

    def first(seed):
        ds = pipeline.make_triplet_dataset(str(tmp_path), config, 30,
                                           seed=seed, num_classes=14)
        return next(iter(ds))[0].numpy()

    np.testing.assert_array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))


def test_one_pass_is_half_the_labelled_windows(tmp_path):
    specs = [("a", [3], (0,)), ("b", [4], (1,)), ("c", [5], ()),
             ("d", [2], (0,))]
    _write(str(tmp_path), specs, 2, 2)
    config = pipeline.SamplerConfig(sampler="supervised")
    triplets = list(pipeline.make_triplets(str(tmp_path), config,
                                           num_classes=2, repeat=False))
    assert len(triplets) == (3 + 4 + 2) // 2


def test_input_pipelines_draw_from_disjoint_shards(tmp_path):
    rng = np.random.default_rng(7)
    specs = _demo_specs(rng)[:40]
    owner = _write(str(tmp_path), specs, 4, 14)
    seen = []
    for pid in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pid)
        ds = pipeline.make_triplet_dataset(
            str(tmp_path), pipeline.SamplerConfig(sampler="supervised"), 60,
            input_context=context, num_classes=14)
        windows = np.concatenate([w.numpy() for w, _ in ds.take(10)])
        seen.append({owner[int(v)] for v in windows[:, 0, 0]})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_a_class_with_no_possible_negative_is_named(tmp_path):
    specs = [("a", [2], (0,)), ("b", [2], (0, 1))]
    _write(str(tmp_path), specs, 1, 2)
    index = class_index.load(records.list_shards(str(tmp_path)), 2)
    with pytest.raises(ValueError, match="no negative for recording"):
        class_index.draw_triplets(index, np.random.default_rng(0), 4)


def test_corrupt_shards_are_named(tmp_path):
    specs = [("a", [3], (0,)), ("b", [2], (1,)), ("c", [2], (1,))]
    _write(str(tmp_path), specs, 1, 2)
    shard = records.list_shards(str(tmp_path))[0]
    with open(shard, "r+b") as f:  # flip a byte inside the last record
        f.seek(os.path.getsize(shard) - 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(records.CorruptShardError, match="shard-00000"):
        class_index.shard_index(shard)
    # --skip_corrupt keeps the records before the bad one.
    kept = class_index.shard_index(shard, skip_corrupt=True)
    assert len(kept["windows"]) == 2
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 7)
    with pytest.raises(records.CorruptShardError, match="truncated"):
        class_index.shard_index(shard)


def test_negatives_share_no_class_with_the_anchor_worked_by_hand(tmp_path):
    # Anchors of class 0 come from a {0, 1} or d {0, 2}. a's negatives can
    # only be c {2} or e {3}; d's only b {1} or e {3}. Within those, the
    # negative is uniform over windows: e has 3 windows to the others' 1.
    specs = [("a", [2], (0, 1)), ("b", [1], (1,)), ("c", [1], (2,)),
             ("d", [2], (0, 2)), ("e", [3], (3,))]
    owner = _write(str(tmp_path), specs, 1, 4)
    index = class_index.load(records.list_shards(str(tmp_path)), 4)
    assert index.class_windows.tolist() == [4, 3, 3, 3]
    _, rows, _ = class_index.draw_triplets(
        index, np.random.default_rng(0), 20000)
    allowed = {"a": {"c": 1, "e": 3}, "b": {"c": 1, "d": 2, "e": 3},
               "c": {"a": 2, "b": 1, "e": 3}, "d": {"b": 1, "e": 3},
               "e": {"a": 2, "b": 1, "c": 1, "d": 2}}
    ids = np.array(owner)[rows]
    for anchor, negatives in allowed.items():
        drawn = ids[ids[:, 0] == anchor, 2]
        assert set(drawn) <= set(negatives)
        names = sorted(negatives)
        counts = [np.sum(drawn == n) for n in names]
        weights = np.array([negatives[n] for n in names], float)
        assert stats.chisquare(
            counts, weights / weights.sum() * len(drawn)).pvalue > 1e-4
