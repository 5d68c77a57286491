"""Tests of triplet_audio.demo.shortcut, the background probe."""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits  # A scikit-learn dependency.

from triplet_audio import constants as C
from triplet_audio.demo import shortcut
from triplet_audio.demo import synthetic


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # Small fits are slowed, not sped up, by BLAS threads on shared cores.
    with threadpool_limits(limits=1):
        yield


def test_event_free_frames_leave_out_widened_spans():
    # Frame f covers [f * 0.01, f * 0.01 + 0.025) s.
    free = shortcut.event_free_frames(100, [(0.30, 0.40)], pre_s=0.02,
                                      post_s=0.1)
    # Busy: frames ending after 0.28 s and starting before 0.50 s.
    busy = np.flatnonzero(~free)
    assert busy[0] == 26 and busy[-1] == 49
    assert shortcut.event_free_frames(10, []).all()
    assert not shortcut.event_free_frames(10, [(0.0, 1.0)]).any()


def test_examples_are_windows_with_enough_free_frames():
    frames = C.WINDOW_FRAMES
    logmel = np.zeros((3 * frames + 5, 4), np.float32)
    logmel[:, 0] = np.arange(len(logmel))
    free = np.zeros(len(logmel), bool)
    free[:shortcut.MIN_FREE_FRAMES] = True            # window 0: enough
    free[frames:frames + shortcut.MIN_FREE_FRAMES - 1] = True  # 1: too few
    free[2 * frames:] = True                          # 2: all (+ the tail)
    features, windows = shortcut.background_examples(logmel, free)
    np.testing.assert_array_equal(windows, [0, 2])
    np.testing.assert_allclose(features[:, 0], [
        (shortcut.MIN_FREE_FRAMES - 1) / 2.0, 2 * frames + (frames - 1) / 2])
    empty, none = shortcut.background_examples(logmel, np.zeros_like(free))
    assert empty.shape == (0, 4) and none.shape == (0,)


def test_split_windows():
    windows = np.array([0, 2, 3, 7, 8])
    np.testing.assert_array_equal(
        shortcut.split_windows(windows, "interleaved", 10),
        [True, False, True, False, True])
    np.testing.assert_array_equal(
        shortcut.split_windows(windows, "halves", 10),
        [True, True, True, False, False])
    with pytest.raises(ValueError, match="protocol"):
        shortcut.split_windows(windows, "random", 10)


def test_probe_names_separable_recordings_and_not_noise():
    rng = np.random.default_rng(0)
    recordings = np.repeat(np.arange(10), 6)
    fit = np.tile([True, False], 30)
    centres = rng.normal(0.0, 5.0, (10, 8))
    separable = centres[recordings] + rng.normal(0.0, 0.1, (60, 8))
    result = shortcut.probe(separable, recordings, fit)
    assert result["accuracy"] == 1.0
    assert (result["recordings"], result["fit_windows"],
            result["test_windows"], result["chance"]) == (10, 30, 30, 0.1)
    noise = rng.normal(0.0, 1.0, (60, 8))
    assert shortcut.probe(noise, recordings, fit)["accuracy"] < 0.4
    # Only recordings with examples on both sides count.
    alone = shortcut.probe(separable[:7], recordings[:7], fit[:7])
    assert alone["recordings"] == 1 and alone["accuracy"] is None


def test_version_2_hides_the_recording_that_version_1_gives_away(tmp_path):
    # The same events (same seed) under both versions' recording conditions.
    results = {}
    for version in (1, 2):
        out = tmp_path / ("v%d" % version)
        synthetic.generate_corpus(str(out), 48, 0, seed=0, duration_s=6.0,
                                  num_classes=6, corpus_version=version)
        results[version] = shortcut.measure(str(out))
    v1, v2 = results[1], results[2]
    assert (v1["corpus_version"], v2["corpus_version"]) == (1, 2)
    assert v1["recordings"] == 48 and v1["windows"] == 48 * 6
    assert 0 < v1["usable_windows"] < v1["windows"]
    for protocol in shortcut.PROTOCOLS:
        assert v1[protocol]["recordings"] >= 10
        # Measured: 1.0 and 1.0 against 0.59 and 0.37 (16-20 recordings; 16
        # environments for 48 recordings still leave some alone in theirs).
        assert v1[protocol]["accuracy"] >= 0.9, protocol
        assert v2[protocol]["accuracy"] < v1[protocol]["accuracy"] - 0.2, (
            protocol)
    text = shortcut.summary_markdown(v1)
    assert text.startswith("A linear probe (linear discriminant analysis")
    assert "names the train recording of **100%** of held-out" in text
    assert "Corpus version 1;" in text and "chance 5.0%" in text


def test_measure_refuses_a_directory_that_is_not_a_corpus(tmp_path):
    with pytest.raises(OSError):
        shortcut.measure(str(tmp_path))
    (tmp_path / "corpus.json").write_text("{}")
    with pytest.raises(ValueError, match="no corpus settings"):
        shortcut.measure(str(tmp_path))
    assert shortcut.summary_markdown({"error": "why"}) == (
        "Not measured: why.\n")
