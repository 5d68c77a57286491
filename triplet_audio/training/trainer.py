"""Training: `train(config)`, the entry, and the set-up it does.

`train(config)` sets up the strategy, model, optimizer and checkpoint,
restores the latest checkpoint in `config.model_dir` if there is one (so
rerunning the same command resumes), builds the triplet input pipeline, and
trains to `config.steps` (or `stop_at_step`; `loop.run_steps`),
checkpointing every `checkpoint_every` steps, on SIGTERM/SIGINT, and at exit.
It holds the run directory's lock (`run_dir.RunLock`) throughout, so a
second run on the same directory is refused. The parts:

  trainer.py     the set-up (strategy, precision, optimizer and learning-
                 rate schedule, model and checkpoint, the dataset) and
                 `train`, which runs them in order and finishes the run
  train_step.py  the step function (forward, loss, backward, update)
  loop.py        the step loop: progress lines and summaries, checkpoints,
                 signals and preemption, the non-finite-loss stop
  run_dir.py     the run directory on disk: config.json and the resume
                 check, checkpoints, restoring a model, the summary file

The run's configuration, `TrainConfig`, lives in `config/training.py`.

Strategies ("default", "mirrored", "multi_worker", "tpu") share one loop. The
global batch is split evenly over the replicas, each replica's share being a
whole number of triplets (a valid mining batch). With `mining="local"` each
replica mines negatives in its own share; with "global" in the whole global
batch (`losses.cross_replica_semi_hard_triplet_loss`, where the gradient
argument is written out).

Under "multi_worker" all workers save (saving can involve collectives); the
chief into `checkpoints/`, the others into scratch directories they delete
straight after, and every worker restores from the chief's `checkpoints/`
(`run_dir.Checkpoints`). Stopping and preemption: see `loop`.
"""

import math
import os

from absl import logging
import keras
import tensorflow as tf

from triplet_audio.config import training as train_config
from triplet_audio.features import records
from triplet_audio.model import models
from triplet_audio.sampling import data_service
from triplet_audio.sampling import pipeline
from triplet_audio.sampling import registry
from triplet_audio.training import loop
from triplet_audio.training import run_dir
from triplet_audio.training import train_step as train_step_lib


# Where they were before the split into modules (benchmarks and scripts use
# these names).
CHECKPOINT_SUBDIR = run_dir.CHECKPOINT_SUBDIR
SUMMARY_SUBDIR = run_dir.SUMMARY_SUBDIR
SUMMARY_NAME = run_dir.SUMMARY_NAME
NonFiniteLossError = loop.NonFiniteLossError
make_train_step = train_step_lib.make_train_step
load_config = run_dir.load_config
restore_model = run_dir.restore_model


# The run's configuration has its home in config/training.py (no
# TensorFlow); named here too for callers of `train`.
TrainConfig = train_config.TrainConfig
config_from_dict = train_config.config_from_dict


def make_strategy(config):
    """Creates the tf.distribute strategy named by the config.

    "mirrored" mirrors over all local GPUs (the CPU when there is none), or
    over `cpu_replicas` logical CPU devices; "multi_worker" reads the cluster
    from the TF_CONFIG environment variable; "tpu" connects to `config.tpu`.

    Raises:
      ValueError: when `cpu_replicas` comes too late (TensorFlow's devices
        already initialised with another number of CPU devices).
    """
    if config.strategy == "mirrored":
        if config.cpu_replicas:
            return tf.distribute.MirroredStrategy(
                _logical_cpus(config.cpu_replicas))
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            logging.warning("--strategy=multi_worker without TF_CONFIG: "
                            "training as a cluster of one worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def _logical_cpus(n):
    """Splits the CPU into `n` logical devices; returns their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        # Devices are fixed once TensorFlow has initialised them; fine if
        # they were already split this way (e.g. a second run in-process).
        pass
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(names) != n:
        raise ValueError(
            "--cpu_replicas=%d: TensorFlow already initialised %d CPU "
            "device(s) in this process; pass --cpu_replicas on the command "
            "line of a fresh process" % (n, len(names)))
    return names


def set_precision_policy(mixed_precision):
    """Sets Keras' global dtype policy; returns the policy name."""
    name = {"none": "float32", "bf16": "mixed_bfloat16",
            "fp16": "mixed_float16"}[mixed_precision]
    keras.mixed_precision.set_global_policy(name)
    return name


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then constant or cosine decay to 0."""

    def __init__(self, peak, total_steps, warmup_steps=0, cosine=True):
        super().__init__()
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.cosine = bool(cosine)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        warm = float(max(self.warmup_steps, 1))
        lr = peak
        if self.cosine:
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value(
                (step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
        if self.warmup_steps > 0:
            lr = tf.where(step < self.warmup_steps, peak * (step + 1) / warm,
                          lr)
        return lr

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "cosine": self.cosine}


def make_optimizer(config):
    """Builds the optimizer (loss-scaled under fp16) and its LR schedule."""
    schedule = WarmupCosine(config.learning_rate, config.steps,
                            config.warmup_steps,
                            cosine=config.lr_schedule == "cosine")
    if config.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=schedule)
    elif config.optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=schedule,
                                     weight_decay=config.weight_decay)
    else:
        opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    if config.mixed_precision == "fp16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt, schedule



# ------------------------------------------------------------------ set-up
def _is_chief(strategy):
    """Whether this worker writes the run's files (one process: yes)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if not spec:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return "chief" not in spec and task_type == "worker" and task_id == 0


def check_whole_triplets_per_replica(batch_size, replicas):
    """Checks that each replica's share of the batch holds whole triplets.

    Each replica mines negatives in its share of the global batch, so the
    share must be a valid mining batch (`pipeline.triplets_per_batch`).

    Args:
      batch_size: the global batch in windows.
      replicas: replicas in sync.

    Raises:
      ValueError: naming --batch_size and the number of replicas.
    """
    try:
        train_config.triplets_per_batch(batch_size, replicas)
    except ValueError:
        raise ValueError(
            "--batch_size=%d must be a multiple of 3 x %d replicas: each "
            "replica mines in its share of the batch, which must hold whole "
            "triplets (%d windows per replica is not a multiple of 3)" %
            (batch_size, replicas, batch_size // replicas)) from None


def prepare(config):
    """Checks the run can start, then sets up the process for it.

    Validates the config (reading the class count for the supervised
    sampler), refuses an incompatible existing run directory, sets the
    precision policy, creates the strategy, checks the batch splits into
    whole triplets per replica, locks the run directory (`run_dir.RunLock`:
    a second bin/train on it is refused), writes config.json (chief) and
    seeds. Nothing is written before every check has passed and the lock is
    held.

    Args:
      config: TrainConfig (its `num_classes` is filled in when needed).

    Returns:
      (strategy, is_chief, lock): the caller releases the `run_dir.RunLock`
      when the run ends.

    Raises:
      ValueError: on an invalid config, a supervised run without classes, an
        incompatible model_dir or a batch that splits triplets.
      run_dir.RunDirBusyError: when another process trains in model_dir.
    """
    config.validate()
    if (registry.get(config.sampler.sampler).labels == "classes" and
            not config.num_classes):
        config.num_classes = len(records.corpus_classes(config.train_data))
        if not config.num_classes:
            raise ValueError("--sampler=supervised needs a labelled corpus: "
                             "%s has no class vocabulary in its manifest" %
                             config.train_data)
    run_dir.check_resume_compatible(config.model_dir, config)
    set_precision_policy(config.mixed_precision)
    strategy = make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    check_whole_triplets_per_replica(config.batch_size, replicas)
    is_chief = _is_chief(strategy)
    resolver = getattr(strategy, "cluster_resolver", None)
    lock = run_dir.RunLock(config.model_dir, run_dir.lock_name(
        is_chief, getattr(resolver, "task_type", None),
        getattr(resolver, "task_id", None))).acquire()
    try:
        if is_chief:
            run_dir.write_config(config.model_dir, config)
    except BaseException:
        lock.release()
        raise
    keras.utils.set_random_seed(config.seed)
    logging.info("strategy %s: %d replica(s), %d windows each, %s mining",
                 config.strategy, replicas, config.batch_size // replicas,
                 config.mining)
    return strategy, is_chief, lock


def build_state(config, strategy, is_chief):
    """Builds model, optimizer and checkpoint; restores the latest checkpoint.

    Args:
      config: TrainConfig.
      strategy: from `make_strategy`.
      is_chief: whether this worker's checkpoints are the run's.

    Returns:
      loop.RunState, its `start_step` the restored step (0 for a new run).
    """
    with strategy.scope():
        model = models.build_model(config.model, config.embedding_size,
                                   seed=config.seed)
        optimizer, schedule = make_optimizer(config)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                               name="first_nonfinite_step",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                     step=step_var)
    resolver = getattr(strategy, "cluster_resolver", None)
    ckpts = run_dir.Checkpoints(checkpoint, config.model_dir,
                                config.keep_checkpoints, is_chief,
                                getattr(resolver, "task_id", None) or 0)
    restored = ckpts.restore()
    if restored:
        logging.info("resumed from %s at step %d", restored,
                     int(step_var.numpy()))
    start_step = int(step_var.numpy())
    return loop.RunState(
        strategy=strategy, model=model, optimizer=optimizer,
        schedule=schedule, step_var=step_var, bad_step=bad_step,
        checkpoint=checkpoint, checkpoints=ckpts, is_chief=is_chief,
        start_step=start_step)


def make_dataset(config, strategy, start_step):
    """The distributed triplet dataset of the run.

    A resumed run continues with fresh data order rather than replaying the
    batches already seen (tf.data iterator state with large shuffle buffers
    would make every checkpoint as big as the buffers): the data seed
    depends on `start_step`.

    Args:
      config: TrainConfig.
      strategy: the strategy the dataset is distributed over.
      start_step: the step the run starts at.

    Returns:
      tf.distribute.DistributedDataset of (windows, labels) batches.
    """
    data_seed = config.seed + 1000003 * start_step

    def dataset_fn(input_context):
        def make_triplets(seed):
            return pipeline.make_triplet_dataset(
                config.train_data, config.sampler, config.batch_size,
                seed=seed, input_context=input_context,
                num_classes=config.num_classes or None,
                skip_corrupt=config.skip_corrupt)
        # Unchanged unless --tf_data_service names a dispatcher.
        return data_service.maybe_distribute(
            make_triplets, config.tf_data_service, seed=data_seed,
            num_streams=config.tf_data_service_streams)

    return strategy.distribute_datasets_from_function(dataset_fn)


# --------------------------------------------------------------- the entry
def train(config):
    """Trains (or resumes training) an embedding model.

    Args:
      config: TrainConfig.

    Returns:
      dict summary: final step, last metrics, windows/s, whether interrupted
      (also written to the run's train_summary.json by the chief).

    Raises:
      ValueError: on an invalid config or an incompatible existing model_dir.
      NonFiniteLossError: when the loss becomes NaN/Inf (the last good
        checkpoint is kept).
      run_dir.RunDirBusyError: when another process trains in model_dir.
      run_dir.CheckpointWriteError: when a checkpoint cannot be written
        (disk full, ...); the previous checkpoints are kept.
    """
    strategy, is_chief, lock = prepare(config)
    with lock:
        state = build_state(config, strategy, is_chief)
        if state.start_step >= loop.last_step(config):
            return _already_trained(config, state)
        iterator = iter(make_dataset(config, strategy, state.start_step))
        step_fn = train_step_lib.make_train_step(
            config, strategy, state.model, state.optimizer, state.step_var,
            state.bad_step)
        result = loop.run_steps(config, state, step_fn, iterator)
        return _finish(config, result, write=is_chief)


def _already_trained(config, state):
    """The summary of a run already at (or past) `config.steps`.

    Keeps the finished run's summary (its metrics and throughput) when there
    is one.
    """
    logging.info("already trained to step %d >= %s; nothing to do",
                 state.start_step, "--stop_at_step=%d" % config.stop_at_step
                 if loop.last_step(config) < config.steps
                 else "--steps=%d" % config.steps)
    previous = run_dir.read_summary(config.model_dir)
    if previous is not None:
        return previous
    return _finish(config, loop.LoopResult(step=state.start_step),
                   write=state.is_chief)


def _finish(config, result, write=True):
    """The run's summary; written to train_summary.json when `write`.

    Args:
      config: TrainConfig.
      result: loop.LoopResult.
      write: write the file (the chief does).

    Returns:
      dict: step, steps, metrics, windows_per_second, interrupted, and with
      --skip_corrupt `skipped_records` (`records.skip_report()`: what this
      process skipped, by shard and offset).
    """
    summary = {"step": result.step, "steps": config.steps,
               "metrics": result.metrics,
               "windows_per_second": result.windows_per_s,
               "interrupted": result.interrupted}
    if config.skip_corrupt:
        summary["skipped_records"] = records.skip_report()
    if write:
        run_dir.write_summary(config.model_dir, summary)
    return summary

