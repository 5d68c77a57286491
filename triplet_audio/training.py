"""Training: the config, the distributed train loop, checkpoints and resume.

`train(config)` builds the strategy, model, optimizer and the triplet input
pipeline, restores the latest checkpoint in `config.model_dir` if there is one
(so rerunning the same command resumes), and trains to `config.steps`,
checkpointing every `checkpoint_every` steps, on SIGTERM/SIGINT, and at exit.

A non-finite loss stops the run with `NonFiniteLossError` before the next
checkpoint is written, so the last good checkpoint is never overwritten by a
diverged model.

Files in `model_dir`:
  config.json          the resolved TrainConfig (read back by export/embed)
  checkpoints/         tf.train.CheckpointManager (last `keep_checkpoints`)
  train/               TensorBoard summaries
  train_summary.json   final step, last metrics and throughput
"""

import dataclasses
import json
import math
import os
import signal
import time

from absl import logging
import keras
import tensorflow as tf

from triplet_audio import config_io
from triplet_audio import losses
from triplet_audio import models
from triplet_audio import pipeline
from triplet_audio import records

CHECKPOINT_SUBDIR = "checkpoints"
SUMMARY_SUBDIR = "train"
SUMMARY_NAME = "train_summary.json"

# Fields that must match when resuming into an existing model_dir: changing
# them would silently restore weights into a different experiment.
_RESUME_LOCKED = ("model", "embedding_size", "mixed_precision")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
      train_data: corpus directory, shard glob or comma-separated globs.
      model_dir: run directory.
      sampler: the triplet sampler configuration.
      model: embedding network name (see models.build_model).
      embedding_size: embedding dimension.
      batch_size: global batch in windows (3 per triplet).
      margin: triplet margin.
      distance: "squared" or "euclidean".
      optimizer: "adam", "adamw" or "sgd" (momentum 0.9).
      learning_rate: peak learning rate.
      lr_schedule: "constant" or "cosine" (decay to 0 at `steps`).
      warmup_steps: linear warm-up steps.
      weight_decay: decoupled weight decay (adamw).
      steps: total steps.
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: checkpoints kept on disk.
      log_every: steps between progress lines and summaries.
      mixed_precision: "none", "bf16" or "fp16".
      jit_compile: XLA-compile the per-replica step.
      strategy: "default", "mirrored", "multi_worker" or "tpu".
      tpu: TPU name/address for strategy "tpu".
      seed: global seed (model init and data order).
      skip_corrupt: skip corrupt shards/records instead of failing.
      num_classes: class vocabulary size (read from the manifest; needed by
        the supervised sampler).
    """
    train_data: str
    model_dir: str
    sampler: pipeline.SamplerConfig
    model: str = "resnet50"
    embedding_size: int = 128
    batch_size: int = 192
    margin: float = 0.2
    distance: str = "squared"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    steps: int = 10000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    mixed_precision: str = "none"
    jit_compile: bool = False
    strategy: str = "default"
    tpu: str = None
    seed: int = 0
    skip_corrupt: bool = False
    num_classes: int = 0

    def validate(self):
        """Raises ValueError naming the first invalid field."""
        def bad(field, why):
            raise ValueError("--%s: %s" % (field, why))
        if not self.train_data:
            bad("train_data", "required")
        if not self.model_dir:
            bad("model_dir", "required")
        if self.model not in models.MODEL_NAMES:
            bad("model", "must be one of %s, got %r" %
                (", ".join(models.MODEL_NAMES), self.model))
        if self.embedding_size < 1:
            bad("embedding_size", "must be >= 1")
        if self.batch_size < 3 or self.batch_size % 3:
            bad("batch_size", "must be a positive multiple of 3 (whole "
                "triplets), got %d" % self.batch_size)
        if self.margin < 0:
            bad("margin", "must be >= 0")
        if self.distance not in ("squared", "euclidean"):
            bad("distance", "must be squared or euclidean")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            bad("optimizer", "must be adam, adamw or sgd")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if self.lr_schedule not in ("constant", "cosine"):
            bad("lr_schedule", "must be constant or cosine")
        if self.steps < 1:
            bad("steps", "must be >= 1")
        if self.warmup_steps < 0 or self.warmup_steps >= max(self.steps, 1) and (
                self.warmup_steps > 0):
            bad("warmup_steps", "must be in [0, steps)")
        if self.checkpoint_every < 1:
            bad("checkpoint_every", "must be >= 1")
        if self.mixed_precision not in ("none", "bf16", "fp16"):
            bad("mixed_precision", "must be none, bf16 or fp16")
        if self.strategy not in ("default", "mirrored", "multi_worker", "tpu"):
            bad("strategy", "must be default, mirrored, multi_worker or tpu")
        if self.strategy == "tpu" and not self.tpu:
            bad("tpu", "required with --strategy=tpu")
        self.sampler.validate()
        return self


def config_from_dict(d):
    """Rebuilds a TrainConfig from the dict `config_io.read_config` returns."""
    d = dict(d)
    d["sampler"] = pipeline.SamplerConfig.from_dict(d["sampler"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def load_config(model_dir):
    """Reads the TrainConfig saved in a run directory."""
    return config_from_dict(config_io.read_config(model_dir))


def make_strategy(config):
    """Creates the tf.distribute strategy named by the config."""
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if config.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


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


def _num_classes(train_data):
    try:
        manifest = records.load_manifest(train_data)
    except FileNotFoundError:
        return 0
    return len(manifest.get("classes", []))


def _check_resume_compatible(model_dir, config):
    path = os.path.join(model_dir, config_io.CONFIG_NAME)
    if not os.path.exists(path):
        return
    old = config_io.read_config(model_dir)
    new = config_io.to_jsonable(config)
    for key in _RESUME_LOCKED:
        if key in old and old[key] != new[key]:
            raise ValueError(
                "--%s=%s but %s was trained with %s=%s; use a new --model_dir"
                % (key, new[key], model_dir, key, old[key]))
    if old.get("sampler", {}).get("sampler") != new["sampler"].get("sampler"):
        logging.warning("%s was trained with sampler %s; continuing with %s",
                        model_dir, old.get("sampler", {}).get("sampler"),
                        new["sampler"].get("sampler"))


class _StopFlag:
    """Turns SIGTERM/SIGINT into a graceful checkpoint-and-exit."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # Not the main thread: leave signals alone.
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train(config):
    """Trains (or resumes training) an embedding model.

    Args:
      config: TrainConfig.

    Returns:
      dict summary: final step, last metrics, windows/s, whether interrupted.

    Raises:
      ValueError: on an invalid config or an incompatible existing model_dir.
      NonFiniteLossError: when the loss becomes NaN/Inf (the last good
        checkpoint is kept).
    """
    config.validate()
    if config.sampler.sampler == "supervised" and not config.num_classes:
        config.num_classes = _num_classes(config.train_data)
        if not config.num_classes:
            raise ValueError("--sampler=supervised needs a labelled corpus: "
                             "%s has no class vocabulary in its manifest" %
                             config.train_data)
    _check_resume_compatible(config.model_dir, config)
    set_precision_policy(config.mixed_precision)
    strategy = make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % (3 * replicas):
        raise ValueError("--batch_size=%d must be a multiple of 3 x %d replicas"
                         % (config.batch_size, replicas))
    is_chief = _is_chief(strategy)
    if is_chief:
        config_io.write_config(config.model_dir, config)
    keras.utils.set_random_seed(config.seed)

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
    ckpt_dir = os.path.join(config.model_dir, CHECKPOINT_SUBDIR)
    if not is_chief:
        # Non-chief workers write to a scratch dir (multi-worker protocol).
        ckpt_dir = os.path.join(config.model_dir, "worker_tmp_%d" %
                                strategy.cluster_resolver.task_id)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir,
                                         max_to_keep=config.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint,
                     int(step_var.numpy()))
    start_step = int(step_var.numpy())
    if start_step >= config.steps:
        logging.info("already trained to step %d >= --steps=%d; nothing to do",
                     start_step, config.steps)
        # Keep the finished run's summary (its metrics and throughput).
        previous = os.path.join(config.model_dir, SUMMARY_NAME)
        if os.path.exists(previous):
            with open(previous) as f:
                return json.load(f)
        return _finish(config, start_step, {}, 0.0, interrupted=False,
                       write=is_chief)

    # A resumed run continues with fresh data order rather than replaying the
    # batches already seen (tf.data iterator state with large shuffle buffers
    # would make every checkpoint as big as the buffers).
    data_seed = config.seed + 1000003 * start_step

    def dataset_fn(input_context):
        return pipeline.make_triplet_dataset(
            config.train_data, config.sampler, config.batch_size,
            seed=data_seed, input_context=input_context,
            num_classes=config.num_classes or None,
            skip_corrupt=config.skip_corrupt)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dataset)
    train_step = make_train_step(config, strategy, model, optimizer,
                                 step_var, bad_step)

    writer = (tf.summary.create_file_writer(
        os.path.join(config.model_dir, SUMMARY_SUBDIR)) if is_chief
        else tf.summary.create_noop_writer())
    metrics = {}
    windows_per_s = 0.0
    interrupted = False
    t_last = time.time()
    t_start = t_last
    steps_since = 0
    step = start_step
    with _StopFlag() as stop:
        while step < config.steps:
            try:
                batch = next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                # A repeated pipeline ends only when a whole pass yields no
                # batch: unusable input, not a crash.
                raise ValueError(
                    "--train_data=%s gives the %s sampler no batch of %d "
                    "windows (proximity needs recordings with two windows "
                    "less than --proximity_dt apart, supervised labelled "
                    "windows of two classes); use more data or a smaller "
                    "--batch_size" % (config.train_data,
                                      config.sampler.sampler,
                                      config.batch_size)) from None
            out = train_step(batch)
            step += 1
            steps_since += 1
            boundary = (step % config.log_every == 0 or step == config.steps or
                        step % config.checkpoint_every == 0 or
                        stop.signum is not None)
            if not boundary:
                continue
            bad = int(bad_step.numpy())
            if bad >= 0:
                raise NonFiniteLossError(
                    "loss became non-finite at step %d; stopped without "
                    "saving. The last good checkpoint is %s. Lower "
                    "--learning_rate or check the input data." %
                    (bad, manager.latest_checkpoint or "(none)"))
            metrics = {k: float(v.numpy()) for k, v in out.items()}
            now = time.time()
            steps_per_s = steps_since / max(now - t_last, 1e-9)
            windows_per_s = steps_per_s * config.batch_size
            lr = float(schedule(step))
            if step % config.log_every == 0 or step == config.steps:
                eta = (config.steps - step) / max(steps_per_s, 1e-9)
                logging.info(
                    "step %d/%d  loss %.4f  active %.2f  d+ %.3f  d- %.3f  "
                    "lr %.2e  %.1f steps/s  %.0f windows/s  eta %s",
                    step, config.steps, metrics["loss"],
                    metrics.get("fraction_active", float("nan")),
                    metrics.get("mean_positive_distance", float("nan")),
                    metrics.get("mean_negative_distance", float("nan")),
                    lr, steps_per_s, windows_per_s, _fmt_eta(eta))
                with writer.as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("steps_per_second", steps_per_s)
                    tf.summary.scalar("windows_per_second", windows_per_s)
                writer.flush()
                t_last, steps_since = now, 0
            if step % config.checkpoint_every == 0 or step == config.steps or (
                    stop.signum is not None):
                path = manager.save(checkpoint_number=step)
                logging.info("saved checkpoint %s", path)
            if stop.signum is not None:
                logging.warning("signal %d: checkpointed at step %d; rerun the "
                                "same command to resume", stop.signum, step)
                interrupted = True
                break
    logging.info("trained steps %d..%d in %.1fs", start_step, step,
                 time.time() - t_start)
    return _finish(config, step, metrics, windows_per_s, interrupted,
                   write=is_chief)


def _is_chief(strategy):
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


def make_train_step(config, strategy, model, optimizer, step_var=None,
                    bad_step=None):
    """The step `train` runs: forward, loss, backward, update (one tf.function).

    Public so that benchmarks can time the real step on batches they make.

    Args:
      config: TrainConfig (margin, distance, mixed_precision, jit_compile).
      strategy: the tf.distribute strategy `model` and `optimizer` were built
        under.
      model: the embedding model.
      optimizer: from `make_optimizer`, built for the model's variables.
      step_var: int64 variable counting steps (created when None).
      bad_step: int64 variable set to the first step whose loss is not
        finite, -1 until then (created when None).

    Returns:
      A function of a (windows [B, 96, 64], labels) batch, plain or from a
      distributed dataset, returning the dict of the loss and mining metrics
      averaged over replicas.
    """
    with strategy.scope():
        if step_var is None:
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False,
                                   name="step")
        if bad_step is None:
            bad_step = tf.Variable(
                -1, dtype=tf.int64, trainable=False,
                name="first_nonfinite_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    replicas = strategy.num_replicas_in_sync
    fp16 = config.mixed_precision == "fp16"

    def replica_step(windows, labels):
        with tf.GradientTape() as tape:
            embeddings = model(windows, training=True)
            loss, stats = losses.semi_hard_triplet_loss(
                labels, embeddings, margin=config.margin,
                distance=config.distance, return_metrics=True)
            total = loss
            if model.losses:
                total += tf.add_n([tf.cast(l, tf.float32)
                                   for l in model.losses])
            scaled = total / replicas
            if fp16:
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        out = {"loss": loss}
        for key in ("fraction_active", "fraction_semi_hard",
                    "mean_positive_distance", "mean_negative_distance"):
            if key in stats:
                out[key] = tf.cast(stats[key], tf.float32)
        return out

    if config.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(batch):
        windows, labels = batch
        per_replica = strategy.run(replica_step, args=(windows, labels))
        out = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
               for k, v in per_replica.items()}
        step_var.assign_add(1)
        finite = tf.math.is_finite(out["loss"])
        bad_step.assign(tf.where(
            tf.logical_and(tf.logical_not(finite), bad_step < 0),
            step_var, bad_step))
        return out

    return train_step


def _fmt_eta(seconds):
    seconds = int(max(seconds, 0))
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60,
                             seconds % 60)


def _finish(config, step, metrics, windows_per_s, interrupted, write=True):
    summary = {"step": step, "steps": config.steps, "metrics": metrics,
               "windows_per_second": windows_per_s,
               "interrupted": interrupted}
    if write:
        path = os.path.join(config.model_dir, SUMMARY_NAME)
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    return summary


def restore_model(model_dir, config=None):
    """Rebuilds the model of a run directory and loads its latest checkpoint.

    Args:
      model_dir: a run directory written by `train`.
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
    latest = tf.train.latest_checkpoint(
        os.path.join(model_dir, CHECKPOINT_SUBDIR))
    if not latest:
        raise FileNotFoundError("no checkpoint in %s" %
                                os.path.join(model_dir, CHECKPOINT_SUBDIR))
    checkpoint.restore(latest).expect_partial()
    return model, config, int(step.numpy())
