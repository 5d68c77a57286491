"""Tests of the embeddings file format (triplet_audio/serving/embeddings_io.py)."""

import glob
import os

import numpy as np
import pytest

from triplet_audio.serving import embeddings_io as eio


def make_set(num_segments=12, dim=8, num_classes=3, seed=0, dtype=np.float32,
             shuffle_windows=False):
    """A small valid set; segment s has 1 + s % 4 windows."""
    rng = np.random.default_rng(seed)
    counts = 1 + np.arange(num_segments) % 4
    segment_index = np.repeat(np.arange(num_segments), counts)
    start_times = np.concatenate([np.arange(c) * 0.96 for c in counts])
    if shuffle_windows:
        order = rng.permutation(segment_index.size)
        segment_index, start_times = segment_index[order], start_times[order]
    labels = (rng.random((num_segments, num_classes)) < 0.4).astype(np.uint8)
    return eio.EmbeddingSet(
        embeddings=rng.normal(size=(segment_index.size, dim)).astype(dtype),
        segment_index=segment_index,
        start_times=start_times,
        segment_ids=["clip_%03d" % i for i in range(num_segments)],
        labels=labels,
        split=["train" if i % 2 else "" for i in range(num_segments)],
        class_names=["dog", "rain", "speech"][:num_classes] + [
            "class_%d" % c for c in range(3, num_classes)],
        representation="proximity_model",
        metadata={"saved_model": "/models/x", "dim": dim})


def assert_sets_equal(a, b):
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert a.embeddings.dtype == b.embeddings.dtype
    np.testing.assert_array_equal(a.segment_index, b.segment_index)
    np.testing.assert_array_equal(a.start_times, b.start_times)
    np.testing.assert_array_equal(a.segment_ids, b.segment_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_array_equal(a.class_names, b.class_names)
    assert a.representation == b.representation
    assert a.metadata == b.metadata


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_single_file(tmp_path, dtype):
    original = make_set(dtype=dtype)
    paths = eio.write_embeddings(str(tmp_path / "eval"), original)
    assert paths == [str(tmp_path / "eval.npz")]
    loaded = eio.read_embeddings(paths[0])
    assert_sets_equal(original, loaded)
    assert loaded.segment_index.dtype == np.int64
    assert loaded.labels.dtype == np.uint8
    assert loaded.source == paths[0]


def test_files_load_without_pickle(tmp_path):
    path = eio.write_embeddings(str(tmp_path / "e.npz"), make_set())[0]
    with np.load(path, allow_pickle=False) as data:
        assert data[eio.SEGMENT_IDS].dtype.kind == "U"
        assert int(data[eio.FORMAT_VERSION_KEY]) == eio.FORMAT_VERSION


def test_round_trip_sharded(tmp_path):
    original = make_set(num_segments=30)
    out = str(tmp_path / "corpus" / "train.npz")
    paths = eio.write_embeddings(out, original, num_shards=4)
    assert [os.path.basename(p) for p in paths] == [
        "train-%05d-of-00004.npz" % i for i in range(4)]
    for source in (out, str(tmp_path / "corpus"),
                   str(tmp_path / "corpus" / "train-*.npz")):
        assert_sets_equal(original, eio.read_embeddings(source))
    # Each shard stands alone: whole segments, a local segment table.
    sizes = [eio.read_embeddings(p).num_segments for p in paths]
    assert sum(sizes) == original.num_segments and min(sizes) > 0


def test_sharded_keeps_segments_whole_with_shuffled_windows(tmp_path):
    original = make_set(num_segments=20, shuffle_windows=True)
    out = str(tmp_path / "x.npz")
    eio.write_embeddings(out, original, num_shards=3)
    loaded = eio.read_embeddings(out)
    np.testing.assert_array_equal(loaded.segment_ids, original.segment_ids)
    np.testing.assert_allclose(eio.segment_means(loaded),
                               eio.segment_means(original), rtol=1e-6)


def test_missing_shard_is_an_error(tmp_path):
    out = str(tmp_path / "x.npz")
    paths = eio.write_embeddings(out, make_set(num_segments=20), num_shards=4)
    os.remove(paths[2])
    with pytest.raises(eio.EmbeddingFormatError, match="missing shard"):
        eio.read_embeddings(out)


def test_rewrite_with_other_shard_count_removes_stale_files(tmp_path):
    out = str(tmp_path / "x.npz")
    eio.write_embeddings(out, make_set(num_segments=20), num_shards=4)
    eio.write_embeddings(out, make_set(num_segments=20, seed=1), num_shards=2)
    assert len(glob.glob(str(tmp_path / "*.npz"))) == 2
    assert_sets_equal(eio.read_embeddings(out), make_set(num_segments=20,
                                                         seed=1))


# Every way of naming the output that the writer accepts: with and without
# ".npz", a dot in the name, glob characters taken literally, one file or
# shards.
_OUTPUT_NAMES = ["eval", "eval.npz", "eval.v2", "run[1]/eval*",
                 "run[1]/eval.npz"]


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("name", _OUTPUT_NAMES)
def test_reader_given_the_output_path_finds_what_the_writer_wrote(
        tmp_path, name, num_shards):
    original = make_set(num_segments=9)
    out = str(tmp_path / name)
    written = eio.write_embeddings(out, original, num_shards=num_shards)
    stem = out[:-4] if out.endswith(".npz") else out
    if num_shards == 1:
        assert written == [stem + ".npz"]
    else:
        assert written == ["%s-%05d-of-00003.npz" % (stem, i)
                           for i in range(3)]
    # The path as given, and its other spelling (the writer treats "x" and
    # "x.npz" alike, so must the reader).
    for given in (out, stem, stem + ".npz"):
        assert eio.resolve_paths(given) == written, given
        assert_sets_equal(eio.read_embeddings(given), original)


def test_output_path_wins_over_a_directory_of_that_name(tmp_path):
    # --output=emb/train beside a directory emb/train/ writes emb/train.npz;
    # reading emb/train must give that file, not the directory's files.
    other = make_set(num_segments=5, seed=1)
    eio.write_embeddings(str(tmp_path / "train" / "old.npz"), other)
    original = make_set(num_segments=7)
    eio.write_embeddings(str(tmp_path / "train"), original)
    assert_sets_equal(eio.read_embeddings(str(tmp_path / "train")), original)
    # The directory itself is still readable as a directory.
    assert eio.resolve_paths(str(tmp_path / "train") + os.sep) == [
        str(tmp_path / "train" / "old.npz")]


def test_output_path_with_a_file_and_shards_is_an_error(tmp_path):
    # The writer never leaves both (it removes stale files); a reader must
    # not silently pick one if something else did.
    out = str(tmp_path / "x")
    eio.write_embeddings(out, make_set(num_segments=9), num_shards=3)
    eio._write_one(out + ".npz", make_set(num_segments=9), compress=False)
    with pytest.raises(eio.EmbeddingFormatError, match="both"):
        eio.read_embeddings(out)
    # Named exactly, the single file is still read alone.
    assert eio.resolve_paths(out + ".npz") == [out + ".npz"]


def test_no_match_is_an_error(tmp_path):
    with pytest.raises(eio.EmbeddingFormatError, match="no embeddings file"):
        eio.read_embeddings(str(tmp_path / "nothing.npz"))


def _write_raw(path, emb_set, **overrides):
    """Writes a file bypassing validation, to test the reader's checks."""
    arrays = {
        eio.EMBEDDINGS: emb_set.embeddings,
        eio.SEGMENT_INDEX: emb_set.segment_index,
        eio.START_TIMES: emb_set.start_times,
        eio.SEGMENT_IDS: emb_set.segment_ids,
        eio.LABELS: emb_set.labels,
        eio.SPLIT: emb_set.split,
        eio.CLASS_NAMES: emb_set.class_names,
        eio.REPRESENTATION: np.array(emb_set.representation),
        eio.METADATA: np.array("{}"),
    }
    arrays.update(overrides)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_nan_is_rejected_naming_the_file(tmp_path):
    good = make_set()
    emb = good.embeddings.copy()
    emb[5, 2] = np.nan
    path = str(tmp_path / "bad_nan.npz")
    _write_raw(path, good, embeddings=emb)
    with pytest.raises(eio.EmbeddingFormatError) as err:
        eio.read_embeddings(path)
    assert "bad_nan.npz" in str(err.value)
    assert "NaN" in str(err.value) and "window 5" in str(err.value)


@pytest.mark.parametrize("key,bad,expected", [
    ("labels", np.zeros((11, 3), np.uint8), "labels have shape"),
    ("segment_index", np.zeros(3, np.int64), "segment_index has shape"),
    ("split", np.array(["a"]), "split has shape"),
    ("labels", np.full((12, 3), 2, np.uint8), "multi-hot"),
])
def test_shape_mismatch_is_rejected_naming_the_file(tmp_path, key, bad,
                                                    expected):
    path = str(tmp_path / "bad_shape.npz")
    _write_raw(path, make_set(), **{key: bad})
    with pytest.raises(eio.EmbeddingFormatError, match=expected) as err:
        eio.read_embeddings(path)
    assert "bad_shape.npz" in str(err.value)


def test_missing_key_is_rejected(tmp_path):
    path = str(tmp_path / "partial.npz")
    with open(path, "wb") as f:
        np.savez(f, embeddings=np.zeros((2, 3), np.float32))
    with pytest.raises(eio.EmbeddingFormatError, match="partial.npz.*missing"):
        eio.read_embeddings(path)


def test_corrupt_file_is_rejected_naming_it(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(eio.EmbeddingFormatError, match="garbage.npz"):
        eio.read_embeddings(str(path))


def test_shards_with_different_classes_are_rejected(tmp_path):
    eio.write_embeddings(str(tmp_path / "a.npz"), make_set())
    other = make_set()
    other.class_names = np.array(["x", "y", "z"])
    other.segment_ids = np.char.add("b_", other.segment_ids)
    eio.write_embeddings(str(tmp_path / "b.npz"), other)
    with pytest.raises(eio.EmbeddingFormatError, match="b.npz.*class_names"):
        eio.read_embeddings(str(tmp_path))


def test_validation_in_memory():
    good = make_set()
    with pytest.raises(eio.EmbeddingFormatError, match="no window"):
        eio.EmbeddingSet(good.embeddings, np.zeros(good.num_windows, int),
                         good.start_times, good.segment_ids, good.labels,
                         good.split, good.class_names, "r")
    with pytest.raises(eio.EmbeddingFormatError, match="not unique"):
        eio.EmbeddingSet(good.embeddings, good.segment_index, good.start_times,
                         ["same"] * good.num_segments, good.labels, good.split,
                         good.class_names, "r")


def test_segment_means_matches_loop():
    emb_set = make_set(num_segments=15, shuffle_windows=True, dtype=np.float16)
    means = eio.segment_means(emb_set)
    assert means.dtype == np.float32 and means.shape == (15, emb_set.dim)
    for s in range(15):
        expected = emb_set.embeddings[emb_set.segment_index == s].astype(
            np.float64).mean(axis=0)
        np.testing.assert_allclose(means[s], expected, rtol=1e-3, atol=1e-3)


def test_subset_segments_keeps_their_windows():
    emb_set = make_set(num_segments=10, shuffle_windows=True)
    sub = eio.subset_segments(emb_set, [7, 2])
    np.testing.assert_array_equal(sub.segment_ids, emb_set.segment_ids[[7, 2]])
    np.testing.assert_allclose(eio.segment_means(sub),
                               eio.segment_means(emb_set)[[7, 2]])
