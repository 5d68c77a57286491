"""The local runner: shards written by worker processes on this machine.

`extract.run` plans the shards and hands the ones still to do to
`write_shards`, which writes them with `shards.write_shard`: in this process
when one worker is enough, else in a pool of spawned worker processes (one
shard at a time each), while the main process logs throughput every few
seconds from the per-file reports the workers send back.
"""

import concurrent.futures
import multiprocessing
import queue as queue_lib
import time

from absl import logging
import tensorflow as tf

from triplet_audio.config import options
from triplet_audio.features import shards

LOCAL_RUNNER = options.LOCAL_RUNNER
"""The runner name (`--runner`) of this runner; any other names Beam's."""

PROGRESS_SECONDS = 5.0
"""How often the main process logs progress."""

_worker_progress = None  # The progress queue, in a worker process.


def _init_worker(progress_queue):
    """Runs once in each worker process."""
    global _worker_progress
    _worker_progress = progress_queue
    # Parallelism comes from the worker processes; TF's own thread pools on
    # top would oversubscribe the cores and slow every worker down.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Features are computed on the CPU whatever the host has: the same bytes
    # everywhere, and N workers do not fight over one accelerator.
    tf.config.set_visible_devices([], "GPU")


def _report(result):
    _worker_progress.put((result.status, result.audio_seconds))


def _timed_write_shard(task, progress):
    """`shards.write_shard`, and the seconds it took (not in the summary)."""
    start = time.monotonic()
    summary = shards.write_shard(task, progress=progress)
    return summary, time.monotonic() - start


def _write_shard_in_worker(task):
    return _timed_write_shard(task, _report)


class _Progress:
    """Counts per-file reports and logs throughput every few seconds."""

    def __init__(self, total_files, total_shards, interval):
        self.total_files = total_files
        self.total_shards = total_shards
        self.interval = interval
        self.files = 0
        self.failed = 0
        self.audio_seconds = 0.0
        self.shards = 0
        self.start = time.monotonic()
        self.last_log = self.start
        self.first_file = None  # When the first file finished.
        self.busy_seconds = 0.0  # Summed over workers, start-up excluded.

    def add(self, status, audio_seconds):
        if self.first_file is None:
            self.first_file = time.monotonic()
        self.files += 1
        self.failed += status == shards.STATUS_FAILED
        self.audio_seconds += audio_seconds

    def drain(self, progress_queue):
        while True:
            try:
                self.add(*progress_queue.get_nowait())
            except queue_lib.Empty:
                return

    def log(self, force=False):
        now = time.monotonic()
        if not force and now - self.last_log < self.interval:
            return
        self.last_log = now
        elapsed = max(now - self.start, 1e-9)
        logging.info(
            "extract: %d/%d files (%.0f%%), %d failed, %d/%d shards, "
            "%.1f files/s, %.1f audio-s/s",
            self.files, self.total_files,
            100.0 * self.files / max(self.total_files, 1), self.failed,
            self.shards, self.total_shards, self.files / elapsed,
            self.audio_seconds / elapsed)


def _run_in_process(tasks, progress):
    """Writes `tasks` one after the other in this process.

    With a single worker there is nothing to run in parallel, and a spawned
    process would spend seconds importing TensorFlow. TF's thread settings
    are left as the caller has them.
    """
    summaries = {}

    def report(result):
        progress.add(result.status, result.audio_seconds)
        progress.log()

    for task in tasks:
        summaries[task.index], seconds = _timed_write_shard(task, report)
        progress.busy_seconds += seconds
        progress.shards += 1
    return summaries


def _run_local(tasks, workers, progress):
    """Writes `tasks` with a pool of `workers` spawned worker processes."""
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    summaries = {}
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker,
        initargs=(progress_queue,))
    try:
        futures = {pool.submit(_write_shard_in_worker, t): t for t in tasks}
        not_done = set(futures)
        while not_done:
            done, not_done = concurrent.futures.wait(
                not_done, timeout=min(progress.interval, 0.5),
                return_when=concurrent.futures.FIRST_COMPLETED)
            progress.drain(progress_queue)
            for future in done:
                task = futures[future]
                summaries[task.index], seconds = future.result()
                progress.busy_seconds += seconds
                progress.shards += 1
            progress.log()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    progress.drain(progress_queue)
    return summaries


def write_shards(tasks, workers, progress_seconds=PROGRESS_SECONDS):
    """Writes `tasks` with `workers` worker processes.

    Args:
      tasks: the `shards.ShardTask`s to write (none already committed).
      workers: number of worker processes; 1 writes in this process (a
        spawned one would spend seconds importing TensorFlow, with nothing
        to run beside it). TF's thread settings are then left as the caller
        has them.
      progress_seconds: interval between progress log lines.

    Returns:
      (summaries, timings): {task index: summary dict}, and a dict of
      `seconds` (wall time), `startup_seconds` (of which before the first
      file was done: worker start-up, TF tracing) and `busy_seconds` (time
      spent writing shards, summed over workers).
    """
    progress = _Progress(sum(len(t.items) for t in tasks), len(tasks),
                         progress_seconds)
    summaries = {}
    if workers == 1:
        summaries = _run_in_process(tasks, progress)
    elif workers > 1:
        summaries = _run_local(tasks, workers, progress)
    if tasks:
        progress.log(force=True)
    end = time.monotonic()
    return summaries, dict(
        seconds=end - progress.start,
        startup_seconds=(progress.first_file or end) - progress.start,
        busy_seconds=progress.busy_seconds)
