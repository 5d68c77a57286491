"""Soak part `extract_kills` (section "kills"): bin/extract_features killed.

Each kill hits `bin/extract_features --workers=2` (the local runner) at a
random moment while it writes shards, in turn: SIGKILL of the whole process
group, SIGKILL of the main process alone (its workers must not outlive it),
SIGTERM of the main process alone. After each kill the binary runs again
(and may be killed again); the final corpus (every shard, summary and
manifest.json) must be byte-identical to a clean run's. Throughout, a reader
thread lists the shards (`records.list_shards`) and reads each one: a listed
shard that differs from the clean run's is lost work.

Then the loss of a worker: one worker process SIGKILLed mid-shard (the run
must go on and finish the same corpus), and (full mode) a shard whose worker
is killed every time it takes it: the run must end with an error naming
that shard, the other shards written; a re-run finishes the corpus.
"""

import os
import re
import shutil
import signal
import threading
import time

from soak_parts import common

from triplet_audio.features import extract
from triplet_audio.features import local_runner
from triplet_audio.features import records

NUM_KILLS = 20
NUM_KILLS_QUICK = 2
NUM_WORKER_KILLS = 5
NUM_WORKER_KILLS_QUICK = 1
KILL_KINDS = ("SIGKILL process group", "SIGKILL main process only",
              "SIGTERM main process only")
ORPHAN_GRACE_SECONDS = 10.0
"""How long workers may outlive a killed main process (they get SIGKILL
from the kernel at once; this is for a loaded machine)."""

_WORKER_TEMP = re.compile(r"^(shard-\d+-of-\d+\.tfrecord)\.(\d+)%s$" %
                          re.escape(records.TEMP_SUFFIX))


def _worker_temps(directory):
    """{(shard name, worker pid)} of the shards workers are writing."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {(m.group(1), int(m.group(2)))
            for m in map(_WORKER_TEMP.match, entries) if m}


def _descendants(pid):
    """Pids of every process below `pid` (workers, their decoder children)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _Reader(threading.Thread):
    """Lists and reads the shards of `self.directory` until stopped."""

    def __init__(self, clean):
        super().__init__(daemon=True)
        self.clean = clean
        self.directory = None
        self.stop = threading.Event()
        self.bad = set()  # (directory, shard, size) seen wrong.
        self.reads = 0

    def run(self):
        while not self.stop.is_set():
            directory = self.directory
            try:
                paths = records.list_shards(directory) if directory else []
            except (FileNotFoundError, ValueError):
                paths = []
            for path in paths:
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    continue
                self.reads += 1
                if data != self.clean.get(os.path.basename(path)):
                    self.bad.add((directory, os.path.basename(path),
                                  len(data)))
            time.sleep(0.01)


class _WorkerKiller(threading.Thread):
    """SIGKILLs the worker writing shard `name`, up to `times` attempts."""

    def __init__(self, directory, name, times):
        super().__init__(daemon=True)
        self.directory, self.name, self.times = directory, name, times
        self.killed = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and len(self.killed) < self.times:
            for name, pid in _worker_temps(self.directory):
                if name == self.name and pid not in self.killed:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    except ProcessLookupError:
                        pass
            time.sleep(0.002)


def _command(src, out, num_shards, workers=2):
    """bin/extract_features' arguments (after the interpreter)."""
    return [common.binary("extract_features"), "--input=" + src,
            "--output_dir=" + out, "--num_shards=%d" % num_shards,
            "--workers=%d" % workers]


def _run_to_end(ctx, command, log, timeout=600):
    proc = common.start([ctx.python] + command, log)
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _kill_once(ctx, rng, kind, command, out, log, write_estimate):
    """Starts the binary and kills it `kind`-wise mid-write.

    Returns:
      (landed, orphans): whether the kill hit a running binary, and the
      worker pids still alive ORPHAN_GRACE_SECONDS after it.
    """
    proc = common.start([ctx.python] + command, log)
    try:
        # The interesting moments are while shards are written: from the
        # first worker's temporary file on.
        while proc.poll() is None and not _worker_temps(out):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, write_estimate))
        workers = _descendants(proc.pid)
        if proc.poll() is not None:
            return False, []
        if kind == KILL_KINDS[0]:
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == KILL_KINDS[1]:
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait()
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    alive = [p for p in workers if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:  # Do not leave them to the next kill.
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True, alive


def run(ctx):
    rng = ctx.rng("extract_kills")
    work = ctx.work_dir
    if ctx.quick:
        num_files, seconds, num_shards = 8, 20.0, 4
    else:
        num_files, seconds, num_shards = 40, 30.0, 10
    src = os.path.join(work, "in")
    common.write_wavs(src, num_files, seconds, ctx.seed)
    log = os.path.join(work, "extract.log")
    clean_dir = os.path.join(work, "clean")
    start = time.monotonic()
    # In this process with one worker and no decoder child: no TensorFlow
    # import or process to start, and the bytes depend on none of them.
    extract.run(extract.ExtractConfig(input=src, output_dir=clean_dir,
                                      num_shards=num_shards, workers=1,
                                      isolate_decoder=False))
    clean_seconds = time.monotonic() - start
    clean = common.dir_bytes(clean_dir)

    reader = _Reader(clean)
    reader.start()
    target = NUM_KILLS_QUICK if ctx.quick else NUM_KILLS
    by_kind = {k: [0, 0] for k in KILL_KINDS}  # injected, survived
    orphans_left = 0
    lost_final = 0
    chains = 0
    runs = 0
    write_estimate = 1.0
    out = None
    injected = 0
    killer = None  # The final run's worker killer (quick mode).
    try:
        # At least one kill, whatever the deadline: none would check nothing.
        while injected < target and (not injected or ctx.time_left() > 0):
            if out is None:
                chains += 1
                out = os.path.join(work, "out_%d" % chains)
                reader.directory = out
            kind = KILL_KINDS[injected % len(KILL_KINDS)]
            command = _command(src, out, num_shards)
            runs += 1
            landed, alive = _kill_once(ctx, rng, kind, command, out, log,
                                       write_estimate)
            if not landed:
                # It finished first: a complete corpus, checked, and the
                # next kill starts a fresh one.
                lost_final += sum(1 for n, b in common.dir_bytes(out).items()
                                  if clean.get(n) != b)
                write_estimate = max(0.2, write_estimate / 2)
                out = None
                continue
            injected += 1
            by_kind[kind][0] += 1
            orphans_left += len(alive)
            by_kind[kind][1] += not alive
        # The re-run after the last kill, to the end: the same corpus. In
        # quick mode it also loses a worker (one run fewer).
        final_ok = True
        if out is not None:
            runs += 1
            pending = sorted(n for n in clean if n.endswith(
                records.SHARD_SUFFIX) and not os.path.exists(
                    os.path.join(out, n)))
            if ctx.quick and pending:
                killer = _WorkerKiller(out, pending[0], 1)
                killer.start()
            try:
                rc = _run_to_end(ctx, _command(src, out, num_shards), log)
            finally:
                if killer is not None:
                    killer.stop.set()
                    killer.join()
            got = common.dir_bytes(out)
            wrong = sorted(set(got) ^ set(clean)) + sorted(
                n for n in got if n in clean and got[n] != clean[n])
            lost_final += len(wrong)
            final_ok = rc == 0 and not wrong
    finally:
        reader.stop.set()
        reader.join()
    partial = len(reader.bad)

    rows = []
    for kind in KILL_KINDS:
        inj, surv = by_kind[kind]
        if not final_ok:
            surv = 0
        rows.append(common.row(
            "extract_features --workers=2: " + kind, inj, surv,
            0, "re-run after each; orphaned workers left: %d" %
            (orphans_left if kind != KILL_KINDS[0] else 0)))
    rows.append(common.row(
        "extract_features kills: corpus after the last re-run, and shards "
        "readers saw", injected, injected if final_ok and not partial else 0,
        lost_final + partial,
        "%d runs in %d chain(s); final corpus %s; %d shard reads by the "
        "reader, %d partial or different" % (
            runs, chains, "byte-identical" if final_ok else "DIFFERENT",
            reader.reads, partial)))

    final_kill = None
    if ctx.quick:
        final_kill = (len(killer.killed) if killer is not None else 0,
                      final_ok, lost_final)
    worker_rows, worker_notes = _lost_workers(ctx, rng, src, num_shards,
                                              clean, log, final_kill)
    rows += worker_rows
    notes = ["clean run: %d files of %.0f s in %d shards, %.1f s" % (
        num_files, seconds, num_shards, clean_seconds)]
    if injected < target:
        notes.append("stopped at the deadline after %d of %d kills" %
                     (injected, target))
    notes += worker_notes
    shutil.rmtree(os.path.join(work, "in"), ignore_errors=True)
    return [common.part("kills", rows, {
        "extract_kills": injected, "extract_runs": runs,
        "extract_shard_reads": reader.reads,
        "extract_clean_seconds": round(clean_seconds, 1)}, notes)]


def _lost_workers(ctx, rng, src, num_shards, clean, log, final_kill=None):
    """Workers SIGKILLed mid-shard; in full mode a shard killing every one.

    `final_kill` (quick mode): (workers killed, corpus right, files wrong)
    of the kill series' final run, which lost a worker already.
    """
    rows, notes = [], []
    target = NUM_WORKER_KILLS_QUICK if ctx.quick else NUM_WORKER_KILLS
    injected = survived = lost = 0
    if final_kill is not None:
        injected, survived, lost = (final_kill[0],
                                    final_kill[0] * final_kill[1],
                                    final_kill[2] if final_kill[0] else 0)
        target = 0 if injected else target
    for i in range(target):
        if i and ctx.time_left() <= 0:
            notes.append("worker kills: stopped at the deadline after %d" %
                         injected)
            break
        out = os.path.join(ctx.work_dir, "worker_kill_%d" % i)
        # The first shards are the ones a fresh worker takes, while its
        # front end is still being traced: slow enough to catch.
        name = records.shard_name(int(rng.integers(0, 2)), num_shards)
        killer = _WorkerKiller(out, name, 1)
        killer.start()
        try:
            rc = _run_to_end(ctx, _command(src, out, num_shards), log)
        finally:
            killer.stop.set()
            killer.join()
        if not killer.killed:
            notes.append("worker kill %d: %s finished before it was seen" %
                         (i, name))
            continue
        injected += 1
        got = common.dir_bytes(out)
        wrong = sum(1 for n in set(got) | set(clean)
                    if got.get(n) != clean.get(n))
        lost += wrong
        survived += rc == 0 and not wrong
    rows.append(common.row(
        "extract_features: a worker process SIGKILLed mid-shard", injected,
        survived, lost, "pool restarted, unfinished shards redone; corpus "
        "byte-identical to a clean run's"))
    if ctx.quick:
        notes.append("a shard that kills its worker every time: full mode "
                     "only (tests/test_reliability_extract.py covers it)")
        return rows, notes

    out = os.path.join(ctx.work_dir, "poison")
    name = records.shard_name(0, num_shards)
    killer = _WorkerKiller(out, name, local_runner.MAX_WORKER_DEATHS)
    killer.start()
    mark = os.path.getsize(log) if os.path.exists(log) else 0
    try:
        rc = _run_to_end(ctx, _command(src, out, num_shards), log)
    finally:
        killer.stop.set()
        killer.join()
    with open(log, errors="replace") as f:
        f.seek(mark)
        text = f.read()
    got = common.dir_bytes(out)
    others_ok = all(got.get(n) == b for n, b in clean.items()
                    if not n.startswith(name[:-len(records.SHARD_SUFFIX)])
                    and n != records.MANIFEST_NAME)
    named = rc == 1 and re.search("gave up on .*" + re.escape(name), text)
    partial = [n for n in got if n.endswith(records.TEMP_SUFFIX)] + (
        [name] if name in got else [])
    rc2 = _run_to_end(ctx, _command(src, out, num_shards), log)
    final_ok = rc2 == 0 and common.dir_bytes(out) == clean
    ok = (len(killer.killed) == local_runner.MAX_WORKER_DEATHS and named
          and others_ok and not partial and final_ok)
    rows.append(common.row(
        "extract_features: a shard whose worker dies every time (%d kills)"
        % local_runner.MAX_WORKER_DEATHS, 1, int(bool(ok)),
        (0 if others_ok else 1) + len(partial) + (0 if final_ok else 1),
        "exit %d naming %s: %s; other shards intact: %s; re-run identical: "
        "%s" % (rc, name, bool(named), others_ok, final_ok)))
    return rows, notes
