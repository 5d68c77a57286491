"""Soak part `record_corruption`: bit flips and truncations of TFRecord shards.

Each trial writes a shard of known records (`records.make_example`, ids of
its own, a summary beside it as the extractor writes one), damages it once
(one bit, or a cut at a random byte), and checks against what was written:

  * detected: without --skip_corrupt the readers raise an error naming the
    shard and the byte offset of the bad record: the up-front check and
    TensorFlow's reader with `records.data_loss_error` (what training
    does), and `records.iter_shard` (the class index);
  * survived: detected, and with --skip_corrupt both `records.iter_shard`
    and the tf.data reader training uses (`records.read_records`) return
    exactly the intact records, byte for byte, while the records counted as
    skipped (`records.SKIPPED`) make up the rest of the shard;
  * lost: records read that were not written, intact records not read,
    a miscount, or a reader that did not finish (a hang).

Trials are read in batches: one tf.data stream per batch of damaged shards
(a graph per shard would cost more than the reading).
"""

import collections
import os
import shutil
import threading
import time

import numpy as np

from soak_parts import common  # puts the repository on sys.path
import tensorflow as tf  # pylint: disable=g-bad-import-order

from triplet_audio import constants as C
from triplet_audio.features import records

SECTION = "corrupt_records"

# Damage kinds, one row each: where in a record the flipped bit goes.
KINDS = ("payload flip", "payload CRC flip", "length flip", "length CRC flip",
         "uniform random flip", "truncation")
_FULL_TRIALS = 510
_QUICK_TRIALS = 30
_BATCH = 50
_RECORDS_PER_SHARD = (5, 8, 11)
# Longest a batch may take before it counts as a hang.
_BATCH_TIMEOUT_S = 300


def _pristine_records(rng):
    """The records of each pristine shard: lists of make_example kwargs."""
    shards = []
    for count in _RECORDS_PER_SHARD:
        shard = []
        for _ in range(count):
            windows = int(rng.integers(1, 4))
            shard.append(dict(
                logmel=rng.normal(-2.0, 1.0, (windows,) + C.WINDOW_SHAPE),
                start_times=C.WINDOW_SECONDS * np.arange(windows),
                labels=rng.choice(5, size=int(rng.integers(0, 3)),
                                  replace=False).tolist()))
        shards.append(shard)
    return shards


def _write_trial_shard(path, trial_number, shard):
    """Writes a shard of `shard`'s records with ids of this trial.

    Returns:
      (bytes of the file, serialized records, their recording ids).
    """
    ids = ["t%05d-r%d" % (trial_number, i) for i in range(len(shard))]
    serialized = [records.make_example(recording_id=rid, **kwargs)
                  .SerializeToString() for rid, kwargs in zip(ids, shard)]
    with tf.io.TFRecordWriter(path) as writer:
        for payload in serialized:
            writer.write(payload)
    with open(path[:-len(records.SHARD_SUFFIX)] + records.SUMMARY_SUFFIX,
              "w") as f:  # as the extractor writes it
        f.write('{"records": %d}' % len(serialized))
    with open(path, "rb") as f:
        return f.read(), serialized, ids


def _frames(serialized):
    """(offset, payload length) of records written back to back."""
    frames, offset = [], 0
    for payload in serialized:
        frames.append((offset, len(payload)))
        offset += 16 + len(payload)
    return frames


def _damage(kind, data, serialized, rng):
    """Damages `data` (bytes of a pristine shard) once.

    Returns:
      (damaged bytes, indices of the records that stay intact, byte offset
      the error must name, records the reader must count as skipped).
    """
    frames = _frames(serialized)
    count = len(frames)
    if kind == "truncation":
        cut = int(rng.integers(0, len(data)))
        whole = [i for i, (o, n) in enumerate(frames) if o + 16 + n <= cut]
        first_bad = len(whole)
        named = frames[first_bad][0] if frames[first_bad][0] < cut else cut
        return data[:cut], whole, named, count - len(whole)
    if kind == "uniform random flip":
        position = int(rng.integers(0, len(data)))
        record = max(i for i, (o, _) in enumerate(frames) if o <= position)
    else:
        record = int(rng.integers(0, count))
        offset, length = frames[record]
        position = offset + {
            "payload flip": 12 + int(rng.integers(0, length)),
            "payload CRC flip": 12 + length + int(rng.integers(0, 4)),
            "length flip": int(rng.integers(0, 8)),
            "length CRC flip": 8 + int(rng.integers(0, 4)),
        }[kind]
    damaged = bytearray(data)
    damaged[position] ^= 1 << int(rng.integers(0, 8))
    return (bytes(damaged), [i for i in range(count) if i != record],
            frames[record][0], 1)


def _detected(path, named):
    """Whether the readers, without --skip_corrupt, name `path` at `named`."""
    # Training: the up-front check, then TensorFlow's reader, whose error
    # `data_loss_error` turns into one naming the shard.
    try:
        records.check_shards([path])
        for _ in tf.data.TFRecordDataset(path):
            pass
        return False, "tf.data read it without an error"
    except records.CorruptShardError as e:
        error = e
    except tf.errors.DataLossError as e:
        error = records.data_loss_error([path], e)
    if (error.path, error.offset) != (path, named):
        return False, "training's error named %s at %s, not byte %d" % (
            error.path, error.offset, named)
    # The class index's reader.
    try:
        for _ in records.iter_shard(path):
            pass
        return False, "iter_shard read it without an error"
    except records.CorruptShardError as e:
        if (e.path, e.offset) != (path, named):
            return False, "iter_shard named %s at %s, not byte %d" % (
                e.path, e.offset, named)
    return True, ""


def _run_batch(batch_dir, trials, outcome):
    """Reads a batch of damaged shards.

    Fills `outcome`: {path: [detected, read and counted exactly, why not]}.
    """
    records.SKIPPED.reset()
    for trial in trials:
        path, expected, named, skipped = (trial["path"], trial["intact"],
                                          trial["named"], trial["skipped"])
        detected, why = _detected(path, named)
        records.SKIPPED.reset()
        got = [s for _, s in records.iter_shard(path, skip_corrupt=True)]
        counted = sum(s.records for s in records.SKIPPED.spans(path))
        exact = got == expected and counted == skipped
        if not exact:
            why = why or ("iter_shard read %d of %d intact records (%s), "
                          "counted %d skipped of %d" % (
                              len(got), len(expected),
                              "exact" if got == expected else "differ",
                              counted, skipped))
        outcome[path] = [detected, exact, why]
    # The stream training reads, over every shard of the batch at once.
    records.SKIPPED.reset()
    streamed = collections.defaultdict(list)
    for r in records.read_records(batch_dir, skip_corrupt=True,
                                  deterministic=True).as_numpy_iterator():
        rid = r[records.RECORDING_ID].decode()
        streamed[rid.split("-")[0]].append((rid, r[records.LOGMEL].tobytes()))
    for trial in trials:
        path = trial["path"]
        want = [(rid, logmel.tobytes()) for rid, logmel in trial["stream"]]
        got = streamed.get(trial["tag"], [])
        counted = sum(s.records for s in records.SKIPPED.spans(path))
        if sorted(got) != sorted(want) or counted != trial["skipped"]:
            outcome[path][1] = False
            outcome[path][2] = outcome[path][2] or (
                "the stream read %d records (%d intact expected), counted "
                "%d skipped of %d" % (len(got), len(want), counted,
                                      trial["skipped"]))


def run(ctx):
    started = time.monotonic()
    rng = ctx.rng("record_corruption")
    pristine = _pristine_records(rng)
    total = _QUICK_TRIALS if ctx.quick else _FULL_TRIALS
    plan = [KINDS[i % len(KINDS)] for i in range(total)]
    stats = {k: collections.Counter() for k in KINDS}
    examples = {k: "" for k in KINDS}
    notes = []
    done = 0
    for batch_number, first in enumerate(range(0, total, _BATCH)):
        if done and ctx.time_left() <= 0:
            notes.append("stopped at the deadline after %d of %d trials" %
                         (done, total))
            break
        batch_dir = os.path.join(ctx.work_dir, "batch-%04d" % batch_number)
        os.makedirs(batch_dir)
        trials = []
        for number, kind in enumerate(plan[first:first + _BATCH]):
            shard = pristine[int(rng.integers(0, len(pristine)))]
            path = os.path.join(batch_dir, records.shard_name(number, _BATCH))
            data, serialized, ids = _write_trial_shard(path, first + number,
                                                       shard)
            damaged, intact, named, skipped = _damage(kind, data, serialized,
                                                      rng)
            with open(path, "wb") as f:
                f.write(damaged)
            trials.append({
                "kind": kind, "path": path, "named": named,
                "skipped": skipped, "tag": ids[0].split("-")[0],
                "intact": [serialized[i] for i in intact],
                "stream": [(ids[i], np.asarray(shard[i]["logmel"], "<f4"))
                           for i in intact]})
        outcome = {}
        errors = []

        def work():
            try:
                _run_batch(batch_dir, trials, outcome)
            except Exception as e:  # pylint: disable=broad-except
                errors.append(repr(e))

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(timeout=min(_BATCH_TIMEOUT_S,
                                max(60.0, ctx.time_left() + 60.0)))
        for trial in trials:
            kind = trial["kind"]
            stats[kind]["injected"] += 1
            if worker.is_alive() or errors or trial["path"] not in outcome:
                stats[kind]["lost"] += 1
                examples[kind] = examples[kind] or (
                    "hang" if worker.is_alive() else "; ".join(errors)[:300])
                continue
            detected, exact, why = outcome[trial["path"]]
            stats[kind]["detected"] += detected
            stats[kind]["exact"] += exact
            stats[kind]["survived"] += detected and exact
            stats[kind]["lost"] += not exact
            if why and not examples[kind]:
                examples[kind] = "%s: %s" % (os.path.basename(trial["path"]),
                                             why)
        done += len(trials)
        if worker.is_alive():
            notes.append("a batch did not finish within %d s: stopped" %
                         _BATCH_TIMEOUT_S)
            break
        shutil.rmtree(batch_dir, ignore_errors=True)
    rows = []
    for kind in KINDS:
        s = stats[kind]
        if not s["injected"]:
            continue
        rows.append(common.row(
            kind, s["injected"], s["survived"], s["lost"],
            examples[kind] or "named at its offset; skipped exactly"))
    injected = sum(s["injected"] for s in stats.values())
    figures = {
        "trials": injected,
        "detection_rate": round(sum(s["detected"] for s in stats.values()) /
                                max(1, injected), 4),
        "skip_count_exactness_rate": round(
            sum(s["exact"] for s in stats.values()) / max(1, injected), 4),
        "seconds": round(time.monotonic() - started, 2),
    }
    notes.append(
        "shards of %s records with a summary each, as the extractor writes "
        "them; without the summary a cut at a record boundary is not "
        "detectable and the records after a cut are not countable" %
        "/".join(str(n) for n in _RECORDS_PER_SHARD))
    return [common.part(SECTION, rows, figures, notes)]

