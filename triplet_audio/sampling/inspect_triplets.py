"""A picture of what a sampler feeds the model, for eyeballing a config.

`save_triplet_grid` draws rows of (anchor, positive, negative) log-mel windows
(time on x, mel band on y) into a PNG, titled with the sampler, from a batch
or dataset of the input pipeline.
"""

import os

from absl import logging
# The Agg canvas is attached to the figure directly (no pyplot), so drawing
# needs no display and leaves the process-wide backend alone.
from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import options
from triplet_audio.features import records
from triplet_audio.sampling import samplers

COLUMNS = ("anchor", "positive", "negative")
CELL_INCHES = (3.0, 2.0)
DPI = 100


def _from_triplet_dicts(dicts):
    if not dicts:
        return np.zeros((0, 3) + C.WINDOW_SHAPE, np.float32), []
    windows = np.stack([np.stack([d[samplers.ANCHOR], d[samplers.POSITIVE],
                                  d[samplers.NEGATIVE]]) for d in dicts])
    names = [options.SAMPLERS[int(d[samplers.SAMPLER])]
             if samplers.SAMPLER in d else None for d in dicts]
    return windows, names


def _collect(source, num_triplets):
    """Returns windows [n, 3, T, F] and per-triplet sampler names (or None)."""
    if isinstance(source, tf.data.Dataset):
        windows, names = [], []
        for element in source:
            element = tf.nest.map_structure(np.asarray, element)
            w, n = _collect(element, num_triplets - len(windows))
            windows.extend(w)
            names.extend(n)
            if len(windows) >= num_triplets:
                break
        return np.asarray(windows[:num_triplets]), names[:num_triplets]
    if isinstance(source, dict):
        batch = {k: np.asarray(v) for k, v in source.items()}
        if batch[samplers.ANCHOR].ndim == 2:
            return _from_triplet_dicts([batch])
        count = batch[samplers.ANCHOR].shape[0]
        dicts = [{k: v[i] for k, v in batch.items()}
                 for i in range(min(count, num_triplets))]
        return _from_triplet_dicts(dicts)
    if isinstance(source, (tuple, list)):
        source = source[0]
    windows = np.asarray(source, dtype=np.float32)
    if windows.ndim != 3 or windows.shape[1:] != C.WINDOW_SHAPE or (
            windows.shape[0] % 3):
        raise ValueError("expected windows [3k, %d, %d], got %s" %
                         (C.WINDOW_SHAPE + (windows.shape,)))
    windows = windows.reshape((-1, 3) + C.WINDOW_SHAPE)[:num_triplets]
    return windows, [None] * len(windows)


def save_triplet_grid(dataset_or_batch, path, num_triplets=6, sampler=None):
    """Writes a PNG grid of triplets: one row per triplet, columns a / p / n.

    Args:
      dataset_or_batch: a batch `(windows [3k, 96, 64], labels)` or just the
        windows (layout of `pipeline`), a triplet dict (single or batched, from
        `pipeline.make_triplets`), or a tf.data.Dataset of either; enough
        elements are taken for `num_triplets` rows.
      path: output PNG path (parent directories are created).
      num_triplets: rows to draw (fewer if the input has fewer).
      sampler: sampler name for the title; triplet dicts name their own.

    Returns:
      the number of triplets drawn.

    Raises:
      ValueError: when the input holds no triplet or has the wrong shape.
    """
    windows, names = _collect(dataset_or_batch, num_triplets)
    if not len(windows):
        raise ValueError("no triplets to draw")
    rows = len(windows)
    fig = mpl_figure.Figure(figsize=(CELL_INCHES[0] * 3, CELL_INCHES[1] * rows),
                            dpi=DPI)
    backend_agg.FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    # One colour scale for the whole grid, so a positive that is louder than
    # its anchor looks louder.
    vmin, vmax = float(windows.min()), float(windows.max())
    for i in range(rows):
        for j in range(3):
            ax = axes[i, j]
            ax.imshow(windows[i, j].T, origin="lower", aspect="auto",
                      interpolation="nearest", vmin=vmin, vmax=vmax,
                      cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(COLUMNS[j], fontsize=10)
            if j == 0:
                ax.set_ylabel("%s\nmel" % names[i] if names[i] else "mel",
                              fontsize=8)
        axes[i, 0].set_xlabel("time", fontsize=7)
    present = sorted({n for n in names if n})
    if sampler:
        title = sampler
    elif len(present) > 1:
        title = "joint (%s)" % ", ".join(present)
    else:
        title = present[0] if present else "unknown"
    fig.suptitle("sampler: %s" % title)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
    logging.info("wrote %d triplets to %s", rows, path)
    return rows


def inspect(file_pattern, output, sampler_config, num_triplets=6, seed=0):
    """Samples `num_triplets` triplets from a corpus and writes their grid.

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      output: PNG path.
      sampler_config: `pipeline.SamplerConfig`.
      num_triplets: rows of the grid.
      seed: pipeline seed.

    Returns:
      the PNG path.
    """
    from triplet_audio.sampling import pipeline  # pylint: disable=g-import-not-at-top
    dataset = pipeline.make_triplet_dataset(
        file_pattern, sampler_config, 3 * num_triplets, seed=seed,
        repeat=False)
    try:
        path = save_triplet_grid(dataset, output, num_triplets=num_triplets,
                                 sampler=sampler_config.sampler)
    except tf.errors.DataLossError as e:
        raise records.data_loss_error(records.list_shards(file_pattern),
                                      e) from e
    logging.info("wrote %d %s triplets to %s", num_triplets,
                 sampler_config.sampler, output)
    return path or output
