"""The HEAR 2021 common API over an export written by bin/export.

HEAR (Holistic Evaluation of Audio Representations) compares audio
embeddings through three functions of a module named on its command line
(https://hearbenchmark.com/hear-api.html); `triplet_audio.hear` is that
module:

  load_model(model_file_path) -> model, a tf.Module with `sample_rate`
      (16000), `scene_embedding_size` and `timestamp_embedding_size` (the
      export's embedding size D).
  get_scene_embeddings(audio, model) -> float32 [n_sounds, D]
  get_timestamp_embeddings(audio, model)
      -> (float32 [n_sounds, n_timestamps, D], float32 [n_sounds,
         n_timestamps] milliseconds)

`audio` is float32 [n_sounds, n_samples] at 16 kHz (a tf.Tensor, or
anything NumPy converts), samples in [-1, 1]. Everything runs through the
export's own SavedModel (its `embed_waveforms` signature, loaded with plain
`tf.saved_model.load`), so HEAR measures exactly what bin/export shipped.

Scene embeddings: the mean of the sound's non-overlapping 0.96 s window
embeddings, not re-normalised: the paper's segment embedding, and the
`clip_embedding` serving_default returns. A sound shorter than one window
(0.975 s) is zero-padded to one window.

Timestamp embeddings: windows every `timestamp_hop_seconds` (default 0.05 s;
HEAR asks for 50 ms or less), each 0.96 s long (0.975 s of samples). The
sound is zero-padded by half a window (7,800 samples) at both ends, so
window w is centred on w x hop in the sound: the timestamps (window
centres) run 0, 50, 100, ... ms, regularly, up to the sound's end at most,
and an event at the very start or end still has a window centred on it.

Memory: the caller's audio is read, never copied whole (float32 input is
used as it is): sounds are embedded `SOUNDS_PER_CALL` at a time, in calls of
about `CALL_SECONDS` of audio per sound, each a stretch of samples (zero
padding included) that yields whole windows of the sound, so the windows
and their frames are those of the whole sound; inside a call the SavedModel
makes and embeds the windows at most `export.SERVING_BATCH_WINDOWS` at a
time. What grows with the length is the audio itself and the [n_sounds,
n_timestamps, D] output (see the README for the bound measured on
20-minute sounds).

Bad input (not an array, ragged, not 2-D, no sound or no sample, NaN or Inf
samples, a non-float dtype, samples so large that the embeddings overflow)
is refused with a ValueError that says which.
"""

import re

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import serving as serving_config
from triplet_audio.features import frontend
from triplet_audio.serving import export

SOUNDS_PER_CALL = 16
"""Sounds embedded per call of the SavedModel."""

CALL_SECONDS = 60.0
"""Audio per sound per call of the SavedModel (rounded to whole windows)."""

SCENE_HOP_SECONDS = C.WINDOW_SECONDS
"""Hop of the windows averaged into a scene embedding: non-overlapping."""

_SIGNATURE = "embed_waveforms"


class HearModel(tf.Module):
    """What `load_model` returns: the export's SavedModel and its sizes.

    Attributes:
      sample_rate: 16000 (Hz), the rate `audio` must have.
      scene_embedding_size: D, the export's embedding size.
      timestamp_embedding_size: D.
      timestamp_hop_seconds: seconds between timestamps.
      export_dir: the export directory it was loaded from.
    """

    def __init__(self, loaded, embedding_size, timestamp_hop_seconds,
                 export_dir):
        super().__init__(name="triplet_audio_hear")
        self.sample_rate = C.SAMPLE_RATE
        self.scene_embedding_size = int(embedding_size)
        self.timestamp_embedding_size = int(embedding_size)
        self.timestamp_hop_seconds = float(timestamp_hop_seconds)
        self.export_dir = export_dir
        # The loaded object owns the variables; the signature only holds
        # weak references to them.
        self._loaded = loaded
        self._embed = loaded.signatures[_SIGNATURE]

    def embed(self, waveforms, hop_seconds):
        """[B, N] float32 -> embed_waveforms' outputs (a dict of tensors)."""
        return self._embed(waveforms=waveforms,
                           hop_seconds=tf.constant(hop_seconds, tf.float32))


def load_model(model_file_path="",
               timestamp_hop_seconds=serving_config.HEAR_TIMESTAMP_HOP_SECONDS):
    """Loads an export for the HEAR API.

    Args:
      model_file_path: the export directory written by bin/export (or the
        SavedModel directory inside it): what HEAR's tools pass as
        `-m`/`--model`.
      timestamp_hop_seconds: seconds between timestamp embeddings, a
        multiple of 0.01 from 0.01 to 0.96 (default 0.05).

    Returns:
      a `HearModel` (a tf.Module).

    Raises:
      ValueError: no path, a bad hop, an export whose front end differs
        from this code's, or a SavedModel without `embed_waveforms` (made
        before it existed: re-export it).
      FileNotFoundError: no SavedModel at the path.
    """
    if not model_file_path:
        raise ValueError(
            "load_model: needs the export directory written by bin/export "
            "(e.g. hear-validator triplet_audio.hear -m exports/proximity)")
    C.window_hop_frames(timestamp_hop_seconds, name="timestamp_hop_seconds")
    path, _, meta = export.checked_metadata(
        model_file_path, remedy="use the code that made it, or retrain and "
        "export with this one")
    if meta is None:
        logging.warning("%s has no %s; using the SavedModel as it is",
                        model_file_path, export.METADATA_NAME)
        meta = {}
    loaded = tf.saved_model.load(path)
    if _SIGNATURE not in loaded.signatures:
        raise ValueError(
            "load_model: %s has no %s signature (exported by an older "
            "version); export it again with bin/export" % (path, _SIGNATURE))
    embedding_size = meta.get("embedding_size")
    if embedding_size is None:
        out = loaded.signatures[_SIGNATURE](
            waveforms=tf.zeros([1, C.MIN_WINDOW_SAMPLES]),
            hop_seconds=tf.constant(C.WINDOW_SECONDS))
        embedding_size = int(out["window_embeddings"].shape[-1])
    return HearModel(loaded, embedding_size, timestamp_hop_seconds,
                     model_file_path)


def _check_audio(audio, caller):
    """`audio` as a float32 NumPy [n_sounds, n_samples], or a ValueError.

    float32 input (a NumPy array, or a tf.Tensor on the CPU) is used without
    a copy.
    """
    if isinstance(audio, tf.Tensor):
        if not audio.dtype.is_floating:
            raise ValueError("%s: audio must be floating-point samples in "
                             "[-1, 1], got dtype %s" % (caller,
                                                        audio.dtype.name))
        audio = audio.numpy()
    elif hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().cpu().numpy()
    try:
        audio = np.asarray(audio)
    except ValueError as e:  # NumPy's "inhomogeneous shape" for ragged lists
        raise ValueError("%s: audio must be a 2-D array [n_sounds, n_samples] "
                         "(sounds of equal length), got %s: %s" % (
                             caller, type(audio).__name__, e)) from e
    if audio.dtype.kind != "f":
        raise ValueError("%s: audio must be floating-point samples in "
                         "[-1, 1], got dtype %s" % (caller, audio.dtype))
    if audio.ndim != 2:
        raise ValueError("%s: audio must be 2-D [n_sounds, n_samples] at "
                         "%d Hz, got shape %s" % (caller, C.SAMPLE_RATE,
                                                  list(audio.shape)))
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError("%s: audio is empty (shape %s): need at least one "
                         "sound of at least one sample" % (
                             caller, list(audio.shape)))
    audio = audio.astype(np.float32, copy=False)
    bad = [i for i in range(audio.shape[0])
           if not np.isfinite(audio[i]).all()]
    if bad:
        raise ValueError("%s: audio has NaN or Inf samples (sound%s %s)" % (
            caller, "s" if len(bad) > 1 else "",
            ", ".join(str(i) for i in bad[:5]) +
            (", ..." if len(bad) > 5 else "")))
    return audio


def _check_model(model, caller):
    if not isinstance(model, HearModel):
        raise ValueError("%s: model must be what load_model returned, got %s"
                         % (caller, type(model).__name__))


def _window_embeddings(model, audio, hop_frames, lead, caller):
    """Embeddings [n_sounds, W, D] of the windows of the padded sounds.

    The padded sound is `lead` zeros, the sound, then zeros up to a whole
    window at least (and `lead` more when lead > 0): window w starts at
    sample w * hop of it. Calls cover `CALL_SECONDS` of windows each; a
    call's stretch is cut from the sound (a view) with zeros where the
    padding is, so no padded copy of a whole sound is made. A request the
    export refuses (embeddings that overflow on huge samples) is a
    ValueError naming `caller` and the sounds.
    """
    num_sounds, num_samples = audio.shape
    hop_samples = hop_frames * C.STFT_HOP_SAMPLES
    padded = max(num_samples + 2 * lead, C.MIN_WINDOW_SAMPLES)
    num_windows = frontend.num_windows_for_samples(padded,
                                                   hop_frames=hop_frames)
    per_call = max(1, int(CALL_SECONDS * C.SAMPLE_RATE) // hop_samples)
    hop_seconds = hop_frames * C.STFT_HOP_SECONDS
    out = np.empty((num_sounds, num_windows, model.timestamp_embedding_size),
                   np.float32)
    for first_sound in range(0, num_sounds, SOUNDS_PER_CALL):
        sounds = slice(first_sound, first_sound + SOUNDS_PER_CALL)
        for first in range(0, num_windows, per_call):
            count = min(per_call, num_windows - first)
            start = first * hop_samples - lead  # in the sound's samples
            length = frontend.samples_for_windows(count, hop_frames)
            lo, hi = max(start, 0), min(start + length, num_samples)
            if lo == start and hi == start + length:
                stretch = audio[sounds, lo:hi]
            else:
                stretch = np.zeros((audio[sounds].shape[0], length),
                                   np.float32)
                stretch[:, lo - start:hi - start] = audio[sounds, lo:hi]
            try:
                emb = model.embed(stretch, hop_seconds)["window_embeddings"]
            except tf.errors.InvalidArgumentError as e:
                raise ValueError("%s: sounds %d-%d: %s" % (
                    caller, first_sound, first_sound + stretch.shape[0] - 1,
                    _assertion_message(e))) from e
            out[sounds, first:first + count] = emb.numpy()
    return out


def _assertion_message(error):
    """The message of the export's failed in-graph check (or the error's)."""
    found = re.search(r"assertion failed: \[(.*?)\](?: \[(.*?)\])?",
                      error.message)
    if found is None:
        return error.message.strip().splitlines()[-1]
    return " ".join(g for g in found.groups()
                    if g and not g.startswith("Condition"))


def get_scene_embeddings(audio, model):
    """One embedding per sound: the mean of its 0.96 s window embeddings.

    Args:
      audio: float32 [n_sounds, n_samples] at 16 kHz.
      model: what `load_model` returned.

    Returns:
      float32 tf.Tensor [n_sounds, model.scene_embedding_size].

    Raises:
      ValueError: on bad audio (see the module docstring) or model.
    """
    caller = "get_scene_embeddings"
    _check_model(model, caller)
    audio = _check_audio(audio, caller)
    windows = _window_embeddings(model, audio,
                                 C.window_hop_frames(SCENE_HOP_SECONDS), 0,
                                 caller)
    return tf.constant(windows.mean(axis=1, dtype=np.float32))


def timestamps_ms(num_timestamps, hop_seconds):
    """Centres (ms) of the first `num_timestamps` timestamp windows."""
    hop_samples = C.window_hop_frames(hop_seconds) * C.STFT_HOP_SAMPLES
    # In samples first: exact, with no rounding to drift over long sounds.
    return np.arange(num_timestamps, dtype=np.float64) * (
        hop_samples * 1000.0 / C.SAMPLE_RATE)


def num_timestamps(num_samples, hop_seconds):
    """n_timestamps `get_timestamp_embeddings` gives for n_samples samples."""
    hop_samples = C.window_hop_frames(hop_seconds) * C.STFT_HOP_SAMPLES
    # Centre padding adds one window of samples in all; window w is centred
    # on sample w * hop_samples of the sound, the last at most at its end.
    return 1 + int(num_samples) // hop_samples


def get_timestamp_embeddings(audio, model):
    """Embeddings of windows every `model.timestamp_hop_seconds`.

    Args:
      audio: float32 [n_sounds, n_samples] at 16 kHz.
      model: what `load_model` returned.

    Returns:
      (embeddings float32 tf.Tensor [n_sounds, n_timestamps,
      model.timestamp_embedding_size], timestamps float32 tf.Tensor
      [n_sounds, n_timestamps]: window centres in milliseconds, 0, hop,
      2 hop, ...).

    Raises:
      ValueError: on bad audio (see the module docstring) or model.
    """
    caller = "get_timestamp_embeddings"
    _check_model(model, caller)
    audio = _check_audio(audio, caller)
    hop = model.timestamp_hop_seconds
    embeddings = _window_embeddings(model, audio, C.window_hop_frames(hop),
                                    C.MIN_WINDOW_SAMPLES // 2, caller)
    times = timestamps_ms(embeddings.shape[1], hop).astype(np.float32)
    timestamps = np.broadcast_to(times, embeddings.shape[:2])
    return tf.constant(embeddings), tf.constant(timestamps)
