"""--input_format: AudioSet, FSD50K, ESC-50 and UrbanSound8K as distributed.

Every check is against testdata/make_datasets.py's constants (the metadata
it wrote), never against the readers' own output.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
import tensorflow as tf

from testdata import make_datasets as M
from triplet_audio import constants as C
from triplet_audio.features import audio_io
from triplet_audio.features import datasets
from triplet_audio.features import extract
from triplet_audio.features import frontend
from triplet_audio.features import inputs
from triplet_audio.features import records
from triplet_audio.features import shards
from triplet_audio.serving import embed
from triplet_audio.serving import embeddings_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED = M.expected()
LAYOUTS = tuple(M.ROOTS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return M.make_datasets(str(tmp_path_factory.mktemp("datasets")))


def _root(data_dir, layout):
    return os.path.join(data_dir, M.ROOTS[layout])


@pytest.fixture(scope="module")
def extracted(data_dir, tmp_path_factory):
    """Each layout extracted once (local runner), with its records."""
    out = {}
    for layout in LAYOUTS:
        corpus = str(tmp_path_factory.mktemp("corpus_" + layout))
        summary = extract.run(extract.ExtractConfig(
            input=_root(data_dir, layout), output_dir=corpus, num_shards=2,
            workers=1, input_format=layout))
        examples = []
        for path in records.list_shards(corpus):
            for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
                examples.append(tf.train.Example.FromString(raw))
        out[layout] = (corpus, summary, examples)
    return out


# ------------------------------------------------------------ discovery ---


@pytest.mark.parametrize("layout", LAYOUTS)
def test_items_are_the_metadata_less_the_missing_files(data_dir, layout):
    found = datasets.discover(_root(data_dir, layout), input_format=layout)
    want = EXPECTED[layout]
    assert found.layout == layout
    assert found.classes == want["classes"]
    got = {i.recording_id: (sorted(found.classes[c] for c in i.labels),
                            i.split) for i in found.items}
    assert got == {rid: (labels, split) for rid, (labels, split, _) in
                   want["records"].items()}
    assert {k: v for k, v in found.info["missing_files"].items()} == (
        want["missing"])
    assert found.info["missing"] == sum(len(v) for v in
                                        want["missing"].values())
    assert found.info["found"] == len(want["records"])
    assert all(os.path.isfile(i.path) for i in found.items)


def test_audioset_files_cuts_and_strong_labels(data_dir):
    root = _root(data_dir, "audioset")
    found = datasets.discover(root, input_format="audioset")
    by_id = {i.recording_id: i for i in found.items}
    starts = {ytid: (start, end) for rows in M.AUDIOSET_SEGMENTS.values()
              for ytid, start, end, _ in rows}
    for ytid, (rel, _, _, _) in M.AUDIOSET_FILES.items():
        start, end = starts[ytid]
        item = by_id[datasets.segment_id(ytid, start)]
        assert item.path == os.path.join(root, rel)
        assert (item.start, item.end) == (start, end)
    names = found.classes
    strong = by_id["EEEEEEEEEEE_2000"].events
    assert [(a, b, names[c]) for a, b, c in strong] == [
        (a, b, dict([(m, n) for _, m, n in M.AUDIOSET_CLASSES] +
                    [M.AUDIOSET_STRONG_ONLY])[mid])
        for _, a, b, mid in M.AUDIOSET_STRONG]
    assert all(i.events is None for rid, i in by_id.items()
               if rid != "EEEEEEEEEEE_2000")
    info = found.info
    assert info["audio_files_unused"] == 1  # AUDIOSET_UNUSED
    assert info["strong_labels"] == {"segments": 1, "events": 2}
    assert sorted(info["metadata"]) == sorted(
        "metadata/" + n for n in (
            "balanced_train_segments.csv", "eval_segments.csv",
            "class_labels_indices.csv", "mid_to_display_name.tsv",
            "audioset_eval_strong.tsv"))


def test_one_metadata_file_reads_that_part_alone(data_dir):
    found = datasets.discover(os.path.join(
        _root(data_dir, "audioset"), "metadata", "eval_segments.csv"),
        input_format="auto")
    assert found.layout == "audioset"
    assert {i.split for i in found.items} == {"eval"}
    fsd = datasets.discover(os.path.join(
        _root(data_dir, "fsd50k"), "FSD50K.ground_truth", "eval.csv"),
        input_format="fsd50k")
    assert sorted(i.recording_id for i in fsd.items) == ["201", "202"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_auto_detects_each_layout(data_dir, layout):
    assert datasets.detect_format(_root(data_dir, layout)) == layout


def test_auto_falls_back_to_csv_and_refuses_two_layouts(data_dir, tmp_path):
    assert datasets.detect_format(str(tmp_path)) == "csv"
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 16000)
    found = datasets.discover(str(tmp_path), input_format="auto")
    assert found.layout == "csv" and found.info == {}
    both = tmp_path / "both"
    M.make_esc50(str(both), rows=M.esc50_rows(folds=1,
                                             per_class_per_fold=1))
    os.makedirs(both / "metadata")
    with open(both / "metadata" / "UrbanSound8K.csv", "w") as f:
        f.write("slice_file_name,fsID,start,end,salience,fold,classID,"
                "class\n")
    with pytest.raises(inputs.ExtractError, match="esc50, urbansound8k"):
        datasets.detect_format(str(both))


def test_unusable_metadata_is_named(data_dir, tmp_path):
    with pytest.raises(inputs.ExtractError, match=r"meta/esc50\.csv"):
        datasets.discover(str(tmp_path), input_format="esc50")
    bad = tmp_path / "eval_segments.csv"
    bad.write_text("# YTID, start_seconds, end_seconds, positive_labels\n"
                   "AAAAAAAAAAA, 0.000, 10.000, \"/m/x\"\n"
                   "BBBBBBBBBBB, 0.000\n")
    with pytest.raises(inputs.ExtractError, match="eval_segments.csv line 3"):
        datasets.discover(str(bad), input_format="audioset")


@pytest.mark.parametrize("stem,keys", [
    ("AAAAAAAAAAA", [("AAAAAAAAAAA", None)]),
    ("YAAAAAAAAAAA", [("AAAAAAAAAAA", None)]),
    ("Yyyyyyyyyyy", [("Yyyyyyyyyyy", None)]),
    ("-_a-_a-_a-_", [("-_a-_a-_a-_", None)]),
    ("AAAAAAAAAAA_30000", [("AAAAAAAAAAA", 30000.0)]),
    ("AAAAAAAAAAA_30.000_40.000", [("AAAAAAAAAAA", 30.0)]),
    ("YAAAAAAAAAAA_30", [("AAAAAAAAAAA", 30.0)]),
    ("AAAAAAAAAAAA", []),  # 12 characters and no Y prefix.
    ("short", []),
    ("AAAAAAAAAAA_x", []),
])
def test_audioset_file_names(stem, keys):
    assert datasets.parse_audioset_name(stem) == keys


def test_audioset_matching_prefers_the_named_start():
    entries = sorted([(None, "/a/X.wav"), (30000.0, "/a/X_30000.wav"),
                      (50.0, "/a/X_50.wav")],
                     key=lambda e: (e[0] is None, e[0] or 0.0, e[1]))
    assert datasets.match_audioset_file(entries, 30.0) == "/a/X_30000.wav"
    assert datasets.match_audioset_file(entries, 50.0) == "/a/X_50.wav"
    assert datasets.match_audioset_file(entries, 70.0) == "/a/X.wav"
    assert datasets.match_audioset_file(entries[-1:], 70.0) == "/a/X.wav"
    assert datasets.match_audioset_file([(1.0, "/a/X_1.wav")], 70.0) is None


# ------------------------------------------------------------ the audio ---


def test_open_segment_cuts_only_files_longer_than_the_segment(tmp_path):
    wave = np.sin(np.arange(16000 * 8) * 0.01).astype(np.float32)
    long_file = str(tmp_path / "video.wav")
    sf.write(long_file, wave, 16000, subtype="FLOAT")
    got = audio_io.load_audio(long_file, start_seconds=3.0, end_seconds=5.0)
    np.testing.assert_array_equal(got, wave[48000:80000])
    clip = str(tmp_path / "clip.wav")
    sf.write(clip, wave[:32000], 16000, subtype="FLOAT")
    # A 2 s file for the segment [30, 32]: the clip itself, read whole.
    np.testing.assert_array_equal(
        audio_io.load_audio(clip, start_seconds=30.0, end_seconds=32.0),
        wave[:32000])
    # An 8 s "video" whose segment starts after its end.
    with pytest.raises(audio_io.AudioError, match="empty"):
        audio_io.load_audio(long_file, start_seconds=9.0, end_seconds=11.0)


# ----------------------------------------------------------- extraction ---


def _windows(seconds):
    return frontend.num_windows_for_samples(int(round(seconds * C.SAMPLE_RATE)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_records_match_the_metadata(extracted, layout):
    corpus, summary, examples = extracted[layout]
    want = EXPECTED[layout]
    with open(os.path.join(corpus, records.MANIFEST_NAME)) as f:
        manifest = json.load(f)
    assert manifest["classes"] == want["classes"]
    assert manifest["dataset"]["layout"] == layout
    assert manifest["dataset"]["missing_files"] == want["missing"]
    assert manifest["config"]["input_format"] == layout
    assert summary["totals"]["failed"] == 0
    got = {}
    for ex in examples:
        d = records.example_to_numpy(ex)
        got[d[records.RECORDING_ID]] = (
            sorted(want["classes"][c] for c in d[records.LABELS]),
            d[records.SPLIT], int(d[records.NUM_WINDOWS]))
    assert got == {rid: (labels, split, _windows(seconds)) for rid, (
        labels, split, seconds) in want["records"].items()}
    assert summary["totals"]["audio_seconds"] == pytest.approx(
        sum(s for _, _, s in want["records"].values()), abs=1e-3)


def test_whole_video_is_cut_to_its_segment(extracted, data_dir):
    _, _, examples = extracted["audioset"]
    ex = next(e for e in examples if records.example_to_numpy(e)[
        records.RECORDING_ID] == "Bb-_bbbbbbb_3000")
    windows = records.example_to_numpy(ex)[records.LOGMEL]
    # Reference: the file's samples of [3 s, 5 s), resampled in one go.
    data, rate = sf.read(os.path.join(_root(data_dir, "audioset"),
                                      M.AUDIOSET_FILES["Bb-_bbbbbbb"][0]),
                         dtype="float32")
    cut = soxr.resample(data[3 * rate:5 * rate], rate, C.SAMPLE_RATE,
                        quality="HQ").astype(np.float32)
    want = frontend.waveform_to_windows(tf.constant(cut)).numpy()
    assert windows.shape == want.shape == (2,) + C.WINDOW_SHAPE
    np.testing.assert_allclose(windows, want, atol=2e-3)


def test_strong_labels_become_window_labels(extracted):
    _, _, examples = extracted["audioset"]
    names = EXPECTED["audioset"]["classes"]
    mid_names = dict([(m, n) for _, m, n in M.AUDIOSET_CLASSES] +
                     [M.AUDIOSET_STRONG_ONLY])
    for ex in examples:
        rid = records.example_to_numpy(ex)[records.RECORDING_ID]
        labels = records.example_window_labels(ex)
        if rid != "EEEEEEEEEEE_2000":
            assert labels is None
            continue
        span = C.MIN_WINDOW_SAMPLES / C.SAMPLE_RATE
        want = []
        for w in range(len(labels)):
            lo, hi = w * C.WINDOW_SECONDS, w * C.WINDOW_SECONDS + span
            want.append(sorted({mid_names[m] for s, a, b, m in
                                M.AUDIOSET_STRONG if a < hi and b > lo}))
        assert [sorted(names[c] for c in w) for w in labels] == want
        assert want == [["Speech"], ["Squeak"]]


def test_plain_items_keep_their_fingerprint_fields_and_plans_round_trip():
    plain = inputs.InputItem("/a.wav", "a", (1,), "train")
    assert shards.item_fields(plain) == ["/a.wav", "a", [1], "train"]
    beam_runner = pytest.importorskip("triplet_audio.features.beam_runner")
    items = (plain, inputs.InputItem("/v.flac", "v_3000", (0, 2), "eval",
                                     start=3.0, end=5.0,
                                     events=((0.0, 0.5, 1),)))
    task = shards.make_shard_tasks(items, 1, True, "/out")[0]
    assert beam_runner.task_from_json(beam_runner.task_to_json(task)) == task


# ------------------------------------------------------------ embedding ---


def test_embed_reads_a_layout_and_lists_the_missing(data_dir, tmp_path):
    out = str(tmp_path / "as")
    summary = embed.embed_corpus(_root(data_dir, "audioset"), out,
                                 representation="logmel",
                                 input_format="auto")
    emb = embeddings_io.read_embeddings(out)
    want = EXPECTED["audioset"]
    assert list(emb.class_names) == want["classes"]
    got = {sid: (sorted(emb.class_names[emb.labels[k].astype(bool)]),
                 split) for k, (sid, split) in
           enumerate(zip(emb.segment_ids, emb.split))}
    assert got == {rid: (labels, split) for rid, (labels, split, _) in
                   want["records"].items()}
    counts = np.bincount(emb.segment_index)
    assert {sid: int(n) for sid, n in zip(emb.segment_ids, counts)} == {
        rid: _windows(s) for rid, (_, _, s) in want["records"].items()}
    assert emb.metadata["dataset"]["missing_files"] == want["missing"]
    assert summary["failures"] == []


def test_flags_take_input_format_and_the_probe_needs_no_eval(
        data_dir, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")

    def run(binary, *args):
        return subprocess.run(
            [sys.executable, os.path.join(REPO, "bin", binary)] + list(args),
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
            check=False)

    # The flags, parsed as the binaries parse them (no TensorFlow: quick).
    flags_check = subprocess.run([sys.executable, "-c", """
from triplet_audio.cli import commands, flagdefs
for name in ("extract_features", "embed", "evaluate"):
    commands.define_flags(name)
F = flagdefs.FLAGS
F(["x", "--input=i", "--output_dir=o", "--input_format=auto", "--train=t",
   "--protocol=linear_probe", "--output=e.npz", "--representation=logmel"])
assert flagdefs.extract_config_from_flags().input_format == "auto"
assert flagdefs.embed_args_from_flags()["input_format"] == "auto"
assert flagdefs.evaluate_args_from_flags()["eval_path"] is None
F["protocol"].value = "paper"
try:
    flagdefs.evaluate_args_from_flags()
    raise SystemExit("paper without --eval accepted")
except ValueError as e:
    assert "--eval" in str(e), e
print("ok")
"""], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        check=False)
    assert flags_check.stdout.strip() == "ok", flags_check.stderr[-2000:]
    emb = str(tmp_path / "us8k.npz")
    embed.embed_corpus(_root(data_dir, "urbansound8k"), emb,
                       representation="logmel", input_format="urbansound8k")
    evaluated = run("evaluate", "--train=" + emb, "--protocol=linear_probe",
                    "--probe_classifiers=linear", "--probe_l2=0.01",
                    "--output_dir=" + str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    with open(tmp_path / "eval" / "results.json") as f:
        probe = json.load(f)["linear_probe"]
    assert probe["scheme"] == "folds" and probe["metric"] == "accuracy"
    assert [p["test"] for p in probe["parts"]] == [
        "fold%d" % k for k in range(1, 11)]
    assert "Linear probe" in (tmp_path / "eval" / "report.md").read_text()
