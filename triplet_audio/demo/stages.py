"""Running a plan of stages as subprocesses: logs, stamps, resume, parallel jobs.

A `Stage` is one binary run with its arguments, the paths it writes and the
stages it reads from. `Runner` runs a list of them (the plan) in one run
directory:

* each as its own process (`sys.executable bin/NAME ARGS`), its output
  appended to `logs/STAGE.log`;
* at most `jobs` at a time, each as soon as the stages it depends on are
  complete, in plan order; each waits on its subprocess in a thread, so the
  main thread logs progress (`[i/N] stage ... last log line`, elapsed time,
  ETA) and receives Ctrl-C / SIGTERM (`TermAsInterrupt`), which stop the
  running stages (SIGINT first: bin/train checkpoints) before the run ends;
* with a stamp, `stamps/STAGE.json`, written when a stage starts ("running")
  and when it completes ("complete", with a fresh token). The stamp holds a
  fingerprint of the stage's command line (run-directory paths made
  relative), of the contents of the flag files it reads, and of the tokens of
  the stages it depends on. A stage is then

  - skipped when its stamp is complete, its fingerprint matches and its
    outputs exist;
  - resumed (run again over what it left) when it started with the same
    fingerprint but did not finish: the binaries continue from partial
    outputs;
  - stale otherwise (a flag, a flag file or an upstream stage changed): its
    `clean` paths are removed and it runs afresh. A stage that runs gets a
    new token, so everything downstream of it is stale in turn.

A failing stage stops the run with a `StageError` naming it, the reason (the
line of its log most likely to say why) and its log. What a plan contains is
the caller's (`demo.runner` plans the demo); nothing here knows of corpora or
samplers.
"""

import dataclasses
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import List
import uuid

from absl import logging

from triplet_audio.config import jsonio

LOGS_DIR = "logs"
STAMPS_DIR = "stamps"

_TAIL_LINES = 30
# How long a stopped stage may take to checkpoint and exit before it is
# killed (bin/train saves a checkpoint on SIGINT).
_INTERRUPT_GRACE_S = 60.0
# Seconds assumed for a stage kind not given a prior and not yet timed.
_DEFAULT_PRIOR_S = 30.0


class StageError(RuntimeError):
    """A stage failed or was interrupted; names the stage."""


@dataclasses.dataclass
class Stage:
    """One step of a plan: a binary, its arguments, what it writes.

    Attributes:
      name: unique name; also the name of its log and stamp.
      kind: what sort of step it is (e.g. train); stages of one kind share
        the ETA estimate.
      binary: file name in bin/.
      args: the binary's arguments.
      outputs: paths that exist when the stage is complete.
      clean: paths removed before the stage runs afresh (stale outputs).
      deps: names of the stages whose outputs it reads.
      flagfiles: flag files it reads; their contents are fingerprinted.
    """
    name: str
    kind: str
    binary: str
    args: List[str]
    outputs: List[str]
    clean: List[str]
    deps: List[str] = dataclasses.field(default_factory=list)
    flagfiles: List[str] = dataclasses.field(default_factory=list)


class RunLayout:
    """Paths inside a run directory (absolute): its logs and stamps."""

    def __init__(self, output_dir):
        self.root = os.path.abspath(output_dir)

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def log(self, stage):
        return self.path(LOGS_DIR, "%s.log" % stage)

    def stamp(self, stage):
        return self.path(STAMPS_DIR, "%s.json" % stage)


def binary_path(name):
    """Path of the program of bin/NAME.

    bin/NAME beside the package in a checkout; else the installed console
    command (triplet-audio-NAME, "-" for "_") or NAME, beside the Python
    executable or on the PATH. Each is a Python script, run with
    `sys.executable`.
    """
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    commands = (name, "triplet-audio-" + name.replace("_", "-"))
    candidates = [os.path.join(checkout, "bin", name)] + [
        os.path.join(os.path.dirname(sys.executable), c) for c in commands]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    for command in commands:
        found = shutil.which(command)
        if found:
            return found
    raise FileNotFoundError("cannot find the binary %s (looked in %s/bin, "
                            "beside %s and on the PATH)" % (
                                name, checkout, sys.executable))


def command_line(stage):
    """The stage as a shell command run from a checkout's root."""
    return shlex.join(["bin/%s" % stage.binary] + stage.args)


def file_digest(path, seen=()):
    """sha256 of a flag file and, recursively, the flag files it includes.

    A relative include is looked up beside the including file (as
    `cli.mains.expand_flagfiles` resolves it), else in the working directory
    (absl's own rule).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        text = f.read()
    digest.update(text)
    for line in text.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("--flagfile="):
            nested = os.path.expanduser(line[len("--flagfile="):].strip())
            if nested and not os.path.isabs(nested):
                beside = os.path.join(os.path.dirname(path), nested)
                if os.path.isfile(beside):
                    nested = beside
            if os.path.isfile(nested) and nested not in seen:
                digest.update(file_digest(nested, seen + (path,)).encode())
    return digest.hexdigest()


def read_json(path):
    """A JSON file's contents, or None when it is missing or unreadable."""
    try:
        return jsonio.read_json(path)
    except (OSError, ValueError):
        return None


def fmt_duration(seconds):
    seconds = int(round(max(seconds, 0.0)))
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60,
                             seconds % 60)


def tail(path, lines=_TAIL_LINES):
    """The last `lines` lines of a text file ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


# absl's "I1125 18:15:22.560946 139663854136192 training.py:412] " prefix.
_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^ \]]+\] ")


def last_line(path):
    """The last line of a stage's log without absl's prefix, for progress."""
    return _ABSL_PREFIX.sub("", tail(path, 1).strip())[-200:]


def reason(log_tail):
    """The line of a failed stage's log most likely to say why."""
    lines = [l.strip() for l in log_tail.splitlines() if l.strip()]
    for line in reversed(lines):
        # The one-line exit message of the binaries (cli.run, parse_flags).
        if line.startswith(("error:", "FATAL", "make_corpus:")):
            return line
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else "(empty log)"


class TermAsInterrupt:
    """Turns SIGTERM into KeyboardInterrupt while the stages run.

    `kill`, `timeout` and batch schedulers send SIGTERM; handled like Ctrl-C,
    it stops the running stages (bin/train checkpoints) instead of leaving
    them running without the runner.
    """

    def __init__(self):
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: leave signals alone.
            self._previous = None
        return self

    @staticmethod
    def _handle(signum, frame):
        del signum, frame
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


class Runner:
    """Runs the stages: skip, resume or run afresh, up to `jobs` at a time.

    A stage starts once every stage it depends on is complete, in plan order,
    while fewer than `jobs` stages run. Each runs in a thread that waits on
    its subprocess, so the main thread stays free to log progress and to
    receive Ctrl-C.

    Attributes:
      total: steps counted in the "[i/N]" prefixes: the stages, plus one
        when a `final_kind` step follows them (run by the caller).
      start: `time.monotonic()` when the runner was made.
      records: stage name -> {"stage", "status", "seconds"}.
    """

    def __init__(self, stages, layout, jobs=1, progress_every=30.0,
                 launch=None, prior_seconds=None, final_kind=None,
                 name="run"):
        """Prepares a run of `stages`.

        Args:
          stages: the plan, a list of `Stage` in start order.
          layout: the run directory (a `RunLayout`).
          jobs: stages run at the same time.
          progress_every: seconds between progress lines of a running stage.
          launch: replaces the subprocess launcher (tests),
            `launch(stage, argv, log_path, prefix) -> exit status`.
          prior_seconds: {stage kind: seconds} assumed by the ETA until a
            stage of that kind has been timed.
          final_kind: the kind of a step the caller runs after the stages
            (counted in the total and the ETA), or None.
          name: what the log lines call the run.
        """
        self.layout = layout
        self.stages = stages
        self.jobs = jobs
        self.progress_every = progress_every
        self.prior_seconds = dict(prior_seconds or {})
        self.final_kind = final_kind
        self.name = name
        self.index = {s.name: i for i, s in enumerate(stages, start=1)}
        self.total = len(stages) + (1 if final_kind else 0)
        self.launch = launch or self._launch
        self.start = time.monotonic()
        self.measured = {}   # kind -> [seconds of the stages run now]
        self.records = {}    # stage name -> {"stage", "status", "seconds"}
        self._procs = {}     # stage name -> Popen (default launcher)
        self._lock = threading.Lock()

    # ------------------------------------------------------- fingerprints
    def _fingerprint(self, stage):
        root = self.layout.root + os.sep
        args = []
        for arg in stage.args:
            if arg.startswith("--flagfile="):
                continue  # Its contents count, not where it lies.
            # Run-directory paths made relative: a moved run stays fresh.
            args.append(arg.replace(root, "$RUN/"))
        deps = {}
        for dep in stage.deps:
            stamp = read_json(self.layout.stamp(dep)) or {}
            deps[dep] = stamp.get("token") if stamp.get(
                "status") == "complete" else None
        key = {"binary": stage.binary, "args": args, "deps": deps,
               "flagfiles": [file_digest(f) for f in stage.flagfiles]}
        return hashlib.sha256(
            json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _state(self, stage):
        """"fresh", "resume" or "stale" (see the module docstring)."""
        stamp = read_json(self.layout.stamp(stage.name))
        if not stamp or stamp.get("fingerprint") != self._fingerprint(stage):
            return "stale"
        if stamp.get("status") == "complete" and all(
                os.path.exists(p) for p in stage.outputs):
            return "fresh"
        return "resume"

    def _pending(self):
        """Names of the stages that will run: not fresh, or downstream of
        one that will (its new token makes them stale)."""
        pending = set()
        for stage in self.stages:
            if self._state(stage) != "fresh" or pending.intersection(
                    stage.deps):
                pending.add(stage.name)
        return pending

    # ------------------------------------------------------------ progress
    def _estimate(self, kind):
        done = self.measured.get(kind)
        if done:
            return sum(done) / len(done)
        return self.prior_seconds.get(kind, _DEFAULT_PRIOR_S)

    def _eta(self, pending, running):
        # Work left, spread over the parallel slots: a rough figure that the
        # measured stage times sharpen as the run goes.
        now = time.monotonic()
        work = sum(self._estimate(self.by_name(n).kind) for n in pending)
        work += sum(max(0.0, self._estimate(s.kind) - (now - t))
                    for s, t in running.values())
        final = self._estimate(self.final_kind) if self.final_kind else 0.0
        return work / max(1, self.jobs) + final

    def by_name(self, name):
        return self.stages[self.index[name] - 1]

    def _prefix(self, stage):
        return "[%d/%d] %s" % (self.index[stage.name], self.total, stage.name)

    # --------------------------------------------------------------- runs
    def run_all(self):
        """Runs every stage; returns the per-stage records in plan order.

        Raises:
          StageError: the first stage that failed, once the stages running
            beside it have stopped.
        """
        pending = self._pending()
        final = 1 if self.final_kind else 0
        logging.info("%s: %d stages in %s; %d to run, %d complete; up to "
                     "%d at a time", self.name, self.total, self.layout.root,
                     len(pending) + final, len(self.stages) - len(pending),
                     self.jobs)
        complete = set()
        waiting = list(self.stages)
        running = {}  # name -> (stage, start time)
        done = queue.Queue()
        failure = None
        last_report = time.monotonic()
        try:
            while waiting or running:
                # Start what can start, in plan order.
                for stage in list(waiting):
                    if failure or len(running) >= self.jobs:
                        break
                    if not all(d in complete for d in stage.deps):
                        continue
                    waiting.remove(stage)
                    state = self._state(stage)
                    if state == "fresh":
                        logging.info("%s: complete, skipped",
                                     self._prefix(stage))
                        self.records[stage.name] = {
                            "stage": stage.name, "status": "skipped",
                            "seconds": 0.0}
                        complete.add(stage.name)
                        pending.discard(stage.name)
                        continue
                    pending.discard(stage.name)
                    running[stage.name] = (stage, time.monotonic())
                    logging.info("%s%s (elapsed %s, ETA %s)",
                                 self._prefix(stage),
                                 " (resuming)" if state == "resume" else "",
                                 fmt_duration(time.monotonic() - self.start),
                                 fmt_duration(self._eta(pending, running)))
                    if state == "stale":
                        self._clean(stage)
                    threading.Thread(
                        target=self._run_stage, args=(stage, state, done),
                        name="%s-%s" % (self.name, stage.name),
                        daemon=True).start()
                if failure and not running:
                    break
                if not running:
                    if waiting:  # Cannot happen with a well-formed plan.
                        raise StageError("stage %s waits for stages that "
                                         "never run" % waiting[0].name)
                    break
                try:
                    name, state, seconds, error = done.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() - last_report >= (
                            self.progress_every):
                        last_report = time.monotonic()
                        for stage, _ in running.values():
                            logging.info("%s ... %s", self._prefix(stage),
                                         last_line(
                                             self.layout.log(stage.name)))
                    continue
                stage, _ = running.pop(name)
                if error is not None:
                    if failure is None:
                        failure = error
                        self._stop_running(running, "stage %s failed" % name)
                    continue
                complete.add(name)
                self.measured.setdefault(stage.kind, []).append(seconds)
                self.records[name] = {
                    "stage": name,
                    "status": "resumed" if state == "resume" else "ran",
                    "seconds": round(seconds, 1)}
                logging.info("%s: done in %.1f s", self._prefix(stage),
                             seconds)
        except KeyboardInterrupt:
            names = ", ".join(sorted(running)) or "(none)"
            self._stop_running(running, "interrupted")
            self._drain(running, done, _INTERRUPT_GRACE_S)
            raise StageError("interrupted during stage(s) %s; rerun the same "
                             "command to continue" % names) from None
        if failure is not None:
            raise failure
        return [self.records[s.name] for s in self.stages]

    def _stop_running(self, running, why):
        """Asks the running stages to stop (bin/train checkpoints first)."""
        for name in running:
            with self._lock:
                proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                logging.warning("%s; stopping %s", why, name)
                proc.send_signal(signal.SIGINT)

    def _drain(self, running, done, grace_s):
        """Waits up to grace_s for the running stages, then kills them."""
        deadline = time.monotonic() + grace_s
        while running and time.monotonic() < deadline:
            try:
                name = done.get(timeout=1.0)[0]
            except queue.Empty:
                continue
            running.pop(name, None)
        for name in list(running):
            with self._lock:
                proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.kill()

    def _clean(self, stage):
        for path in stage.clean:
            # Only ever below the run directory.
            if not os.path.abspath(path).startswith(self.layout.root + os.sep):
                raise ValueError("refusing to remove %s: outside %s" %
                                 (path, self.layout.root))
            if os.path.isdir(path):
                logging.info("  removing stale %s", path)
                shutil.rmtree(path)
            elif os.path.exists(path):
                logging.info("  removing stale %s", path)
                os.remove(path)

    def _run_stage(self, stage, state, done):
        """Thread body: runs one stage, posts (name, state, seconds, error)."""
        start = time.monotonic()
        try:
            self._run_stage_unguarded(stage, state)
            error = None
        except StageError as e:
            error = e
        except Exception as e:  # pylint: disable=broad-except
            # Reported by the main thread, which owns the exit.
            error = StageError("stage %s: %s: %s" % (
                stage.name, type(e).__name__, e))
        done.put((stage.name, state, time.monotonic() - start, error))

    def _run_stage_unguarded(self, stage, state):
        fingerprint = self._fingerprint(stage)
        stamp_path = self.layout.stamp(stage.name)
        jsonio.write_json(stamp_path, {
            "stage": stage.name, "status": "running",
            "fingerprint": fingerprint, "command": command_line(stage)})
        log_path = self.layout.log(stage.name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        argv = [sys.executable, binary_path(stage.binary)] + stage.args
        with open(log_path, "a") as log:
            log.write("==== %s %s: %s at %s\n$ %s\n" % (
                self.name, stage.name,
                "resumed" if state == "resume" else "started",
                time.strftime("%Y-%m-%d %H:%M:%S"), shlex.join(argv)))
        start = time.monotonic()
        returncode = self.launch(stage, argv, log_path, self._prefix(stage))
        seconds = time.monotonic() - start
        if returncode != 0:
            log_tail = tail(log_path)
            logging.error("%s failed (exit status %d); last lines of %s:\n%s",
                          self._prefix(stage), returncode, log_path, log_tail)
            raise StageError(
                "stage %s failed (exit status %d): %s [log: %s]" % (
                    stage.name, returncode, reason(log_tail), log_path))
        missing = [p for p in stage.outputs if not os.path.exists(p)]
        if missing:
            raise StageError("stage %s exited 0 but did not write %s [log: "
                             "%s]" % (stage.name, ", ".join(missing),
                                      log_path))
        jsonio.write_json(stamp_path, {
            "stage": stage.name, "status": "complete",
            "fingerprint": fingerprint, "token": uuid.uuid4().hex,
            "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command_line(stage)})

    def _launch(self, stage, argv, log_path, prefix):
        """Runs argv with its output appended to log_path; returns its status.

        The child stays in the runner's process group, so a terminal's Ctrl-C
        or hang-up reaches it too, and never outlives the session.
        """
        del prefix
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        with open(log_path, "a") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        with self._lock:
            self._procs[stage.name] = proc
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.pop(stage.name, None)
