"""Soak part "resources_train": two trainers on one run directory; a full disk.

Two bin/train on one --model_dir, started together: exactly one must be
refused at start (non-zero status, an error naming the directory and the
holder's pid and host), the other must train on undisturbed (its config
unchanged, stopped by SIGTERM with a checkpoint that loads).

A full disk during a checkpoint write, simulated with a file-size limit in
the child (RLIMIT_FSIZE below the checkpoint's size, SIGXFSZ ignored, so the
write fails with EFBIG as a full disk fails it with ENOSPC), resuming the
first scenario's run directory: the run must stop with an error naming the
checkpoint directory and the cause, leave the checkpoints listed before it
intact and loadable with no partial files, and a re-run with space must
resume from the last of them.
"""

import os
import re
import signal
import subprocess
import time

from soak_parts import common
from soak_parts import train_kills as tk

SECTION = "resources"
# Below the small model's checkpoint (~5 MB of weights and Adam slots),
# above every other file a run writes (config, summaries).
FILE_SIZE_LIMIT = 1 << 20
# The second trainer starts this long after the first (either may win).
STAGGER_S = 0.5
STEPS = 100000  # Stopped by SIGTERM long before.
TIMEOUT_S = 600


def _wait_for_checkpoint(process, model_dir):
    """Polls until the state file lists a checkpoint (False if it exits)."""
    deadline = time.monotonic() + TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if tk.listed_checkpoints(model_dir)[1]:
            return True
        time.sleep(0.05)
    return False


def _two_trainers(ctx, corpus, model_dir):
    """Two bin/train on one model_dir. Returns (row, notes)."""
    from triplet_audio.training import run_dir  # pylint: disable=g-import-not-at-top
    command = tk.train_command(ctx, corpus, model_dir, STEPS)
    logs = [os.path.join(ctx.work_dir, "trainer_%d.log" % i) for i in (0, 1)]
    processes = [common.start(command, logs[0])]
    time.sleep(STAGGER_S)
    processes.append(common.start(command, logs[1]))
    notes, ok, lost = [], False, 0
    try:
        # The refused one ends at start; the other trains on.
        deadline = time.monotonic() + TIMEOUT_S
        while (all(p.poll() is None for p in processes) and
               time.monotonic() < deadline):
            time.sleep(0.05)
        ended = [i for i, p in enumerate(processes) if p.poll() is not None]
        if len(ended) != 1:
            notes.append("two trainers: %d of 2 ended at start" % len(ended))
            return common.row("two trainers on one model_dir", 1, 0, 0,
                              "; ".join(notes)), notes
        refused, holder = ended[0], 1 - ended[0]
        text = common.tail(logs[refused], 1 << 20)
        named = ("--model_dir=%s is in use" % model_dir in text and
                 "pid %d on host" % processes[holder].pid in text)
        status = processes[refused].returncode
        has_checkpoint = _wait_for_checkpoint(processes[holder], model_dir)
        config_path = os.path.join(model_dir, run_dir.CONFIG_NAME)
        with open(config_path, "rb") as f:
            config_before = f.read()
        processes[holder].send_signal(signal.SIGTERM)
        holder_status = processes[holder].wait(timeout=TIMEOUT_S)
        with open(config_path, "rb") as f:
            config_same = f.read() == config_before
        paths, lost = tk.unreadable_checkpoints(model_dir)
        summary = run_dir.read_summary(model_dir) or {}
        checkpointed = (tk.step_of(tk.listed_checkpoints(model_dir)[1]) ==
                        summary.get("step", -1))
        ok = (status not in (0, None) and named and "resumed from" not in text
              and has_checkpoint and holder_status == 3 and config_same and
              checkpointed and paths and not lost)
        if not ok:
            notes.append(
                "two trainers: refused status %s, message names dir and "
                "holder %s, holder status %s, config unchanged %s, stop "
                "checkpointed %s; refused log: %s" % (
                    status, named, holder_status, config_same, checkpointed,
                    text[-600:]))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return common.row(
        "two trainers on one model_dir", 1, int(ok), lost,
        "the second is refused naming the dir and the holder (pid, host); "
        "the first trains on and stops cleanly"), notes


def _full_disk(ctx, corpus, model_dir):
    """A checkpoint write fails with EFBIG; then a re-run with space.

    Returns:
      (rows, notes, figures).
    """
    ckpt_dir = tk.checkpoint_dir(model_dir)
    paths_before, latest_before = tk.listed_checkpoints(model_dir)
    files_before = sorted(os.listdir(ckpt_dir))
    command = tk.train_command(ctx, corpus, model_dir, STEPS)
    log = os.path.join(ctx.work_dir, "full_disk.log")
    with open(log, "wb") as out:
        status = subprocess.call(command, cwd=common.REPO_ROOT,
                                 env=common.child_env(), stdout=out,
                                 stderr=subprocess.STDOUT,
                                 preexec_fn=common.file_size_limit(
                                     FILE_SIZE_LIMIT),
                                 timeout=TIMEOUT_S)
    text = common.tail(log, 1 << 20)
    errors = [l for l in text.splitlines() if l.startswith("error: ")]
    clear = bool(errors) and bool(re.search(
        r"could not write checkpoint \d+ to %s: file too large" %
        re.escape(ckpt_dir), errors[-1])) and "Traceback" not in text
    paths_after, lost = tk.unreadable_checkpoints(model_dir)
    intact = (paths_after == paths_before and
              sorted(os.listdir(ckpt_dir)) == files_before)
    lost += len(set(paths_before) - set(paths_after))
    notes = []
    write_ok = status not in (0, None) and clear and intact and not lost
    if not write_ok:
        notes.append("full disk: status %s, clear error %s, checkpoints "
                     "intact %s; log: %s" % (status, clear, intact,
                                             text[-800:]))

    # A re-run with space resumes from the last good checkpoint and writes
    # the next one (--stop_at_step ends it there).
    resume_at = tk.step_of(latest_before)
    log = os.path.join(ctx.work_dir, "rerun.log")
    with open(log, "wb") as out:
        status = subprocess.call(
            command + ["--stop_at_step=%d" % (resume_at + 1)],
            cwd=common.REPO_ROOT, env=common.child_env(), stdout=out,
            stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    text = common.tail(log, 1 << 20)
    resumed = "resumed from %s at step %d" % (latest_before,
                                             resume_at) in text
    _, latest = tk.listed_checkpoints(model_dir)
    _, bad = tk.unreadable_checkpoints(model_dir)
    rerun_ok = (status == 0 and resumed and
                tk.step_of(latest) == resume_at + 1 and not bad)
    if not rerun_ok:
        notes.append("re-run with space: status %s, resumed %s, latest %s; "
                     "log: %s" % (status, resumed, latest, text[-800:]))
    rows = [
        common.row("disk full (file-size limit) during a checkpoint write",
                   1, int(write_ok), lost,
                   "clear error naming the checkpoint dir and the cause; "
                   "listed checkpoints intact and loadable, no partial files"),
        common.row("re-run with space after a full disk", 1, int(rerun_ok),
                   bad, "resumes from the last good checkpoint (step %d)"
                   % resume_at)]
    return rows, notes, {"file_size_limit_bytes": FILE_SIZE_LIMIT}


def run(ctx):
    """Both scenarios, on one run directory; see the module doc."""
    corpus = tk.write_corpus(os.path.join(ctx.work_dir, "corpus"))
    model_dir = os.path.join(ctx.work_dir, "run")
    row, notes = _two_trainers(ctx, corpus, model_dir)
    rows = [row]
    figures = {}
    if tk.listed_checkpoints(model_dir)[1]:
        more, more_notes, figures = _full_disk(ctx, corpus, model_dir)
        rows += more
        notes += more_notes
    else:
        notes.append("full disk: not run (the first scenario left no "
                     "checkpoint to resume)")
    return [common.part(SECTION, rows, figures, notes)]
