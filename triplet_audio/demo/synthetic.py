"""An embedded, labelled corpus of synthetic sound scenes (no downloads).

AudioSet cannot be fetched here, so the demo and the integration tests need a
labelled corpus that exercises the same questions the paper asks: do the
unsupervised triplet samplers learn something a supervised topline agrees is
semantic? This module synthesises one, with NumPy only, fast enough to build
hundreds of 10 s recordings in a minute (about 0.055 s of CPU per 10 s
recording in version 2, 0.03 s in version 1).

Design (stated so that results on it can be judged, not tuned):

* Classes. `CLASS_NAMES` lists 14 sound-event classes of clearly different
  acoustic families (tonal, swept, noisy, impulsive, periodic-impulsive,
  modulated, formant-filtered, textural). Every occurrence of an event draws
  its own parameters (pitch, duration, envelope, spectral colour, rates) from
  its class's distribution, so a class is a region, not a point: translation
  in time and frequency and changes of level and noise are nuisances a good
  embedding has to ignore. Events are returned at unit RMS; their level is set
  when they are mixed.
* Recordings. Each recording is one "scene": 1 to 3 classes (the clip-level
  multi-label), each recurring as several occurrences spread over the whole
  recording (stratified random onsets, overlaps allowed). Every occurrence
  has its own SNR, uniform in `SNR_RANGE_DB` relative to the background, and
  its own parameters: what recurs within a recording is its set of classes,
  not a copy of one event. That recurrence is what the temporal-proximity
  sampler should learn from. The conditions the scene is recorded in are the
  corpus version's (`corpus_version`, recorded in corpus.json):

  - Version 1 (the first demo's corpus, kept byte for byte so that its
    results reproduce): one coloured background noise per recording (random
    spectral slope, broad spectral bump and level), constant throughout and
    drawn for that recording alone. Every window of a recording then carries
    a background that no other recording has, so "same recording" can be
    told from the background without hearing any event: a linear probe on
    the mean log-mel of event-free frames names the recording of most
    windows (`demo.shortcut`), and the proximity sampler learned that
    shortcut instead of the classes. Real collections do not offer it so
    cheaply: many recordings are made in alike places with alike devices,
    and one recording's background changes as it goes.
  - Version 2 (the default): recordings are made in acoustic environments
    drawn from a pool of `ENVIRONMENT_POOL_SIZE` shared by the whole corpus,
    train and eval alike (`environment_pool`), so each environment is heard
    in many recordings (14 to 36 of the demo's 300 training ones). An
    environment is a place and a device: background noise colour (slope and
    bump, as in version 1) and level; reverberation (a quarter of them dry,
    as outdoors; the others a diffuse room response, RT60 log-uniform in
    `RT60_RANGE_S`, direct-to-reverberant ratio in `DRR_RANGE_DB`), applied
    to the events; and the device's response (high-pass at 40-250 Hz,
    low-pass at 4-7.8 kHz, one broad +-5 dB resonance), applied to
    everything. Within a recording the background drifts (level by
    `DRIFT_LEVEL_DB` and spectral slope by `DRIFT_SLOPE`, std, over steps of
    `DRIFT_KNOT_S`): traffic swells, a fan speeds up. Recording-level
    nuisances are ones that vary within the recording, so that they tell
    parts of it apart rather than naming it: 0 to `MAX_GAIN_CHANGES` gain
    changes (+-`GAIN_STEP_DB`, ramped over 20-300 ms: someone turns the
    input level, an automatic gain control steps), and with probability
    `SECOND_ENVIRONMENT_PROBABILITY` a second environment of the pool takes
    over partway (at 25-75% of the recording, a 0.5 s crossfade: the
    recorder moves, or the clip is an edit). No constant per-recording gain
    or colour is added, since that would again be a private signature.
    Environments are drawn independently of the classes, so the background
    says nothing of the labels either. The events, their onsets and SNRs
    are version 1's (the same random stream, `_skip_background`), so the
    two versions differ in their recording conditions alone.

  On the demo's 300 training recordings (seed 0) the linear probe of
  `demo.shortcut` names the recording of 99% of held-out windows from
  their background under version 1 and 21% under version 2 when fitted on
  neighbouring windows, 99% and 12% when fitted on the first half and
  scored on the second (chance 0.6-0.8%): version 2 still lets a background
  narrow a recording down to its environment and its moment, as real ones
  do, but no longer names it.
  Nothing in either version is arranged to favour or disfavour a sampler;
  version 2's settings are what recordings of one collection plausibly
  share and vary in, chosen before any training on it.
* Balance. The first class of recording i of a split is the (i mod C)-th
  entry of a seeded permutation of the vocabulary, so any split of at least C
  recordings contains every class; the other classes are drawn at random.
* Determinism. Recording i of split s is drawn from its own generator,
  `np.random.default_rng([seed, split_code, i])`, so any recording can be
  regenerated alone (`corpus_recording`) and parallel generation writes the
  same bytes as serial. Train and eval use different split codes, hence
  disjoint random streams. Version 2's environment pool has a generator of
  its own, keyed by the seed alone.
* Format. WAV, 16-bit PCM, `constants.SAMPLE_RATE` mono. The front end wants
  exactly that, so no resampling or down-mixing is spent on it; 16-bit halves
  the disk and read time of float and its quantisation noise (-98 dBFS) is far
  below the quietest background used (`BACKGROUND_DBFS_RANGE`).

Layout written by `generate_corpus`:

  out_dir/audio/train/train_00000.wav ...   training recordings
  out_dir/audio/eval/eval_00000.wav ...     evaluation recordings
  out_dir/labels.csv                        path,labels,split for both splits
  out_dir/train.csv, out_dir/eval.csv       the same columns, one split each
  out_dir/events.csv                        path,label,onset_s,offset_s of
                                            every occurrence (strong labels;
                                            the dry event, without reverb)
  out_dir/corpus.json                       the settings that determine the
                                            content, per-class counts and,
                                            for version 2, the environments
                                            and how many recordings each has

Paths in the CSVs are relative to the CSV; labels are ';'-separated class
names. These are the CSVs `bin/extract_features --input=...csv` reads.
"""

import concurrent.futures
import csv
import dataclasses
import functools
import multiprocessing
import os
import time
from typing import Optional

from absl import logging
import numpy as np
import soundfile as sf

from triplet_audio import constants as C
from triplet_audio.config import corpus as corpus_config
from triplet_audio.config import jsonio

CLASS_NAMES = corpus_config.CLASS_NAMES
"""Class vocabulary, in label-index order (its home: `config.corpus`)."""

SPLITS = ("train", "eval")
_SPLIT_CODES = {"train": 0, "eval": 1}

DEFAULT_DURATION_S = corpus_config.DEFAULT_DURATION_S
CORPUS_VERSIONS = corpus_config.CORPUS_VERSIONS
DEFAULT_CORPUS_VERSION = corpus_config.DEFAULT_CORPUS_VERSION
MAX_CLASSES_PER_RECORDING = 3
SNR_RANGE_DB = (0.0, 20.0)
"""Per-occurrence event RMS over background RMS, uniform in this range."""
BACKGROUND_DBFS_RANGE = (-50.0, -30.0)
"""Background RMS level (dB full scale), uniform per recording."""
COVERAGE_RANGE = (0.25, 0.6)
"""Fraction of a recording that one class's occurrences add up to."""
_PEAK_LIMIT = 0.98

# Version 2's recording conditions (see the module docstring).
ENVIRONMENT_POOL_SIZE = 16
"""Acoustic environments a version-2 corpus's recordings share."""
DRY_ENVIRONMENT_FRACTION = 0.25
"""Share of the environments without reverberation (outdoors)."""
RT60_RANGE_S = (0.15, 1.0)
"""Reverberation time of the other environments, log-uniform."""
DRR_RANGE_DB = (-3.0, 12.0)
"""Direct-to-reverberant energy ratio, uniform."""
DRIFT_KNOT_S = 2.0
DRIFT_LEVEL_DB = 3.0
"""Std of the background level's slow wander within a recording."""
DRIFT_SLOPE = 0.25
"""Std of the background spectral slope's slow wander (power slope units)."""
MAX_GAIN_CHANGES = 2
GAIN_STEP_DB = 8.0
"""A gain change is uniform in +-GAIN_STEP_DB."""
SECOND_ENVIRONMENT_PROBABILITY = 0.3
SWITCH_RANGE = (0.25, 0.75)
"""When a second environment takes over, as a fraction of the duration."""
CROSSFADE_S = 0.5
_POOL_STREAM = 2 ** 32 + 1  # Key of the pool's generator, beside the seed.

_TABLE_SIZE = 4096
_MAX_EVENT_FRACTION = 0.45  # Of the sample rate: highest partial synthesised.


# ---------------------------------------------------------------------------
# Signal helpers (vectorised NumPy; no per-sample Python loops).


def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _num_samples(duration_s, sr):
    return max(1, int(round(duration_s * sr)))


def _ar_envelope(n, sr, attack_s, release_s):
    """Linear attack, flat sustain, raised-cosine release; never exceeds 1."""
    t = np.arange(n) / sr
    attack = np.minimum(1.0, t / max(attack_s, 1.0 / sr))
    remaining = (n - 1) / sr - t
    release = np.minimum(1.0, remaining / max(release_s, 1.0 / sr))
    release = 0.5 - 0.5 * np.cos(np.pi * np.clip(release, 0.0, 1.0))
    return attack * release


def _decay_envelope(n, sr, attack_s, tau_s):
    """Short linear attack then exponential decay with time constant tau."""
    t = np.arange(n) / sr
    attack = np.minimum(1.0, t / max(attack_s, 1.0 / sr))
    return attack * np.exp(-np.maximum(t - attack_s, 0.0) / tau_s)


def _harmonic_table(amplitudes, rng):
    """One cycle of a sum of harmonics with the given amplitudes.

    Random phases: real sources do not phase-align their partials, and aligned
    phases would give every instance the same spiky waveform.
    """
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, np.complex128)
    k = len(amplitudes)
    spectrum[1:k + 1] = amplitudes * np.exp(
        2j * np.pi * rng.uniform(size=k))
    table = np.fft.irfft(spectrum, _TABLE_SIZE) * (_TABLE_SIZE / 2)
    # Duplicate the first sample so linear interpolation can read index i + 1.
    return np.append(table, table[0])


def _tilted_amplitudes(num, tilt_db_per_octave, rng, spread_db=0.0):
    """Harmonic amplitudes falling by a slope in dB/octave, randomly rippled."""
    h = np.arange(1, num + 1)
    db = tilt_db_per_octave * np.log2(h)
    if spread_db:
        db = db + rng.normal(0.0, spread_db, num)
    return 10.0 ** (db / 20.0)


def _oscillate(table, freq_hz, sr, rng):
    """Wavetable oscillator: reads `table` at an instantaneous frequency.

    One table lookup per sample instead of one sine per partial keeps rich
    harmonic sources cheap; the caller keeps partials below Nyquist.
    """
    phase = rng.uniform() + np.cumsum(freq_hz) / sr
    position = (phase - np.floor(phase)) * _TABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    return table[index] * (1.0 - frac) + table[index + 1] * frac


def _max_harmonics(f_max, sr, cap):
    return int(max(1, min(cap, np.floor(_MAX_EVENT_FRACTION * sr / f_max))))


def _fft_size(n):
    # Lengths with only small prime factors keep pocketfft on its fast path.
    return int(512 * np.ceil(n / 512))


def _smooth_size(n):
    """The smallest 2^a 3^b 5^c >= n: an FFT length pocketfft is fastest at.

    (`_fft_size`, which version 1 keeps for its bytes, can land on a large
    prime factor: 160,256 = 512 x 313 for 10 s.)
    """
    best = 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


def _shaped_noise(n, rng, sr, gain_fn):
    """White noise coloured by a zero-phase gain over frequency (Hz)."""
    size = _fft_size(n)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    return np.fft.irfft(spectrum * gain_fn(freqs), size)[:n]


def _colour(x, sr, gain_fn, size_fn=_fft_size):
    """Filters `x` by a zero-phase gain over frequency (Hz), via one FFT."""
    n = len(x)
    size = size_fn(n)
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    return np.fft.irfft(np.fft.rfft(x, size) * gain_fn(freqs), size)[:n]


def _log_band(center_hz, octaves):
    """Gain that is a Gaussian in log-frequency (a smooth band-pass)."""
    sigma = max(octaves, 0.05) / 2.355  # octaves is the full width at half max.

    def gain(freqs):
        log_ratio = np.log2(np.maximum(freqs, 1.0) / center_hz)
        return np.exp(-0.5 * (log_ratio / sigma) ** 2)
    return gain


_STFT_FRAME = 512
_STFT_HOP = 128
_STFT_WINDOW = 0.5 - 0.5 * np.cos(
    2.0 * np.pi * np.arange(_STFT_FRAME) / _STFT_FRAME)
# Periodic Hann analysis and synthesis at hop N/4 sums to 1.5 everywhere.
_STFT_OLA_GAIN = 1.5


def _time_varying_filter(x, sr, gain_fn):
    """Filters `x` with a gain that changes over time, by STFT overlap-add.

    Args:
      x: 1-D float array.
      sr: sample rate in Hz.
      gain_fn: callable(times_s [T, 1], freqs_hz [1, F]) -> gains [T, F].

    Returns:
      Array of the same length as `x`.
    """
    n = len(x)
    frame, hop = _STFT_FRAME, _STFT_HOP
    num_frames = -(-(n + frame) // hop)
    padded = np.zeros((num_frames + 3) * hop)
    padded[frame:frame + n] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
    frames = frames[:num_frames]
    spectra = np.fft.rfft(frames * _STFT_WINDOW, axis=1)
    centres = (np.arange(num_frames) * hop + frame / 2 - frame) / sr
    freqs = np.fft.rfftfreq(frame, 1.0 / sr)
    gains = gain_fn(centres[:, None], freqs[None, :])
    out_frames = np.fft.irfft(spectra * gains, frame, axis=1) * _STFT_WINDOW
    blocks = out_frames.reshape(num_frames, frame // hop, hop)
    out = np.zeros((num_frames + frame // hop - 1, hop))
    for k in range(frame // hop):
        out[k:k + num_frames] += blocks[:, k, :]
    out = out.reshape(-1) / _STFT_OLA_GAIN
    return out[frame:frame + n]


def _smooth_random_walk(n, sr, rng, rate_hz, depth):
    """Slowly wandering multiplier around 1 (mechanical / vocal jitter)."""
    knots = max(2, int(np.ceil(n / sr * rate_hz)) + 2)
    values = np.cumsum(rng.normal(0.0, 1.0, knots))
    values = (values - values.mean()) / (values.std() + 1e-9)
    return 1.0 + depth * np.interp(
        np.linspace(0, knots - 1, n), np.arange(knots), values)


def _place(out, start, piece):
    """Adds `piece` into `out` at `start`, cutting what falls past the end."""
    stop = min(len(out), start + len(piece))
    if stop > start:
        out[start:stop] += piece[:stop - start]


# ---------------------------------------------------------------------------
# One synthesiser per class. Each returns a float64 waveform (any level).


def _harmonic_tone(rng, sr):
    n = _num_samples(rng.uniform(0.4, 1.5), sr)
    f0 = _log_uniform(rng, 150.0, 900.0)
    depth = rng.uniform(0.01, 0.04)  # Of the order of a singer's vibrato.
    t = np.arange(n) / sr
    freq = f0 * (1.0 + depth * np.sin(
        2.0 * np.pi * rng.uniform(4.0, 7.0) * t + rng.uniform(0, 2 * np.pi)))
    num = _max_harmonics(f0 * (1 + depth), sr, rng.integers(5, 15))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-12.0, -3.0), rng, 3.0), rng)
    env = _ar_envelope(n, sr, rng.uniform(0.01, 0.1), rng.uniform(0.05, 0.4))
    return _oscillate(table, freq, sr, rng) * env


def _chirp(rng, sr):
    n = _num_samples(rng.uniform(0.15, 0.8), sr)
    low = _log_uniform(rng, 300.0, 1500.0)
    high = min(low * rng.uniform(2.0, 6.0), 0.4 * sr)
    start, end = (low, high) if rng.uniform() < 0.5 else (high, low)
    freq = start * (end / start) ** (np.arange(n) / n)  # Exponential sweep.
    num = _max_harmonics(high, sr, rng.integers(1, 4))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-15.0, -8.0), rng), rng)
    env = _ar_envelope(n, sr, rng.uniform(0.005, 0.03), rng.uniform(0.02, 0.1))
    return _oscillate(table, freq, sr, rng) * env


def _noise_burst(rng, sr):
    n = _num_samples(rng.uniform(0.08, 0.6), sr)
    centre = _log_uniform(rng, 400.0, min(5000.0, 0.35 * sr))
    noise = _shaped_noise(n, rng, sr, _log_band(centre, rng.uniform(0.3, 1.2)))
    env = _ar_envelope(n, sr, rng.uniform(0.002, 0.02), rng.uniform(0.02, 0.2))
    return noise * env


def _impact(rng, sr):
    n = _num_samples(rng.uniform(0.3, 1.0), sr)
    t = np.arange(n) / sr
    base = _log_uniform(rng, 150.0, 1500.0)
    num_modes = rng.integers(3, 9)
    # Inharmonic mode ratios, as in struck bars, plates and shells.
    ratios = np.cumsum(np.concatenate(
        [[1.0], rng.uniform(0.3, 2.5, num_modes - 1)]))
    freqs = base * ratios
    freqs = freqs[freqs < _MAX_EVENT_FRACTION * sr]
    tau0 = rng.uniform(0.04, 0.3)
    taus = tau0 * (freqs / base) ** -0.5  # Higher modes die faster.
    amps = rng.uniform(0.2, 1.0, len(freqs))
    modes = (amps[:, None] * np.exp(-t[None, :] / taus[:, None])
             * np.sin(2.0 * np.pi * freqs[:, None] * t[None, :]
                      + rng.uniform(0, 2 * np.pi, (len(freqs), 1))))
    strike_n = min(n, _num_samples(0.005, sr))
    strike = np.zeros(n)
    strike[:strike_n] = rng.standard_normal(strike_n) * np.exp(
        -np.arange(strike_n) / (0.001 * sr)) * rng.uniform(0.5, 2.0)
    return modes.sum(axis=0) + strike


def _click_train(rng, sr):
    duration = rng.uniform(0.3, 1.5)
    n = _num_samples(duration, sr)
    rate0 = rng.uniform(4.0, 40.0)
    rate1 = rate0 * rng.uniform(0.7, 1.4)
    # Onsets of a click train whose rate drifts from rate0 towards rate1.
    times = np.arange(0.0, duration, 1.0 / max(rate0, rate1))
    rate = rate0 + (rate1 - rate0) * times / duration
    onsets = np.cumsum(1.0 / rate)
    onsets = onsets[onsets < duration - 0.01] - onsets[0]
    onsets = onsets + rng.normal(0.0, 0.002, len(onsets)).clip(-0.004, 0.004)
    positions = np.clip((onsets * sr).astype(np.int64), 0, n - 1)
    klen = _num_samples(0.008, sr)
    kernel = rng.standard_normal(klen) * np.exp(
        -np.arange(klen) / (rng.uniform(0.0003, 0.0015) * sr))
    kernel = _colour(kernel, sr, _log_band(
        _log_uniform(rng, 1000.0, 0.3 * sr), rng.uniform(2.0, 5.0)))
    out = np.zeros(n + klen)
    amps = rng.uniform(0.6, 1.0, len(positions))
    index = positions[:, None] + np.arange(klen)[None, :]
    np.add.at(out, index.reshape(-1), (amps[:, None] * kernel).reshape(-1))
    return out[:n]


def _fm_warble(rng, sr):
    n = _num_samples(rng.uniform(0.4, 1.5), sr)
    carrier = _log_uniform(rng, 600.0, 3000.0)
    deviation = carrier * rng.uniform(0.1, 0.35)
    t = np.arange(n) / sr
    freq = carrier + deviation * np.sin(
        2.0 * np.pi * rng.uniform(8.0, 25.0) * t + rng.uniform(0, 2 * np.pi))
    num = _max_harmonics(carrier + deviation, sr, rng.integers(1, 3))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-15.0, -8.0), rng), rng)
    env = _ar_envelope(n, sr, rng.uniform(0.01, 0.05), rng.uniform(0.05, 0.2))
    return _oscillate(table, freq, sr, rng) * env


def _am_tone(rng, sr):
    n = _num_samples(rng.uniform(0.4, 1.5), sr)
    carrier = _log_uniform(rng, 250.0, 3000.0)
    t = np.arange(n) / sr
    num = _max_harmonics(carrier, sr, rng.integers(1, 3))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-20.0, -10.0), rng), rng)
    tone = _oscillate(table, np.full(n, carrier), sr, rng)
    depth = rng.uniform(0.7, 1.0)
    modulator = 1.0 - depth * 0.5 * (1.0 + np.sin(
        2.0 * np.pi * rng.uniform(12.0, 60.0) * t + rng.uniform(0, 2 * np.pi)))
    env = _ar_envelope(n, sr, rng.uniform(0.01, 0.05), rng.uniform(0.05, 0.2))
    return tone * modulator * env


# Vowel formant targets (F1, F2, F3 in Hz) of an adult voice: /a e i o u/.
_VOWELS = np.array([
    [730.0, 1090.0, 2440.0],
    [530.0, 1840.0, 2480.0],
    [270.0, 2290.0, 3010.0],
    [570.0, 840.0, 2410.0],
    [300.0, 870.0, 2240.0],
])


def _speech_like(rng, sr):
    num_syllables = rng.integers(2, 6)
    durations = rng.uniform(0.1, 0.28, num_syllables)
    gaps = rng.uniform(0.03, 0.12, num_syllables)
    n = _num_samples(float(np.sum(durations + gaps)), sr)
    t = np.arange(n) / sr
    f0_base = _log_uniform(rng, 90.0, 250.0)
    # Declining intonation with a wandering contour and a little jitter.
    f0 = (f0_base * np.linspace(1.1, 0.9, n)
          * _smooth_random_walk(n, sr, rng, 4.0, 0.06)
          * (1.0 + 0.01 * rng.standard_normal(n)))
    num = _max_harmonics(f0.max(), sr, 60)
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-12.0, -9.0), rng), rng)
    source = _oscillate(table, f0, sr, rng)
    starts = np.concatenate([[0.0], np.cumsum(durations + gaps)[:-1]])
    env = np.zeros(n)
    for start, dur in zip(starts, durations):
        a, m = int(start * sr), _num_samples(dur, sr)
        _place(env, a, _ar_envelope(m, sr, 0.02, 0.04))
    # Formant tracks glide between one vowel target per syllable.
    targets = _VOWELS[rng.integers(0, len(_VOWELS), num_syllables)]
    targets = targets * rng.uniform(0.9, 1.15)  # Speaker's vocal-tract length.
    centres = starts + durations / 2
    bandwidths = np.array([80.0, 120.0, 180.0]) * rng.uniform(0.8, 1.5)
    formant_gains = np.array([1.0, 0.6, 0.35])

    def gain_fn(times, freqs):
        tracks = [np.interp(times, centres, targets[:, k]) for k in range(3)]
        total = np.zeros(np.broadcast_shapes(times.shape, freqs.shape))
        for track, bw, g in zip(tracks, bandwidths, formant_gains):
            total = total + g / (1.0 + ((freqs - track) / bw) ** 2)
        return total
    return _time_varying_filter(source * env, sr, gain_fn)


def _engine_hum(rng, sr):
    n = _num_samples(rng.uniform(1.5, 4.0), sr)
    f0_base = _log_uniform(rng, 25.0, 90.0)
    wander = _smooth_random_walk(n, sr, rng, 2.0, rng.uniform(0.01, 0.04))
    f0 = f0_base * wander * (1.0 + 0.005 * rng.standard_normal(n))
    num = _max_harmonics(f0.max(), sr, int(2500.0 / f0_base))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-9.0, -3.0), rng, 5.0), rng)
    hum = _oscillate(table, f0, sr, rng)
    rumble = _shaped_noise(n, rng, sr, _log_band(
        _log_uniform(rng, 80.0, 400.0), 2.5))
    mix = hum / (np.std(hum) + 1e-12) + rng.uniform(0.1, 0.5) * (
        rumble / (np.std(rumble) + 1e-12))
    return mix * _ar_envelope(n, sr, rng.uniform(0.1, 0.5),
                              rng.uniform(0.2, 0.6))


def _bird_trill(rng, sr):
    num_notes = rng.integers(4, 17)
    rate = rng.uniform(8.0, 25.0)
    note_s = min(rng.uniform(0.02, 0.07), 0.8 / rate)
    n = _num_samples(num_notes / rate + note_s, sr)
    top = min(_log_uniform(rng, 2000.0, 6000.0), 0.4 * sr)
    width = 2.0 ** rng.uniform(0.15, 0.6)
    drift = 2.0 ** (rng.uniform(-0.3, 0.3) * np.linspace(0, 1, num_notes))
    m = _num_samples(note_s, sr)
    u = np.arange(m) / m
    env = np.sin(np.pi * u) ** 2
    sweep_up = rng.uniform() < 0.3
    out = np.zeros(n)
    for k in range(num_notes):
        f_hi = min(top * drift[k], 0.45 * sr)
        freq = f_hi * width ** (-(1.0 - u) if sweep_up else -u)
        phase = 2.0 * np.pi * np.cumsum(freq) / sr
        start = int((k / rate + rng.normal(0, 0.003)) * sr)
        _place(out, max(0, start), np.sin(phase) * env)
    return out


def _rain(rng, sr):
    n = _num_samples(rng.uniform(1.5, 4.0), sr)
    density = _log_uniform(rng, 300.0, 3000.0)  # Drops per second.
    count = rng.poisson(density * n / sr)
    drops = np.zeros(n)
    np.add.at(drops, rng.integers(0, n, count),
              rng.lognormal(0.0, 0.8, count) * rng.choice([-1.0, 1.0], count))
    hiss = rng.standard_normal(n) * rng.uniform(0.02, 0.1)
    centre = _log_uniform(rng, 1500.0, min(5000.0, 0.35 * sr))
    texture = _colour(drops + hiss, sr,
                      _log_band(centre, rng.uniform(1.5, 3.0)))
    swell = _smooth_random_walk(n, sr, rng, 1.0, 0.2).clip(0.3, None)
    return texture * swell * _ar_envelope(n, sr, rng.uniform(0.2, 0.6),
                                          rng.uniform(0.2, 0.6))


def _siren(rng, sr):
    n = _num_samples(rng.uniform(1.5, 4.0), sr)
    low = _log_uniform(rng, 500.0, 1000.0)
    high = low * rng.uniform(1.3, 2.0)
    t = np.arange(n) / sr
    lfo_phase = rng.uniform(0.4, 2.5) * t + rng.uniform()
    if rng.uniform() < 0.5:  # Wail: smooth; yelp: triangular sweep.
        lfo = 0.5 - 0.5 * np.cos(2.0 * np.pi * lfo_phase)
    else:
        lfo = 2.0 * np.abs(lfo_phase - np.floor(lfo_phase + 0.5))
    freq = low * (high / low) ** lfo
    num = _max_harmonics(high, sr, rng.integers(2, 6))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-12.0, -4.0), rng), rng)
    env = _ar_envelope(n, sr, rng.uniform(0.05, 0.3), rng.uniform(0.1, 0.5))
    return _oscillate(table, freq, sr, rng) * env


def _dog_bark(rng, sr):
    num_barks = rng.integers(1, 4)
    bark_s = rng.uniform(0.08, 0.25, num_barks)
    gaps = rng.uniform(0.1, 0.3, num_barks)
    n = _num_samples(float(np.sum(bark_s + gaps)), sr)
    f0_start = _log_uniform(rng, 350.0, 800.0)
    num = _max_harmonics(f0_start * 1.2, sr, int(4000.0 / f0_start))
    table = _harmonic_table(
        _tilted_amplitudes(num, rng.uniform(-6.0, -2.0), rng, 4.0), rng)
    out = np.zeros(n)
    start = 0.0
    for dur, gap in zip(bark_s, gaps):
        m = _num_samples(dur, sr)
        # Pitch jumps up at the onset then falls through the bark.
        contour = np.interp(np.arange(m) / m, [0.0, 0.15, 1.0],
                            [0.9, 1.1, rng.uniform(0.6, 0.85)])
        voiced = _oscillate(table, f0_start * rng.uniform(0.92, 1.08) * contour,
                            sr, rng)
        harsh = rng.standard_normal(m) * rng.uniform(0.3, 0.8) * np.std(voiced)
        env = _decay_envelope(m, sr, rng.uniform(0.004, 0.012),
                              rng.uniform(0.04, 0.1))
        _place(out, int(start * sr), (voiced + harsh) * env)
        start += dur + gap
    # The mouth and throat act as one broad resonance over the whole event.
    return _colour(out, sr, _log_band(_log_uniform(rng, 700.0, 2000.0),
                                      rng.uniform(1.5, 3.0)))


def _bubbles(rng, sr):
    duration = rng.uniform(0.3, 1.2)
    n = _num_samples(duration, sr)
    num_bubbles = rng.integers(3, 13)
    out = np.zeros(n)
    for _ in range(num_bubbles):
        tau = rng.uniform(0.005, 0.03)
        m = min(n, _num_samples(5.0 * tau, sr))
        t = np.arange(m) / sr
        f0 = _log_uniform(rng, 400.0, 3000.0)
        # A bubble's resonance rises as it nears the surface (Minnaert).
        freq = f0 * (1.0 + rng.uniform(0.1, 0.6) * t / (5.0 * tau))
        tone = np.sin(2.0 * np.pi * np.cumsum(freq) / sr)
        env = _decay_envelope(m, sr, 0.001, tau) * rng.uniform(0.4, 1.0)
        _place(out, int(rng.uniform(0.0, max(duration - 5.0 * tau, 0.0)) * sr),
               tone * env)
    return out


_SYNTHESISERS = {
    "harmonic_tone": _harmonic_tone,
    "chirp": _chirp,
    "noise_burst": _noise_burst,
    "impact": _impact,
    "click_train": _click_train,
    "fm_warble": _fm_warble,
    "am_tone": _am_tone,
    "speech_like": _speech_like,
    "engine_hum": _engine_hum,
    "bird_trill": _bird_trill,
    "rain": _rain,
    "siren": _siren,
    "dog_bark": _dog_bark,
    "bubbles": _bubbles,
}
assert tuple(_SYNTHESISERS) == CLASS_NAMES


# ---------------------------------------------------------------------------
# Public synthesis API.


def synthesize_event(class_name, rng, sr=C.SAMPLE_RATE):
    """Synthesises one occurrence of a sound-event class.

    Args:
      class_name: one of `CLASS_NAMES`.
      rng: `np.random.Generator`; every random parameter is drawn from it.
      sr: sample rate in Hz.

    Returns:
      float32 array [num_samples] with unit RMS; its length depends on the
      drawn duration (tens of ms to a few s).

    Raises:
      ValueError: for an unknown class name.
    """
    try:
        synthesiser = _SYNTHESISERS[class_name]
    except KeyError:
        raise ValueError(
            f"unknown class {class_name!r}; expected one of {CLASS_NAMES}"
        ) from None
    event = synthesiser(rng, sr)
    rms = np.sqrt(np.mean(np.square(event)))
    return (event / max(rms, 1e-12)).astype(np.float32)


def _background(n, rng, sr):
    """Unit-RMS coloured noise: random slope plus one broad random bump."""
    slope = rng.uniform(-0.5, 2.0)  # 0: white, 1: pink, 2: brown (power).
    bump_centre = _log_uniform(rng, 200.0, 0.3 * sr)
    bump_db = rng.uniform(-6.0, 6.0)
    bump = _log_band(bump_centre, rng.uniform(1.0, 3.0))

    def gain(freqs):
        tilt = (np.maximum(freqs, 20.0) / 1000.0) ** (-slope / 2.0)
        return tilt * 10.0 ** (bump_db * bump(freqs) / 20.0)
    noise = _shaped_noise(n, rng, sr, gain)
    return noise / (np.sqrt(np.mean(np.square(noise))) + 1e-12)


def _skip_background(n, rng):
    """Draws from `rng` what version 1's level and `_background` draw."""
    rng.uniform(*BACKGROUND_DBFS_RANGE)
    rng.uniform(size=4)  # slope, bump centre, bump gain, bump width.
    rng.standard_normal(_fft_size(n))


# ---------------------------------------------------------------------------
# Version 2: acoustic environments shared by many recordings.


@dataclasses.dataclass(frozen=True, eq=False)
class Environment:
    """One acoustic setting (place and device) of a version-2 corpus.

    Attributes:
      index: position in the corpus's pool.
      slope: background power slope (0 white, 1 pink, 2 brown).
      bump_hz, bump_db, bump_octaves: the background's broad spectral bump.
      level_dbfs: background RMS level (dB full scale) before drift.
      rt60_s: reverberation time; 0 for a dry (outdoor) place.
      drr_db: direct-to-reverberant energy ratio of the room response.
      highpass_hz, lowpass_hz: the device's band edges.
      resonance_hz, resonance_db, resonance_octaves: one broad peak or dip
        of the device's response.
      rir: the room impulse response (float64; [1.0] when dry).
    """
    index: int
    slope: float
    bump_hz: float
    bump_db: float
    bump_octaves: float
    level_dbfs: float
    rt60_s: float
    drr_db: float
    highpass_hz: float
    lowpass_hz: float
    resonance_hz: float
    resonance_db: float
    resonance_octaves: float
    rir: np.ndarray = dataclasses.field(repr=False)

    def background_gain(self, freqs):
        """Zero-phase gain over frequency (Hz) of the background's colour."""
        tilt = (np.maximum(freqs, 20.0) / 1000.0) ** (-self.slope / 2.0)
        bump = _log_band(self.bump_hz, self.bump_octaves)(freqs)
        return tilt * 10.0 ** (self.bump_db * bump / 20.0)

    def channel_gain(self, freqs):
        """Zero-phase gain over frequency (Hz) of the recording device."""
        f = np.maximum(freqs, 1.0)
        highpass = (f / self.highpass_hz) ** 2 / np.sqrt(
            1.0 + (f / self.highpass_hz) ** 4)  # 2nd-order Butterworth.
        lowpass = 1.0 / np.sqrt(1.0 + (f / self.lowpass_hz) ** 8)  # 4th.
        peak = _log_band(self.resonance_hz, self.resonance_octaves)(freqs)
        return highpass * lowpass * 10.0 ** (self.resonance_db * peak / 20.0)

    def describe(self):
        """The environment's parameters (corpus.json), the response aside."""
        return {f.name: getattr(self, f.name)
                for f in dataclasses.fields(self) if f.name != "rir"}


def _room_response(rng, sr, rt60_s, drr_db):
    """A room impulse response: the direct path, then a diffuse tail.

    The tail is Gaussian noise decaying by 60 dB in rt60_s, starting after a
    few ms (the first reflections), duller than the direct sound (air and
    wall absorption: a first-order low-pass at 2-6 kHz), scaled so that
    direct / tail energy is drr_db.
    """
    if rt60_s <= 0.0:
        return np.ones(1)
    length = _num_samples(rt60_s, sr)
    predelay = _num_samples(rng.uniform(0.002, 0.01), sr)
    t = np.arange(length) / sr
    tail = rng.standard_normal(length) * np.exp(-6.91 * t / rt60_s)
    absorption_hz = _log_uniform(rng, 2000.0, 6000.0)
    tail = _colour(tail, sr, lambda f: 1.0 / np.sqrt(
        1.0 + (np.maximum(f, 1.0) / absorption_hz) ** 2), _smooth_size)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(np.square(tail)))
    rir = np.zeros(predelay + length)
    rir[0] = 1.0
    rir[predelay:] += tail
    return rir


def _draw_environment(index, rng, sr):
    dry = rng.uniform() < DRY_ENVIRONMENT_FRACTION
    rt60_s = 0.0 if dry else _log_uniform(rng, *RT60_RANGE_S)
    drr_db = rng.uniform(*DRR_RANGE_DB)
    return Environment(
        index=index,
        slope=rng.uniform(-0.5, 2.0),
        bump_hz=_log_uniform(rng, 200.0, 0.3 * sr),
        bump_db=rng.uniform(-6.0, 6.0),
        bump_octaves=rng.uniform(1.0, 3.0),
        level_dbfs=rng.uniform(*BACKGROUND_DBFS_RANGE),
        rt60_s=rt60_s,
        drr_db=drr_db,
        highpass_hz=_log_uniform(rng, 40.0, 250.0),
        lowpass_hz=_log_uniform(rng, 4000.0, 0.49 * sr),
        resonance_hz=_log_uniform(rng, 300.0, 5000.0),
        resonance_db=rng.uniform(-5.0, 5.0),
        resonance_octaves=rng.uniform(1.0, 3.0),
        rir=_room_response(rng, sr, rt60_s, drr_db))


@functools.lru_cache(maxsize=8)
def environment_pool(seed, size=ENVIRONMENT_POOL_SIZE, sr=C.SAMPLE_RATE):
    """The acoustic environments that a version-2 corpus's recordings share.

    Drawn from the corpus seed alone, so train and eval recordings share one
    pool, as recordings of one collection share the places and devices they
    were made with.

    Args:
      seed: the corpus seed (non-negative int).
      size: number of environments.
      sr: sample rate in Hz.

    Returns:
      tuple of `Environment`, index order.
    """
    rng = np.random.default_rng([seed, _POOL_STREAM])
    return tuple(_draw_environment(k, rng, sr) for k in range(size))


def _smooth_walk(duration_s, rng, knot_s, std):
    """A slowly wandering value around 0 with the given std, over time.

    Knots every knot_s seconds (at a random phase) of a Gaussian random walk,
    made zero-mean and scaled to `std`, interpolated linearly.

    Returns:
      callable times_s -> values (constant beyond the knots).
    """
    knots = max(2, int(np.ceil(duration_s / knot_s)) + 2)
    values = np.cumsum(rng.normal(0.0, 1.0, knots))
    values = (values - values.mean()) / (values.std() + 1e-9) * std
    times = np.arange(knots) * knot_s - rng.uniform(0.0, knot_s)
    return lambda t: np.interp(t, times, values)


def _environment_background(env, n, rng, sr):
    """The environment's background noise (about unit RMS), drifting.

    The level wanders by `DRIFT_LEVEL_DB` (std) and the spectral slope by
    `DRIFT_SLOPE` (std, pivoting at 1 kHz) over `DRIFT_KNOT_S`-second steps:
    traffic swells, a fan speeds up, people move around.
    """
    # White noise through the colour times the drift, in one STFT pass; the
    # colour normalised to unit power (white noise's power through a
    # zero-phase gain G is the mean of G^2 over frequency).
    freqs = np.fft.rfftfreq(_STFT_FRAME, 1.0 / sr)
    norm = np.sqrt(np.mean(np.square(env.background_gain(freqs))))
    noise = rng.standard_normal(n)
    level_db = _smooth_walk(n / sr, rng, DRIFT_KNOT_S, DRIFT_LEVEL_DB)
    slope = _smooth_walk(n / sr, rng, DRIFT_KNOT_S, DRIFT_SLOPE)

    def gain(times, freqs):
        tilt = (np.maximum(freqs, 20.0) / 1000.0) ** (-slope(times) / 2.0)
        return (env.background_gain(freqs) / norm * tilt *
                10.0 ** (level_db(times) / 20.0))
    return _time_varying_filter(noise, sr, gain)


def _convolve(x, h):
    """x convolved with h, cut to len(x) (FFT; h is the short one)."""
    if len(h) == 1:
        return x * h[0]
    size = _smooth_size(len(x) + len(h) - 1)
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size),
                        size)[:len(x)]


def _gain_changes_db(n, rng, sr):
    """The recording's gain over time (dB): 0 to 2 ramped steps.

    Someone turns the input level up or down, or an automatic gain control
    steps; each change is uniform in +-`GAIN_STEP_DB` and ramps over 20-300
    ms.
    """
    gain = np.zeros(n)
    t = np.arange(n) / sr
    duration = n / sr
    for _ in range(int(rng.integers(0, MAX_GAIN_CHANGES + 1))):
        at = rng.uniform(0.1, 0.9) * duration
        ramp = rng.uniform(0.02, 0.3)
        step = rng.uniform(-GAIN_STEP_DB, GAIN_STEP_DB)
        gain += step * np.clip((t - at) / ramp, 0.0, 1.0)
    return gain


def _render_conditions(dry, rng, sr, pool):
    """Puts a dry event track into drawn recording conditions (version 2).

    Args:
      dry: float64 event track, scaled relative to a unit-RMS background.
      rng: the recording's generator (after its events).
      sr: sample rate in Hz.
      pool: the corpus's environments.

    Returns:
      (mix, environment indexes, switch time in s or None).
    """
    n = len(dry)
    first = int(rng.integers(len(pool)))
    envs = [first]
    switch_s = None
    if len(pool) > 1 and rng.uniform() < SECOND_ENVIRONMENT_PROBABILITY:
        second = int(rng.integers(len(pool) - 1))
        envs.append(second + (second >= first))
        switch_s = rng.uniform(*SWITCH_RANGE) * n / sr
    mixes = []
    for k in envs:
        env = pool[k]
        wet = _convolve(dry, env.rir)
        background = _environment_background(env, n, rng, sr)
        level = 10.0 ** (env.level_dbfs / 20.0)
        mixes.append(_colour((wet + background) * level, sr,
                             env.channel_gain, _smooth_size))
    mix = mixes[0]
    if switch_s is not None:
        # A raised-cosine crossfade: the recorder moves to another place.
        t = np.arange(n) / sr
        w = np.clip((t - switch_s) / CROSSFADE_S + 0.5, 0.0, 1.0)
        w = 0.5 - 0.5 * np.cos(np.pi * w)
        mix = mixes[0] * (1.0 - w) + mixes[1] * w
    mix = mix * 10.0 ** (_gain_changes_db(n, rng, sr) / 20.0)
    return mix, tuple(envs), switch_s


@dataclasses.dataclass(frozen=True)
class Scene:
    """One synthesised recording and what went into it.

    Attributes:
      waveform: float32 [num_samples] within +-0.98.
      labels: the present class names, vocabulary order.
      events: one (class name, start sample, stop sample) per occurrence, in
        synthesis order (the dry event; a room's reverberation outlasts it).
      environments: indexes into the pool of the environment(s) recorded in,
        the second one after `switch_s` (version 2); () for version 1.
      switch_s: when the second environment takes over, or None.
    """
    waveform: np.ndarray
    labels: tuple
    events: tuple
    environments: tuple = ()
    switch_s: Optional[float] = None


def _check_classes(rng, classes, vocabulary):
    if classes is None:
        count = int(rng.integers(1, min(MAX_CLASSES_PER_RECORDING,
                                        len(vocabulary)) + 1))
        classes = [vocabulary[i] for i in rng.choice(
            len(vocabulary), count, replace=False)]
    classes = list(dict.fromkeys(classes))
    unknown = [c for c in classes if c not in vocabulary]
    if not classes or unknown:
        raise ValueError(f"classes must be a non-empty subset of {vocabulary}, "
                         f"got {classes}")
    return classes


def _place_events(out, rng, classes, scale, sr):
    """Adds every class's occurrences into `out`; returns their spans.

    Each occurrence is `scale` times its SNR's amplitude ratio (relative to a
    unit-RMS background).
    """
    n = len(out)
    spans = []
    for name in classes:
        # Draw events until they add up to this class's share of the scene,
        # then spread them over the whole recording (one per equal slot) so
        # the class recurs throughout rather than clustering by chance.
        coverage = rng.uniform(*COVERAGE_RANGE) * n
        events, total = [], 0
        while total < coverage or len(events) < 2:
            events.append(synthesize_event(name, rng, sr))
            total += len(events[-1])
        slot = n / len(events)
        for k, event in enumerate(events):
            start = int(k * slot + rng.uniform(0.0, slot))
            start = max(0, min(start, n - len(event)))
            snr_db = rng.uniform(*SNR_RANGE_DB)
            _place(out, start, event * (scale * 10.0 ** (snr_db / 20)))
            spans.append((name, start, min(n, start + len(event))))
    return tuple(spans)


def synthesize_scene(rng, duration_s=DEFAULT_DURATION_S, classes=None,
                     vocabulary=CLASS_NAMES, sr=C.SAMPLE_RATE,
                     environments=None):
    """Synthesises one scene: recurring events of 1-3 classes over noise.

    Args:
      rng: `np.random.Generator`; every random choice is drawn from it.
      duration_s: length in seconds; the result has round(duration_s * sr)
        samples.
      classes: class names present in the recording (non-empty, each in
        `vocabulary`); None draws 1 to `MAX_CLASSES_PER_RECORDING` distinct
        classes from `vocabulary`.
      vocabulary: the class names to draw from, and the order of the labels.
      sr: sample rate in Hz.
      environments: None for version 1's conditions (the recording's own
        constant background); a pool of `Environment` (`environment_pool`)
        for version 2's. The events are the same either way.

    Returns:
      a `Scene`.

    Raises:
      ValueError: on a non-positive duration or invalid classes.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    vocabulary = tuple(vocabulary)
    classes = _check_classes(rng, classes, vocabulary)
    n = _num_samples(duration_s, sr)
    if environments is None:
        background_rms = 10.0 ** (rng.uniform(*BACKGROUND_DBFS_RANGE) / 20.0)
        mix = _background(n, rng, sr) * background_rms
        spans = _place_events(mix, rng, classes, background_rms, sr)
        envs, switch_s = (), None
    else:
        # Version 2 skips the draws of version 1's background: the events
        # that follow in the stream are then version 1's, so that the two
        # versions differ in their recording conditions alone.
        _skip_background(n, rng)
        dry = np.zeros(n)
        spans = _place_events(dry, rng, classes, 1.0, sr)
        mix, envs, switch_s = _render_conditions(dry, rng, sr,
                                                 tuple(environments))
    peak = np.max(np.abs(mix))
    if peak > _PEAK_LIMIT:
        mix *= _PEAK_LIMIT / peak
    labels = tuple(c for c in vocabulary if c in classes)
    return Scene(mix.astype(np.float32), labels, spans, envs, switch_s)


def synthesize_recording(rng, duration_s=DEFAULT_DURATION_S, classes=None,
                         vocabulary=CLASS_NAMES, sr=C.SAMPLE_RATE,
                         environments=None):
    """Synthesises one scene: recurring events of 1-3 classes over noise.

    Args:
      rng, duration_s, classes, vocabulary, sr, environments: as in
        `synthesize_scene`.

    Returns:
      (waveform, labels): float32 array [num_samples] with peaks within
      +-0.98, and the tuple of present class names in `vocabulary` order.

    Raises:
      ValueError: on a non-positive duration or invalid classes.
    """
    scene = synthesize_scene(rng, duration_s, classes, vocabulary, sr,
                             environments)
    return scene.waveform, scene.labels


def to_pcm16(waveform):
    """Quantises a float waveform in [-1, 1] to int16 (round to nearest)."""
    return np.round(np.clip(waveform, -1.0, 1.0) * 32767.0).astype(np.int16)


vocabulary_for = corpus_config.vocabulary_for


def recording_rng(seed, split, index):
    """The generator that recording `index` of `split` is drawn from.

    Args:
      seed: the corpus seed (non-negative int).
      split: "train" or "eval".
      index: recording index within the split (non-negative int).

    Returns:
      `np.random.Generator` seeded from (seed, split, index) alone.

    Raises:
      ValueError: on an unknown split.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def corpus_scene(seed, split, index, duration_s=DEFAULT_DURATION_S,
                 num_classes=None, corpus_version=DEFAULT_CORPUS_VERSION):
    """Regenerates one recording of a `generate_corpus` corpus, with its scene.

    Args:
      seed: the corpus seed (non-negative int).
      split: "train" or "eval".
      index: recording index within the split.
      duration_s: recording length in seconds.
      num_classes: as in `generate_corpus`.
      corpus_version: as in `generate_corpus`.

    Returns:
      (pcm, scene): int16 array, exactly the samples written to the WAV file,
      and the `Scene` (labels, event spans, environments) it was made from.

    Raises:
      ValueError: on an unknown split or version, or invalid arguments.
    """
    if corpus_version not in CORPUS_VERSIONS:
        raise ValueError(f"corpus_version must be one of {CORPUS_VERSIONS}, "
                         f"got {corpus_version!r}")
    rng = recording_rng(seed, split, index)
    vocabulary = vocabulary_for(num_classes)
    # Balance: recording i's first class cycles through a seeded permutation,
    # so every class is present in any split of >= len(vocabulary) recordings.
    # Its stream key is out of reach of recording indices.
    order = np.random.default_rng(
        [seed, _SPLIT_CODES[split], 2 ** 32]).permutation(len(vocabulary))
    first = vocabulary[order[index % len(vocabulary)]]
    others = [c for c in vocabulary if c != first]
    extra = int(rng.integers(0, min(MAX_CLASSES_PER_RECORDING,
                                    len(vocabulary))))
    classes = [first] + [others[i] for i in rng.choice(
        len(others), extra, replace=False)]
    pool = environment_pool(seed) if corpus_version >= 2 else None
    scene = synthesize_scene(rng, duration_s, classes=classes,
                             vocabulary=vocabulary, environments=pool)
    return to_pcm16(scene.waveform), scene


def corpus_recording(seed, split, index, duration_s=DEFAULT_DURATION_S,
                     num_classes=None, corpus_version=DEFAULT_CORPUS_VERSION):
    """Regenerates one recording of a `generate_corpus` corpus on its own.

    Args:
      seed: the corpus seed (non-negative int).
      split: "train" or "eval".
      index: recording index within the split.
      duration_s: recording length in seconds.
      num_classes: as in `generate_corpus`.
      corpus_version: as in `generate_corpus`.

    Returns:
      (pcm, labels): int16 array, exactly the samples written to the WAV
      file, and the tuple of class names present.

    Raises:
      ValueError: on an unknown split or version, or invalid arguments.
    """
    pcm, scene = corpus_scene(seed, split, index, duration_s, num_classes,
                              corpus_version)
    return pcm, scene.labels


# ---------------------------------------------------------------------------
# Corpus writer.


CorpusConfig = corpus_config.CorpusConfig
"""The settings of one corpus (their home: `config.corpus`)."""

EVENTS_CSV = "events.csv"
"""Where `generate_corpus` writes every occurrence's class and times."""
EVENTS_COLUMNS = ["path", "label", "onset_s", "offset_s"]


def _relative_path(split, index):
    return f"audio/{split}/{split}_{index:05d}.wav"


def _write_recording(task):
    """Synthesises and writes one recording; runs in a worker process."""
    (out_dir, seed, split, index, duration_s, num_classes,
     corpus_version) = task
    pcm, scene = corpus_scene(seed, split, index, duration_s, num_classes,
                              corpus_version)
    path = _relative_path(split, index)
    sf.write(os.path.join(out_dir, path), pcm, C.SAMPLE_RATE,
             subtype="PCM_16", format="WAV")
    spans = [(name, start / C.SAMPLE_RATE, stop / C.SAMPLE_RATE)
             for name, start, stop in sorted(scene.events,
                                             key=lambda e: (e[1], e[2]))]
    return path, scene.labels, split, spans, scene.environments


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "labels", "split"])
        for rel, labels, split, *_ in rows:
            writer.writerow([rel, ";".join(labels), split])


def _write_events_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(EVENTS_COLUMNS)
        for rel, _, _, spans, _ in rows:
            for name, onset, offset in spans:
                writer.writerow([rel, name, "%.5f" % onset, "%.5f" % offset])


def read_events_csv(path):
    """Reads `generate_corpus`'s events.csv.

    Args:
      path: the file.

    Returns:
      {relative WAV path: [(label, onset_s, offset_s), ...]}, onset order.

    Raises:
      OSError: if it cannot be read.
      ValueError: if it is not an events file.
    """
    events = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != EVENTS_COLUMNS:
            raise ValueError(f"{path}: expected columns {EVENTS_COLUMNS}, "
                             f"got {reader.fieldnames}")
        for row in reader:
            events.setdefault(row["path"], []).append(
                (row["label"], float(row["onset_s"]), float(row["offset_s"])))
    return events


def generate_corpus(out_dir, num_train, num_eval, seed=0,
                    duration_s=DEFAULT_DURATION_S, num_classes=None,
                    workers=1, corpus_version=DEFAULT_CORPUS_VERSION):
    """Writes a labelled synthetic corpus (WAVs, CSVs, corpus.json).

    Output is byte-identical for the same arguments whatever `workers` is.

    Args:
      out_dir: directory to write to (created if missing; files of an earlier
        corpus with the same names are overwritten).
      num_train: number of training recordings.
      num_eval: number of evaluation recordings.
      seed: non-negative corpus seed.
      duration_s: length of every recording in seconds.
      num_classes: use the first this many of `CLASS_NAMES`; None for all.
      workers: worker processes; 1 generates serially, 0 uses every core.
      corpus_version: the recording conditions, one of `CORPUS_VERSIONS`
        (see the module docstring); version 1 writes the first demo's
        recordings byte for byte.

    Returns:
      Summary dict: the config fields, "classes", "sample_rate",
      "labels_csv", "train_csv", "eval_csv", "events_csv", "class_counts"
      ({split: {class: recordings}}), "seconds" and "seconds_per_recording"
      (wall-clock).

    Raises:
      ValueError: on invalid arguments.
    """
    config = CorpusConfig(out_dir=out_dir, num_train=num_train,
                          num_eval=num_eval, seed=seed, duration_s=duration_s,
                          num_classes=num_classes, workers=workers,
                          corpus_version=corpus_version).require_out_dir()
    vocabulary = vocabulary_for(num_classes)
    for split in SPLITS:
        os.makedirs(os.path.join(out_dir, "audio", split), exist_ok=True)
    tasks = [(out_dir, seed, split, i, duration_s, num_classes,
              corpus_version)
             for split, count in zip(SPLITS, (num_train, num_eval))
             for i in range(count)]
    workers = workers or os.cpu_count() or 1
    workers = min(workers, len(tasks))
    logging.info("Synthesising %d train + %d eval recordings of %.1f s, "
                 "%d classes, corpus version %d, %d worker(s) -> %s",
                 num_train, num_eval, duration_s, len(vocabulary),
                 corpus_version, workers, out_dir)
    started = time.perf_counter()
    rows = []
    report_every = max(1, len(tasks) // 10)

    def collect(results):
        for row in results:
            rows.append(row)
            if len(rows) % report_every == 0 or len(rows) == len(tasks):
                logging.info("Wrote %d / %d recordings", len(rows), len(tasks))

    if workers == 1:
        collect(map(_write_recording, tasks))
    else:
        # Spawn, not fork: the caller may have TensorFlow's threads running.
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            collect(ex.map(_write_recording, tasks,
                           chunksize=max(1, len(tasks) // (4 * workers))))
    seconds = time.perf_counter() - started

    paths = {"labels_csv": "labels.csv", "train_csv": "train.csv",
             "eval_csv": "eval.csv", "events_csv": EVENTS_CSV}
    _write_csv(os.path.join(out_dir, paths["labels_csv"]), rows)
    for split in SPLITS:
        _write_csv(os.path.join(out_dir, paths[f"{split}_csv"]),
                   [r for r in rows if r[2] == split])
    _write_events_csv(os.path.join(out_dir, paths["events_csv"]), rows)
    counts = {split: {c: sum(1 for _, labels, s, *_ in rows
                             if s == split and c in labels)
                      for c in vocabulary} for split in SPLITS}
    # Only what determines the content, so that the whole directory is
    # byte-identical for the same corpus wherever and however it was built.
    manifest = {
        "config": config.content(),
        "classes": list(vocabulary),
        "sample_rate": C.SAMPLE_RATE,
        "format": "WAV PCM_16 mono",
        "class_counts": counts,
        "snr_range_db": list(SNR_RANGE_DB),
        "background_dbfs_range": list(BACKGROUND_DBFS_RANGE),
    }
    if corpus_version >= 2:
        pool = environment_pool(seed)
        manifest["environments"] = [env.describe() for env in pool]
        # How many recordings of each split were made (partly) in each one.
        manifest["environment_counts"] = {
            split: [sum(1 for *_, s, _, envs in rows
                        if s == split and k in envs)
                    for k in range(len(pool))] for split in SPLITS}
        manifest["second_environment_recordings"] = {
            split: sum(1 for *_, s, _, envs in rows
                       if s == split and len(envs) > 1) for split in SPLITS}
    jsonio.write_json(os.path.join(out_dir, "corpus.json"), manifest)
    logging.info("Corpus written in %.1f s (%.3f s per recording): %s",
                 seconds, seconds / max(1, len(tasks)),
                 os.path.join(out_dir, paths["labels_csv"]))
    summary = dataclasses.asdict(config)
    summary.update({
        "classes": list(vocabulary),
        "sample_rate": C.SAMPLE_RATE,
        "class_counts": counts,
        "seconds": seconds,
        "seconds_per_recording": seconds / max(1, len(tasks)),
    })
    summary.update({k: os.path.join(out_dir, v) for k, v in paths.items()})
    return summary
