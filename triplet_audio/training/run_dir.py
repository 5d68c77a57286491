"""The run directory (`--model_dir`) on disk: config, checkpoints, summary.

Everything that knows the layout of a run directory is here; training writes
it through these functions and export reads it back through them (export
needs nothing else of training).

Files in a run directory:
  config.json          the resolved TrainConfig (read back by export/embed)
  checkpoints/         tf.train.CheckpointManager (last `keep_checkpoints`)
  worker_tmp_<task>/   a non-chief worker's scratch saves (deleted after each)
  train/               TensorBoard summaries
  train_summary.json   final step, last metrics and throughput

JSON files are written atomically by `jsonio.write_json`.
"""

import os

from absl import logging
import keras
import tensorflow as tf

from triplet_audio.config import jsonio
from triplet_audio.config import training as train_config
from triplet_audio.model import models

CONFIG_NAME = jsonio.CONFIG_NAME
CHECKPOINT_SUBDIR = "checkpoints"
SUMMARY_SUBDIR = "train"
SUMMARY_NAME = "train_summary.json"

# Fields that must match when resuming into an existing model_dir: changing
# them would silently restore weights into a different experiment.
_RESUME_LOCKED = ("model", "embedding_size", "mixed_precision")


def checkpoint_dir(model_dir):
    """The directory of the run's (the chief's) checkpoints."""
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def summary_dir(model_dir):
    """The directory of the run's TensorBoard summaries."""
    return os.path.join(model_dir, SUMMARY_SUBDIR)


def summary_path(model_dir):
    """The path of the run's training summary (JSON)."""
    return os.path.join(model_dir, SUMMARY_NAME)


# ------------------------------------------------------------- config.json
def write_config(model_dir, config):
    """Atomically writes the run's resolved config as config.json.

    Args:
      model_dir: the run directory (created if missing).
      config: the TrainConfig (or a dict).

    Returns:
      the path written.
    """
    return jsonio.write_config(model_dir, config)


def read_config(model_dir):
    """The run's config.json as a dict.

    Raises:
      FileNotFoundError: naming the directory when it has no config.json.
    """
    return jsonio.read_config(model_dir)


def load_config(model_dir):
    """The run's TrainConfig, read from its config.json.

    Raises:
      FileNotFoundError: naming the directory when it has no config.json.
    """
    return train_config.config_from_dict(read_config(model_dir))


def check_resume_compatible(model_dir, config):
    """Refuses to resume a run directory into a different experiment.

    A new run directory (no config.json yet) is always compatible. Otherwise
    the fields in `_RESUME_LOCKED` (model, embedding size, precision) must
    match the saved config; a different sampler is allowed, with a warning.

    Args:
      model_dir: the run directory.
      config: the TrainConfig about to train there.

    Raises:
      ValueError: naming the flag whose value differs from the saved one.
    """
    if not os.path.exists(os.path.join(model_dir, CONFIG_NAME)):
        return
    old = read_config(model_dir)
    new = jsonio.to_jsonable(config)
    for key in _RESUME_LOCKED:
        if key in old and old[key] != new[key]:
            raise ValueError(
                "--%s=%s but %s was trained with %s=%s; use a new --model_dir"
                % (key, new[key], model_dir, key, old[key]))
    if old.get("sampler", {}).get("sampler") != new["sampler"].get("sampler"):
        logging.warning("%s was trained with sampler %s; continuing with %s",
                        model_dir, old.get("sampler", {}).get("sampler"),
                        new["sampler"].get("sampler"))


# ------------------------------------------------------------- checkpoints
def latest_checkpoint(model_dir):
    """The path prefix of the run's latest checkpoint, or None."""
    return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


class Checkpoints:
    """Where this worker saves and restores, per the multi-worker protocol.

    Every worker restores from the chief's directory. Every worker also saves
    (under MultiWorkerMirroredStrategy saving can run collectives, so all
    must take part), but only the chief's files are kept: the others write to
    a scratch directory of their own and delete it after each save.
    """

    def __init__(self, checkpoint, model_dir, keep, is_chief, task_id):
        """Creates the manager this worker saves through.

        Args:
          checkpoint: the tf.train.Checkpoint (model, optimizer, step).
          model_dir: the run directory.
          keep: checkpoints kept on disk.
          is_chief: whether this worker's saves are the run's.
          task_id: this worker's index (names its scratch directory).
        """
        self.checkpoint = checkpoint
        self.directory = checkpoint_dir(model_dir)
        self.is_chief = is_chief
        write_dir = self.directory
        if not is_chief:
            write_dir = os.path.join(model_dir, "worker_tmp_%d" % task_id)
            # Left behind if this worker was killed while saving.
            if tf.io.gfile.exists(write_dir):
                tf.io.gfile.rmtree(write_dir)
        self.manager = tf.train.CheckpointManager(checkpoint, write_dir,
                                                  max_to_keep=keep)

    @property
    def latest(self):
        """The chief's latest checkpoint (None if none)."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self):
        """Restores the latest checkpoint if any; returns its path or None."""
        latest = self.latest
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def save(self, step):
        """Saves `step`; returns the path of the chief's checkpoint."""
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(self.manager.directory)
            path = os.path.join(self.directory, os.path.basename(path))
        return path


def read_only_manager(checkpoint, model_dir):
    """A CheckpointManager of the chief's directory that is only read.

    What a `PreemptionCheckpointHandler` is given on every worker, so that
    all restore the same checkpoint (it never writes through it).
    """
    return tf.train.CheckpointManager(checkpoint, checkpoint_dir(model_dir),
                                      max_to_keep=None)


def restore_model(model_dir, config=None):
    """Rebuilds the model of a run directory and loads its latest checkpoint.

    The model is built in float32 whatever precision it was trained in (the
    checkpoint's variables are float32 either way).

    Args:
      model_dir: a run directory written by `trainer.train`.
      config: its TrainConfig (read from model_dir when None).

    Returns:
      (keras.Model, TrainConfig, step).

    Raises:
      FileNotFoundError: if model_dir has no config or no checkpoint.
    """
    config = config or load_config(model_dir)
    keras.mixed_precision.set_global_policy("float32")
    model = models.build_model(config.model, config.embedding_size,
                               seed=config.seed)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, step=step)
    latest = latest_checkpoint(model_dir)
    if not latest:
        raise FileNotFoundError("no checkpoint in %s" %
                                checkpoint_dir(model_dir))
    checkpoint.restore(latest).expect_partial()
    return model, config, int(step.numpy())


# --------------------------------------------------------- the summary file
def write_summary(model_dir, summary):
    """Atomically writes the training summary (a dict) of the run."""
    return jsonio.write_json(summary_path(model_dir), summary)


def read_summary(model_dir):
    """The run's training summary, or None when it has none (yet)."""
    path = summary_path(model_dir)
    if not os.path.exists(path):
        return None
    return jsonio.read_json(path)
