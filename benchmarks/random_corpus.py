"""A corpus of random log-mel windows for the input-pipeline benchmarks."""

import json
import os

import numpy as np


def write_corpus(directory, num_recordings, windows, num_shards,
                 num_classes=0):
    """Writes random-window records (and a manifest) to `directory`.

    Args:
      directory: corpus directory, created if missing.
      num_recordings: records to write, dealt round-robin over the shards.
      windows: windows per record, N(0, 2^2) log-mels.
      num_shards: shard files.
      num_classes: if > 0, each record gets 1 or 2 of this many labels and
        the manifest lists the vocabulary.

    Returns:
      the number of windows written.
    """
    # Imported here: a benchmark's parent process may never need TF.
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    from triplet_audio import constants as C
    from triplet_audio.features import records
    # pylint: enable=g-import-not-at-top
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(os.path.join(
        directory, records.shard_name(i, num_shards)))
        for i in range(num_shards)]
    times = np.arange(windows) * C.WINDOW_SECONDS
    for r in range(num_recordings):
        logmel = rng.normal(0.0, 2.0, (windows,) + C.WINDOW_SHAPE).astype(
            np.float32)
        labels = (rng.choice(num_classes, size=1 + r % 2, replace=False)
                  if num_classes else [])
        example = records.make_example(logmel, times, "rec%06d" % r,
                                       labels=labels)
        writers[r % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    with open(os.path.join(directory, records.MANIFEST_NAME), "w") as f:
        json.dump({"classes": ["class%d" % i for i in range(num_classes)]}, f)
    return num_recordings * windows
