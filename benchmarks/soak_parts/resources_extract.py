"""Soak part `resources_extract` (section "resources"): long files, full disk.

  * Memory: peak RSS of bin/extract_features (--workers=1, so one process
    holds all of it) and of bin/embed --representation=logmel on a 10-hour
    16 kHz WAV (quick: 20 minutes), against the same binaries on a short
    input. Stated bound: extraction within `EXTRA_MB` of the short input's
    peak, whatever the file's duration; bin/embed the same plus twice its
    output (the embeddings it holds until it writes them: 12 KB a window
    for logmel). The outputs are checked too (one recording, every window).
  * A full disk during a shard write (RLIMIT_FSIZE in the child, SIGXFSZ
    ignored, so the write fails with EFBIG as a full disk fails with
    ENOSPC): the run must fail naming the shard and the cause, the shards
    committed before stay intact, nothing partial is visible, and a re-run
    with space gives a corpus byte-identical to a clean run's.
"""

import json
import os
import re
import shutil
import signal
import threading
import time

import numpy as np

from soak_parts import common

from triplet_audio import constants as C
from triplet_audio.features import frontend
from triplet_audio.features import records

LONG_HOURS = 10.0
LONG_HOURS_QUICK = 1.0 / 6
SHORT_SECONDS = 10.0
EXTRA_MB = 512
"""The stated bound: a long file's peak RSS over a short input's (MB). One
front-end batch of `MAX_WINDOWS_PER_RECORD` windows through TensorFlow
takes ~250 MB more than a tiny input's; the rest must not grow with the
file (unbounded, a 10-hour file held ~3 GB more)."""
NUM_FULL_DISKS = 4
NUM_FULL_DISKS_QUICK = 1
_BLOCK_SECONDS = 60


def _length(hours):
    """'10-hour' or '10-minute', for the rows' names."""
    if hours >= 1:
        return "%g-hour" % hours
    return "%g-minute" % round(hours * 60, 1)


def _write_long_wav(path, hours, seed):
    """A noisy tone of `hours`, written block by block (PCM_16, 16 kHz)."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(seed)
    total = int(hours * 3600 * C.SAMPLE_RATE)
    block = _BLOCK_SECONDS * C.SAMPLE_RATE
    with sf.SoundFile(path, "w", samplerate=C.SAMPLE_RATE, channels=1,
                      subtype="PCM_16") as f:
        for first in range(0, total, block):
            n = min(block, total - first)
            t = (first + np.arange(n)) / float(C.SAMPLE_RATE)
            x = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * (
                rng.standard_normal(n))
            f.write(x.astype(np.float32))
    return total


def _measure(ctx, args, log, preexec_fn=None, timeout=3600):
    """Runs bin/<args[0]> to the end: (exit code, peak RSS MB, seconds)."""
    start = time.monotonic()
    proc = common.start([ctx.python, common.binary(args[0])] + args[1:], log,
                        preexec_fn=preexec_fn)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KB on Linux.
    return (proc.returncode, usage.ru_maxrss / 1024.0,
            time.monotonic() - start)


def _memory(ctx, log, short_dir, extract_short_mb):
    """Peak RSS of extraction and embedding, long file vs short input."""
    hours = LONG_HOURS_QUICK if ctx.quick else LONG_HOURS
    long_dir = os.path.join(ctx.work_dir, "long")
    os.makedirs(long_dir)
    samples = _write_long_wav(os.path.join(long_dir, "long.wav"), hours,
                              ctx.seed)
    windows = frontend.num_windows_for_samples(samples)
    figures = {"long_file_hours": round(hours, 3), "long_file_windows": windows,
               "extract_short_peak_rss_mb": round(extract_short_mb)}
    rows, notes = [], []

    out = os.path.join(ctx.work_dir, "long_corpus")
    rc, peak, seconds = _measure(ctx, [
        "extract_features", "--input=" + long_dir, "--output_dir=" + out,
        "--num_shards=1", "--workers=1"], log)
    bound = extract_short_mb + EXTRA_MB
    totals = {}
    if rc == 0:
        with open(os.path.join(out, records.MANIFEST_NAME)) as f:
            totals = json.load(f)["totals"]
    right = totals.get("windows") == windows and totals.get("recordings") == 1
    shutil.rmtree(out, ignore_errors=True)  # ~0.9 GB for 10 hours.
    figures.update(extract_long_peak_rss_mb=round(peak),
                   extract_bound_mb=round(bound),
                   extract_long_seconds=round(seconds, 1))
    rows.append(common.row(
        "extract_features on a %s file: peak RSS within bound" % _length(hours),
        1, int(rc == 0 and right and peak <= bound), int(rc == 0 and not right),
        "%.0f MB (short input %.0f MB, bound %.0f MB); %d windows%s" % (
            peak, extract_short_mb, bound, totals.get("windows", 0),
            "" if rc == 0 else "; exit %d: %s" % (rc, common.tail(log, 500)))))

    emb_short = os.path.join(ctx.work_dir, "short.npz")
    if ctx.quick:
        # One run fewer: both binaries peak within a few MB of each other on
        # a short input (full mode measures both).
        rc_s, peak_s = 0, extract_short_mb
        notes.append("quick mode: bin/embed's short-input peak taken as "
                     "bin/extract_features'")
    else:
        rc_s, peak_s, _ = _measure(ctx, [
            "embed", "--input=" + short_dir, "--output=" + emb_short,
            "--representation=logmel"], log)
    emb_long = os.path.join(ctx.work_dir, "long.npz")
    rc, peak, seconds = _measure(ctx, [
        "embed", "--input=" + long_dir, "--output=" + emb_long,
        "--representation=logmel"], log)
    output_mb = windows * np.prod(C.WINDOW_SHAPE) * 2 / 2.0 ** 20
    bound = peak_s + EXTRA_MB + 2 * output_mb
    right = False
    if rc == 0:
        with np.load(emb_long) as data:
            right = data["embeddings"].shape[0] == windows
    figures.update(embed_short_peak_rss_mb=round(peak_s),
                   embed_long_peak_rss_mb=round(peak),
                   embed_long_output_mb=round(output_mb),
                   embed_bound_mb=round(bound),
                   embed_long_seconds=round(seconds, 1))
    rows.append(common.row(
        "embed --representation=logmel on a %s file: peak RSS within "
        "bound" % _length(hours), 1, int(rc == 0 and rc_s == 0 and right
                                and peak <= bound),
        int(rc == 0 and not right),
        "%.0f MB (short input %.0f MB, output %.0f MB, bound %.0f MB)%s" % (
            peak, peak_s, output_mb, bound,
            "" if rc == 0 else "; exit %d: %s" % (rc, common.tail(log, 500)))))
    for path in (os.path.join(long_dir, "long.wav"), emb_long, emb_short):
        if os.path.exists(path):  # ~1.6 GB for 10 hours.
            os.remove(path)
    return rows, figures, notes


def _full_disks(ctx, rng, src, clean_dir):
    """Shard writes failing with EFBIG; see the module docstring."""
    clean = common.dir_bytes(clean_dir)
    sizes = sorted((len(clean[records.shard_name(i, 2)]), i) for i in (0, 1))
    (small, _), (big, failing) = sizes
    target = NUM_FULL_DISKS_QUICK if ctx.quick else NUM_FULL_DISKS
    injected = survived = lost = 0
    details = []
    for i in range(target):
        if i and ctx.time_left() <= 0:
            break
        limit = int(rng.integers(small + 1, big))
        workers = 1 + i % 2
        out = os.path.join(ctx.work_dir, "full_disk_%d" % i)
        # A log of its own: the limit applies to it too.
        log = os.path.join(ctx.work_dir, "full_disk_%d.log" % i)
        rc, _, _ = _measure(ctx, [
            "extract_features", "--input=" + src, "--output_dir=" + out,
            "--num_shards=2", "--workers=%d" % workers], log,
            preexec_fn=common.file_size_limit(limit))
        injected += 1
        text = common.tail(log, 10 ** 6)
        failed = os.path.join(out, records.shard_name(failing, 2))
        named = bool(re.search(re.escape(failed) +
                               r": could not write the shard .*File too large",
                               text))
        got = common.dir_bytes(out) if os.path.isdir(out) else {}
        # Only complete shards (and their summaries) may be there: the
        # small one committed, never a partial big one or temporary files.
        stray = [n for n in got if n not in clean or got[n] != clean[n]]
        visible = [os.path.basename(p) for p in records.list_shards(out)] if (
            any(n.endswith(records.SHARD_SUFFIX) for n in got)) else []
        lost += len(stray)
        rc2, _, _ = _measure(ctx, [
            "extract_features", "--input=" + src, "--output_dir=" + out,
            "--num_shards=2", "--workers=1"], log)
        final_ok = rc2 == 0 and common.dir_bytes(out) == clean
        lost += not final_ok
        ok = rc == 1 and named and not stray and final_ok and (
            records.shard_name(failing, 2) not in visible)
        survived += ok
        details.append("limit %d B, %d worker(s): exit %d, error names the "
                       "shard and EFBIG: %s, re-run identical: %s" % (
                           limit, workers, rc, named, final_ok))
    return common.row(
        "full disk (EFBIG) during a shard write", injected, survived, lost,
        "; ".join(details))


def run(ctx):
    rng = ctx.rng("resources_extract")
    log = os.path.join(ctx.work_dir, "resources.log")
    # A short input: a 2 s and a long-ish file, one per shard; its clean
    # extraction is also the short-input memory baseline.
    src = os.path.join(ctx.work_dir, "short_in")
    common.write_wavs(src, 1, 2.0, ctx.seed)
    os.rename(os.path.join(src, "clip_0000.wav"), os.path.join(src, "a.wav"))
    common.write_wavs(src, 1, SHORT_SECONDS * 3, ctx.seed + 1)
    os.rename(os.path.join(src, "clip_0000.wav"), os.path.join(src, "b.wav"))
    clean_dir = os.path.join(ctx.work_dir, "short_clean")
    rc, extract_short_mb, _ = _measure(ctx, [
        "extract_features", "--input=" + src, "--output_dir=" + clean_dir,
        "--num_shards=2", "--workers=1"], log)
    if rc != 0:
        raise RuntimeError("the clean short extraction failed (%d): %s" %
                           (rc, common.tail(log)))
    # The full-disk runs go beside the memory runs (2 cores; each peak RSS
    # is its own process's), with a log of their own.
    disk = {}

    def full_disks():
        try:
            disk["row"] = _full_disks(ctx, rng, src, clean_dir)
        except Exception as e:  # pylint: disable=broad-except
            disk["error"] = e

    thread = threading.Thread(target=full_disks, name="full-disks")
    thread.start()
    try:
        rows, figures, notes = _memory(ctx, log, src, extract_short_mb)
    finally:
        thread.join()
    if "error" in disk:
        raise disk["error"]
    rows.append(disk["row"])
    if ctx.quick:
        notes.append("quick mode: a %.0f-minute file instead of %g hours; "
                     "one full-disk injection" % (LONG_HOURS_QUICK * 60,
                                                 LONG_HOURS))
    return [common.part("resources", rows, figures, notes)]
