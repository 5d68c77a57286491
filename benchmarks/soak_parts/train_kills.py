"""Soak part "train_kills": bin/train killed at random moments, then resumed.

One run directory, one bin/train command, killed again and again (SIGKILL
and SIGTERM, at random delays and the moment a checkpoint's temporary files
appear, i.e. mid-write) and restarted with the same command until it
finishes. After each kill every checkpoint the state file lists must load
(each variable read); each restart must resume from the state file's latest
checkpoint, as its "resumed from ... at step N" line says.

The finished model is compared with a reference run in another directory
stopped (--stop_at_step) and resumed at exactly the steps the killed run
resumed from: a resumed run draws a fresh data order seeded by its start
step (trainer.make_dataset), so only such a reference can match it. The
reference runs alongside the killed chain (a thread), one segment as soon
as the killed chain has fixed its end. Quick mode leaves the reference out
(it doubles the part's CPU time, over CI's budget): it checks the kills,
loads and resumes, and that the run finishes.

The helpers (corpus, command, checkpoint checks) are shared with the
"resources_train" part.
"""

import os
import queue
import re
import signal
import subprocess
import threading
import time

from soak_parts import common

SECTION = "kills"
# Small model, 8 triplets per batch: ~0.1 s a step on 2 cores, ~6 s to start.
BATCH = 24
CHECKPOINT_EVERY = 2
KILLS_FULL, KILLS_QUICK = 20, 2
# A third of the kills land in start-up and gain nothing; the others gain
# ~2-6 steps (checkpoints every 2 steps, segments of a few seconds). Enough
# steps that every kill lands before the end (a run that ends first stops
# the kills, with a note), few enough that the final segment is short.
STEPS_PER_KILL = 5
FINAL_STEPS = 8
# Random kill delays (s): after the start ("start-up": imports, restore,
# tracing take ~5 s on 2 cores) and after the first step ("training").
STARTUP_DELAY_S = (0.5, 6.0)
TRAINING_DELAY_S = (0.0, 2.0)
# Largest final-weights difference counted as "equal" (exactly 0 measured on
# CPU; a tolerance in case another machine's kernels are not bitwise
# reproducible across processes).
WEIGHTS_TOLERANCE = 1e-5
PROCESS_TIMEOUT_S = 600
_RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")
_FIRST_STEP = re.compile(r"\] step \d+/\d+ ")
# Lines a run logs only after its restore (so a missing "resumed from" there
# means it started afresh).
_PAST_RESTORE = re.compile(
    r"\] step \d+/\d+ |saved checkpoint|trained steps|already trained")


# ------------------------------------------------------- shared helpers
def write_corpus(directory):
    """A tiny corpus for the proximity sampler (12 recordings x 4 windows)."""
    import random_corpus  # pylint: disable=g-import-not-at-top
    random_corpus.write_corpus(directory, num_recordings=12, windows=4,
                               num_shards=2)
    return directory


def train_command(ctx, corpus, model_dir, steps, *extra):
    """The bin/train command line of the parts (small model, tiny batch)."""
    return [ctx.python, common.binary("train"), "--flagfile=flags/demo.cfg",
            "--sampler=proximity", "--train_data=" + corpus,
            "--model_dir=" + model_dir, "--batch_size=%d" % BATCH,
            "--warmup_steps=0", "--shuffle_buffer=64", "--steps=%d" % steps,
            "--checkpoint_every=%d" % CHECKPOINT_EVERY, "--log_every=1"
            ] + list(extra)


def checkpoint_dir(model_dir):
    from triplet_audio.training import run_dir  # pylint: disable=g-import-not-at-top
    return run_dir.checkpoint_dir(model_dir)


def listed_checkpoints(model_dir):
    """(paths the state file lists, path of the latest or None)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    state = tf.train.get_checkpoint_state(checkpoint_dir(model_dir))
    if state is None:
        return [], None
    return list(state.all_model_checkpoint_paths), state.model_checkpoint_path


def unreadable_checkpoints(model_dir):
    """(listed checkpoints, how many of them fail to load or read)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    paths, _ = listed_checkpoints(model_dir)
    bad = 0
    for path in paths:
        try:
            reader = tf.train.load_checkpoint(path)
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
        except Exception:  # pylint: disable=broad-except
            bad += 1
    return paths, bad


def step_of(path):
    """The step of a checkpoint path (.../ckpt-N), 0 for None."""
    return int(path.rsplit("-", 1)[1]) if path else 0


def temp_entries(model_dir):
    """Names of unfinished saves (<name>-N_temp) in the checkpoint dir."""
    try:
        return [n for n in os.listdir(checkpoint_dir(model_dir))
                if n.endswith("_temp")]
    except FileNotFoundError:
        return []


def weights_max_abs_diff(path_a, path_b):
    """Largest |a - b| over the float variables of two checkpoints.

    Returns:
      (difference, number of variables compared); inf when the variable
      sets differ.
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    a, b = tf.train.load_checkpoint(path_a), tf.train.load_checkpoint(path_b)
    names_a = a.get_variable_to_shape_map()
    if set(names_a) != set(b.get_variable_to_shape_map()):
        return float("inf"), 0
    worst, count = 0.0, 0
    for name in names_a:
        x, y = a.get_tensor(name), b.get_tensor(name)
        if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
            continue
        count += 1
        if x.size:
            worst = max(worst, float(np.max(np.abs(
                x.astype(np.float64) - y.astype(np.float64)))))
    return worst, count


# ----------------------------------------------------------- the part
class _Reference(threading.Thread):
    """Runs the reference segments: one bin/train per stop step received."""

    def __init__(self, ctx, corpus, model_dir, steps):
        super().__init__(daemon=True)
        self.ctx, self.corpus = ctx, corpus
        self.model_dir, self.steps = model_dir, steps
        self.stops = queue.Queue()  # Stop steps; None: run to the end.
        self.failures = []
        self.segments = 0

    def run(self):
        while True:
            stop = self.stops.get()
            extra = () if stop is None else ("--stop_at_step=%d" % stop,)
            log = os.path.join(self.ctx.work_dir, "reference_%02d.log"
                               % self.segments)
            with open(log, "wb") as out:
                status = subprocess.call(
                    train_command(self.ctx, self.corpus, self.model_dir,
                                  self.steps, *extra),
                    cwd=common.REPO_ROOT, env=common.child_env(),
                    stdout=out, stderr=subprocess.STDOUT,
                    timeout=PROCESS_TIMEOUT_S)
            self.segments += 1
            if status != 0:
                self.failures.append("reference segment to %s: status %d: %s"
                                     % (stop, status, common.tail(log, 500)))
            if stop is None:
                return


def _state_mtime(model_dir):
    try:
        return os.stat(os.path.join(checkpoint_dir(model_dir),
                                    "checkpoint")).st_mtime_ns
    except FileNotFoundError:
        return None


def _kill(process, model_dir, log, plan, rng):
    """Waits for the plan's moment, then signals `process`'s group.

    Moments: "mid-write", when a save's <name>-N_temp entry appears after
    this process has completed a save of its own (so that it has work to
    lose); "training", a random 0-2 s after its first step's log line;
    "start-up", a random delay from its start (imports, restore, tracing).

    Returns:
      the moment it was signalled, or None when the process ended first.
    """
    start = time.monotonic()
    when = plan["when"]
    delay = rng.uniform(*(STARTUP_DELAY_S if when == "start-up" else
                          TRAINING_DELAY_S))
    state_at_start = _state_mtime(model_dir)
    first_step = None
    while process.poll() is None:
        now = time.monotonic()
        if now - start > PROCESS_TIMEOUT_S:
            break
        if when == "mid-write":
            if (_state_mtime(model_dir) != state_at_start and
                    temp_entries(model_dir)):
                break
            time.sleep(0.002)
            continue
        if when == "training" and first_step is None:
            if _FIRST_STEP.search(common.tail(log, 1 << 20)):
                first_step = now
            time.sleep(0.02)
            continue
        if now - (first_step or start) >= delay:
            break
        time.sleep(0.01)
    if process.poll() is not None:
        return None
    os.killpg(process.pid, plan["signal"])
    return when


# The kinds of kill, cycled (quick mode: the first two).
PLANS = ((signal.SIGKILL, "mid-write"), (signal.SIGTERM, "training"),
         (signal.SIGKILL, "start-up"), (signal.SIGTERM, "mid-write"),
         (signal.SIGKILL, "training"), (signal.SIGTERM, "start-up"))


def _plans(kills):
    return [{"signal": PLANS[i % len(PLANS)][0],
             "when": PLANS[i % len(PLANS)][1]} for i in range(kills)]


def run(ctx):
    """Kills bin/train KILLS times, resuming after each; see the module doc."""
    rng = ctx.rng("train_kills")
    kills = KILLS_QUICK if ctx.quick else KILLS_FULL
    steps = STEPS_PER_KILL * kills + FINAL_STEPS
    corpus = write_corpus(os.path.join(ctx.work_dir, "corpus"))
    model_dir = os.path.join(ctx.work_dir, "killed")
    reference = _Reference(ctx, corpus,
                           os.path.join(ctx.work_dir, "reference"), steps)
    if not ctx.quick:
        reference.start()
    command = train_command(ctx, corpus, model_dir, steps)
    plans = _plans(kills)

    rows = {}  # fault -> [injected, survived, lost]
    resume_steps, failures = [], []
    lost_total = done = 0
    pending = []  # Kills not yet checked by a start that restored.
    reference_stop, reference_fed = 0, False
    final = (None, "")
    for i in range(kills + 1):
        log = os.path.join(ctx.work_dir, "killed_%02d.log" % i)
        process = common.start(command, log)
        moment = None
        try:
            if i < kills and ctx.time_left() > 0:
                moment = _kill(process, model_dir, log, plans[i], rng)
            status = process.wait(timeout=PROCESS_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = common.tail(log, 1 << 22)
        found = _RESUMED.search(text)
        resumed = int(found.group(2)) if found else 0
        # A start killed before its restore says nothing about resuming
        # (and changes no checkpoint): the checks wait for the next start.
        if found or _PAST_RESTORE.search(text):
            for kill in pending:
                # This start must resume from the state file's latest
                # checkpoint as the kill left it.
                ok = (resumed == kill["step"] and
                      (found.group(1) if found else None) == kill["path"])
                if not ok:
                    failures.append(
                        "kill %d: the state file's latest was %s, the "
                        "restart says %s" % (
                            kill["index"], kill["path"],
                            found.group(0) if found else "no resume"))
                rows[kill["fault"]][1] += int(ok and not kill["bad"])
            pending = []
            if not resume_steps or resumed != resume_steps[-1]:
                resume_steps.append(resumed)
        if moment is None:
            final = (status, text)
            break
        done += 1
        paths, bad = unreadable_checkpoints(model_dir)
        _, latest = listed_checkpoints(model_dir)
        fault = "%s of bin/train (%s)" % (
            signal.Signals(plans[i]["signal"]).name, moment)
        counts = rows.setdefault(fault, [0, 0, 0])
        counts[0] += 1
        counts[2] += bad
        lost_total += bad
        if bad:
            failures.append("kill %d: %d of %d listed checkpoints unreadable"
                            % (i, bad, len(paths)))
        pending.append({"index": i, "fault": fault, "bad": bad,
                        "path": latest, "step": step_of(latest)})
        # The reference's next segment ends where the restart should
        # resume: it runs alongside the restart.
        if step_of(latest) > reference_stop:
            reference_stop = step_of(latest)
            reference.stops.put(reference_stop)
        if i == kills - 1 or ctx.time_left() <= 0:
            reference.stops.put(None)
            reference_fed = True

    status, text = final
    finished = status == 0 and "trained steps" in text
    _, latest = listed_checkpoints(model_dir)
    leftovers = temp_entries(model_dir)
    ok = finished and step_of(latest) == steps and not leftovers
    detail = "final step %d/%d, %d unfinished saves left" % (
        step_of(latest), steps, len(leftovers))
    diff, compared = None, 0
    if not ctx.quick:
        if not reference_fed:
            reference.stops.put(None)
        reference.join(timeout=PROCESS_TIMEOUT_S)
        _, ref_latest = listed_checkpoints(reference.model_dir)
        if latest and ref_latest and step_of(latest) == step_of(ref_latest):
            diff, compared = weights_max_abs_diff(latest, ref_latest)
        ok = ok and (compared > 0 and diff <= WEIGHTS_TOLERANCE and
                     not reference.failures)
        detail += (", final weights max |diff| %s over %d float variables"
                   % ("%.3g" % diff if compared else "-", compared))
        if not compared:
            diff = None  # JSON has no inf/nan.
    out_rows = [common.row(fault, *counts,
                           detail="every listed checkpoint loads; the "
                           "restart resumed from the latest listed one")
                for fault, counts in sorted(rows.items())]
    out_rows.append(common.row(
        "killed run finishes" + ("" if ctx.quick else
                                 " = reference stopped at the same steps"),
        1, int(ok), 0, detail))
    notes = ["Resumed at steps %s." % resume_steps]
    if ctx.quick:
        notes.append("Quick mode: no reference run (the full mode compares "
                     "the final weights with one).")
    else:
        notes.append(
            "The reference run was stopped at those steps with "
            "--stop_at_step and resumed; the final weights (model and "
            "optimizer) are compared. Equality holds against such a "
            "reference only: an uninterrupted run draws other batches from "
            "the first resume on, since a resumed run reseeds its data by "
            "its start step (trainer.make_dataset).")
    if done < kills:
        notes.append("stopped after %d of %d kills (deadline, or the run "
                     "ended first)" % (done, kills))
    notes += failures + reference.failures
    if not finished:
        notes.append("final run status %s: %s" % (status, text[-800:]))
    figures = {"kills": done, "steps": steps, "resume_steps": resume_steps,
               "checkpoints_lost": lost_total,
               "final_weights_max_abs_diff": diff,
               "float_variables_compared": compared,
               "reference_segments": reference.segments}
    return [common.part(SECTION, out_rows, figures, notes)]
