"""Tests of triplet_audio.serving.embed on tiny TFRecord corpora and audio folders."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from triplet_audio.features import audio_io
from triplet_audio import constants as C
from triplet_audio.serving import embed
from triplet_audio.serving import embeddings_io
from triplet_audio.serving import export
from triplet_audio.features import frontend
from triplet_audio.model import models
from triplet_audio.features import records

CLASSES = ["bird", "car", "dog"]
D_LOGMEL = C.WINDOW_FRAMES * C.NUM_MEL_BANDS


def _windows(num, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(np.log(C.LOG_OFFSET), 5.0,
                       (num,) + C.WINDOW_SHAPE).astype(np.float32)


def _starts(first, num):
    return (np.arange(first, first + num) * C.WINDOW_SECONDS).astype(
        np.float32)


# Recording "a" is long enough to be split into two chunks (3 + 2 windows).
RECORDS = {
    ("a", 0): dict(windows=_windows(3, 0), start_times=_starts(0, 3),
                   labels=(0, 2), split="train"),
    ("a", 1): dict(windows=_windows(2, 1), start_times=_starts(3, 2),
                   labels=(0, 2), split="train"),
    ("b", 0): dict(windows=_windows(1, 2), start_times=_starts(0, 1),
                   labels=(1,), split="eval"),
    ("c", 0): dict(windows=_windows(2, 3), start_times=_starts(0, 2),
                   labels=(), split=""),
}
SEGMENTS = {"a": [("a", 0), ("a", 1)], "b": [("b", 0)], "c": [("c", 0)]}


def _write_corpus(corpus_dir, shards, manifest=True, frontend=None):
    """Writes `shards` (lists of RECORDS keys) and a manifest.json.

    `frontend`: the manifest's front-end parameters (default: this code's).
    """
    os.makedirs(corpus_dir, exist_ok=True)
    for i, keys in enumerate(shards):
        path = os.path.join(corpus_dir, records.shard_name(i, len(shards)))
        with tf.io.TFRecordWriter(path) as writer:
            for rid, chunk in keys:
                r = RECORDS[(rid, chunk)]
                writer.write(records.make_example(
                    r["windows"], r["start_times"], rid, labels=r["labels"],
                    chunk_index=chunk, split=r["split"],
                    source_path="/audio/%s.wav" % rid).SerializeToString())
    if manifest:
        with open(os.path.join(corpus_dir, records.MANIFEST_NAME), "w") as f:
            json.dump({"frontend": frontend or C.frontend_params(),
                       "classes": CLASSES}, f)
    return str(corpus_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Chunks of a recording consecutive in one shard, as extraction writes."""
    return _write_corpus(tmp_path_factory.mktemp("corpus"),
                         [[("a", 0), ("a", 1), ("b", 0)], [("c", 0)]])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export_dir) of a seeded small model."""
    model = models.build_model("small", embedding_size=16, seed=0)
    export_dir = str(tmp_path_factory.mktemp("export") / "proximity")
    export.export_saved_model(
        model, export_dir,
        training_config={"sampler": {"sampler": "proximity"}})
    return model, export_dir


def _check_segment_table(emb_set):
    assert emb_set.segment_ids.tolist() == ["a", "b", "c"]
    assert emb_set.class_names.tolist() == CLASSES
    np.testing.assert_array_equal(emb_set.labels,
                                  [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert emb_set.split.tolist() == ["train", "eval", ""]
    # One segment per recording: the two chunks of "a" are one segment with
    # continuous start times.
    np.testing.assert_array_equal(emb_set.segment_index,
                                  [0, 0, 0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(
        emb_set.start_times,
        np.concatenate([_starts(0, 5), _starts(0, 1), _starts(0, 2)]),
        atol=1e-6)


def _expected_windows():
    return np.concatenate([RECORDS[k]["windows"]
                           for seg in ("a", "b", "c") for k in SEGMENTS[seg]])


@pytest.mark.parametrize("batch_size", [1, 4, 512])
def test_logmel_of_tfrecord_corpus(corpus, tmp_path, batch_size):
    out = str(tmp_path / "logmel.npz")
    summary = embed.embed_corpus(corpus, out, representation="logmel",
                                 batch_size=batch_size)
    assert summary["input_kind"] == embed.INPUT_TFRECORD
    assert (summary["segments"], summary["windows"]) == (3, 8)
    assert summary["outputs"] == [out]
    emb_set = embeddings_io.read_embeddings(out)
    _check_segment_table(emb_set)
    assert emb_set.representation == "logmel"
    assert emb_set.embeddings.dtype == np.float16
    assert emb_set.dim == D_LOGMEL
    np.testing.assert_array_equal(
        emb_set.embeddings,
        _expected_windows().reshape(-1, D_LOGMEL).astype(np.float16))
    meta = emb_set.metadata
    assert meta["source"] == os.path.abspath(corpus)
    assert meta["saved_model"] is None
    assert meta["counts"] == {"records": 4, "segments": 3, "windows": 8}
    assert meta["failures"] == []


def test_saved_model_of_tfrecord_corpus(corpus, exported, tmp_path):
    model, export_dir = exported
    out = str(tmp_path / "emb.npz")
    # A batch of 4 cuts across records and splits the 3-window chunk.
    summary = embed.embed_corpus(corpus, out, saved_model=export_dir,
                                 batch_size=4)
    assert summary["representation"] == "proximity-small"
    assert summary["embedding_size"] == 16
    emb_set = embeddings_io.read_embeddings(out)
    _check_segment_table(emb_set)
    assert emb_set.embeddings.dtype == np.float32
    expected = model(_expected_windows(), training=False).numpy()
    np.testing.assert_allclose(emb_set.embeddings, expected, atol=1e-5,
                               rtol=0)
    assert emb_set.metadata["saved_model"] == os.path.join(
        os.path.abspath(export_dir), export.SAVED_MODEL_SUBDIR)
    assert emb_set.metadata["export"]["model"]["name"] == "small"


def test_inner_saved_model_directory_is_accepted(corpus, exported, tmp_path):
    _, export_dir = exported
    inner = os.path.join(export_dir, export.SAVED_MODEL_SUBDIR)
    summary = embed.embed_corpus(corpus, str(tmp_path / "emb"),
                                 saved_model=inner)
    # metadata.json beside the SavedModel still names the representation.
    assert summary["representation"] == "proximity-small"
    assert summary["outputs"] == [str(tmp_path / "emb.npz")]


def test_export_of_another_front_end_is_refused(corpus, exported, tmp_path):
    _, export_dir = exported
    tampered = str(tmp_path / "export")
    shutil.copytree(export_dir, tampered)
    path = os.path.join(tampered, export.METADATA_NAME)
    with open(path) as f:
        meta = json.load(f)
    meta["frontend"]["mel_upper_hz"] = 8000.0
    with open(path, "w") as f:
        json.dump(meta, f)
    message = re.escape("export %s was made with mel_upper_hz=8000.0, this "
                        "code uses 7500.0; " % tampered)
    for saved_model in (tampered,
                        os.path.join(tampered, export.SAVED_MODEL_SUBDIR)):
        with pytest.raises(records.FrontendMismatchError, match=message):
            embed.embed_corpus(corpus, str(tmp_path / "o"),
                               saved_model=saved_model)
    assert not os.path.exists(str(tmp_path / "o.npz"))


def test_corpus_of_another_front_end_is_refused(tmp_path):
    corpus = _write_corpus(
        tmp_path / "corpus", [[("a", 0), ("b", 0)]],
        frontend=dict(C.frontend_params(), stft_hop_samples=128))
    with pytest.raises(records.FrontendMismatchError,
                       match=re.escape("corpus %s was made with "
                                       "stft_hop_samples=128, this code uses "
                                       "160; re-extract it" % corpus)):
        embed.embed_corpus(corpus, str(tmp_path / "o"),
                           representation="logmel")


def test_scattered_chunks_are_grouped(tmp_path):
    # A re-sharded corpus: the second chunk of "a" comes first, in another
    # shard than the first chunk.
    corpus = _write_corpus(tmp_path / "corpus",
                           [[("a", 1), ("b", 0)], [("c", 0), ("a", 0)]])
    out = str(tmp_path / "logmel.npz")
    embed.embed_corpus(corpus, out, representation="logmel")
    emb_set = embeddings_io.read_embeddings(out)
    _check_segment_table(emb_set)
    np.testing.assert_array_equal(
        emb_set.embeddings,
        _expected_windows().reshape(-1, D_LOGMEL).astype(np.float16))


def test_shard_glob_input_and_output_shards(corpus, tmp_path):
    out = str(tmp_path / "logmel.npz")
    summary = embed.embed_corpus(os.path.join(corpus, "shard-*"), out,
                                 representation="logmel", num_output_shards=2)
    assert len(summary["outputs"]) == 2
    emb_set = embeddings_io.read_embeddings(out)
    _check_segment_table(emb_set)


def test_without_manifest_classes_are_named_by_index(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus", [[("a", 0), ("b", 0)]],
                           manifest=False)
    out = str(tmp_path / "logmel.npz")
    embed.embed_corpus(corpus, out, representation="logmel")
    emb_set = embeddings_io.read_embeddings(out)
    assert emb_set.class_names.tolist() == ["0", "1", "2"]
    np.testing.assert_array_equal(emb_set.labels, [[1, 0, 1], [0, 1, 0]])


def test_duplicate_chunk_is_an_error(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus", [[("a", 0)], [("a", 0)]])
    with pytest.raises(embed.EmbedError, match="'a'.*more than once"):
        embed.embed_corpus(corpus, str(tmp_path / "x.npz"),
                           representation="logmel")


def _write_wav(path, seconds, rate, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, 0.1 * rng.standard_normal(int(seconds * rate)), rate,
             subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    _write_wav(str(root / "long.wav"), 2.5, 16000, 0)  # Two windows.
    _write_wav(str(root / "sub" / "short.wav"), 0.5, 22050, 1)  # Padded.
    (root / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    return str(root)


def test_audio_folder_with_a_corrupt_file(audio_dir, tmp_path):
    out = str(tmp_path / "logmel.npz")
    summary = embed.embed_corpus(audio_dir, out, representation="logmel")
    assert summary["input_kind"] == embed.INPUT_AUDIO
    assert [f["path"] for f in summary["failures"]] == [
        os.path.join(audio_dir, "corrupt.wav")]
    emb_set = embeddings_io.read_embeddings(out)
    assert emb_set.segment_ids.tolist() == ["long", "sub/short"]
    np.testing.assert_array_equal(emb_set.segment_index, [0, 0, 1])
    np.testing.assert_allclose(emb_set.start_times,
                               [0.0, C.WINDOW_SECONDS, 0.0], atol=1e-6)
    assert emb_set.num_classes == 0
    expected = np.concatenate([
        frontend.waveform_to_windows(audio_io.load_audio(
            os.path.join(audio_dir, name))).numpy()
        for name in ("long.wav", "sub/short.wav")])
    np.testing.assert_array_equal(
        emb_set.embeddings, expected.reshape(-1, D_LOGMEL).astype(np.float16))
    meta = emb_set.metadata
    assert meta["counts"]["files"] == 3
    assert meta["counts"]["failed"] == 1
    assert meta["failures"][0]["path"].endswith("corrupt.wav")
    assert meta["failures"][0]["reason"]


def test_audio_csv_with_saved_model(audio_dir, exported, tmp_path):
    model, export_dir = exported
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,labels,split\n"
        "%s,dog;bird,train\n%s,car,eval\n" % (
            os.path.join(audio_dir, "long.wav"),
            os.path.join(audio_dir, "sub", "short.wav")))
    out = str(tmp_path / "emb.npz")
    embed.embed_corpus(str(csv_path), out, saved_model=export_dir,
                       batch_size=2)
    emb_set = embeddings_io.read_embeddings(out)
    assert emb_set.class_names.tolist() == ["bird", "car", "dog"]
    np.testing.assert_array_equal(emb_set.labels, [[1, 0, 1], [0, 1, 0]])
    assert emb_set.split.tolist() == ["train", "eval"]
    windows = np.concatenate([
        frontend.waveform_to_windows(audio_io.load_audio(
            os.path.join(audio_dir, name))).numpy()
        for name in ("long.wav", "sub/short.wav")])
    np.testing.assert_allclose(emb_set.embeddings,
                               model(windows, training=False).numpy(),
                               atol=1e-5, rtol=0)


def test_long_audio_is_windowed_in_pieces_like_the_whole():
    # More windows than one piece, and a tail that is not a whole window.
    num = frontend.samples_for_windows(C.MAX_WINDOWS_PER_RECORD + 3) + 1000
    waveform = (0.1 * np.random.default_rng(0).standard_normal(num)).astype(
        np.float32)
    got = embed._audio_windows(waveform)  # pylint: disable=protected-access
    expected = frontend.waveform_to_windows(waveform).numpy()
    assert got.shape == expected.shape == (C.MAX_WINDOWS_PER_RECORD + 3,
                                           ) + C.WINDOW_SHAPE
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_all_audio_bad_is_an_error(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"junk")
    with pytest.raises(embed.EmbedError, match="none of the 1 audio"):
        embed.embed_corpus(str(tmp_path), str(tmp_path / "o.npz"),
                           representation="logmel")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(representation="logmel", saved_model="x"), embed.EmbedError,
     "exactly one"),
    (dict(), embed.EmbedError, "exactly one"),
    (dict(representation="mfcc"), embed.EmbedError, "mfcc"),
    (dict(representation="logmel", batch_size=0), embed.EmbedError,
     "batch_size"),
])
def test_bad_arguments(corpus, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        embed.embed_corpus(corpus, str(tmp_path / "o.npz"), **kwargs)


def test_missing_input_and_saved_model(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="input"):
        embed.embed_corpus(str(tmp_path / "nothing"), str(tmp_path / "o"),
                           representation="logmel")
    with pytest.raises(FileNotFoundError, match="saved_model"):
        embed.embed_corpus(corpus, str(tmp_path / "o"),
                           saved_model=str(tmp_path / "no_export"))


# ------------------------------------------------------- window hop ---
def test_dense_hop_for_audio_input(audio_dir, exported, tmp_path):
    # --window_hop_seconds=0.25: overlapping windows, 0.25 s apart, equal to
    # the front end's dense framing of each file.
    model, export_dir = exported
    out = str(tmp_path / "dense.npz")
    summary = embed.embed_corpus(audio_dir, out, saved_model=export_dir,
                                 batch_size=3, window_hop_seconds=0.25)
    emb_set = embeddings_io.read_embeddings(out)
    windows = [frontend.waveform_to_windows(
        audio_io.load_audio(os.path.join(audio_dir, name)),
        hop_frames=25).numpy() for name in ("long.wav", "sub/short.wav")]
    # 2.5 s: 1 + (247 - 96) // 25 = 7 windows; 0.5 s: padded to one.
    assert [w.shape[0] for w in windows] == [7, 1]
    np.testing.assert_array_equal(emb_set.segment_index, [0] * 7 + [1])
    np.testing.assert_allclose(emb_set.start_times,
                               list(np.arange(7) * 0.25) + [0.0], atol=1e-6)
    np.testing.assert_allclose(
        emb_set.embeddings,
        model(np.concatenate(windows), training=False).numpy(), atol=1e-5)
    assert emb_set.metadata["window_hop_seconds"] == 0.25
    assert summary["windows"] == 8


def test_dense_windows_of_long_audio_come_in_pieces_like_the_whole():
    num = frontend.samples_for_windows(C.MAX_WINDOWS_PER_RECORD + 3, 5) + 700
    waveform = (0.1 * np.random.default_rng(1).standard_normal(num)).astype(
        np.float32)
    pieces = list(embed._audio_window_pieces(waveform, 5))  # pylint: disable=protected-access
    assert [p.shape[0] for p in pieces] == [C.MAX_WINDOWS_PER_RECORD, 3]
    np.testing.assert_allclose(
        np.concatenate(pieces),
        frontend.waveform_to_windows(waveform, hop_frames=5).numpy(),
        atol=1e-4, rtol=0)


def test_hop_errors(corpus, audio_dir, tmp_path):
    with pytest.raises(embed.EmbedError, match="TFRecord corpus"):
        embed.embed_corpus(corpus, str(tmp_path / "o.npz"),
                           representation="logmel", window_hop_seconds=0.5)
    with pytest.raises(embed.EmbedError, match="window_hop_seconds"):
        embed.embed_corpus(audio_dir, str(tmp_path / "o.npz"),
                           representation="logmel", window_hop_seconds=0.015)
