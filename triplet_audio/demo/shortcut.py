"""How well a recording can be named from its background alone.

The temporal-proximity sampler pairs two windows of one recording against a
window of another. Whatever tells recordings apart serves that task, the
sound classes a recording contains or anything else that recurs in it; if the
background alone names the recording, a network can pass the task without
learning the classes. (Version 1 of the synthetic corpus gave every recording
its own constant background, and proximity learned little else.) This module
measures that shortcut on a corpus written by `demo.synthetic`:

* Event-free frames. The corpus's events.csv gives every occurrence's span.
  A log-mel frame (the front end's, 25 ms every 10 ms) is event-free when it
  overlaps no span widened by `PRE_S` before and `POST_S` after (a room's
  reverberation outlasts the dry event).
* One example per 0.96 s window (the windows the models see): the mean
  log-mel of its event-free frames, 64 numbers, when it has at least
  `MIN_FREE_FRAMES` of them; windows with fewer are left out.
* A linear probe with the recording as the class, fitted on some windows of
  every recording and scored on the others, in two splits:

  - interleaved: a recording's usable windows alternate between fit and test
    (neighbours in time: the background at its most alike);
  - halves: windows of the first half are fitted, those of the second half
    scored (what recurs across the recording, as proximity's positives,
    drawn anywhere in it, need).

  The probe is linear discriminant analysis (`fit_discriminant`:
  standardised inputs, one covariance shared by all recordings, shrunk by
  `SHRINKAGE` towards a scaled identity). With hundreds of recordings and
  one to three fitted windows each, it learns how a background scatters
  within a recording from all recordings at once; logistic regression
  (scikit-learn's, C=1), whose penalty weighs on every recording's few
  windows, understates the shortcut: on the demo's version-1 corpus it names
  68% of windows where the discriminant names 99% (23% and 21% on version
  2). The figure is the accuracy on the scored windows; chance is one over
  the number of recordings in the probe.

This module loads TensorFlow (the front end), as the demo's report does.
"""

import csv
import os

from absl import logging
import numpy as np
import soundfile as sf

from triplet_audio import constants as C
from triplet_audio.config import jsonio
from triplet_audio.demo import synthetic

PRE_S = 0.02
"""Frames this close before an event's onset count as the event's."""
POST_S = 0.5
"""Frames this close after an event's offset count as the event's (its
release and reverberation)."""
MIN_FREE_FRAMES = 24
"""Event-free frames a window needs to be an example (0.24 s)."""
SHRINKAGE = 0.1
"""Of the probe's covariance estimate, towards a scaled identity."""
PROTOCOLS = ("interleaved", "halves")
SETTINGS = {"probe": "linear discriminant", "shrinkage": SHRINKAGE,
            "pre_s": PRE_S, "post_s": POST_S,
            "min_free_frames": MIN_FREE_FRAMES}
"""What determines a measurement besides the corpus (a cached result is
stale when they change)."""
_BATCH = 16  # Recordings per call of the front end.


def event_free_frames(num_frames, spans_s, pre_s=PRE_S, post_s=POST_S):
    """Which log-mel frames overlap no (widened) event span.

    Args:
      num_frames: frames of the recording (frame f covers samples
        [f * hop, f * hop + window) of the front end).
      spans_s: iterable of (onset_s, offset_s).
      pre_s, post_s: widening of every span before and after.

    Returns:
      bool array [num_frames], True where the frame is event-free.
    """
    starts = np.arange(num_frames) * C.STFT_HOP_SAMPLES / C.SAMPLE_RATE
    ends = starts + C.STFT_WINDOW_SAMPLES / C.SAMPLE_RATE
    free = np.ones(num_frames, bool)
    for onset, offset in spans_s:
        free &= ~((starts < offset + post_s) & (ends > onset - pre_s))
    return free


def background_examples(logmel, free, min_free=MIN_FREE_FRAMES):
    """The probe's examples of one recording: one per usable window.

    Args:
      logmel: float array [num_frames, bands].
      free: bool array [num_frames] (`event_free_frames`).
      min_free: event-free frames a window needs.

    Returns:
      (features [W, bands] float32, window indexes [W] int): the mean
      log-mel of the event-free frames of each window that has enough.
    """
    frames = C.WINDOW_FRAMES
    num_windows = len(logmel) // frames
    features, indexes = [], []
    for w in range(num_windows):
        mask = free[w * frames:(w + 1) * frames]
        if mask.sum() >= min_free:
            features.append(logmel[w * frames:(w + 1) * frames][mask].mean(0))
            indexes.append(w)
    bands = logmel.shape[1] if np.ndim(logmel) == 2 else C.NUM_MEL_BANDS
    return (np.asarray(features, np.float32).reshape(-1, bands),
            np.asarray(indexes, np.int64))


def split_windows(window_index, protocol, num_windows):
    """Which of one recording's examples are fitted (True) or scored (False).

    Args:
      window_index: int array [W], the examples' window indexes, ascending.
      protocol: one of `PROTOCOLS`.
      num_windows: windows of the whole recording.

    Returns:
      bool array [W].
    """
    if protocol == "interleaved":
        return np.arange(len(window_index)) % 2 == 0
    if protocol == "halves":
        return window_index < num_windows / 2.0
    raise ValueError("protocol must be one of %s, got %r" % (PROTOCOLS,
                                                             protocol))


def fit_discriminant(x, y, shrinkage=SHRINKAGE):
    """Fits linear discriminant analysis: class means, one shared covariance.

    Inputs are standardised with the fitted examples' mean and std; the
    covariance is the pooled within-class scatter (each example about its
    class's mean, over N - K degrees of freedom) shrunk towards the identity
    scaled to its mean variance; classes are weighted by their frequency.

    Args:
      x: float array [N, D].
      y: int array [N], the classes (at least two).
      shrinkage: weight of the scaled identity, in [0, 1].

    Returns:
      callable float array [M, D] -> predicted classes [M].
    """
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    z = (x - mean) / std
    classes, index, counts = np.unique(y, return_inverse=True,
                                       return_counts=True)
    centroids = np.zeros((len(classes), z.shape[1]))
    np.add.at(centroids, index, z)
    centroids /= counts[:, None]
    within = z - centroids[index]
    dof = max(1, len(z) - len(classes))
    cov = within.T @ within / dof
    scale = np.trace(cov) / cov.shape[0] if np.trace(cov) > 0 else 1.0
    cov = (1.0 - shrinkage) * cov + shrinkage * scale * np.eye(cov.shape[0])
    weights = np.linalg.solve(cov, centroids.T)            # [D, K]
    bias = -0.5 * np.sum(centroids * weights.T, axis=1) + np.log(
        counts / counts.sum())

    def predict(new):
        scores = ((np.asarray(new, np.float64) - mean) / std) @ weights + bias
        return classes[np.argmax(scores, axis=1)]
    return predict


def probe(features, recordings, fit):
    """Fits the linear probe and scores it.

    Args:
      features: float array [N, D].
      recordings: int array [N], the recording of each example.
      fit: bool array [N], True for the fitted examples.

    Returns:
      dict: "accuracy", "chance", "recordings", "fit_windows",
      "test_windows"; only recordings with examples on both sides count.
    """
    both = np.intersect1d(np.unique(recordings[fit]),
                          np.unique(recordings[~fit]))
    keep = np.isin(recordings, both)
    result = {"recordings": int(len(both)),
              "fit_windows": int(np.sum(keep & fit)),
              "test_windows": int(np.sum(keep & ~fit)),
              "chance": 1.0 / len(both) if len(both) else None,
              "accuracy": None}
    if len(both) < 2:
        return result
    predict = fit_discriminant(features[keep & fit], recordings[keep & fit])
    result["accuracy"] = float(np.mean(
        predict(features[keep & ~fit]) == recordings[keep & ~fit]))
    return result


def _read_split(corpus_dir, split):
    path = os.path.join(corpus_dir, "%s.csv" % split)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError("%s: not a corpus CSV (no path column)" % path)
        return [row["path"] for row in reader]


def _logmels(paths):
    # The front end the models see, a few recordings per call.
    from triplet_audio.features import frontend  # pylint: disable=g-import-not-at-top
    for start in range(0, len(paths), _BATCH):
        batch = [sf.read(p, dtype="float32")[0] for p in
                 paths[start:start + _BATCH]]
        length = max(len(x) for x in batch)
        if all(len(x) == length for x in batch):
            logmel = frontend.waveform_to_logmel(np.stack(batch)).numpy()
            yield from logmel
        else:
            for x in batch:
                yield frontend.waveform_to_logmel(x).numpy()


def measure(corpus_dir, split="train", max_recordings=None):
    """Measures the background shortcut of a synthetic corpus.

    Args:
      corpus_dir: a directory written by `synthetic.generate_corpus` (WAVs,
        SPLIT.csv, events.csv, corpus.json).
      split: which split's recordings to probe.
      max_recordings: probe only the first this many (None: all).

    Returns:
      dict: `SETTINGS`, "corpus_version", "split", "recordings" (read),
      "windows", "usable_windows", and per protocol of `PROTOCOLS` the
      `probe` result.

    Raises:
      OSError: if a file cannot be read.
      ValueError: if the directory is not a synthetic corpus with events.
    """
    manifest = jsonio.read_json(os.path.join(corpus_dir, "corpus.json"))
    if not isinstance(manifest, dict) or "config" not in manifest:
        raise ValueError("%s: corpus.json holds no corpus settings" %
                         corpus_dir)
    version = manifest["config"].get("corpus_version", 1)
    paths = _read_split(corpus_dir, split)[:max_recordings]
    if not paths:
        raise ValueError("%s: no %s recordings" % (corpus_dir, split))
    events = synthetic.read_events_csv(os.path.join(corpus_dir,
                                                    synthetic.EVENTS_CSV))
    features, recordings, windows, fit = [], [], [], {p: [] for p in
                                                      PROTOCOLS}
    total_windows = 0
    absolute = [os.path.join(corpus_dir, p) for p in paths]
    for index, (rel, logmel) in enumerate(zip(paths, _logmels(absolute))):
        spans = [(onset, offset) for _, onset, offset in events.get(rel, [])]
        free = event_free_frames(len(logmel), spans)
        x, w = background_examples(logmel, free)
        num_windows = len(logmel) // C.WINDOW_FRAMES
        total_windows += num_windows
        features.append(x)
        recordings.append(np.full(len(w), index))
        windows.append(w)
        for protocol in PROTOCOLS:
            fit[protocol].append(split_windows(w, protocol, num_windows))
    features = np.concatenate(features)
    recordings = np.concatenate(recordings)
    result = dict(SETTINGS, corpus_version=version, split=split,
                  recordings=len(paths), windows=total_windows,
                  usable_windows=int(len(features)))
    for protocol in PROTOCOLS:
        result[protocol] = probe(features, recordings,
                                 np.concatenate(fit[protocol]))
    logging.info("Background shortcut of %s (version %s, %s): %s",
                 corpus_dir, version, split,
                 ", ".join("%s %s" % (p, _percent(result[p]["accuracy"]))
                           for p in PROTOCOLS))
    return result


def _percent(value, digits=0):
    return "n/a" if value is None else "%.*f%%" % (digits, 100.0 * value)


def summary_markdown(result):
    """A few lines of Markdown that state a `measure` result.

    Args:
      result: what `measure` returned, or {"error": reason} when it could
        not be measured.

    Returns:
      str.
    """
    if "error" in result:
        return "Not measured: %s.\n" % result["error"]
    inter, halves = result["interleaved"], result["halves"]
    return (
        "A linear probe (linear discriminant analysis on the mean log-mel of "
        "a window's event-free frames: its background alone) names the %s "
        "recording of **%s** of held-out windows when fitted on the "
        "neighbouring windows of each recording (%d recordings, chance %s), "
        "and **%s** when fitted on the first half and scored on the second "
        "(%d recordings, chance %s). Corpus version %s; %d of %d windows "
        "have at least %d event-free frames.\n" % (
            result["split"], _percent(inter["accuracy"]),
            inter["recordings"], _percent(inter["chance"], 1),
            _percent(halves["accuracy"]), halves["recordings"],
            _percent(halves["chance"], 1), result["corpus_version"],
            result["usable_windows"], result["windows"],
            result["min_free_frames"]))
