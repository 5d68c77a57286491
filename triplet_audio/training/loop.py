"""The step loop: steps, progress lines and summaries, checkpoints, stopping.

`run_steps` takes the step function and the batches and trains from the
run's start step to `config.steps`, logging and writing TensorBoard
summaries every `log_every` steps and checkpointing every
`checkpoint_every` steps, at the end, and when stopped.

Stopping (preemption): under "default" and "mirrored" (one process)
SIGTERM/SIGINT set a flag (`StopFlag`) that the loop reads after each step:
it checkpoints that step and ends `interrupted`. Under "multi_worker" and
"tpu" a `tf.distribute.experimental.PreemptionCheckpointHandler` wraps each
step: a signal on any one worker is relayed through the cluster's
coordination service, every worker checkpoints at the same step, and all of
them end `interrupted`, so restarting the job resumes from that step.

A non-finite loss stops the run with `NonFiniteLossError` before the next
checkpoint is written, so the last good checkpoint is never overwritten by a
diverged model.
"""

import dataclasses
import signal
import time

from absl import logging
import tensorflow as tf

from triplet_audio.features import records
from triplet_audio.training import run_dir


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf."""


# Errors of a collective whose peer is gone (connection reset, coordination
# service heartbeat timeout, collective aborted).
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
               tf.errors.CancelledError, tf.errors.DeadlineExceededError)


@dataclasses.dataclass
class RunState:
    """What the loop works on, as `trainer.train` set it up.

    Attributes:
      strategy: the tf.distribute strategy.
      model: the embedding model.
      optimizer: its optimizer.
      schedule: the optimizer's learning-rate schedule (for the logs).
      step_var: int64 variable, the global step (checkpointed).
      bad_step: int64 variable, the first step whose loss was not finite
        (-1 until then).
      checkpoint: tf.train.Checkpoint of model, optimizer and step.
      checkpoints: `run_dir.Checkpoints`, where this worker saves.
      is_chief: whether this worker writes the run's files.
      start_step: the step the run (re)starts at.
    """
    strategy: object
    model: object
    optimizer: object
    schedule: object
    step_var: object
    bad_step: object
    checkpoint: object
    checkpoints: object
    is_chief: bool
    start_step: int


@dataclasses.dataclass
class LoopResult:
    """Where the loop ended.

    Attributes:
      step: the last step taken (and checkpointed unless it failed).
      metrics: the loss and mining metrics at the last log or checkpoint.
      windows_per_s: throughput measured there.
      interrupted: stopped by a signal (or a peer's, under multi_worker).
    """
    step: int
    metrics: dict = dataclasses.field(default_factory=dict)
    windows_per_s: float = 0.0
    interrupted: bool = False


class StopFlag:
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


class _Preempted(Exception):
    """Raised by the preemption handler's exit hook after its checkpoint."""


def _raise_preempted():
    raise _Preempted()


def check_finite(state):
    """Raises NonFiniteLossError if any step so far had a non-finite loss.

    Args:
      state: the RunState.

    Raises:
      NonFiniteLossError: naming the first such step and the last good
        checkpoint.
    """
    bad = int(state.bad_step.numpy())
    if bad >= 0:
        raise NonFiniteLossError(
            "loss became non-finite at step %d; stopped without "
            "saving. The last good checkpoint is %s. Lower "
            "--learning_rate or check the input data." %
            (bad, state.checkpoints.latest or "(none)"))


def save(state):
    """Checkpoints the current step, unless the loss has become non-finite.

    The preemption handler saves between steps, possibly long after the last
    finiteness check: a diverged model must not replace the last good
    checkpoint there either.

    Args:
      state: the RunState.

    Returns:
      the path of the (chief's) checkpoint.

    Raises:
      NonFiniteLossError: as `check_finite`.
    """
    check_finite(state)
    current = int(state.step_var.numpy())
    path = state.checkpoints.save(current)
    logging.info("saved checkpoint %s", path)
    return path


def preemption_handler(config, state, stop):
    """A PreemptionCheckpointHandler for multi_worker and tpu, else None.

    The handler does not install its own SIGTERM handler: it polls
    `stop` (set by our SIGTERM/SIGINT handler) once a second, so SIGINT is
    covered too and there is one signal handler in the process. When any
    worker has been signalled, the handler agrees with the others (through
    the coordination service) on the step after which all checkpoint, calls
    `save` there on every worker, and then raises `_Preempted`.

    Args:
      config: the TrainConfig (strategy, model_dir).
      state: the RunState.
      stop: the StopFlag of this process.

    Returns:
      the handler, or None under "default" and "mirrored".
    """
    if config.strategy not in ("multi_worker", "tpu"):
        return None
    termination = tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=lambda: stop.signum is not None,
        exit_fn=_raise_preempted, grace_period=0,
        save_fn=lambda *args, **kwargs: save(state))
    # Given a manager, the handler restores its latest checkpoint (and its
    # own run counter stored in it) at creation: a manager of the chief's
    # directory on every worker, so that all restore the same one.
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        state.strategy.cluster_resolver,
        run_dir.read_only_manager(state.checkpoint, config.model_dir),
        termination_config=termination)


def _next_batch(config, state, iterator, step):
    """The next batch, or an error that says what is wrong with the input.

    Args:
      config: the TrainConfig.
      state: the RunState.
      iterator: over the distributed dataset.
      step: the steps taken so far.

    Raises:
      ValueError: when the pipeline yields no batch at all (unusable input).
      records.CorruptShardError: on a corrupt record, naming the shard
        (after checkpointing the steps taken since the last checkpoint).
    """
    try:
        return next(iterator)
    except (StopIteration, tf.errors.OutOfRangeError):
        # A repeated pipeline ends only when a whole pass yields no batch:
        # unusable input, not a crash.
        raise ValueError(
            "--train_data=%s gives the %s sampler no batch of %d "
            "windows (proximity needs recordings with two "
            "windows less than --proximity_dt apart, supervised "
            "labelled windows of two classes); use more data or "
            "a smaller --batch_size" % (
                config.train_data, config.sampler.sampler,
                config.batch_size)) from None
    except tf.errors.DataLossError as e:
        # A bad checksum mid-epoch: keep the steps done since the last
        # checkpoint (a lone worker cannot save consistently under
        # multi_worker) and name the shard.
        if step > state.start_step and config.strategy != "multi_worker":
            save(state)
        raise records.data_loss_error(
            records.list_shards(config.train_data), e) from e


def last_step(config):
    """The step this run ends at: --steps, or --stop_at_step when earlier."""
    if config.stop_at_step:
        return min(config.steps, config.stop_at_step)
    return config.steps


def _is_log_step(config, step):
    return step % config.log_every == 0 or step == last_step(config)


def _is_checkpoint_step(config, step):
    return step % config.checkpoint_every == 0 or step == last_step(config)


def fmt_eta(seconds):
    """Seconds as H:MM:SS."""
    seconds = int(max(seconds, 0))
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60,
                             seconds % 60)


class _Progress:
    """Throughput since the last progress line; the lines and summaries."""

    def __init__(self, config, schedule, writer):
        self.config = config
        self.schedule = schedule
        self.writer = writer
        self.t_last = time.time()
        self.steps_since = 0

    def count_step(self):
        self.steps_since += 1

    def report(self, step, out):
        """Reads a step's outputs; on a log step logs and writes summaries.

        Args:
          step: the step just taken.
          out: its dict of loss and mining metrics (tensors).

        Returns:
          (metrics as floats, windows per second since the last log).
        """
        config = self.config
        metrics = {k: float(v.numpy()) for k, v in out.items()}
        now = time.time()
        steps_per_s = self.steps_since / max(now - self.t_last, 1e-9)
        windows_per_s = steps_per_s * config.batch_size
        lr = float(self.schedule(step))
        if _is_log_step(config, step):
            eta = (last_step(config) - step) / max(steps_per_s, 1e-9)
            logging.info(
                "step %d/%d  loss %.4f  active %.2f  d+ %.3f  "
                "d- %.3f  lr %.2e  %.1f steps/s  %.0f windows/s  "
                "eta %s",
                step, config.steps, metrics["loss"],
                metrics.get("fraction_active", float("nan")),
                metrics.get("mean_positive_distance", float("nan")),
                metrics.get("mean_negative_distance", float("nan")),
                lr, steps_per_s, windows_per_s, fmt_eta(eta))
            with self.writer.as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("steps_per_second", steps_per_s)
                tf.summary.scalar("windows_per_second", windows_per_s)
            self.writer.flush()
            self.t_last, self.steps_since = now, 0
        return metrics, windows_per_s


def run_steps(config, state, train_step, iterator):
    """Trains from `state.start_step` to `last_step(config)` or until stopped.

    After each step the loop checks for a signal; at log, checkpoint and
    stop steps it checks the loss is finite, reads the metrics, logs and
    writes summaries (log steps), and checkpoints (checkpoint steps, the last
    step, and when stopping).

    Args:
      config: the TrainConfig.
      state: the RunState.
      train_step: from `train_step.make_train_step`.
      iterator: over the distributed dataset.

    Returns:
      LoopResult.

    Raises:
      NonFiniteLossError: when the loss becomes NaN/Inf.
      ValueError, records.CorruptShardError: on unusable input.
      The errors of a lost peer (PEER_ERRORS) under multi_worker, after
      logging how to resume.
    """
    writer = (tf.summary.create_file_writer(
        run_dir.summary_dir(config.model_dir)) if state.is_chief
        else tf.summary.create_noop_writer())
    progress = _Progress(config, state.schedule, writer)
    result = LoopResult(step=state.start_step)
    t_start = time.time()
    with StopFlag() as stop:
        handler = preemption_handler(config, state, stop)
        # Under multi_worker a lone worker must not stop on its own signal
        # (the others would wait for it in the next collective): the
        # preemption handler stops them all at one step.
        own_stop = config.strategy != "multi_worker"
        try:
            while result.step < last_step(config):
                batch = _next_batch(config, state, iterator, result.step)
                if handler is not None:
                    out = handler.run(train_step, batch)
                else:
                    out = train_step(batch)
                result.step += 1
                progress.count_step()
                stopping = own_stop and stop.signum is not None
                if not (_is_log_step(config, result.step) or
                        _is_checkpoint_step(config, result.step) or stopping):
                    continue
                check_finite(state)
                result.metrics, result.windows_per_s = progress.report(
                    result.step, out)
                if _is_checkpoint_step(config, result.step) or stopping:
                    save(state)
                if stopping:
                    logging.warning("signal %d: checkpointed at step %d; "
                                    "rerun the same command to resume",
                                    stop.signum, result.step)
                    result.interrupted = True
                    break
            if not result.interrupted and result.step < config.steps:
                logging.info("stopped at --stop_at_step=%d (of --steps=%d); "
                             "rerun without it to continue", result.step,
                             config.steps)
        except PEER_ERRORS as e:
            if config.strategy != "multi_worker":
                raise
            # What a worker sees when another one dies (SIGKILL, crash):
            # its next collective fails. Nothing can be saved consistently
            # now; the job resumes from the last checkpoint.
            logging.error(
                "lost another worker at step %d (%s): restart every worker "
                "with the same command to resume from %s", result.step,
                type(e).__name__, state.checkpoints.latest or "the start")
            raise
        except _Preempted:
            result.step = int(state.step_var.numpy())
            logging.warning(
                "preempted (%s): every worker checkpointed at step %d; "
                "restart the job to resume",
                "signal %d on this worker" % stop.signum if stop.signum
                else "a signal on another worker", result.step)
            result.interrupted = True
    logging.info("trained steps %d..%d in %.1fs", state.start_step,
                 result.step, time.time() - t_start)
    return result
