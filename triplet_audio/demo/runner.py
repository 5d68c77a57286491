"""The one-command demo: the whole path on the synthetic corpus, to Table 1.

`run_demo(config)` runs the binaries a user runs, as subprocesses
(`sys.executable bin/NAME ...`), and puts everything in one run directory:

  corpus                    bin/make_corpus (labelled synthetic scenes)
  features_{train,eval}     bin/extract_features
  embed_logmel_{train,eval} bin/embed --representation=logmel (the baseline)
  evaluate_logmel           bin/evaluate
  for each training run S (supervised topline first, then the samplers):
    train_S, export_S, embed_S_train, embed_S_eval, evaluate_S
  report                    Table 1 with recovery, Table 2 and plots across
                            all runs (report.md, report.json)

Subprocesses rather than library calls, because the demo is also the proof
that the documented command lines work end to end, and each stage's log
(`logs/STAGE.log`) is exactly what a user running that command sees.

Stages start in the order above as soon as the stages they read from are
complete, at most `jobs` at a time: with 2, one core keeps working while the
other waits on a process start-up (each binary imports TensorFlow) or on
Python-bound work, and the next training starts while the previous model is
embedded and evaluated.

Rerunning continues an interrupted demo. A stage that finishes writes
`stamps/STAGE.json`: a fingerprint of its command line (run-directory paths
made relative), of the contents of the flag files it reads, and of the stamps
of the stages it depends on, plus a fresh token. A stage is

* skipped when its stamp is complete, its fingerprint matches and its
  outputs exist;
* resumed (run again over what it left) when it started with the same
  fingerprint but did not finish: every binary continues from partial
  outputs (extraction keeps finished shards, bin/train restores its last
  checkpoint, export replaces a partial export);
* stale otherwise (a flag, a flag file or an upstream stage changed): its
  outputs are removed and it runs afresh, because resuming from them would
  mix two experiments. A stage that runs gets a new token, so everything
  downstream of it is stale in turn.

Layout of the run directory:

  demo_config.json            the resolved DemoConfig
  corpus/                     WAVs and label CSVs
  features/{train,eval}/      TFRecord shards + manifest.json
  runs/S/                     bin/train model_dir (checkpoints, config.json)
  exports/S/                  SavedModel + metadata.json
  embeddings/R/{train,eval}.npz
  eval/R/                     bin/evaluate output (results.json, report.md,
                              per-class and projection plots, projector TSVs)
  logs/STAGE.log, stamps/STAGE.json
  report.md, report.json, per_class_ap.png
"""

import dataclasses
import hashlib
import json
import math
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
from typing import List, Tuple
import uuid

from absl import logging

from triplet_audio.config import options

BASELINE = "logmel"
"""Name of the log-mel baseline, as `bin/embed --representation` spells it."""
TOPLINE = "supervised"
ALL_RUNS = (TOPLINE,) + options.UNSUPERVISED_SAMPLERS + ("joint",)
"""Training runs in report order: the topline, the paper's samplers, joint."""

CONFIG_NAME = "demo_config.json"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
LOGS_DIR = "logs"
STAMPS_DIR = "stamps"
REPORT_STAGE = "report"

_TAIL_LINES = 30
# Rough seconds per stage kind on a 2-core CPU, for the ETA until a stage of
# that kind has been timed in this invocation.
_PRIOR_SECONDS = {"corpus": 15.0, "features": 30.0, "train": 90.0,
                  "export": 15.0, "embed": 12.0, "evaluate": 30.0,
                  "report": 10.0}
# How long a stopped stage may take to checkpoint and exit before it is
# killed (bin/train saves a checkpoint on SIGINT).
_INTERRUPT_GRACE_S = 60.0


class StageError(RuntimeError):
    """A stage of the demo failed or was interrupted; names the stage."""


@dataclasses.dataclass
class DemoConfig:
    """Everything that defines a demo run.

    The defaults are the 2-core CPU demo of flags/demo_pipeline.cfg; training
    settings (model, steps, batch) live in `train_flagfile`.

    Attributes:
      output_dir: the run directory; everything is written under it.
      samplers: training runs, a subset of `ALL_RUNS` (report order is
        always that of `ALL_RUNS`).
      train_flagfile: flag file passed to every bin/train.
      train_flags: extra bin/train flags ("--name=value"), after the flag
        file so they override it.
      num_train: training recordings of the synthetic corpus.
      num_eval: evaluation recordings.
      duration_s: length of every recording in seconds.
      num_classes: first N classes of the synthetic vocabulary; 0 for all.
      seed: corpus seed.
      num_shards: TFRecord shards of each extracted split.
      workers: processes of corpus generation and extraction; 0 = all cores.
      eval_seed: seed of QbE samples, classifiers and few-shot draws.
      qbe_num_pos: QbE positives sampled per class.
      qbe_num_neg: QbE negatives sampled per class.
      qbe_min_count: 0 for the paper's exact QbE protocol; N > 0 keeps
        classes with at least N positives and negatives.
      classifier_epochs: epochs of the 1x512 and 2x512 classifiers.
      fewshot_epochs: epochs of each few-shot classifier.
      fewshot_per_class: few-shot labelled segments per class.
      fewshot_draws: few-shot draws averaged.
      progress_every: seconds between progress lines of a running stage.
      jobs: stages run at the same time (each is a process; training uses
        every core it is given, so more than 2 rarely helps on a CPU).
      dry_run: only log the stages and their commands; run and write
        nothing.
    """
    output_dir: str
    samplers: Tuple[str, ...] = ALL_RUNS
    train_flagfile: str = "flags/demo.cfg"
    train_flags: Tuple[str, ...] = ()
    num_train: int = 360
    num_eval: int = 240
    duration_s: float = 10.0
    num_classes: int = 0
    seed: int = 0
    num_shards: int = 4
    workers: int = 0
    eval_seed: int = 0
    qbe_num_pos: int = 100
    qbe_num_neg: int = 100
    qbe_min_count: int = 15
    classifier_epochs: int = 10
    fewshot_epochs: int = 30
    fewshot_per_class: int = 20
    fewshot_draws: int = 3
    progress_every: float = 30.0
    jobs: int = 2
    dry_run: bool = False

    def validate(self):
        """Checks every field; returns self.

        Raises:
          ValueError: naming the flag of the first invalid field.
        """
        def bad(flag, why):
            raise ValueError("--%s: %s" % (flag, why))
        if not self.output_dir:
            bad("output_dir", "required")
        self.samplers = tuple(s.strip() for s in self.samplers if s.strip())
        if not self.samplers:
            bad("samplers", "name at least one of %s" % ", ".join(ALL_RUNS))
        unknown = [s for s in self.samplers if s not in ALL_RUNS]
        if unknown:
            bad("samplers", "unknown %s (known: %s)" %
                (", ".join(unknown), ", ".join(ALL_RUNS)))
        if len(set(self.samplers)) != len(self.samplers):
            bad("samplers", "names a run twice: %s" % ",".join(self.samplers))
        if not os.path.isfile(self.train_flagfile):
            bad("train_flagfile", "no such file: %s (relative paths are "
                "relative to the working directory)" % self.train_flagfile)
        self.train_flags = tuple(self.train_flags)
        for flag in self.train_flags:
            if not flag.startswith("--"):
                bad("train_flag", "%r is not a flag (--name=value)" % flag)
        for name in ("num_train", "num_eval", "num_shards", "jobs",
                     "qbe_num_pos",
                     "qbe_num_neg", "classifier_epochs", "fewshot_epochs",
                     "fewshot_per_class", "fewshot_draws"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1, got %r" % getattr(self, name))
        for name in ("num_classes", "seed", "workers", "qbe_min_count"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0, got %r" % getattr(self, name))
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            bad("duration_s", "must be a positive number of seconds")
        if not self.progress_every > 0:
            bad("progress_every", "must be > 0")
        return self

    def runs(self):
        """The training runs in report order."""
        return tuple(s for s in ALL_RUNS if s in self.samplers)


@dataclasses.dataclass
class Stage:
    """One step of the demo: a binary, its arguments, what it writes.

    Attributes:
      name: unique name; also the name of its log and stamp.
      kind: corpus, features, train, export, embed or evaluate.
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


class Layout:
    """Paths inside the run directory (absolute)."""

    def __init__(self, output_dir):
        self.root = os.path.abspath(output_dir)

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    @property
    def corpus(self):
        return self.path("corpus")

    def features(self, split):
        return self.path("features", split)

    def run(self, name):
        return self.path("runs", name)

    def export(self, name):
        return self.path("exports", name)

    def embeddings(self, name, split):
        return self.path("embeddings", name, "%s.npz" % split)

    def evaluation(self, name):
        return self.path("eval", name)

    def log(self, stage):
        return self.path(LOGS_DIR, "%s.log" % stage)

    def stamp(self, stage):
        return self.path(STAMPS_DIR, "%s.json" % stage)


def plan_stages(config):
    """The demo's stages in execution order (the report is not one of them).

    Args:
      config: a validated DemoConfig.

    Returns:
      list of `Stage`.
    """
    lay = Layout(config.output_dir)
    stages = [Stage(
        name="corpus", kind="corpus", binary="make_corpus",
        args=["--output_dir=%s" % lay.corpus,
              "--num_train=%d" % config.num_train,
              "--num_eval=%d" % config.num_eval,
              "--duration_s=%r" % float(config.duration_s),
              "--num_classes=%d" % config.num_classes,
              "--seed=%d" % config.seed,
              "--workers=%d" % config.workers],
        outputs=[os.path.join(lay.corpus, name) for name in
                 ("train.csv", "eval.csv", "corpus.json")],
        clean=[lay.corpus])]
    for split in ("train", "eval"):
        stages.append(Stage(
            name="features_%s" % split, kind="features",
            binary="extract_features",
            args=["--input=%s" % os.path.join(lay.corpus, "%s.csv" % split),
                  "--output_dir=%s" % lay.features(split),
                  "--num_shards=%d" % config.num_shards,
                  "--workers=%d" % config.workers],
            outputs=[os.path.join(lay.features(split), "manifest.json")],
            clean=[lay.features(split)], deps=["corpus"]))
    eval_args = ["--eval_seed=%d" % config.eval_seed,
                 "--qbe_num_pos=%d" % config.qbe_num_pos,
                 "--qbe_num_neg=%d" % config.qbe_num_neg,
                 "--qbe_min_count=%d" % config.qbe_min_count,
                 "--classifier_epochs=%d" % config.classifier_epochs,
                 "--fewshot_epochs=%d" % config.fewshot_epochs,
                 "--fewshot_per_class=%d" % config.fewshot_per_class,
                 "--fewshot_draws=%d" % config.fewshot_draws]
    flagfile = os.path.abspath(config.train_flagfile)
    # The baseline first: the cheapest complete row, and the one every
    # recovery figure needs.
    for name in (BASELINE,) + config.runs():
        if name == BASELINE:
            source, export_deps = "--representation=%s" % BASELINE, []
        else:
            stages.append(Stage(
                name="train_%s" % name, kind="train", binary="train",
                # The sampler and paths come last: a flag file or
                # --train_flag must not redirect a run to another sampler or
                # directory.
                args=(["--flagfile=%s" % flagfile] +
                      list(config.train_flags) +
                      ["--sampler=%s" % name,
                       "--train_data=%s" % lay.features("train"),
                       "--model_dir=%s" % lay.run(name)]),
                outputs=[os.path.join(lay.run(name), "train_summary.json"),
                         os.path.join(lay.run(name), "config.json")],
                clean=[lay.run(name)], deps=["features_train"],
                flagfiles=[flagfile]))
            # --overwrite: a resumed export may find a SavedModel that an
            # interrupted run finished but did not describe in metadata.json.
            stages.append(Stage(
                name="export_%s" % name, kind="export", binary="export",
                args=["--model_dir=%s" % lay.run(name),
                      "--export_dir=%s" % lay.export(name), "--overwrite"],
                outputs=[os.path.join(lay.export(name), "metadata.json"),
                         os.path.join(lay.export(name), "saved_model",
                                      "saved_model.pb")],
                clean=[lay.export(name)], deps=["train_%s" % name]))
            source = "--saved_model=%s" % lay.export(name)
            export_deps = ["export_%s" % name]
        for split in ("train", "eval"):
            stages.append(Stage(
                name="embed_%s_%s" % (name, split), kind="embed",
                binary="embed",
                args=["--input=%s" % lay.features(split),
                      "--output=%s" % lay.embeddings(name, split), source],
                outputs=[lay.embeddings(name, split)],
                clean=[lay.embeddings(name, split)],
                deps=["features_%s" % split] + export_deps))
        stages.append(Stage(
            name="evaluate_%s" % name, kind="evaluate", binary="evaluate",
            args=["--train=%s" % lay.embeddings(name, "train"),
                  "--eval=%s" % lay.embeddings(name, "eval"),
                  "--output_dir=%s" % lay.evaluation(name),
                  "--name=%s" % name] + eval_args,
            outputs=[os.path.join(lay.evaluation(name), "results.json")],
            clean=[lay.evaluation(name)],
            deps=["embed_%s_train" % name, "embed_%s_eval" % name]))
    return stages


def binary_path(name):
    """Path of bin/NAME: beside the package in a clone, else on the PATH."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(package_root, "bin", name),
                      os.path.join(os.path.dirname(sys.executable), name)):
        if os.path.isfile(candidate):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError("cannot find the binary %s (looked in %s/bin and "
                            "beside %s)" % (name, package_root,
                                            sys.executable))


def _file_digest(path, seen=()):
    """sha256 of a flag file and, recursively, the flag files it includes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        text = f.read()
    digest.update(text)
    for line in text.decode("utf-8", "replace").splitlines():
        line = line.strip()
        # absl resolves nested flag files against the working directory.
        if line.startswith("--flagfile="):
            nested = line[len("--flagfile="):]
            if os.path.isfile(nested) and nested not in seen:
                digest.update(_file_digest(nested, seen + (path,)).encode())
    return digest.hexdigest()


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _fmt_duration(seconds):
    seconds = int(round(max(seconds, 0.0)))
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60,
                             seconds % 60)


def _tail(path, lines=_TAIL_LINES):
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


def _last_line(path):
    """The last line of a stage's log without absl's prefix, for progress."""
    return _ABSL_PREFIX.sub("", _tail(path, 1).strip())[-200:]


def _reason(log_tail):
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


class _TermAsInterrupt:
    """Turns SIGTERM into KeyboardInterrupt while the stages run.

    `kill`, `timeout` and batch schedulers send SIGTERM; handled like Ctrl-C,
    it stops the running stages (bin/train checkpoints) instead of leaving
    them running without the demo.
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


class _Runner:
    """Runs the stages: skip, resume or run afresh, up to `jobs` at a time.

    A stage starts once every stage it depends on is complete, in plan order,
    while fewer than `config.jobs` stages run. Each runs in a thread that
    waits on its subprocess, so the main thread stays free to log progress
    and to receive Ctrl-C.
    """

    def __init__(self, config, stages, launch=None):
        self.config = config
        self.layout = Layout(config.output_dir)
        self.stages = stages
        self.index = {s.name: i for i, s in enumerate(stages, start=1)}
        self.total = len(stages) + 1  # + the report
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
            stamp = _read_json(self.layout.stamp(dep)) or {}
            deps[dep] = stamp.get("token") if stamp.get(
                "status") == "complete" else None
        key = {"binary": stage.binary, "args": args, "deps": deps,
               "flagfiles": [_file_digest(f) for f in stage.flagfiles]}
        return hashlib.sha256(
            json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _state(self, stage):
        """"fresh", "resume" or "stale" (see the module docstring)."""
        stamp = _read_json(self.layout.stamp(stage.name))
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
        return _PRIOR_SECONDS.get(kind, 30.0)

    def _eta(self, pending, running):
        # Work left, spread over the parallel slots: a rough figure that the
        # measured stage times sharpen as the demo goes.
        now = time.monotonic()
        work = sum(self._estimate(self.by_name(n).kind) for n in pending)
        work += sum(max(0.0, self._estimate(s.kind) - (now - t))
                    for s, t in running.values())
        return work / max(1, self.config.jobs) + self._estimate("report")

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
        logging.info("demo: %d stages in %s; %d to run, %d complete; up to "
                     "%d at a time", self.total, self.layout.root,
                     len(pending) + 1, self.total - 1 - len(pending),
                     self.config.jobs)
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
                    if failure or len(running) >= self.config.jobs:
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
                                 _fmt_duration(time.monotonic() - self.start),
                                 _fmt_duration(self._eta(pending, running)))
                    if state == "stale":
                        self._clean(stage)
                    threading.Thread(
                        target=self._run_stage, args=(stage, state, done),
                        name="demo-%s" % stage.name, daemon=True).start()
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
                            self.config.progress_every):
                        last_report = time.monotonic()
                        for stage, _ in running.values():
                            logging.info("%s ... %s", self._prefix(stage),
                                         _last_line(
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
        _write_json(stamp_path, {"stage": stage.name, "status": "running",
                                 "fingerprint": fingerprint,
                                 "command": self.command_line(stage)})
        log_path = self.layout.log(stage.name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        argv = [sys.executable, binary_path(stage.binary)] + stage.args
        with open(log_path, "a") as log:
            log.write("==== demo %s: %s at %s\n$ %s\n" % (
                stage.name, "resumed" if state == "resume" else "started",
                time.strftime("%Y-%m-%d %H:%M:%S"), shlex.join(argv)))
        start = time.monotonic()
        returncode = self.launch(stage, argv, log_path, self._prefix(stage))
        seconds = time.monotonic() - start
        if returncode != 0:
            tail = _tail(log_path)
            logging.error("%s failed (exit status %d); last lines of %s:\n%s",
                          self._prefix(stage), returncode, log_path, tail)
            raise StageError(
                "stage %s failed (exit status %d): %s [log: %s]" % (
                    stage.name, returncode, _reason(tail), log_path))
        missing = [p for p in stage.outputs if not os.path.exists(p)]
        if missing:
            raise StageError("stage %s exited 0 but did not write %s [log: "
                             "%s]" % (stage.name, ", ".join(missing),
                                      log_path))
        _write_json(stamp_path, {"stage": stage.name, "status": "complete",
                                 "fingerprint": fingerprint,
                                 "token": uuid.uuid4().hex,
                                 "seconds": round(seconds, 1),
                                 "finished": time.strftime(
                                     "%Y-%m-%d %H:%M:%S"),
                                 "command": self.command_line(stage)})

    @staticmethod
    def command_line(stage):
        """The stage as a shell command run from the working directory."""
        return shlex.join(["bin/%s" % stage.binary] + stage.args)

    def _launch(self, stage, argv, log_path, prefix):
        """Runs argv with its output appended to log_path; returns its status.

        The child stays in the demo's process group, so a terminal's Ctrl-C
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


# ---------------------------------------------------------------- report
def structure_checks(results_by_name, runs):
    """The paper's Table 1 structure, checked on QbE mAP.

    Args:
      results_by_name: {name: results dict} of the evaluated runs.
      runs: the training runs of the demo.

    Returns:
      list of {"claim", "holds" (True / False / None when a run is
      missing), "detail"}.
    """
    def qbe(name):
        value = ((results_by_name.get(name) or {}).get("qbe") or {}).get("map")
        return None if value is None else float(value)

    unsupervised = [s for s in options.UNSUPERVISED_SAMPLERS if s in runs]
    scores = {name: qbe(name) for name in (BASELINE,) + tuple(runs)}
    checks = []

    def add(claim, names, holds_fn):
        values = [scores.get(n) for n in names]
        if not names or any(v is None for v in values):
            checks.append({"claim": claim, "holds": None,
                           "detail": "not measured (needs %s)" %
                           ", ".join(names)})
            return
        checks.append({"claim": claim, "holds": bool(holds_fn()),
                       "detail": ", ".join("%s %.3f" % (n, scores[n])
                                           for n in names)})

    add("every unsupervised sampler beats log-mel",
        [BASELINE] + unsupervised,
        lambda: all(scores[s] > scores[BASELINE] for s in unsupervised))
    if "proximity" in unsupervised and len(unsupervised) > 1:
        add("temporal proximity is the strongest single sampler",
            unsupervised,
            lambda: scores["proximity"] == max(scores[s]
                                               for s in unsupervised))
    if "joint" in runs and unsupervised:
        add("joint is at least as good as the best single sampler",
            unsupervised + ["joint"],
            lambda: scores["joint"] >= max(scores[s] for s in unsupervised))
    others = [n for n in (BASELINE,) + tuple(runs) if n != TOPLINE]
    if TOPLINE in runs:
        add("supervised triplets are the topline", [TOPLINE] + others,
            lambda: all(scores[TOPLINE] > scores[n] for n in others))
    return checks


def _checks_markdown(checks):
    lines = ["## The paper's structure on QbE mAP", ""]
    for check in checks:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[check["holds"]]
        lines.append("- %s: %s (%s)" % (check["claim"], verdict,
                                         check["detail"]))
    return "\n".join(lines) + "\n"


def write_report(config):
    """Writes report.md, report.json and per_class_ap.png of the run.

    Args:
      config: the DemoConfig whose evaluations are complete.

    Returns:
      dict with "report_md", "report_json", "per_class_plot" (paths),
      "markdown" (report.md's text), "table1" (rows) and "checks".
    """
    # Imported here: report loads TensorFlow (through evaluation) and
    # matplotlib, which the stages before it do not need in this process.
    from triplet_audio.evaluation import report  # pylint: disable=g-import-not-at-top
    lay = Layout(config.output_dir)
    names = (BASELINE,) + config.runs()
    results_by_name = {}
    for name in names:
        results = report.load_results([lay.evaluation(name)])
        results_by_name[name] = next(iter(results.values()))
    topline = TOPLINE if TOPLINE in results_by_name else None
    written = report.write_comparison_report(
        [lay.evaluation(n) for n in names], lay.root, baseline=BASELINE,
        topline=topline)
    checks = structure_checks(results_by_name, config.runs())
    with open(written["report"], "a") as f:
        f.write("\n" + _checks_markdown(checks))
        f.write("\nPer-run results, plots and projector files: eval/NAME/. "
                "Logs: logs/.\n")
    with open(written["report"]) as f:
        markdown = f.read()
    rows = report.table1_rows(results_by_name, baseline=BASELINE,
                              topline=topline)
    json_path = lay.path(REPORT_JSON)
    report.write_results_json({
        "baseline": BASELINE,
        "topline": topline,
        "table1": rows,
        "table2": {name: {k: (r.get("fewshot") or {}).get(k)
                          for k in ("map", "std", "architecture")}
                   for name, r in results_by_name.items()},
        "checks": checks,
        "runs": results_by_name,
        "run_dirs": {name: os.path.relpath(lay.evaluation(name), lay.root)
                     for name in names},
        "config": dataclasses.asdict(config),
    }, json_path)
    return {"report_md": written["report"], "report_json": json_path,
            "per_class_plot": written.get("per_class_plot"),
            "markdown": markdown, "table1": rows, "checks": checks}


def run_demo(config, launch=None):
    """Runs (or continues) the whole demo and writes its report.

    Args:
      config: a DemoConfig (validated here).
      launch: for tests, a replacement of the subprocess launcher,
        `launch(stage, argv, log_path, prefix) -> exit status`.

    Returns:
      dict: everything `write_report` returns, plus "stages" (per-stage
      status and seconds) and "seconds" (wall time of this invocation);
      with `config.dry_run` only "stages" (with their commands) and
      "seconds".

    Raises:
      StageError: naming the stage that failed or was interrupted.
      ValueError: on an invalid config.
    """
    config.validate()
    lay = Layout(config.output_dir)
    stages = plan_stages(config)
    if config.dry_run:
        for index, stage in enumerate(stages, start=1):
            logging.info("[%d/%d] %s: %s", index, len(stages) + 1, stage.name,
                         _Runner.command_line(stage))
        logging.info("[%d/%d] %s: %s and %s in %s", len(stages) + 1,
                     len(stages) + 1, REPORT_STAGE, REPORT_MD, REPORT_JSON,
                     lay.root)
        return {"stages": [{"stage": s.name, "status": "planned",
                            "command": _Runner.command_line(s)}
                           for s in stages], "seconds": 0.0}
    os.makedirs(lay.root, exist_ok=True)
    _write_json(lay.path(CONFIG_NAME), dataclasses.asdict(config))
    runner = _Runner(config, stages, launch=launch)
    with _TermAsInterrupt():
        records = runner.run_all()
    start = time.monotonic()
    logging.info("[%d/%d] %s (elapsed %s)", runner.total, runner.total,
                 REPORT_STAGE, _fmt_duration(start - runner.start))
    out = write_report(config)
    seconds = time.monotonic() - runner.start
    records.append({"stage": REPORT_STAGE, "status": "ran",
                    "seconds": round(time.monotonic() - start, 1)})
    # The timings join report.json once the report itself is timed.
    payload = _read_json(out["report_json"])
    payload.update(stages=records, seconds=round(seconds, 1))
    _write_json(out["report_json"], payload)
    out["stages"], out["seconds"] = records, seconds
    ran = sum(1 for r in records if r["status"] != "skipped")
    logging.info("demo finished in %s (%d stage(s) run, %d skipped); report: "
                 "%s\n%s", _fmt_duration(seconds), ran, len(records) - ran,
                 out["report_md"], out["markdown"])
    return out
