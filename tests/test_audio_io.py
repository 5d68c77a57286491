"""Tests of audio_io: format/rate/channel handling, errors, streaming."""

import logging as std_logging
import math
import os

import numpy as np
import pytest
import soundfile as sf
import soxr

from testdata import make_fixtures as F
from triplet_audio.features import audio_io
from triplet_audio import constants as C
from triplet_audio.features import frontend

ALL_KINDS = (audio_io.KIND_UNREADABLE, audio_io.KIND_EMPTY,
             audio_io.KIND_TRUNCATED, audio_io.KIND_NON_FINITE,
             audio_io.KIND_ZERO_CHANNELS, audio_io.KIND_BAD_SAMPLE_RATE)


def _path(fixtures_dir, rel):
    return os.path.join(fixtures_dir, F.AUDIO_DIR, rel)


def _band_energies_db(waveform):
    """Per-band mel magnitude (dB) of the steady middle of a waveform."""
    logmel = frontend.waveform_to_logmel(waveform).numpy()
    # Skip 10 frames (0.1 s) at each end: resampler and encoder onsets.
    mel = np.exp(logmel[10:-10]) - C.LOG_OFFSET
    return 20.0 * np.log10(np.maximum(mel.mean(axis=0), 1e-12))


def test_tone_lands_in_the_same_mel_band_at_every_rate(fixtures_dir):
    # Reference: the same tone synthesised directly at 16 kHz.
    t = np.arange(C.SAMPLE_RATE) / float(C.SAMPLE_RATE)
    reference = _band_energies_db(
        (F.TONE_AMPLITUDE * np.sin(2 * np.pi * F.TONE_HZ * t)).astype(
            np.float32))
    ref_band = int(np.argmax(reference))
    for rate, rel in sorted(F.TONES.items()):
        path = _path(fixtures_dir, rel)
        assert sf.info(path).samplerate == rate
        waveform = audio_io.load_audio(path)
        assert waveform.dtype == np.float32 and waveform.ndim == 1
        # Resampled length: the input duration at 16 kHz.
        assert abs(waveform.shape[0] - F.TONE_SECONDS * C.SAMPLE_RATE) <= 2
        energies = _band_energies_db(waveform)
        assert int(np.argmax(energies)) == ref_band, rel
        assert abs(energies[ref_band] - reference[ref_band]) < 1.0, rel


def test_stereo_is_mixed_down_to_the_mean_of_channels(fixtures_dir):
    stereo = audio_io.load_audio(_path(fixtures_dir, F.STEREO))
    mono = audio_io.load_audio(_path(fixtures_dir, F.TONES[44100]))
    assert stereo.shape == mono.shape
    # The tone is in one channel only: the mix has half its amplitude.
    np.testing.assert_allclose(stereo, 0.5 * mono, atol=1e-6)
    assert np.abs(stereo).max() == pytest.approx(
        0.5 * F.TONE_AMPLITUDE, rel=0.02)


def test_fixtures_cover_every_error_kind():
    assert set(F.BAD) == set(ALL_KINDS)


@pytest.mark.parametrize(
    "kind,rel", [(k, r) for k, rels in sorted(F.BAD.items()) for r in rels] +
    [(audio_io.KIND_UNREADABLE, F.MISSING)])
def test_bad_file_raises_its_kind(fixtures_dir, kind, rel):
    path = _path(fixtures_dir, rel)
    with pytest.raises(audio_io.AudioError) as caught:
        audio_io.load_audio(path)
    assert caught.value.kind == kind
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert path in message and kind in message


def test_truncated_wav_declares_more_than_libsndfile_reads(fixtures_dir):
    # libsndfile clamps `frames` to the data present, so only its log shows
    # the truncation; the error must still come at open, before any audio.
    path = _path(fixtures_dir, F.BAD[audio_io.KIND_TRUNCATED][0])
    with pytest.raises(audio_io.AudioError, match="more data bytes"):
        audio_io.AudioStream(path)
    assert sf.info(path).frames < F.TONE_SECONDS * 8000


def test_truncated_mp3_is_caught_at_the_end_of_the_stream(fixtures_dir,
                                                          tmp_path):
    # MP3 frame counts are estimates, so a small shortfall is tolerated; a
    # file cut in half is not.
    data = open(_path(fixtures_dir, F.MP3), "rb").read()
    path = str(tmp_path / "cut.mp3")
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with audio_io.AudioStream(path) as stream:
        with pytest.raises(audio_io.AudioError) as caught:
            list(stream)
    assert caught.value.kind == audio_io.KIND_TRUNCATED
    assert 0 < stream.frames_read < stream.info.frames


def test_silent_file_is_valid_and_reported(fixtures_dir, caplog):
    path = _path(fixtures_dir, F.SILENT)
    with audio_io.AudioStream(path) as stream:
        samples = np.concatenate(list(stream))
        assert stream.silent
    assert samples.shape[0] == stream.info.frames * C.SAMPLE_RATE // (
        stream.info.sample_rate)
    assert not samples.any()
    with caplog.at_level(std_logging.WARNING):
        audio_io.load_audio(path)
    assert any("silent" in r.getMessage() for r in caplog.records)
    with audio_io.AudioStream(_path(fixtures_dir, F.TONES[8000])) as stream:
        list(stream)
        assert not stream.silent


@pytest.mark.parametrize("rel", [F.TONES[22050], F.TONES[44100], F.STEREO,
                                 F.LONG, F.MP3])
def test_streaming_equals_whole_file_resampling(fixtures_dir, rel):
    path = _path(fixtures_dir, rel)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    whole = (mono if rate == C.SAMPLE_RATE else
             soxr.resample(mono, rate, C.SAMPLE_RATE,
                           quality=audio_io.RESAMPLE_QUALITY))
    # Blocks much smaller than the file, not dividing it evenly.
    with audio_io.AudioStream(path, block_frames=997) as stream:
        blocks = list(stream)
    assert len(blocks) > 3
    streamed = np.concatenate(blocks)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    # And the convenience loader is the same stream.
    np.testing.assert_allclose(audio_io.load_audio(path), whole, atol=1e-6)


def test_long_file_is_read_block_by_block(tmp_path):
    rate, seconds, block = 8000, 40, 4096
    path = str(tmp_path / "long.wav")
    with sf.SoundFile(path, "w", samplerate=rate, channels=2,
                      subtype="PCM_16") as f:
        rng = np.random.default_rng(0)
        for _ in range(seconds):
            f.write(0.1 * rng.standard_normal((rate, 2)))
    frames = rate * seconds
    out_per_block = math.ceil(block * C.SAMPLE_RATE / rate)
    with audio_io.AudioStream(path, block_frames=block) as stream:
        sizes = [b.shape[0] for b in stream]
        assert stream.blocks_read == math.ceil(frames / block)
        assert stream.frames_read == frames
    # One output block per input block (plus the resampler's flushed tail),
    # each about one block's worth of output (soxr releases its filter delay
    # a little late), far below the whole file's.
    assert stream.blocks_read <= len(sizes) <= stream.blocks_read + 1
    assert max(sizes) < 1.1 * out_per_block
    assert sum(sizes) > 50 * max(sizes)
    assert sum(sizes) == stream.samples_out == frames * C.SAMPLE_RATE // rate


def test_stream_arguments_and_single_use(fixtures_dir):
    path = _path(fixtures_dir, F.TONES[8000])
    with pytest.raises(ValueError, match="block_frames"):
        audio_io.AudioStream(path, block_frames=0)
    with audio_io.AudioStream(path) as stream:
        assert stream.info.sample_rate == 8000 and stream.info.channels == 1
        assert stream.info.duration_seconds == pytest.approx(F.TONE_SECONDS)
        list(stream)
        with pytest.raises(RuntimeError, match="once"):
            iter(stream)
