"""Tests of triplet_audio.demo.runner.synthetic, the embedded labelled corpus."""

import csv
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # A scikit-learn dependency.

from absl import flags
from triplet_audio import constants as C
from triplet_audio.config import corpus as corpus_config
from triplet_audio.config import fields
from triplet_audio.demo import synthetic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 3
NUM_TRAIN = 28  # Two recordings per class as first class: every class shows.
NUM_EVAL = 14
DURATION_S = 2.0


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # These small matrix products and fits are slowed several-fold, not sped
    # up, by BLAS threads competing for a few shared cores.
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = synthetic.generate_corpus(str(out), NUM_TRAIN, NUM_EVAL,
                                        seed=SEED, duration_s=DURATION_S)
    return str(out), summary


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "labels", "split"]
        return list(reader)


def _tree_digests(root):
    digests = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return digests


# ------------------------------------------------------------ corpus files


def test_counts_durations_format_and_labels(corpus):
    out, summary = corpus
    rows = _read_csv(os.path.join(out, "labels.csv"))
    train = _read_csv(os.path.join(out, "train.csv"))
    eval_ = _read_csv(os.path.join(out, "eval.csv"))
    assert len(train) == NUM_TRAIN and len(eval_) == NUM_EVAL
    assert rows == train + eval_
    assert {r["split"] for r in train} == {"train"}
    assert {r["split"] for r in eval_} == {"eval"}
    assert len({r["path"] for r in rows}) == len(rows)
    for row in rows:
        labels = row["labels"].split(";")
        assert 1 <= len(labels) <= synthetic.MAX_CLASSES_PER_RECORDING
        assert len(set(labels)) == len(labels)
        assert set(labels) <= set(synthetic.CLASS_NAMES)
        info = sf.info(os.path.join(out, row["path"]))
        assert info.samplerate == C.SAMPLE_RATE
        assert info.channels == 1
        assert info.subtype == "PCM_16"
        assert info.frames == round(DURATION_S * C.SAMPLE_RATE)
    assert summary["classes"] == list(synthetic.CLASS_NAMES)
    for split, split_rows in (("train", train), ("eval", eval_)):
        for name, count in summary["class_counts"][split].items():
            assert count == sum(name in r["labels"].split(";")
                                for r in split_rows)


def test_every_class_in_train_and_eval(corpus):
    out, _ = corpus
    for split in synthetic.SPLITS:
        present = set()
        for row in _read_csv(os.path.join(out, f"{split}.csv")):
            present.update(row["labels"].split(";"))
        assert present == set(synthetic.CLASS_NAMES), split


def test_recordings_are_not_silent_and_not_clipped(corpus):
    out, _ = corpus
    for row in _read_csv(os.path.join(out, "labels.csv"))[:6]:
        pcm, _ = sf.read(os.path.join(out, row["path"]), dtype="int16")
        peak = np.abs(pcm.astype(np.int32)).max()
        assert 100 < peak <= 0.98 * 32767 + 1


def test_train_and_eval_disjoint(corpus):
    out, _ = corpus
    digests = {}
    for split in synthetic.SPLITS:
        digests[split] = set()
        for row in _read_csv(os.path.join(out, f"{split}.csv")):
            pcm, _ = sf.read(os.path.join(out, row["path"]), dtype="int16")
            digests[split].add(hashlib.sha256(pcm.tobytes()).hexdigest())
    assert len(digests["train"]) == NUM_TRAIN
    assert len(digests["eval"]) == NUM_EVAL
    assert not digests["train"] & digests["eval"]


def test_same_seed_same_bytes_with_parallel_workers(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    synthetic.generate_corpus(str(again), NUM_TRAIN, NUM_EVAL, seed=SEED,
                              duration_s=DURATION_S, workers=2)
    first, second = _tree_digests(out), _tree_digests(str(again))
    # + 3 label CSVs, events.csv and corpus.json.
    assert len(first) == NUM_TRAIN + NUM_EVAL + 5
    assert first == second


def test_different_seed_differs(corpus, tmp_path):
    out, _ = corpus
    other = tmp_path / "other"
    synthetic.generate_corpus(str(other), 2, 1, seed=SEED + 1,
                              duration_s=DURATION_S)
    for rel in ("audio/train/train_00000.wav", "audio/train/train_00001.wav",
                "audio/eval/eval_00000.wav"):
        with open(os.path.join(out, rel), "rb") as f:
            ours = f.read()
        with open(os.path.join(str(other), rel), "rb") as f:
            theirs = f.read()
        assert ours != theirs, rel


def test_one_recording_regenerated_alone(corpus):
    out, _ = corpus
    rows = {r["path"]: r for r in _read_csv(os.path.join(out, "labels.csv"))}
    for split, index in (("train", 17), ("eval", 5)):
        rel = f"audio/{split}/{split}_{index:05d}.wav"
        pcm, labels = synthetic.corpus_recording(SEED, split, index,
                                                 DURATION_S)
        written, _ = sf.read(os.path.join(out, rel), dtype="int16")
        np.testing.assert_array_equal(pcm, written)
        assert ";".join(labels) == rows[rel]["labels"]


def test_default_duration_and_exact_sample_counts():
    pcm, labels = synthetic.corpus_recording(0, "train", 0)
    assert pcm.dtype == np.int16
    assert pcm.shape == (round(synthetic.DEFAULT_DURATION_S * C.SAMPLE_RATE),)
    assert 1 <= len(labels) <= 3
    waveform, _ = synthetic.synthesize_recording(
        np.random.default_rng(0), 1.2345, classes=["siren"])
    assert waveform.shape == (19752,)  # round(1.2345 * 16000).


def test_num_classes_restricts_vocabulary():
    vocabulary = synthetic.vocabulary_for(4)
    assert vocabulary == synthetic.CLASS_NAMES[:4]
    seen = set()
    for index in range(8):
        _, labels = synthetic.corpus_recording(1, "train", index, 1.0,
                                               num_classes=4)
        assert set(labels) <= set(vocabulary)
        seen.update(labels)
    assert seen == set(vocabulary)


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 0}, {"num_classes": len(synthetic.CLASS_NAMES) + 1},
    {"seed": -1}, {"duration_s": 0.0}, {"num_train": -1},
    {"num_train": 0, "num_eval": 0}, {"workers": -1},
    {"corpus_version": 0}, {"corpus_version": 3}])
def test_generate_corpus_rejects_bad_arguments(kwargs, tmp_path):
    args = {"out_dir": str(tmp_path / "c"), "num_train": 1, "num_eval": 1}
    args.update(kwargs)
    with pytest.raises(ValueError):
        synthetic.generate_corpus(**args)
    assert not os.path.exists(args["out_dir"])


# ------------------------------------------------------------ versions

# sha256 of what the code before corpus versions existed wrote (computed with
# it, before version 2 was added): version 1 must keep writing exactly this.
_V1_RECORDINGS = {
    (0, "train", 0, 10.0, None): (
        "f2dfe3b58e16e9667431f3a5cbe9aec994c628f2653b269ca378a54d4d1dccd9",
        ("am_tone", "speech_like", "engine_hum")),
    (3, "train", 2, 4.0, 5): (
        "1e4dce1c96bc451b795989e7510cce2dae8cd97d7800d9e9712121e532975d2f",
        ("chirp", "impact", "click_train")),
    (1, "eval", 11, 2.5, 14): (
        "531038a82f425d9ea80a8a757bffc0dd144e58aa122880951721b9ecd18e1cc7",
        ("fm_warble", "rain")),
}
_V1_CORPUS = {  # generate_corpus(seed=2, 4 train, 3 eval, 3 s, 6 classes)
    "audio/eval/eval_00000.wav":
        "8fc354509745550ba532d6fe199618b4e1ed08d56bc0c7f2d683565d9b17dea3",
    "audio/eval/eval_00001.wav":
        "0f5d39e5bb0c230ab9c6db9ae2ecdaf846807bdeedf260fa5a823988543d1618",
    "audio/eval/eval_00002.wav":
        "cc188c5642b70eee1cfc7a4144dc680cbdbc7575e3b60394e3c884c0515f6289",
    "audio/train/train_00000.wav":
        "461438fbaaf77ed61436e88cce3f38580a97147a84b4ae645a2e045c871bb178",
    "audio/train/train_00001.wav":
        "9e0691098c302a8a48cb6d8077bba43035fb05f0befb206f2f4cf28aafa6347d",
    "audio/train/train_00002.wav":
        "0dfcd69dbbd15884c9e35c1ca458264ef845a1fb7ed26aa4b75de2208a1d3a6a",
    "audio/train/train_00003.wav":
        "7f5912c1daad3555bfe64bcfc0748df522284d997af68ac10e063e7962eee517",
    "eval.csv":
        "8e2f4d92be179a0e88364c2be5683a74a30221453219fed2bda3d736150a493f",
    "labels.csv":
        "f69908f96d1a9cdb908798b2782799b361d6a204bfe4a6710657000f205a703f",
    "train.csv":
        "935beeb307dc4cb8d95f539aa5a07ed7405d163275bbaf36fcb34509d2efabb4",
}


def test_version_1_writes_the_first_demo_corpus_byte_for_byte(tmp_path):
    for (seed, split, index, duration, num_classes), (digest, labels) in (
            _V1_RECORDINGS.items()):
        pcm, got = synthetic.corpus_recording(seed, split, index, duration,
                                              num_classes, corpus_version=1)
        assert hashlib.sha256(pcm.tobytes()).hexdigest() == digest
        assert got == labels
    out = tmp_path / "v1"
    synthetic.generate_corpus(str(out), 4, 3, seed=2, duration_s=3.0,
                              num_classes=6, corpus_version=1)
    digests = _tree_digests(str(out))
    assert {k: digests[k] for k in _V1_CORPUS} == _V1_CORPUS
    with open(out / "corpus.json", encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["config"]["corpus_version"] == 1
    assert "environments" not in manifest


def test_version_2_has_version_1_events_in_other_conditions():
    for split, index in (("train", 3), ("eval", 8)):
        pcm1, scene1 = synthetic.corpus_scene(SEED, split, index, 3.0,
                                              corpus_version=1)
        pcm2, scene2 = synthetic.corpus_scene(SEED, split, index, 3.0,
                                              corpus_version=2)
        assert scene2.labels == scene1.labels
        assert scene2.events == scene1.events and scene1.events
        assert scene1.environments == () and scene2.environments
        assert pcm1.shape == pcm2.shape and not np.array_equal(pcm1, pcm2)
        again, _ = synthetic.corpus_scene(SEED, split, index, 3.0,
                                          corpus_version=2)
        np.testing.assert_array_equal(pcm2, again)
    with pytest.raises(ValueError, match="corpus_version"):
        synthetic.corpus_recording(SEED, "train", 0, 1.0, corpus_version=3)


def test_environments_come_from_one_pool_per_seed():
    pool = synthetic.environment_pool(SEED)
    assert len(pool) == synthetic.ENVIRONMENT_POOL_SIZE
    assert synthetic.environment_pool(SEED) is pool  # Drawn once.
    other = synthetic.environment_pool(SEED + 1)
    assert [e.describe() for e in pool] != [e.describe() for e in other]
    assert any(e.rt60_s == 0.0 for e in pool)  # Some are outdoors.
    assert any(e.rt60_s > 0.0 and len(e.rir) > 1 for e in pool)
    used, switches = {}, []
    for index in range(24):
        _, scene = synthetic.corpus_scene(SEED, "train", index, 1.5,
                                          num_classes=4)
        assert 1 <= len(scene.environments) <= 2
        assert len(set(scene.environments)) == len(scene.environments)
        for env in scene.environments:
            used[env] = used.get(env, 0) + 1
        if scene.switch_s is not None:
            switches.append(scene.switch_s / 1.5)
    # Many recordings per environment; sometimes a second one partway.
    assert max(used.values()) >= 3
    assert switches and all(synthetic.SWITCH_RANGE[0] <= s <=
                            synthetic.SWITCH_RANGE[1] for s in switches)


def test_events_csv_lists_every_occurrence(corpus):
    out, _ = corpus
    events = synthetic.read_events_csv(os.path.join(out,
                                                    synthetic.EVENTS_CSV))
    rows = _read_csv(os.path.join(out, "labels.csv"))
    assert set(events) == {r["path"] for r in rows}
    _, scene = synthetic.corpus_scene(SEED, "eval", 5, DURATION_S)
    expected = sorted((name, start / C.SAMPLE_RATE, stop / C.SAMPLE_RATE)
                      for name, start, stop in scene.events)
    got = events["audio/eval/eval_00005.wav"]
    assert [e[0] for e in got] == [e[0] for e in sorted(
        expected, key=lambda e: (e[1], e[2]))]
    np.testing.assert_allclose(sorted(e[1:] for e in got),
                               sorted(e[1:] for e in expected), atol=1e-5)
    assert {e[0] for e in got} == set(
        rows[NUM_TRAIN + 5]["labels"].split(";"))


# ------------------------------------------------------------ events


def _centroid_hz(x):
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / C.SAMPLE_RATE)
    return float((power * freqs).sum() / power.sum())


@pytest.mark.parametrize("name", synthetic.CLASS_NAMES)
def test_event_is_unit_rms_and_varies_between_draws(name):
    events = [synthetic.synthesize_event(name, np.random.default_rng([9, i]))
              for i in range(6)]
    centroids, lengths = [], set()
    for event in events:
        assert event.dtype == np.float32 and event.ndim == 1
        assert np.all(np.isfinite(event))
        assert C.SAMPLE_RATE * 0.05 < len(event) < C.SAMPLE_RATE * 5
        np.testing.assert_allclose(np.sqrt(np.mean(np.square(event))), 1.0,
                                   rtol=1e-3)
        centroids.append(_centroid_hz(event.astype(np.float64)))
        lengths.add(len(event))
    # A class is a distribution, not one sound: spectra and lengths move.
    assert max(centroids) / min(centroids) > 1.1
    assert len(lengths) > 1


def test_event_same_rng_state_same_event():
    a = synthetic.synthesize_event("speech_like", np.random.default_rng(4))
    b = synthetic.synthesize_event("speech_like", np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


def test_unknown_class_rejected():
    with pytest.raises(ValueError):
        synthetic.synthesize_event("cat", np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthetic.synthesize_recording(np.random.default_rng(0), 1.0,
                                       classes=["cat"])


def test_enough_distinct_classes_with_snake_case_names():
    assert len(synthetic.CLASS_NAMES) >= 12
    assert len(set(synthetic.CLASS_NAMES)) == len(synthetic.CLASS_NAMES)
    for name in synthetic.CLASS_NAMES:
        assert name.replace("_", "").isalpha() and name == name.lower()


# ------------------------------------------------------------ separability


def _mel_matrix():
    # HTK mel triangles, as the TF front end builds them (no TF needed here).
    def hz_to_mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)
    freqs = np.fft.rfftfreq(C.FFT_LENGTH, 1.0 / C.SAMPLE_RATE)
    edges = np.linspace(hz_to_mel(C.MEL_LOWER_HZ), hz_to_mel(C.MEL_UPPER_HZ),
                        C.NUM_MEL_BANDS + 2)
    mel = hz_to_mel(freqs)[:, None]
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    return np.maximum(0.0, np.minimum((mel - lower) / (centre - lower),
                                      (upper - mel) / (upper - centre)))


_MEL = _mel_matrix()
_HANN = 0.5 - 0.5 * np.cos(
    2.0 * np.pi * np.arange(C.STFT_WINDOW_SAMPLES) / C.STFT_WINDOW_SAMPLES)


def _logmel(x):
    frames = np.lib.stride_tricks.sliding_window_view(
        x, C.STFT_WINDOW_SAMPLES)[::C.STFT_HOP_SAMPLES]
    magnitude = np.abs(np.fft.rfft(frames * _HANN, C.FFT_LENGTH, axis=1))
    return np.log(magnitude @ _MEL + C.LOG_OFFSET)


def _clip_features(x):
    logmel = _logmel(x)
    flux = np.abs(np.diff(logmel, axis=0))
    return np.concatenate([logmel.mean(0), logmel.std(0), flux.mean(0),
                           logmel.max(0)])


def _accuracy(features, labels, held_out):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(features[~held_out], labels[~held_out])
    return model.score(features[held_out], labels[held_out])


def test_classes_separable_by_logmel():
    clip = C.SAMPLE_RATE  # 1 s clips, each with one event.
    features, labels = [], []
    for c, name in enumerate(synthetic.CLASS_NAMES):
        for i in range(36):
            rng = np.random.default_rng([11, c, i])
            event = synthetic.synthesize_event(name, rng).astype(np.float64)
            x = rng.standard_normal(clip) * 1e-3  # A floor, so log is finite.
            start = rng.integers(0, max(1, clip - len(event)))
            piece = event[:clip - start]
            x[start:start + len(piece)] += piece
            features.append(_clip_features(x))
            labels.append(c)
    labels = np.array(labels)
    held_out = np.arange(len(labels)) % 3 == 0
    assert _accuracy(np.array(features), labels, held_out) > 0.8


def test_classes_not_separable_by_energy_alone():
    features, labels = [], []
    for c, name in enumerate(synthetic.CLASS_NAMES):
        for i in range(24):
            waveform, present = synthetic.synthesize_recording(
                np.random.default_rng([12, c, i]), 2.0, classes=[name])
            assert present == (name,)
            energy = np.mean(np.square(waveform.astype(np.float64)))
            features.append([np.log(energy)])
            labels.append(c)
    labels = np.array(labels)
    held_out = np.arange(len(labels)) % 3 == 0
    assert _accuracy(np.array(features), labels, held_out) < 0.5


# ------------------------------------------------------------ binary


def _run_make_corpus(*args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, os.path.join("bin", "make_corpus"), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        check=False)


def test_make_corpus_binary(tmp_path):
    out = tmp_path / "bin_corpus"
    result = _run_make_corpus(f"--output_dir={out}", "--num_train=2",
                              "--num_eval=1", "--duration_s=1", "--seed=5")
    assert result.returncode == 0, result.stderr
    rows = _read_csv(out / "labels.csv")
    assert [r["split"] for r in rows] == ["train", "train", "eval"]
    pcm, labels = synthetic.corpus_recording(5, "eval", 0, 1.0)
    written, _ = sf.read(out / rows[2]["path"], dtype="int16")
    np.testing.assert_array_equal(pcm, written)
    assert rows[2]["labels"] == ";".join(labels)


@pytest.mark.parametrize("args", [
    (), ("--output_dir={out}", "--duration_s=-1"),
    ("--output_dir={out}", "--num_classes=99")])
def test_make_corpus_bad_flags_exit_nonzero_with_one_line(args, tmp_path):
    out = tmp_path / "never"
    result = _run_make_corpus(*(a.format(out=out) for a in args))
    assert result.returncode != 0
    assert not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_corpus: "), lines


def test_make_corpus_unknown_version_exits_nonzero_with_one_line(tmp_path):
    out = tmp_path / "never"
    result = _run_make_corpus(f"--output_dir={out}", "--corpus_version=3")
    assert result.returncode != 0
    assert not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--corpus_version=3" in lines[0], lines


def test_make_corpus_help_lists_every_flag():
    result = _run_make_corpus("--help")  # absl exits 1 after --help.
    for flag in ("output_dir", "num_train", "num_eval", "seed", "duration_s",
                 "num_classes", "workers", "corpus_version"):
        assert f"--{flag}:" in result.stdout, flag


def test_corpus_flags_are_derived_from_the_config():
    assert synthetic.CorpusConfig is corpus_config.CorpusConfig
    assert synthetic.CLASS_NAMES is corpus_config.CLASS_NAMES
    values = flags.FlagValues()
    fields.define_flags(corpus_config.CorpusConfig, values)
    assert set(values) == {"output_dir", "num_train", "num_eval", "seed",
                           "duration_s", "num_classes", "workers",
                           "corpus_version"}
    assert values["corpus_version"].default == 2
    assert values["num_classes"].default == 0  # None: every class.
    values(["prog"])
    config = fields.config_from_flags(corpus_config.CorpusConfig, values)
    assert config == corpus_config.CorpusConfig()
    with pytest.raises(ValueError, match="--output_dir is required"):
        config.require_out_dir()
    values(["prog", "--output_dir=d", "--num_classes=3", "--num_train=5"])
    config = fields.config_from_flags(corpus_config.CorpusConfig, values)
    assert (config.out_dir, config.num_classes, config.num_train) == (
        "d", 3, 5)
    with pytest.raises(ValueError, match="^--duration_s: must be a positive"):
        corpus_config.CorpusConfig(duration_s=float("inf"))


def test_corpus_json_holds_the_content_settings(corpus):
    out, _ = corpus
    with open(os.path.join(out, "corpus.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["config"] == {"num_train": NUM_TRAIN,
                                  "num_eval": NUM_EVAL, "seed": SEED,
                                  "duration_s": DURATION_S,
                                  "num_classes": None, "corpus_version": 2}
    pool = synthetic.environment_pool(SEED)
    assert manifest["environments"] == [
        json.loads(json.dumps(e.describe())) for e in pool]
    counts = manifest["environment_counts"]
    assert sum(counts["train"]) >= NUM_TRAIN
    # Shared: more recordings than environments in use.
    assert sum(1 for c in counts["train"] if c) < NUM_TRAIN
    assert not [n for n in os.listdir(out) if n.endswith(".incomplete")]


def test_corpus_flags_coexist_with_extract_flags():
    # A process may define several binaries' groups; shared names (such as
    # --output_dir and --workers) must be defined once, not fail.
    code = ("from triplet_audio.cli import flagdefs as f; "
            "f.define_extract_flags(); f.define_corpus_flags(); "
            "f.FLAGS(['x', '--output_dir=d', '--num_train=3']); "
            "print(f.corpus_config_from_flags())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "'num_train': 3" in result.stdout
    assert "'out_dir': 'd'" in result.stdout
