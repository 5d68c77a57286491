"""Sound search: the index (against NumPy brute force), queries, bin/index and
bin/search, and retrieval@k through the index (bin/evaluate --retrieval_k)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from triplet_audio.config import search as search_config
from triplet_audio.search import build
from triplet_audio.search import exports
from triplet_audio.search import index as index_lib
from triplet_audio.search import query as query_lib
from triplet_audio.search import retrieval
from triplet_audio.serving import embeddings_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
IDENTITY = {"fingerprint": "f" * 64, "export_dir": None,
            "representation": "test", "frontend": None}
CLASSES = ["bird", "car", "dog"]


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    # faiss's OpenMP threads spin while they wait: on a shared 2-core machine
    # two of them are 2-3x slower than one. Results do not depend on it.
    threads = index_lib.faiss.omp_get_max_threads()
    index_lib.faiss.omp_set_num_threads(1)
    yield
    index_lib.faiss.omp_set_num_threads(threads)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _emb_set(vectors, windows_per_recording, seed=0, prefix="r",
             metadata=None, representation="test", labels=None):
    """An EmbeddingSet of `vectors` cut into recordings of n windows each."""
    vectors = np.asarray(vectors, np.float32)
    counts = np.full(vectors.shape[0] // windows_per_recording,
                     windows_per_recording)
    segment = np.repeat(np.arange(counts.size), counts)
    starts = np.concatenate([np.arange(c) * 0.96 for c in counts])
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.integers(0, 2, (counts.size, len(CLASSES)))
    return embeddings_io.EmbeddingSet(
        vectors, segment, starts,
        ["%s%05d" % (prefix, i) for i in range(counts.size)], labels,
        [""] * counts.size, CLASSES, representation, metadata or {})


def _random_set(num_windows=2000, dim=32, windows=4, seed=0, prefix="r"):
    rng = np.random.default_rng(seed)
    return _emb_set(rng.standard_normal((num_windows, dim)), windows, seed,
                    prefix)


def _planted(num=12000, dim=32, groups=40, size=5, noise=0.15, seed=1):
    """Random unit vectors with `groups` planted near-duplicate groups.

    Returns (vectors, queries, members): the members of group g are the
    rows members[g]; query g is another noisy copy of the group's centre.
    """
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((num, dim)))
    centres = _unit(rng.standard_normal((groups, dim)))
    members = rng.choice(num, (groups, size), replace=False)
    for g in range(groups):
        x[members[g]] = _unit(centres[g] + noise * rng.standard_normal(
            (size, dim)) / np.sqrt(dim))
    queries = _unit(centres + noise * rng.standard_normal(
        (groups, dim)) / np.sqrt(dim))
    return x.astype(np.float32), queries.astype(np.float32), members


def _brute_force(vectors, queries, k):
    sims = _unit(queries) @ _unit(vectors).T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, axis=1), rows


# ---------------------------------------------------------------- the index


def test_exact_index_is_numpy_brute_force():
    emb = _random_set()
    index = index_lib.SoundIndex.build(emb, IDENTITY)
    assert index.index_type == index_lib.EXACT  # auto, small
    queries = np.random.default_rng(5).standard_normal((25, 32))
    sims, rows = index.search(queries, 10)
    want_sims, want_rows = _brute_force(emb.embeddings, queries, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    # A subset of rows, as a label filter searches.
    subset = np.arange(0, 2000, 3)
    sims, rows = index.search(queries, 10, vector_rows=subset)
    want_sims, want_rows = _brute_force(emb.embeddings[subset], queries, 10)
    np.testing.assert_array_equal(rows, subset[want_rows])


def test_recording_level_holds_renormalised_means():
    emb = _random_set(num_windows=60, windows=10)
    index = index_lib.SoundIndex.build(emb, IDENTITY,
                                       level=search_config.RECORDING)
    assert index.num_vectors == emb.num_segments == 6
    means = _unit(np.stack([_unit(emb.embeddings[emb.segment_index == s])
                            .mean(axis=0) for s in range(6)]))
    np.testing.assert_allclose(index.faiss_index.reconstruct_n(0, 6), means,
                               atol=1e-6)
    np.testing.assert_allclose(retrieval.segment_vectors(emb), means,
                               atol=1e-6)


@pytest.fixture(scope="module")
def planted():
    """{kind: index} of the planted data, and the data (built once)."""
    vectors, queries, members = _planted()
    emb = _emb_set(vectors, 4)
    # pq_m=4: 8-byte codes of 32-d vectors, quick to train.
    indexes = {kind: index_lib.SoundIndex.build(emb, IDENTITY,
                                                index_type=kind,
                                                params={"pq_m": 4})
               for kind in ("exact", "hnsw", "ivfpq")}
    return indexes, vectors, queries, members


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_round_trip_gives_the_same_hits(kind, planted, tmp_path):
    indexes, _, queries, _ = planted
    index = indexes[kind]
    assert index.index_type == kind
    before = index.search(queries, 10)
    index.save(str(tmp_path / "ix"))
    loaded = index_lib.SoundIndex.load(str(tmp_path / "ix"))
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    assert loaded.info["index_type"] == kind
    np.testing.assert_array_equal(loaded.recording_ids, index.recording_ids)
    np.testing.assert_array_equal(loaded.window_recording,
                                  index.window_recording)
    assert [loaded.labels_of(r) for r in range(10)] == [
        index.labels_of(r) for r in range(10)]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_finds_planted_near_duplicates(kind, planted):
    indexes, vectors, queries, members = planted
    _, rows = indexes[kind].search(queries, members.shape[1])
    found = np.mean([len(set(r) & set(m)) / m.size
                     for r, m in zip(rows, members)])
    assert found >= 0.95, found
    # Exact top-k is the groups themselves: the approximate index agrees.
    _, exact = _brute_force(vectors, queries, members.shape[1])
    assert all(set(e) == set(m) for e, m in zip(exact, members))


@pytest.mark.parametrize("level", ["window", "recording"])
def test_incremental_add_equals_a_full_build(level):
    emb = _random_set(num_windows=2000, windows=4)
    half = emb.num_segments // 2
    first = embeddings_io.subset_segments(emb, np.arange(half))
    full = index_lib.SoundIndex.build(emb, IDENTITY, level=level)
    grown = index_lib.SoundIndex.build(first, IDENTITY, level=level)
    added, skipped = grown.add(emb)  # The first half is skipped by id.
    assert (added, skipped) == (emb.num_segments - half, half)
    queries = np.random.default_rng(3).standard_normal((20, 32))
    for a, b in zip(full.search(queries, 10), grown.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    for name in ("recording_ids", "window_recording", "window_start",
                 "first_window", "num_windows", "label_ptr", "label_idx"):
        np.testing.assert_array_equal(getattr(full, name),
                                      getattr(grown, name), name)
    assert grown.add(emb) == (0, emb.num_segments)


def test_add_merges_label_vocabularies():
    a = _random_set(num_windows=8, windows=4)
    b = _random_set(num_windows=8, windows=4, prefix="s")
    b.class_names = np.array(["cat", "dog", "eel"])
    index = index_lib.SoundIndex.build(a, IDENTITY)
    index.add(b)
    assert index.class_names == ["bird", "car", "dog", "cat", "eel"]
    for row in range(2):
        assert index.labels_of(2 + row) == [
            n for n, on in zip(["cat", "dog", "eel"], b.labels[row]) if on]


def _hits(directory, queries):
    return index_lib.SoundIndex.load(directory).search(queries, 5)[1]


def test_a_killed_build_leaves_the_old_index(tmp_path, monkeypatch):
    directory = str(tmp_path / "ix")
    old = _random_set(seed=0)
    index_lib.SoundIndex.build(old, IDENTITY).save(directory)
    queries = np.random.default_rng(9).standard_normal((5, 32))
    want = _hits(directory, queries)
    new = index_lib.SoundIndex.build(_random_set(seed=1), IDENTITY)

    # Killed while writing the new version's files...
    real_write = index_lib.SoundIndex._write_files

    def dies_midway(self, out):
        real_write(self, out)
        os.remove(os.path.join(out, index_lib.RECORDINGS_NAME))
        raise KeyboardInterrupt
    monkeypatch.setattr(index_lib.SoundIndex, "_write_files", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        new.save(directory)
    np.testing.assert_array_equal(_hits(directory, queries), want)
    # ... and after the rename, before the commit.
    monkeypatch.setattr(index_lib.SoundIndex, "_write_files", real_write)
    monkeypatch.setattr(index_lib.jsonio, "write_json",
                        lambda *a, **k: (_ for _ in ()).throw(
                            KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        new.save(directory)
    np.testing.assert_array_equal(_hits(directory, queries), want)
    monkeypatch.undo()
    # The next write succeeds and removes what the killed ones left.
    new.save(directory)
    assert sorted(os.listdir(directory)) == ["index.json", "v000004"]
    np.testing.assert_array_equal(_hits(directory, queries),
                                  new.search(queries, 5)[1])


def test_a_process_killed_mid_write_leaves_the_old_index(tmp_path):
    # A real process death: no exception handler or finally clause runs.
    directory = str(tmp_path / "ix")
    index_lib.SoundIndex.build(_random_set(seed=0), IDENTITY).save(directory)
    queries = np.random.default_rng(9).standard_normal((5, 32))
    want = _hits(directory, queries)
    code = (
        "import os, sys, numpy as np\n"
        "sys.path.insert(0, %r)\n"
        "from tests import test_search as t\n"
        "from triplet_audio.search import index as ix\n"
        "real = ix.faiss.write_index\n"
        "def killed(index, path):\n"
        "    real(index, path)\n"
        "    os._exit(9)\n"
        "ix.faiss.write_index = killed\n"
        "ix.SoundIndex.build(t._random_set(seed=1), t.IDENTITY).save(%r)\n"
        % (REPO, directory))
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert any(n.endswith(index_lib.INCOMPLETE) for n in os.listdir(
        directory))
    np.testing.assert_array_equal(_hits(directory, queries), want)


def test_loading_what_is_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no index.*bin/index"):
        index_lib.SoundIndex.load(str(tmp_path))


# ------------------------------------------------------------------ queries


def _searcher(level="window", windows=4, num_windows=400):
    emb = _random_set(num_windows=num_windows, windows=windows)
    return query_lib.Searcher(index_lib.SoundIndex.build(emb, IDENTITY,
                                                         level=level)), emb


def _query(vectors):
    vectors = _unit(np.atleast_2d(vectors)).astype(np.float32)
    return query_lib.Query("upload", "q", vectors,
                           np.arange(len(vectors)) * 0.96)


@pytest.mark.parametrize("level", ["window", "recording"])
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_hits_are_recordings_once_ranked_as_brute_force(level, pooling):
    searcher, emb = _searcher(level)
    q = np.random.default_rng(4).standard_normal((3, 32))
    hits = searcher.search(_query(q), k=7, moments=2, pooling=pooling)
    unit = _unit(emb.embeddings)
    qv = _unit(q)  # The query's unit windows, then their pooling.
    if pooling == "mean":
        qv = _unit(qv.mean(axis=0, keepdims=True))
    if level == "window":
        window_best = (unit @ qv.T).max(axis=1)
        best = np.array([window_best[emb.segment_index == s].max()
                         for s in range(emb.num_segments)])
    else:
        best = (retrieval.segment_vectors(emb) @ qv.T).max(axis=1)
    order = np.argsort(-best)[:7]
    assert [h["recording"] for h in hits] == [
        str(emb.segment_ids[s]) for s in order]
    np.testing.assert_allclose([h["score"] for h in hits], best[order],
                               atol=1e-4)
    for hit in hits:
        segment = int(hit["recording"][1:])
        pair = (unit[emb.segment_index == segment] @ qv.T).max(axis=1)
        starts = emb.start_times[emb.segment_index == segment]
        assert [m["start"] for m in hit["moments"]] == pytest.approx(
            starts[np.argsort(-pair)[:2]].tolist(), abs=1e-3)
        assert ("query_start" in hit["moments"][0]) == (pooling == "max")


def test_label_filter_and_query_by_recording():
    searcher, emb = _searcher()
    query = searcher.query_recording("r00003")
    hits = searcher.search(query, k=5, labels=("dog",))
    assert hits and all("dog" in h["labels"] for h in hits)
    assert "r00003" not in [h["recording"] for h in searcher.search(
        query, k=emb.num_segments)]
    # The recording's own windows, as stored.
    np.testing.assert_allclose(query.vectors, _unit(
        emb.embeddings[emb.segment_index == 3]), atol=2e-3)
    part = searcher.query_recording("r00003", start=1.0, end=2.5)
    np.testing.assert_allclose(part.starts, [0.96, 1.92], atol=1e-6)
    with pytest.raises(query_lib.QueryError, match="unknown label.*'cat'"):
        searcher.search(query, labels=("cat",))
    with pytest.raises(query_lib.QueryError, match="not in the index"):
        searcher.query_recording("nope")
    with pytest.raises(query_lib.QueryError, match="no window"):
        searcher.query_recording("r00003", start=50.0)


def test_an_empty_index_is_a_clear_error():
    searcher, emb = _searcher()
    empty = index_lib.SoundIndex(
        dict(searcher.index.info), index_lib.faiss.IndexFlatIP(32),
        [], [], np.zeros((0, 32), np.float16),
        {"ids": [], "source_paths": [], "split": [], "label_ptr": [0],
         "label_idx": [], "first_window": [], "num_windows": []})
    with pytest.raises(index_lib.SearchIndexError, match="is empty"):
        query_lib.Searcher(empty).search(_query(emb.embeddings[0]))


def test_output_formats():
    searcher, _ = _searcher()
    searcher.index.source_paths = np.full(searcher.index.num_recordings,
                                          "/audio/x.wav")
    query = searcher.query_recording("r00001")
    results = [{"query": query.describe(),
                "hits": searcher.search(query, k=3)}]
    doc = json.loads(query_lib.results_json("ix", results))
    hit = doc["queries"][0]["hits"][0]
    assert hit["source_path"] == "/audio/x.wav"
    assert set(hit) == {"rank", "recording", "source_path", "score",
                        "labels", "split", "moments"}
    lines = query_lib.results_csv(results).splitlines()
    assert lines[0].split(",") == list(query_lib.CSV_COLUMNS)
    assert len(lines) == 4
    table = query_lib.results_table(results)
    assert "query: recording r00001 (4 windows)" in table
    assert table.count("\n") >= 5


# ------------------------------------------------------------------ exports


def _fake_export(directory, step):
    """An export directory (metadata + variables index), no real model."""
    os.makedirs(os.path.join(directory, "saved_model", "variables"))
    metadata = {"version": "0.1", "step": step, "embedding_size": 32,
                "model": {"name": "small"}, "frontend": None,
                "training_config": {"sampler": {"sampler": "noise"}}}
    with open(os.path.join(directory, "metadata.json"), "w") as f:
        json.dump(metadata, f)
    with open(os.path.join(directory, "saved_model", "variables",
                           "variables.index"), "wb") as f:
        f.write(b"weights %d" % step)
    return directory


def test_identity_of_embeddings_is_checked(tmp_path):
    a = _fake_export(str(tmp_path / "a"), 100)
    b = _fake_export(str(tmp_path / "b"), 200)
    meta = {"saved_model": os.path.join(a, "saved_model"),
            "export": {"step": 100, "embedding_size": 32}}
    emb = _emb_set(np.ones((4, 32)), 4, metadata=meta)
    identity = exports.identity_of_embeddings(emb)
    assert identity == exports.export_identity(a)
    assert identity["fingerprint"] != exports.export_identity(b)[
        "fingerprint"]
    with pytest.raises(exports.ExportMismatchError, match="step 100 vs 200"):
        exports.identity_of_embeddings(emb, saved_model=b)
    moved = dict(meta, saved_model=str(tmp_path / "gone" / "saved_model"))
    with pytest.raises(FileNotFoundError, match="--saved_model"):
        exports.identity_of_embeddings(_emb_set(np.ones((4, 32)), 4,
                                                metadata=moved))


def _index_dir(tmp_path, export_dir):
    emb = _random_set(num_windows=40)
    emb.metadata = {"saved_model": os.path.join(export_dir, "saved_model"),
                    "export": {"step": 100}}
    path = str(tmp_path / "emb.npz")
    embeddings_io.write_embeddings(path, emb)
    out = str(tmp_path / "ix")
    summary = build.build_index(search_config.IndexConfig(
        embeddings=path, output=out))
    assert summary["vectors"] == 40
    return out, path


def test_a_query_with_another_export_is_refused(tmp_path):
    a = _fake_export(str(tmp_path / "a"), 100)
    b = _fake_export(str(tmp_path / "b"), 200)
    out, _ = _index_dir(tmp_path, a)
    searcher = query_lib.Searcher(index_lib.SoundIndex.load(out),
                                  saved_model=b)
    with pytest.raises(exports.ExportMismatchError,
                       match="built with export .*/a .*query is embedded "
                       "with export .*/b"):
        searcher.query_file(os.path.join(REPO, "setup.py"))
    # The binary: a one-line refusal before any model is loaded.
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "bin", "search"), "--index=" + out,
         "--saved_model=" + b, "--query=" + os.path.join(REPO, "setup.py")],
        env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: index "), (
        proc.stderr)
    assert "rebuild the index with bin/index" in lines[0]


def test_bin_index_add_and_overwrite(tmp_path):
    a = _fake_export(str(tmp_path / "a"), 100)
    out, path = _index_dir(tmp_path, a)
    config = search_config.IndexConfig(embeddings=path, output=out)
    with pytest.raises(FileExistsError, match="--add.*--overwrite"):
        build.build_index(config)
    more = _random_set(num_windows=20, prefix="s", seed=3)
    more.metadata = {"saved_model": os.path.join(a, "saved_model")}
    more_path = str(tmp_path / "more.npz")
    embeddings_io.write_embeddings(more_path, more)
    summary = build.build_index(search_config.IndexConfig(
        embeddings=more_path, output=out, add=True))
    assert (summary["added"], summary["recordings"]) == (5, 15)
    b = _fake_export(str(tmp_path / "b"), 200)
    other = _random_set(num_windows=4, prefix="t")
    other.metadata = {"saved_model": os.path.join(b, "saved_model")}
    other_path = str(tmp_path / "other.npz")
    embeddings_io.write_embeddings(other_path, other)
    with pytest.raises(exports.ExportMismatchError):
        build.build_index(search_config.IndexConfig(
            embeddings=other_path, output=out, add=True))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "bin", "search"), "--index=" + out,
         "--recording=r00002", "--format=json", "--k=3"],
        env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits = json.loads(proc.stdout)["queries"][0]["hits"]
    assert len(hits) == 3 and "r00002" not in [h["recording"] for h in hits]


def test_source_paths_of_audio_input(tmp_path):
    (tmp_path / "audio" / "sub").mkdir(parents=True)
    for name in ("a.wav", "sub/b.wav"):
        (tmp_path / "audio" / name).write_bytes(b"x")
    emb = _emb_set(np.ones((2, 4)), 1)
    emb.segment_ids = np.array(["a", "sub/b"])
    emb.metadata = {"source": str(tmp_path / "audio"), "input_kind": "audio"}
    assert build.source_paths(emb) == {
        "a": str(tmp_path / "audio" / "a.wav"),
        "sub/b": str(tmp_path / "audio" / "sub" / "b.wav")}


# ---------------------------------------------------------- retrieval@k


def _numpy_retrieval(emb, k):
    unit = retrieval.segment_vectors(emb)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    ranked = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    labels = emb.labels.astype(bool)
    aps, precisions = [], []
    for c in range(labels.shape[1]):
        queries = np.flatnonzero(labels[:, c])
        if queries.size < 2:
            continue
        ap_c, p_c = [], []
        for q in queries:
            rel = labels[ranked[q], c]
            hits, total = 0, 0.0
            for i, r in enumerate(rel, 1):
                if r:
                    hits += 1
                    total += hits / i
            ap_c.append(total / min(k, queries.size - 1))
            p_c.append(rel.sum() / k)
        aps.append(np.mean(ap_c))
        precisions.append(np.mean(p_c))
    return np.mean(aps), np.mean(precisions)


def test_retrieval_at_k_is_numpy_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (150, 3))
    labels[:, 2] = 0
    labels[0, 2] = 1  # A class of one segment: no query.
    centres = rng.standard_normal((3, 16))
    segment = np.repeat(np.arange(150), 3)
    emb = _emb_set(labels[segment] @ centres + rng.standard_normal(
        (450, 16)), 3, labels=labels)
    result = retrieval.retrieval_at_k(emb, k=7)
    want_map, want_precision = _numpy_retrieval(emb, 7)
    assert result["map_at_k"] == pytest.approx(want_map, abs=1e-9)
    assert result["precision_at_k"] == pytest.approx(want_precision,
                                                     abs=1e-9)
    assert result["skipped"] == ["dog"]
    assert set(result["per_class"]) == {"bird", "car"}


def test_bin_evaluate_reports_retrieval_at_k_when_asked():
    from triplet_audio.evaluation import metrics  # pylint: disable=g-import-not-at-top
    train = _random_set(num_windows=120, windows=3, prefix="t")
    held_out = _random_set(num_windows=120, windows=3, prefix="e", seed=2)
    config = metrics.EvaluationConfig(parts=(), retrieval_k=5)
    results = metrics.evaluate(train, held_out, config)
    assert results[retrieval.PART]["k"] == 5
    assert retrieval.PART not in metrics.evaluate(
        train, held_out, metrics.EvaluationConfig(parts=()))


# ------------------------------------------- audio queries, a real export


def _write_wav(path, seconds, seed, tone_hz=None, rate=22050):
    # Imported here: a subprocess test imports this module from a path where
    # the tests directory is not on sys.path.
    import wav_files  # pylint: disable=g-import-not-at-top
    return wav_files.write_wav(path, seconds, seed, tone_hz, rate)


@pytest.fixture(scope="module")
def audio_index(tmp_path_factory):
    """(export, audio folder, index) built by bin/index from audio directly."""
    # pylint: disable=g-import-not-at-top
    from triplet_audio.model import models
    from triplet_audio.serving import export
    # pylint: enable=g-import-not-at-top
    root = tmp_path_factory.mktemp("search_audio")
    export_dir = str(root / "export")
    export.export_saved_model(
        models.build_model("small", embedding_size=16, seed=0), export_dir,
        training_config={"sampler": {"sampler": "noise"}})
    audio = root / "audio"
    for i, hz in enumerate((300, 1200, 3000, None)):
        _write_wav(str(audio / ("clip%d.wav" % i)), 3.0, i, hz)
    out = str(root / "ix")
    summary = build.build_index(search_config.IndexConfig(
        input=str(audio), saved_model=export_dir, output=out))
    assert (summary["recordings"], summary["vectors"]) == (4, 12)
    return export_dir, str(audio), out


def test_search_by_audio_file(audio_index):
    export_dir, audio, out = audio_index
    clip = os.path.join(audio, "clip2.wav")
    text = query_lib.run_search(search_config.SearchConfig(
        index=out, query=(clip,), format="json", k=2))
    hits = json.loads(text)["queries"][0]["hits"]
    # The same audio, embedded as bin/embed did: itself, at similarity 1.
    assert hits[0]["recording"] == "clip2"
    assert hits[0]["source_path"] == clip
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    # A part of it, with the export named explicitly.
    text = query_lib.run_search(search_config.SearchConfig(
        index=out, query=(clip,), query_start=1.0, query_end=2.5,
        saved_model=export_dir, format="json", k=1))
    query = json.loads(text)["queries"][0]["query"]
    assert (query["start"], query["end"], query["windows"]) == (1.0, 2.5, 1)


def test_a_query_shorter_than_a_window_is_padded(audio_index, tmp_path):
    _, _, out = audio_index
    short = _write_wav(str(tmp_path / "short.wav"), 0.3, 7, 1200)
    text = query_lib.run_search(search_config.SearchConfig(
        index=out, query=(short,)))
    assert "(1 window, zero-padded to one window)" in text
    assert "clip1" in text
    empty = _write_wav(str(tmp_path / "empty.wav"), 0.0, 7)
    with pytest.raises(ValueError, match="empty|no audio|no samples"):
        query_lib.run_search(search_config.SearchConfig(index=out,
                                                        query=(empty,)))


@pytest.mark.parametrize("n, nq, k", [(5, 3, 10), (3000, 7, 10),
                                      (3000, 4, 2500), (20000, 1, 5),
                                      (1024 + 40, 3, 4)])
def test_exact_top_k_in_blocks_is_numpy_brute_force(n, nq, k):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    q = rng.standard_normal((nq, 16)).astype(np.float32)
    # Tiny blocks: the first one smaller than k, many merges after it.
    sims, rows = index_lib.exact_top_k(x, q, k, block_elements=1 << 12)
    full = q @ x.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :min(k, n)]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, axis=1),
                               rtol=1e-6)


@pytest.mark.parametrize("level", ["window", "recording"])
def test_ivfpq_hits_are_rescored_exactly(planted, level):
    indexes, vectors, queries, members = planted
    per = 4 if level == "window" else 1  # ivfpq trains on >= 9984 vectors.
    if level == "window":
        searcher = query_lib.Searcher(indexes["ivfpq"])
    else:
        searcher = query_lib.Searcher(index_lib.SoundIndex.build(
            _emb_set(vectors, per), IDENTITY, level=level,
            index_type="ivfpq", params={"pq_m": 4}))
    hits = searcher.search(_query(queries[0]), k=3)
    segments = np.arange(vectors.shape[0]) // per
    for hit in hits:
        rows = segments == int(hit["recording"][1:])
        unit = _unit(vectors[rows])
        want = (unit @ queries[0]).max() if level == "window" else (
            _unit(unit.mean(axis=0)) @ queries[0])
        assert hit["score"] == pytest.approx(want, abs=2e-3)
    # The planted group's recordings come first.
    assert {int(h["recording"][1:]) for h in hits} <= set(
        members[0] // per)


def test_auto_is_exact_then_ivfpq():
    assert index_lib.resolve_index_type("auto", 10, 10) == "exact"
    assert index_lib.resolve_index_type("auto", 20000, 10) == "ivfpq"
    assert index_lib.resolve_index_type("auto", 5000, 10) == "hnsw"
    assert index_lib.resolve_index_type("hnsw", 10, 10) == "hnsw"
