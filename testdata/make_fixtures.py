#!/usr/bin/env python3
"""Generates the tiny audio fixtures the audio and extraction tests read.

Deterministic (seeded) and small (< 1 MB in all): good files in several
formats, rates and channel counts, one file per way an input can be broken,
and a labels CSV. Run it by hand to look at them:

    python testdata/make_fixtures.py [OUT_DIR]   # default testdata/generated

or call `make_fixtures(out_dir)` (tests do, into a temporary directory).

The layout below is the contract with the tests: they refer to files through
these names, never by restating paths.
"""

import csv
import os
import struct
import sys

import numpy as np
import soundfile as sf

TONE_HZ = 1000.0
TONE_AMPLITUDE = 0.5
TONE_SECONDS = 1.0  # Just over one 0.975 s window: no padding involved.

AUDIO_DIR = "audio"
"""Directory input of the extraction tests (searched recursively)."""
LABELS_CSV = os.path.join(AUDIO_DIR, "labels.csv")
"""CSV input: path,labels,split with a header row, paths relative to it."""

# Good files: a 1 kHz tone at each input rate, in several containers.
TONES = {
    8000: "tones/tone_8000.wav",
    22050: "tones/tone_22050.flac",
    44100: "tones/tone_44100.wav",
    48000: "tones/tone_48000.ogg",
}
STEREO = "tones/stereo_left_44100.wav"
"""The tone in the left channel only, the right channel silent."""
MP3 = "speechlike/chirp_16000.mp3"
LONG = "speechlike/noise_3s_16000.wav"
"""~3 s of coloured noise with a chirp: three windows, all different."""
SHORT = "speechlike/short_0.5s_22050.wav"
"""Shorter than one window: padded, or skipped with pad_short=False."""
SILENT = "speechlike/silent_8000.wav"
"""All zeros: valid, but worth a warning."""
GOOD = tuple(TONES.values()) + (STEREO, MP3, LONG, SHORT, SILENT)

# Broken files, by the audio_io.AudioError kind each must raise. The kinds
# are spelled out here (not imported) so the fixtures build without the
# library; tests check them against audio_io.KIND_*.
BAD = {
    "empty": ("bad/empty.wav", "bad/header_only.wav"),
    "unreadable": ("bad/not_audio.wav",),
    "truncated": ("bad/truncated.wav", "bad/truncated.flac"),
    "non-finite samples": ("bad/nan.wav",),
    "zero channels": ("bad/zero_channels.wav",),
    "invalid sample rate": ("bad/rate_zero.wav", "bad/rate_1hz.wav"),
}
MISSING = "bad/missing.wav"
"""Listed in the CSV, absent on disk."""

CSV_ROWS = (
    (TONES[8000], "tone;beep", "train"),
    (TONES[22050], "tone", "train"),
    (TONES[44100], "tone", "eval"),
    (STEREO, "tone;stereo", "eval"),
    (LONG, "noise", "train"),
    (SHORT, "noise;short", "eval"),
    (MP3, "chirp", "train"),
    (SILENT, "", "train"),
    ("bad/truncated.wav", "tone", "train"),
    (MISSING, "tone", "eval"),
)


def _tone(rate, seconds=TONE_SECONDS):
    t = np.arange(int(round(rate * seconds))) / float(rate)
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _noise_with_chirp(rate, seconds, rng):
    n = int(rate * seconds)
    t = np.arange(n) / float(rate)
    # Brown-ish noise plus a 200 Hz -> 4 kHz chirp: every window looks
    # different, so a misplaced window in a record would be caught.
    noise = np.cumsum(rng.standard_normal(n))
    noise -= np.convolve(noise, np.ones(64) / 64.0, mode="same")
    noise *= 0.05 / (np.abs(noise).max() + 1e-9)
    sweep = 3800.0 / (2 * seconds)  # Hz per second, halved for the phase.
    chirp = 0.3 * np.sin(2 * np.pi * (200.0 * t + sweep * t * t))
    return (noise + chirp).astype(np.float32)


def _wav_bytes_with_fmt(path, channels=None, rate=None):
    """Rewrites fields of a WAV's fmt chunk in place (to break it)."""
    data = bytearray(open(path, "rb").read())
    fmt = data.index(b"fmt ")
    if channels is not None:
        data[fmt + 10:fmt + 12] = struct.pack("<H", channels)
    if rate is not None:
        data[fmt + 12:fmt + 16] = struct.pack("<I", rate)
    with open(path, "wb") as f:
        f.write(data)


def _cut(path, keep_fraction):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep_fraction)])


def make_fixtures(out_dir):
    """Writes every fixture under `out_dir`.

    Args:
      out_dir: directory to create (may exist); files are overwritten.

    Returns:
      `out_dir`.
    """
    rng = np.random.default_rng(20170717)
    root = os.path.join(out_dir, AUDIO_DIR)

    def path(rel):
        full = os.path.join(root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    sf.write(path(TONES[8000]), _tone(8000), 8000, subtype="PCM_16")
    sf.write(path(TONES[22050]), _tone(22050), 22050, format="FLAC",
             subtype="PCM_16")
    sf.write(path(TONES[44100]), _tone(44100), 44100, subtype="PCM_16")
    sf.write(path(TONES[48000]), _tone(48000), 48000, format="OGG",
             subtype="VORBIS")
    left = _tone(44100)
    sf.write(path(STEREO), np.stack([left, np.zeros_like(left)], axis=1),
             44100, subtype="PCM_16")
    sf.write(path(MP3), _noise_with_chirp(16000, 1.5, rng), 16000,
             format="MP3", subtype="MPEG_LAYER_III")
    sf.write(path(LONG), _noise_with_chirp(16000, 3.05, rng), 16000,
             subtype="PCM_16")
    sf.write(path(SHORT), _noise_with_chirp(22050, 0.5, rng), 22050,
             subtype="PCM_16")
    sf.write(path(SILENT), np.zeros(8000, np.float32), 8000, subtype="PCM_16")

    empty, header_only = BAD["empty"]
    open(path(empty), "wb").close()
    sf.write(path(header_only), np.zeros(0, np.float32), 8000,
             subtype="PCM_16")
    with open(path(BAD["unreadable"][0]), "wb") as f:
        f.write(b"this is plain text, not audio at all\n" * 8)
    truncated_wav, truncated_flac = BAD["truncated"]
    # The header keeps claiming a full second; the data stops at about half.
    sf.write(path(truncated_wav), _tone(8000), 8000, subtype="PCM_16")
    _cut(path(truncated_wav), 0.5)
    sf.write(path(truncated_flac), _noise_with_chirp(8000, 1.0, rng), 8000,
             format="FLAC", subtype="PCM_16")
    _cut(path(truncated_flac), 0.5)
    nan = _tone(8000, 0.25)
    nan[1000] = np.nan
    sf.write(path(BAD["non-finite samples"][0]), nan, 8000, subtype="FLOAT")
    zero_channels = path(BAD["zero channels"][0])
    sf.write(zero_channels, _tone(8000, 0.1), 8000, subtype="PCM_16")
    _wav_bytes_with_fmt(zero_channels, channels=0)
    for rel, rate in zip(BAD["invalid sample rate"], (0, 1)):
        sf.write(path(rel), _tone(8000, 0.1), 8000, subtype="PCM_16")
        _wav_bytes_with_fmt(path(rel), rate=rate)

    with open(os.path.join(out_dir, LABELS_CSV), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "labels", "split"))
        writer.writerows(CSV_ROWS)
    return out_dir


if __name__ == "__main__":
    make_fixtures(sys.argv[1] if len(sys.argv) > 1 else
                  os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "generated"))
