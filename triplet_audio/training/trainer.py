"""Training: the config, the distributed train loop, checkpoints and resume.

`train(config)` builds the strategy, model, optimizer and the triplet input
pipeline, restores the latest checkpoint in `config.model_dir` if there is one
(so rerunning the same command resumes), and trains to `config.steps`,
checkpointing every `checkpoint_every` steps, on SIGTERM/SIGINT, and at exit.

Strategies ("default", "mirrored", "multi_worker", "tpu") share one loop. The
global batch is split evenly over the replicas, each replica's share being a
whole number of triplets (a valid mining batch). With `mining="local"` each
replica mines negatives in its own share; with "global" in the whole global
batch (`losses.cross_replica_semi_hard_triplet_loss`, where the gradient
argument is written out).

Preemption: under "default" and "mirrored" (one process) SIGTERM/SIGINT set
a flag that the loop reads after each step: it checkpoints that step and
returns `interrupted`. Under "multi_worker" and "tpu" a
`tf.distribute.experimental.PreemptionCheckpointHandler` wraps each step: a
signal on any one worker is relayed through the cluster's coordination
service, every worker checkpoints at the same step, and all of them return
`interrupted`, so restarting the job resumes from that step. All workers
save (saving can involve collectives); the chief into `checkpoints/`, the
others into scratch directories they delete straight after, and every worker
restores from the chief's `checkpoints/`.

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

from triplet_audio.config import jsonio
from triplet_audio.sampling import data_service
from triplet_audio.model import losses
from triplet_audio.model import models
from triplet_audio.sampling import pipeline
from triplet_audio.features import records

CHECKPOINT_SUBDIR = "checkpoints"
SUMMARY_SUBDIR = "train"
SUMMARY_NAME = "train_summary.json"

MINING = ("local", "global")
"""Values of TrainConfig.mining."""

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
      tpu: TPU name/address for strategy "tpu" ("local" on a TPU VM).
      mining: "local" (each replica mines negatives in its own share of the
        batch) or "global" (in the whole global batch, all-gathered).
      cpu_replicas: with strategy "mirrored", split the CPU into this many
        logical devices and mirror over them (0: off) - multi-replica
        behaviour on a machine without accelerators, for tests and laptops.
      seed: global seed (model init and data order).
      skip_corrupt: skip corrupt shards/records instead of failing.
      num_classes: class vocabulary size (read from the manifest; needed by
        the supervised sampler).
      tf_data_service: grpc://host:port of a tf.data service dispatcher that
        runs the sampler pipeline on remote workers (None: in process).
      tf_data_service_streams: independently seeded pipeline copies the
        service hands out, one per worker (caps the useful worker count).
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
    mining: str = "local"
    cpu_replicas: int = 0
    seed: int = 0
    skip_corrupt: bool = False
    num_classes: int = 0
    tf_data_service: str = None
    tf_data_service_streams: int = data_service.DEFAULT_NUM_STREAMS

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
        if self.tf_data_service:
            data_service.parse_service_address(self.tf_data_service)
        if self.tf_data_service_streams < 1:
            bad("tf_data_service_streams", "must be >= 1")
        if self.mining not in MINING:
            bad("mining", "must be one of %s, got %r" %
                (", ".join(MINING), self.mining))
        if self.cpu_replicas < 0:
            bad("cpu_replicas", "must be >= 0")
        if self.cpu_replicas and self.strategy != "mirrored":
            bad("cpu_replicas", "only with --strategy=mirrored (got "
                "--strategy=%s)" % self.strategy)
        if self.cpu_replicas and self.batch_size % (3 * self.cpu_replicas):
            bad("batch_size", "%d is not a multiple of 3 x %d replicas "
                "(--cpu_replicas): each replica needs whole triplets" %
                (self.batch_size, self.cpu_replicas))
        self.sampler.validate()
        return self


def config_from_dict(d):
    """Rebuilds a TrainConfig from the dict `jsonio.read_config` returns."""
    d = dict(d)
    d["sampler"] = pipeline.SamplerConfig.from_dict(d["sampler"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def load_config(model_dir):
    """Reads the TrainConfig saved in a run directory."""
    return config_from_dict(jsonio.read_config(model_dir))


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


def _num_classes(train_data):
    try:
        manifest = records.load_manifest(train_data)
    except FileNotFoundError:
        return 0
    return len(manifest.get("classes", []))


def _check_resume_compatible(model_dir, config):
    path = os.path.join(model_dir, jsonio.CONFIG_NAME)
    if not os.path.exists(path):
        return
    old = jsonio.read_config(model_dir)
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


# Errors of a collective whose peer is gone (connection reset, coordination
# service heartbeat timeout, collective aborted).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.DeadlineExceededError)


class _Preempted(Exception):
    """Raised by the preemption handler's exit hook after its checkpoint."""


class _Checkpoints:
    """Where this worker saves and restores, per the multi-worker protocol.

    Every worker restores from the chief's directory. Every worker also saves
    (under MultiWorkerMirroredStrategy saving can run collectives, so all
    must take part), but only the chief's files are kept: the others write to
    a scratch directory of their own and delete it after each save.
    """

    def __init__(self, checkpoint, model_dir, keep, is_chief, task_id):
        self.checkpoint = checkpoint
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
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
        raise ValueError(
            "--batch_size=%d must be a multiple of 3 x %d replicas: each "
            "replica mines in its share of the batch, which must hold whole "
            "triplets (%d windows per replica is not a multiple of 3)" %
            (config.batch_size, replicas, config.batch_size // replicas))
    is_chief = _is_chief(strategy)
    if is_chief:
        jsonio.write_config(config.model_dir, config)
    keras.utils.set_random_seed(config.seed)
    logging.info("strategy %s: %d replica(s), %d windows each, %s mining",
                 config.strategy, replicas, config.batch_size // replicas,
                 config.mining)

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
    ckpts = _Checkpoints(checkpoint, config.model_dir,
                         config.keep_checkpoints, is_chief,
                         getattr(resolver, "task_id", None) or 0)
    restored = ckpts.restore()
    if restored:
        logging.info("resumed from %s at step %d", restored,
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
        def make_dataset(seed):
            return pipeline.make_triplet_dataset(
                config.train_data, config.sampler, config.batch_size,
                seed=seed, input_context=input_context,
                num_classes=config.num_classes or None,
                skip_corrupt=config.skip_corrupt)
        # Unchanged unless --tf_data_service names a dispatcher.
        return data_service.maybe_distribute(
            make_dataset, config.tf_data_service, seed=data_seed,
            num_streams=config.tf_data_service_streams)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dataset)
    train_step = make_train_step(config, strategy, model, optimizer,
                                 step_var, bad_step)

    def check_finite():
        bad = int(bad_step.numpy())
        if bad >= 0:
            raise NonFiniteLossError(
                "loss became non-finite at step %d; stopped without "
                "saving. The last good checkpoint is %s. Lower "
                "--learning_rate or check the input data." %
                (bad, ckpts.latest or "(none)"))

    def save():
        # The preemption handler saves between steps, possibly long after
        # the last finiteness check: a diverged model must not replace the
        # last good checkpoint there either.
        check_finite()
        current = int(step_var.numpy())
        path = ckpts.save(current)
        logging.info("saved checkpoint %s", path)
        return path

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
        handler = _preemption_handler(config, strategy, checkpoint, save,
                                      stop)
        # Under multi_worker a lone worker must not stop on its own signal
        # (the others would wait for it in the next collective): the
        # preemption handler stops them all at one step.
        own_stop = config.strategy != "multi_worker"
        try:
            while step < config.steps:
                try:
                    batch = next(iterator)
                except (StopIteration, tf.errors.OutOfRangeError):
                    # A repeated pipeline ends only when a whole pass yields
                    # no batch: unusable input, not a crash.
                    raise ValueError(
                        "--train_data=%s gives the %s sampler no batch of %d "
                        "windows (proximity needs recordings with two "
                        "windows less than --proximity_dt apart, supervised "
                        "labelled windows of two classes); use more data or "
                        "a smaller --batch_size" % (
                            config.train_data, config.sampler.sampler,
                            config.batch_size)) from None
                except tf.errors.DataLossError as e:
                    # A bad checksum mid-epoch: keep the steps done since the
                    # last checkpoint (a lone worker cannot save
                    # consistently under multi_worker) and name the shard.
                    if step > start_step and config.strategy != "multi_worker":
                        save()
                    raise records.data_loss_error(
                        records.list_shards(config.train_data), e) from e
                if handler is not None:
                    out = handler.run(train_step, batch)
                else:
                    out = train_step(batch)
                step += 1
                steps_since += 1
                stopping = own_stop and stop.signum is not None
                boundary = (step % config.log_every == 0 or
                            step == config.steps or
                            step % config.checkpoint_every == 0 or stopping)
                if not boundary:
                    continue
                check_finite()
                metrics = {k: float(v.numpy()) for k, v in out.items()}
                now = time.time()
                steps_per_s = steps_since / max(now - t_last, 1e-9)
                windows_per_s = steps_per_s * config.batch_size
                lr = float(schedule(step))
                if step % config.log_every == 0 or step == config.steps:
                    eta = (config.steps - step) / max(steps_per_s, 1e-9)
                    logging.info(
                        "step %d/%d  loss %.4f  active %.2f  d+ %.3f  "
                        "d- %.3f  lr %.2e  %.1f steps/s  %.0f windows/s  "
                        "eta %s",
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
                if (step % config.checkpoint_every == 0 or
                        step == config.steps or stopping):
                    save()
                if stopping:
                    logging.warning("signal %d: checkpointed at step %d; "
                                    "rerun the same command to resume",
                                    stop.signum, step)
                    interrupted = True
                    break
        except _PEER_ERRORS as e:
            if config.strategy != "multi_worker":
                raise
            # What a worker sees when another one dies (SIGKILL, crash):
            # its next collective fails. Nothing can be saved consistently
            # now; the job resumes from the last checkpoint.
            logging.error(
                "lost another worker at step %d (%s): restart every worker "
                "with the same command to resume from %s", step,
                type(e).__name__, ckpts.latest or "the start")
            raise
        except _Preempted:
            step = int(step_var.numpy())
            logging.warning(
                "preempted (%s): every worker checkpointed at step %d; "
                "restart the job to resume",
                "signal %d on this worker" % stop.signum if stop.signum
                else "a signal on another worker", step)
            interrupted = True
    logging.info("trained steps %d..%d in %.1fs", start_step, step,
                 time.time() - t_start)
    return _finish(config, step, metrics, windows_per_s, interrupted,
                   write=is_chief)


def _preemption_handler(config, strategy, checkpoint, save, stop):
    """A PreemptionCheckpointHandler for multi_worker and tpu, else None.

    The handler does not install its own SIGTERM handler: it polls
    `stop` (set by our SIGTERM/SIGINT handler) once a second, so SIGINT is
    covered too and there is one signal handler in the process. When any
    worker has been signalled, the handler agrees with the others (through
    the coordination service) on the step after which all checkpoint, calls
    `save` there on every worker, and then `_raise_preempted`.
    """
    if config.strategy not in ("multi_worker", "tpu"):
        return None
    termination = tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=lambda: stop.signum is not None,
        exit_fn=_raise_preempted, grace_period=0,
        save_fn=lambda *args, **kwargs: save())
    # Given a manager, the handler restores its latest checkpoint (and its
    # own run counter stored in it) at creation: a manager of the chief's
    # directory on every worker, so that all restore the same one. It never
    # writes through it (save_fn does).
    read_manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.model_dir, CHECKPOINT_SUBDIR),
        max_to_keep=None)
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, read_manager,
        termination_config=termination)


def _raise_preempted():
    raise _Preempted()


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

    Loss scaling: with local mining each replica's loss is the mean over its
    own pairs, divided by the number of replicas so that the optimizer's sum
    of the replicas' gradients is their mean. With global mining each
    replica's loss is already its share of the global-batch loss (the shares
    sum to it), so it is not divided; see `losses`.

    XLA (`config.jit_compile`): on one replica the whole replica step is
    compiled. On several, the optimizer update and the cross-replica
    all-gather of global mining synchronise replicas, which a compiled
    function nested in `strategy.run` cannot do, so what is compiled is the
    forward and backward pass (local mining) or the model's forward pass
    (global mining; its backward pass is compiled with it).

    Args:
      config: TrainConfig (margin, distance, mining, mixed_precision,
        jit_compile).
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
      of the global batch (averaged over replicas with local mining, the
      global batch's own with global mining).
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
    global_mining = config.mining == "global" and replicas > 1

    def forward(windows):
        return model(windows, training=True)

    def gradients(windows, labels):
        with tf.GradientTape() as tape:
            embeddings = forward(windows)
            if global_mining:
                loss, stats = losses.cross_replica_semi_hard_triplet_loss(
                    labels, embeddings, margin=config.margin,
                    distance=config.distance, return_metrics=True)
                scaled = loss
            else:
                loss, stats = losses.semi_hard_triplet_loss(
                    labels, embeddings, margin=config.margin,
                    distance=config.distance, return_metrics=True)
                scaled = loss / replicas
            if model.losses:
                scaled += tf.add_n([tf.cast(l, tf.float32)
                                    for l in model.losses]) / replicas
            if fp16:
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        out = {"loss": loss}
        for key in ("fraction_active", "fraction_semi_hard",
                    "mean_positive_distance", "mean_negative_distance"):
            if key in stats:
                out[key] = tf.cast(stats[key], tf.float32)
        return grads, out

    if config.jit_compile and replicas > 1:
        if global_mining:
            forward = tf.function(forward, jit_compile=True)
        else:
            gradients = tf.function(gradients, jit_compile=True)

    def replica_step(windows, labels):
        grads, out = gradients(windows, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return out

    if config.jit_compile and replicas == 1:
        replica_step = tf.function(replica_step, jit_compile=True)

    # Global mining returns each replica's share of the global values.
    reduce_op = (tf.distribute.ReduceOp.SUM if global_mining
                 else tf.distribute.ReduceOp.MEAN)

    @tf.function
    def train_step(batch):
        windows, labels = batch
        per_replica = strategy.run(replica_step, args=(windows, labels))
        out = {k: strategy.reduce(reduce_op, v, axis=None)
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
