"""Small generated WAV files for the tests (noise, optionally a tone)."""

import os

import numpy as np
import soundfile as sf


def write_wav(path, seconds, seed, tone_hz=None, rate=16000):
    """Writes seeded noise (plus a sine of `tone_hz`) as 16-bit PCM.

    Returns:
      path.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.05 * rng.standard_normal(t.size)
    if tone_hz:
        x += 0.5 * np.sin(2 * np.pi * tone_hz * t)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, rate, subtype="PCM_16")
    return path
