"""What the audio fuzzing (benchmarks/soak_parts/audio_fuzz.py) found.

Each regression test builds the kind of file that broke `audio_io`; the last
test runs a small fuzzing round in-process, where anything but an
`AudioError` or finite samples would be a new finding.
"""

import os
import sys

import numpy as np
import pytest
import soundfile as sf

from triplet_audio.features import audio_io
from triplet_audio.features import inputs
from triplet_audio.features import shards

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
from soak_parts import audio_fuzz  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _cut_flac(tmp_path, keep_fraction):
    rate = 48000
    t = np.arange(rate) / float(rate)
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = str(tmp_path / "stereo24.flac")
    sf.write(path, np.stack([x, x], axis=1), rate, subtype="PCM_24")
    with open(path, "rb") as f:
        data = f.read()
    cut = str(tmp_path / "cut.flac")
    with open(cut, "wb") as f:
        f.write(data[:int(len(data) * keep_fraction)])
    return cut


def test_segment_of_a_flac_that_cannot_seek_is_truncated(tmp_path):
    # Found: seeking to the segment failed, and so did the fallback seek
    # back to the start; libsndfile's RuntimeError escaped audio_io (and
    # would have ended an in-process extraction).
    path = _cut_flac(tmp_path, 0.1)
    with pytest.raises(audio_io.AudioError) as caught:
        audio_io.load_audio(path, start_seconds=0.2, end_seconds=0.4)
    assert caught.value.kind == audio_io.KIND_TRUNCATED
    assert "cannot seek to frame 9600" in caught.value.detail
    item = inputs.InputItem(path, "cut", start=0.2, end=0.4)
    for isolate in (False, True):
        (_, result), = shards.process_files([item], isolate_decoder=isolate)
        assert result.status == shards.STATUS_FAILED
        assert result.reason.startswith(audio_io.KIND_TRUNCATED +
                                        ": cannot seek")


@pytest.mark.parametrize("rate,channels", [(22050, 1), (16000, 2)])
def test_finite_samples_that_overflow_are_non_finite(tmp_path, rate,
                                                     channels):
    # Found: a float WAV whose samples are finite but near the float32
    # limit gave Inf blocks (the resampler's sum at 22.05 kHz, the channel
    # mean in stereo) instead of an AudioError.
    x = np.full((rate, channels), 0.25, np.float32)
    huge = np.float32(3e38)
    if channels == 1:  # Alternating signs: the filter's sum overflows.
        x[1000:1100, 0] = huge * np.tile(np.float32([1, -1]), 50)
    else:  # The same in both channels: their mean overflows.
        x[1000:1100] = huge
    path = str(tmp_path / "huge.wav")
    sf.write(path, x, rate, subtype="FLOAT")
    assert np.isfinite(sf.read(path, dtype="float32")[0]).all()
    with pytest.raises(audio_io.AudioError) as caught:
        audio_io.load_audio(path)
    assert caught.value.kind == audio_io.KIND_NON_FINITE
    assert "overflow" in caught.value.detail


def test_a_fuzzing_round_only_raises_audio_errors(tmp_path):
    rng = np.random.default_rng(17)
    sources, _ = audio_fuzz.write_sources(str(tmp_path / "sources"), rng)
    made = audio_fuzz.write_batch(str(tmp_path / "batch"), sources, rng, 0,
                                  180)
    kinds = set()
    for name in sorted(made):
        path = str(tmp_path / "batch" / name)
        for segment in ((None, None), (0.2, 0.4)):
            try:
                samples = audio_io.load_audio(path, start_seconds=segment[0],
                                              end_seconds=segment[1])
            except audio_io.AudioError as e:
                kinds.add(e.kind)
                continue
            assert np.isfinite(samples).all(), name
    assert {k for k, _ in made.values()} == set(audio_fuzz.MUTATIONS)
    assert {audio_io.KIND_EMPTY, audio_io.KIND_TRUNCATED,
            audio_io.KIND_UNREADABLE} <= kinds
