"""Reliability soak: faults injected across the path, and what survived.

Runs the fault-injection parts of `soak_parts/` (one module per fault kind)
and reports, for each kind of fault, how many were injected, how many the
project came through as it guarantees, and how much finished work was lost:

  kills            bin/train and bin/extract_features killed (SIGKILL,
                   SIGTERM) at random moments and re-run
  fuzzing          mutated WAV/FLAC/OGG/MP3 files through extraction, the
                   decoder in restartable worker processes
  corrupt_records  bit flips and truncations of TFRecord shards, read with
                   and without --skip_corrupt
  serving          malformed requests to every signature of an export
  resources        a very long file, a full disk during a shard or
                   checkpoint write, two trainers on one model directory

Each part runs in a child process of its own (a part that crashes or hangs
is reported, not fatal) with a share of --budget_seconds. The figures go to
--output_json and, as a Markdown table, to --output_md and stdout. The exit
status is 1 when any row is not ok (a fault not survived, or anything lost).

  .venv/bin/python benchmarks/soak.py --seed=0 --output_json=soak.json \
      --output_md=soak.md            # the full soak (tens of minutes)
  .venv/bin/python benchmarks/soak.py --quick   # CI: under 3 minutes
  .venv/bin/python benchmarks/soak.py --parts=record_corruption,serving
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import machine  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from soak_parts import common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from soak_parts import report as report_lib  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

PARTS = (
    # (module, section, weight of the budget in full mode, quick seconds)
    ("train_kills", "kills", 4.0, 45),
    ("extract_kills", "kills", 3.0, 35),
    ("audio_fuzz", "fuzzing", 3.0, 30),
    ("record_corruption", "corrupt_records", 1.0, 15),
    ("serving", "serving", 1.0, 30),
    ("resources_train", "resources", 1.0, 25),
    ("resources_extract", "resources", 2.0, 35),
)
"""The parts in the order they run, with their share of the time."""

_SECTION = {p[0]: p[1] for p in PARTS}

GRACE_SECONDS = 60.0
GRACE_FRACTION = 0.5
"""How long past its deadline a part may run (to finish the fault in hand)
before it is killed and reported as hung: the larger of GRACE_SECONDS and
GRACE_FRACTION of its budget."""

_SEED = flags.DEFINE_integer("seed", 0, "Seed of every random choice.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "CI mode: a few faults of each kind, under 3 minutes.")
_BUDGET = flags.DEFINE_float(
    "budget_seconds", None, "Time budget of the whole soak, shared among the "
    "parts by weight (default: 3600; ignored with --quick, where each part "
    "has its own small budget).", lower_bound=1.0)
_PARTS = flags.DEFINE_list(
    "parts", [p[0] for p in PARTS], "Parts to run (default: all).")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "Write the figures as JSON here.")
_OUTPUT_MD = flags.DEFINE_string(
    "output_md", None, "Write the table as Markdown here.")
_WORK_DIR = flags.DEFINE_string(
    "work_dir", None, "Directory for the parts' files (default: a temporary "
    "one, deleted at the end).")
_KEEP = flags.DEFINE_bool("keep_work_dir", False,
                          "Keep the work directory (for a post-mortem).")
_CHILD = flags.DEFINE_string(
    "child_part", None, "Internal: run this one part and write its result "
    "to --child_output.")
_CHILD_OUTPUT = flags.DEFINE_string("child_output", None, "Internal.")
_CHILD_DEADLINE = flags.DEFINE_float("child_seconds", None, "Internal.")


def _run_child(name, work_dir, seconds, quick, seed):
    """The child process: runs one part, writes its result as JSON."""
    import importlib  # pylint: disable=g-import-not-at-top
    module = importlib.import_module("soak_parts." + name)
    ctx = common.Context(work_dir=work_dir, seed=seed, quick=quick,
                         deadline=time.monotonic() + seconds)
    result = module.run(ctx)
    with open(_CHILD_OUTPUT.value, "w") as f:
        json.dump(result, f)


def _crashed(name, section, why, log_path):
    return [common.part(section, [common.row(
        "part %s ran to the end" % name, 1, 0, 1, why)],
        notes=["%s: %s; log tail:\n%s" % (name, why,
                                           common.tail(log_path, 1500))])]



def run_part(name, work_dir, seconds, quick, seed):
    """Runs one part in a child process; returns (results, wall seconds)."""
    part_dir = os.path.join(work_dir, name)
    os.makedirs(part_dir, exist_ok=True)
    output = os.path.join(work_dir, name + ".json")
    log_path = os.path.join(work_dir, name + ".log")
    command = [sys.executable, os.path.abspath(__file__),
               "--child_part=" + name, "--child_output=" + output,
               "--child_seconds=%f" % seconds, "--work_dir=" + part_dir,
               "--seed=%d" % seed] + (["--quick"] if quick else [])
    start = time.monotonic()
    process = common.start(command, log_path)
    grace = max(GRACE_SECONDS, GRACE_FRACTION * seconds)
    try:
        process.wait(timeout=seconds + grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        return _crashed(name, _SECTION[name], "hung: killed %.0f s past "
                        "its deadline" % grace, log_path), (
                            time.monotonic() - start)
    wall = time.monotonic() - start
    if process.returncode != 0 or not os.path.exists(output):
        return _crashed(name, _SECTION[name], "exited with status %d" %
                        process.returncode, log_path), wall
    with open(output) as f:
        return json.load(f), wall


def _deadlines(names, quick, budget):
    quick_seconds = {p[0]: p[3] for p in PARTS}
    if quick:
        return {n: float(quick_seconds[n]) for n in names}
    weights = {p[0]: p[2] for p in PARTS}
    total = sum(weights[n] for n in names)
    return {n: budget * weights[n] / total for n in names}


def main(argv):
    del argv
    if _CHILD.value:
        return _run_child(_CHILD.value, _WORK_DIR.value, _CHILD_DEADLINE.value,
                          _QUICK.value, _SEED.value)
    known = [p[0] for p in PARTS]
    unknown = [p for p in _PARTS.value if p not in known]
    if unknown:
        raise app.UsageError("--parts: unknown %s (known: %s)" % (
            ", ".join(unknown), ", ".join(known)))
    names = [p for p in known if p in _PARTS.value]
    budget = _BUDGET.value or 3600.0
    seconds = _deadlines(names, _QUICK.value, budget)
    work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix="soak_")
    os.makedirs(work_dir, exist_ok=True)
    start = time.monotonic()
    results = []
    try:
        for i, name in enumerate(names):
            print("[%d/%d] %s (%.0f s budget) ..." % (
                i + 1, len(names), name, seconds[name]), flush=True)
            parts, wall = run_part(name, work_dir, seconds[name],
                                   _QUICK.value, _SEED.value)
            bad = sum(not r["ok"] for p in parts for r in p["rows"])
            print("[%d/%d] %s: %d row(s), %s, %.1f s" % (
                i + 1, len(names), name, sum(len(p["rows"]) for p in parts),
                "ok" if not bad else "%d NOT ok" % bad, wall), flush=True)
            results.append((name, parts, wall))
    finally:
        if not _KEEP.value and not _WORK_DIR.value:
            shutil.rmtree(work_dir, ignore_errors=True)
    summary = report_lib.report(results, _SEED.value, _QUICK.value,
                                time.monotonic() - start)
    table = report_lib.markdown(summary)
    print(table)
    machine.write_json(_OUTPUT_JSON.value, summary)
    if _OUTPUT_MD.value:
        with open(_OUTPUT_MD.value, "w") as f:
            f.write(table)
        print("wrote", _OUTPUT_MD.value)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    app.run(main)
