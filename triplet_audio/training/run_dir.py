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
  train.lock           held (flock) by the bin/train that owns the directory;
                       it names that process (pid, host). Non-chief workers
                       of a multi-worker job hold train.lock.<task> instead.

JSON files are written atomically by `jsonio.write_json`.
"""

import errno
import glob
import json
import os
import socket
import time

from absl import logging
import keras
import tensorflow as tf

from triplet_audio.config import jsonio
from triplet_audio.config import training as train_config
from triplet_audio.model import models

CONFIG_NAME = jsonio.CONFIG_NAME
CHECKPOINT_SUBDIR = "checkpoints"
# A checkpoint's files are <CHECKPOINT_NAME>-<step>.index/.data-*; a save in
# progress writes <CHECKPOINT_NAME>-<step>_temp/ first.
CHECKPOINT_NAME = "ckpt"
SUMMARY_SUBDIR = "train"
SUMMARY_NAME = "train_summary.json"
LOCK_NAME = "train.lock"

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


# -------------------------------------------------------- the run's lock
class RunDirBusyError(ValueError):
    """Another process trains in the run directory.

    A ValueError, so that bin/train reports it in one line (exit status 1).
    """


def _is_local(path):
    return "://" not in path


class RunLock:
    """An exclusive lock on a run directory, held for the life of a run.

    An flock(2) on `model_dir/train.lock`: the kernel drops it when the
    process ends however it ends (SIGKILL included), so a killed run never
    leaves a stale lock that would block its resume. The file names the
    holder (pid, host, start time) for the error a second run gets.

    Where the directory cannot be locked (a gs:// or other tf.io.gfile
    path, a filesystem without flock) a warning is logged and the run goes
    on unlocked.
    """

    def __init__(self, model_dir, name=LOCK_NAME):
        """Names the lock (nothing is locked until `acquire`).

        Args:
          model_dir: the run directory.
          name: the lock file's name in it (one per multi-worker task).
        """
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, name)
        self._fd = None
        self._tried = False

    def acquire(self):
        """Takes the lock, creating model_dir if needed.

        Returns:
          self.

        Raises:
          RunDirBusyError: naming model_dir and the holder when another
            process holds the lock.
        """
        self._tried = True
        try:
            import fcntl  # pylint: disable=g-import-not-at-top
        except ImportError:  # Not POSIX.
            fcntl = None
        if fcntl is None or not _is_local(self.model_dir):
            logging.warning(
                "cannot lock %s (not a local POSIX filesystem): make sure no "
                "other bin/train uses this --model_dir", self.model_dir)
            return self
        os.makedirs(self.model_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirBusyError(
                    "--model_dir=%s is in use by another bin/train (%s, lock "
                    "%s); wait for it to end, stop it, or use another "
                    "--model_dir" % (self.model_dir, holder, self.path)
                ) from None
            # ENOLCK, EOPNOTSUPP, ...: e.g. some network filesystems.
            logging.warning("cannot lock %s (%s): make sure no other "
                            "bin/train uses this --model_dir", self.path,
                            e.strerror or e)
            return self
        self._fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.time()}).encode()
        # The holder's record is informational: a full disk must not stop
        # the run here (its checkpoints report that clearly).
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError as e:
            logging.warning("could not write %s: %s", self.path, e)
        return self

    def release(self):
        """Drops the lock (the kernel does so too when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)  # Closing the descriptor drops the flock.
            self._fd = None

    def __enter__(self):
        if not self._tried:
            self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def lock_name(is_chief, task_type=None, task_id=None):
    """The name of a task's lock file in the run directory.

    train.lock for the chief (or a lone process); train.lock.<type>-<id> for
    another worker of a cluster, so that a second job's workers collide with
    the first's task by task, and a job's own workers never with each other.

    Args:
      is_chief: whether the task writes the run's files.
      task_type: its cluster task type ("worker"), when not the chief.
      task_id: its index, when not the chief.

    Returns:
      the file name.
    """
    if is_chief:
        return LOCK_NAME
    return "%s.%s-%s" % (LOCK_NAME, task_type or "worker", task_id or 0)


def _read_holder(fd):
    """'pid P on host H' from a lock file's record ('holder unknown' if none)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return "pid %s on host %s" % (info["pid"], info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


# ------------------------------------------------------------- checkpoints
class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, file-size limit, ...).

    A ValueError, so that bin/train reports it in one line (exit status 1).
    """


def _cause(error):
    """A short cause for a failed write, from the OS's message in `error`."""
    text = str(error)
    for needle, cause in (("No space left", "no space left on the device"),
                          ("File too large", "file too large (a file-size "
                           "limit, e.g. ulimit -f, or the filesystem's)"),
                          ("quota", "disk quota exceeded"),
                          ("Read-only file system", "read-only filesystem"),
                          ("Permission denied", "permission denied")):
        if needle.lower() in text.lower():
            return cause
    # The OS's message is the last ';'-separated part of TensorFlow's.
    return text.splitlines()[0].rsplit(";", 1)[-1].strip() if text else (
        type(error).__name__)


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
        elif _is_local(write_dir) and os.path.isdir(write_dir):
            # A save killed half-way leaves its <name>-<step>_temp/
            # directory (unlisted: the state file names complete
            # checkpoints only). Nobody else writes here: the run holds
            # the directory's lock (only taken on local paths).
            for path in glob.glob(os.path.join(
                    glob.escape(write_dir), CHECKPOINT_NAME + "-*_temp")):
                logging.info("deleting %s (a save that did not finish)",
                             path)
                tf.io.gfile.rmtree(path)
        self.manager = tf.train.CheckpointManager(
            checkpoint, write_dir, max_to_keep=keep,
            checkpoint_name=CHECKPOINT_NAME)

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
        """Saves `step`; returns the path of the chief's checkpoint.

        The checkpoint state file names a checkpoint only once its files are
        complete, so a failed (or killed) save leaves the previous checkpoints
        listed and loadable. A failed save's partial files are deleted, to
        give back the space it took.

        Raises:
          CheckpointWriteError: naming the directory, the step and the cause
            (no space left, file too large, ...).
        """
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            self._remove_partial(step)
            raise CheckpointWriteError(
                "could not write checkpoint %d to %s: %s. The previous "
                "checkpoint (%s) is intact; free space and rerun the same "
                "command to resume from it. (%s: %s)" % (
                    step, self.manager.directory, _cause(e),
                    self.latest or "none", type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")) from e
        if not self.is_chief:
            tf.io.gfile.rmtree(self.manager.directory)
            path = os.path.join(self.directory, os.path.basename(path))
        return path

    def _remove_partial(self, step):
        """Deletes the files of a failed save of `step` (not a listed one)."""
        directory = self.manager.directory
        state = tf.train.get_checkpoint_state(directory)
        listed = set(state.all_model_checkpoint_paths) if state else set()
        prefix = os.path.join(directory, "%s-%d" % (CHECKPOINT_NAME, step))
        if prefix in listed or os.path.basename(prefix) in listed:
            return
        if not _is_local(directory):
            paths = tf.io.gfile.glob(prefix + "[._]*")
        else:
            paths = glob.glob(glob.escape(prefix) + "[._]*")
        for path in paths:
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
            except (tf.errors.OpError, OSError) as e:
                logging.warning("could not delete %s: %s", path, e)


def read_only_manager(checkpoint, model_dir):
    """A CheckpointManager of the chief's directory that is only read.

    What a `PreemptionCheckpointHandler` is given on every worker, so that
    all restore the same checkpoint (it never writes through it).
    """
    return tf.train.CheckpointManager(checkpoint, checkpoint_dir(model_dir),
                                      max_to_keep=None,
                                      checkpoint_name=CHECKPOINT_NAME)


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
