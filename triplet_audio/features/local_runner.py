"""The local runner: shards written by worker processes on this machine.

`extract.run` plans the shards and hands the ones still to do to
`write_shards`, which writes them with `shards.write_shard`: in this process
when one worker is enough, else in a pool of spawned worker processes (one
shard at a time each), while the main process logs throughput every few
seconds from the per-file reports the workers send back.

Faults the pool survives:

  * a worker process dies mid-shard (killed, out of memory): the pool is
    restarted and the unfinished shards are redone; a shard whose worker
    dies `MAX_WORKER_DEATHS` times is given up, the others still finish,
    and the run then fails with a `shards.RunnerError` naming it;
  * the main process dies: its workers die with it (Linux: the parent-death
    signal; elsewhere a watchdog thread), and each worker writes under
    temporary names of its own (`worker_temp_suffix`), so a straggler can
    only ever rename a complete shard into place.
"""

import collections
import concurrent.futures
from concurrent.futures import process as futures_process
import multiprocessing
import os
import queue as queue_lib
import signal
import time

from absl import logging
import tensorflow as tf

from triplet_audio.config import options
from triplet_audio.features import decode_worker
from triplet_audio.features import records
from triplet_audio.features import shards

LOCAL_RUNNER = options.LOCAL_RUNNER
"""The runner name (`--runner`) of this runner; any other names Beam's."""

PROGRESS_SECONDS = 5.0
"""How often the main process logs progress."""

MAX_WORKER_DEATHS = 3
"""Worker processes a shard may take down before the runner gives up on it
(a file that crashes the decoder, or needs more memory than there is)."""

# What workers report on the progress queue, as (kind, ...) tuples.
_FILE_DONE = "file"  # (kind, status, audio_seconds)
_SHARD_STARTED = "start"  # (kind, shard index, worker pid)

_worker_progress = None  # The progress queue, in a worker process.


def worker_temp_suffix(pid):
    """The temporary-name suffix of the shard files worker `pid` writes.

    It ends with `records.TEMP_SUFFIX`, so readers never list them; the pid
    in it names the worker writing a shard (`extract` removes leftovers).
    """
    return ".%d%s" % (pid, records.TEMP_SUFFIX)


def _init_worker(progress_queue, parent_pid):
    """Runs once in each worker process."""
    global _worker_progress
    _worker_progress = progress_queue
    decode_worker.die_with_parent(parent_pid)
    # Parallelism comes from the worker processes; TF's own thread pools on
    # top would oversubscribe the cores and slow every worker down.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Features are computed on the CPU whatever the host has: the same bytes
    # everywhere, and N workers do not fight over one accelerator.
    tf.config.set_visible_devices([], "GPU")


def _report(result):
    _worker_progress.put((_FILE_DONE, result.status, result.audio_seconds))


def _timed_write_shard(task, progress, **kwargs):
    """`shards.write_shard`, and the seconds it took (not in the summary)."""
    start = time.monotonic()
    summary = shards.write_shard(task, progress=progress, **kwargs)
    return summary, time.monotonic() - start


def _write_shard_in_worker(task):
    pid = os.getpid()
    _worker_progress.put((_SHARD_STARTED, task.index, pid))
    return _timed_write_shard(task, _report,
                              temp_suffix=worker_temp_suffix(pid))


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

    def drain(self, progress_queue, started):
        """Reads the workers' reports; shard starts go to `started`."""
        while True:
            try:
                message = progress_queue.get_nowait()
            except queue_lib.Empty:
                return
            if message[0] == _SHARD_STARTED:
                started[message[1]] = message[2]
            else:
                self.add(*message[1:])

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


def _describe_exit(exitcode):
    if exitcode is not None and exitcode < 0:
        try:
            return "killed by %s" % signal.Signals(-exitcode).name
        except ValueError:
            return "killed by signal %d" % -exitcode
    return "exit status %s" % exitcode


def _remove_leftovers(tasks, pids):
    """Removes the temporary files workers `pids` left of `tasks`."""
    for pid in pids:
        suffix = worker_temp_suffix(pid)
        for task in tasks:
            for path in (task.shard_path + suffix, task.summary_path + suffix,
                         task.summary_path + suffix + records.TEMP_SUFFIX):
                if os.path.exists(path):
                    os.remove(path)


def _run_pool(tasks, workers, progress, summaries):
    """Writes `tasks` with one pool of `workers` spawned worker processes.

    Args:
      tasks: the `shards.ShardTask`s to write.
      workers: pool size.
      progress: the `_Progress`.
      summaries: {task index: summary}, filled in as shards finish.

    Returns:
      None when every task finished; else the pool broke (a worker died)
      and this is {shard index: why} of the unfinished shards a dead worker
      was writing ({} when that cannot be told).

    Raises:
      shards.ShardWriteError: a shard could not be written (the shards
        already running are finished first).
    """
    context = multiprocessing.get_context("spawn")
    # A queue of its own for each pool: a worker killed while writing to
    # one can leave its lock held.
    progress_queue = context.Queue()
    started = {}  # Shard index -> pid of the worker that took it.
    processes = {}  # Pid -> multiprocessing.Process, for the exit codes.
    broken = False
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker,
        initargs=(progress_queue, os.getpid()))
    try:
        futures = {pool.submit(_write_shard_in_worker, t): t for t in tasks}
        not_done = set(futures)
        while not_done and not broken:
            # The pool's own table, read for the exit codes once it breaks.
            processes.update(getattr(pool, "_processes", None) or {})
            done, not_done = concurrent.futures.wait(
                not_done, timeout=min(progress.interval, 0.5),
                return_when=concurrent.futures.FIRST_COMPLETED)
            progress.drain(progress_queue, started)
            for future in done:
                task = futures[future]
                try:
                    summaries[task.index], seconds = future.result()
                except futures_process.BrokenProcessPool:
                    broken = True
                    continue
                progress.busy_seconds += seconds
                progress.shards += 1
            progress.log()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    progress.drain(progress_queue, started)
    progress_queue.close()
    if not broken:
        return None
    unfinished = [t for t in tasks if t.index not in summaries]
    # The pool sends SIGTERM to the workers left once one has died: a worker
    # that died otherwise is the one that broke it. Its shard is the one it
    # reported taking, or (the report may not have left the worker before
    # it died) the one whose temporary file bears its pid.
    dead = {pid: p.exitcode for pid, p in processes.items()
            if p.exitcode not in (None, 0, -signal.SIGTERM)}
    culprits = {}
    for task in unfinished:
        for pid, exitcode in dead.items():
            if started.get(task.index) == pid or os.path.exists(
                    task.shard_path + worker_temp_suffix(pid)):
                culprits[task.index] = _describe_exit(exitcode)
    _remove_leftovers(unfinished, processes)
    return culprits


def _run_local(tasks, workers, progress):
    """Writes `tasks` with a pool of spawned worker processes, surviving the
    loss of a worker (see the module docstring).

    Raises:
      shards.RunnerError: naming the shards given up on, after the others
        are written.
      shards.ShardWriteError: a shard could not be written.
    """
    summaries = {}
    remaining = {t.index: t for t in tasks}
    deaths = collections.Counter()
    given_up = {}  # Shard index -> the last death's description.
    restarts = 0
    while remaining:
        culprits = _run_pool(list(remaining.values()),
                             min(workers, len(remaining)), progress,
                             summaries)
        for index in list(remaining):
            if index in summaries:
                del remaining[index]
            else:
                # Committed by a worker that then died before answering.
                summary = shards.load_finished_shard(remaining[index])
                if summary is not None:
                    summaries[index] = summary
                    del remaining[index]
        if culprits is None or not remaining:
            break
        restarts += 1
        for index, why in culprits.items():
            deaths[index] += 1
            giving_up = deaths[index] >= MAX_WORKER_DEATHS
            logging.warning("the worker writing %s died (%s, %d of %d "
                            "times allowed); %s", remaining[index].shard_path,
                            why, deaths[index], MAX_WORKER_DEATHS,
                            "giving up on it" if giving_up else "redoing it")
            if giving_up:
                given_up[index] = why
                del remaining[index]
        if not culprits and restarts > MAX_WORKER_DEATHS * len(tasks):
            raise shards.RunnerError(
                "worker processes kept dying (%d pool restarts) without "
                "naming a shard; %d shard(s) left: %s" % (
                    restarts, len(remaining),
                    ", ".join(t.shard_path for t in remaining.values())))
        logging.warning("a worker process died; restarting the pool for the "
                        "%d unfinished shard(s)", len(remaining))
    if given_up:
        raise shards.RunnerError(
            "gave up on %d shard(s) whose worker process died %d times "
            "(a file it cannot decode, or out of memory?): %s; the other %d "
            "shard(s) are written, a re-run redoes only these" % (
                len(given_up), MAX_WORKER_DEATHS, ", ".join(
                    "%s (%s)" % (records.shard_name(i, tasks[0].num_shards),
                                 why) for i, why in sorted(given_up.items())),
                len(summaries)))
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

    Raises:
      shards.RunnerError: naming the shards whose worker process died
        `MAX_WORKER_DEATHS` times (the others are written first).
      shards.ShardWriteError: a shard could not be written (disk full, ...).
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
