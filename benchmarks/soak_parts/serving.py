"""Soak part `serving`: malformed requests to every entry point of an export.

A tiny export (a two-layer model, the SavedModel and its float32 TFLite
model) is written by a child process; another child (`_worker`, this file
run as a script) sends it a table of requests, one at a time, each its
result recorded in a JSON-lines file before the next is sent: wrong dtype
(int16, float64, string), wrong rank (scalar, 1-D/2-D/3-D/4-D where another
is expected), wrong inner shape (log-mel windows not 96 x 64), NaN / Inf
values, finite samples so large that the embeddings overflow, empty (no
sample, no window, no sound), very short (one sample), very long (an hour
of audio, accepted; an hour and a sample, refused by the export's limit),
many tiny sounds (each padded to a window), and every kind of bad hop (0,
negative, NaN, Inf, not a multiple of 0.01 s, longer than a window, longer
than the clip). The targets: the SavedModel's three signatures, the HEAR
API (`load_model`, `get_scene_embeddings`, `get_timestamp_embeddings`) and
the TFLite interpreter. Valid requests among them are checked against the
Keras model applied to the front end's windows.

A crash (abort, segfault, hang) of the worker is counted against the request
in flight, and a new worker resumes with the next request, so one crash does
not hide the rest. In full mode, `FULL_RANDOM_REQUESTS` random requests per
signature (random dtype, rank, sizes, poisoned values and hop) follow the
table. The fixed table (about 150 requests, the search page's included) is
always run whole; only the random requests stop at the deadline.

The search page (bin/search --serve) gets its own table in a second worker,
at the same time: malformed query strings, paths outside the corpus, bad
Content-Length, uploads over the byte limit, broken audio, a FLAC file that
decodes to hours, a stalled upload and a client that hangs up.

Per target, a row: injected = requests, survived = refused with a clear
error (one naming the signature or function and saying what was wrong) or
answered correctly, lost = crashes + wrong answers + unclear errors + bad
requests answered. TFLite has no in-graph checks (the converter drops
asserts); its row holds it to what the export documents (see `_tflite`).
"""

import json
import os
import subprocess
import sys
import threading
import time

if __name__ == "__main__":  # The worker: run as a script.
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from soak_parts import common  # pylint: disable=g-import-not-at-top

SECTION = "serving"
FULL_RANDOM_REQUESTS = 400
"""Random requests per SavedModel signature in full mode."""
EMBEDDING_SIZE = 16
ATOL = 1e-4
"""|served - reference| allowed per embedding value (stepped STFT vs whole)."""
WORKER_TIMEOUT_S = 300
"""Seconds past the deadline a worker may take before it is killed (and
its request in flight counted as a hang)."""


# ------------------------------------------------------------------ parent ---


def run(ctx):
    """Exports, runs the request tables in workers, returns the part."""
    started = time.monotonic()
    cpu_before = _children_cpu()
    export_dir = os.path.join(ctx.work_dir, "export")
    random_count = 0 if ctx.quick else FULL_RANDOM_REQUESTS
    results, crashes, restarts, failed = {}, {}, 0, []
    totals = []
    # The two workers at once: each is mostly one busy thread.
    workers = {"requests": [export_dir, str(random_count)],
               "web": [os.path.join(ctx.work_dir, "web")]}
    outcomes = {}
    threads = [threading.Thread(
        target=lambda m=mode, e=extra: outcomes.__setitem__(
            m, _drive(ctx, m, e))) for mode, extra in workers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for mode in workers:
        got = outcomes[mode]
        if got["failed"]:
            failed.append(common.row(
                "%s worker" % mode, 1, 0, 1, got["failed"]))
            continue
        for i, entry in got["results"].items():
            results[(mode, i)] = entry
        for i, entry in got["crashes"].items():
            crashes[(mode, i)] = entry
        restarts += got["restarts"]
        totals.append(got["total"])
    part = _summarise(results, crashes, restarts,
                      None if len(totals) < 2 else sum(totals),
                      time.monotonic() - started, ctx)
    # CPU of the workers: the figure that says what an idle CI machine
    # needs, where the wall time also counts everything else running.
    part["figures"]["workers_cpu_seconds"] = round(
        _children_cpu() - cpu_before, 1)
    part["rows"] = failed + part["rows"]
    return [part]


def _children_cpu():
    import resource  # pylint: disable=g-import-not-at-top
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _drive(ctx, mode, extra):
    """Runs this file's `mode` worker until its table is done.

    A worker that dies (or hangs) with a request in flight has that request
    counted as a crash; a new worker goes on with the next one.

    Returns:
      {"results": {i: entry}, "crashes": {i: entry}, "restarts", "total",
       "failed": why no request could be sent ('' when some were)}.
    """
    results_path = os.path.join(ctx.work_dir, mode + ".jsonl")
    log = os.path.join(ctx.work_dir, mode + ".log")
    results, crashes, restarts, total, first = {}, {}, 0, None, 0
    table = {}
    while total is None or first < total:
        if ctx.time_left() <= 0 and first >= table.get("table", 0) and (
                total is not None):
            break  # Only random requests are left.
        p = common.start(
            [ctx.python, os.path.abspath(__file__), mode, results_path,
             str(first), str(ctx.deadline - time.monotonic()),
             str(ctx.seed)] + extra, log)
        try:
            rc = p.wait(timeout=max(0.0, ctx.time_left()) + WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            rc = p.wait()
        total, in_flight = _read_results(results_path, results, total, table)
        if total is None:  # It died setting up, before a request.
            return {"failed": "exit %s before the first request: %s" % (
                rc, common.tail(log, 500))}
        if rc == 0 and in_flight is None:
            break  # Done, or stopped at the deadline between requests.
        # The request in flight crashed (or hung) the worker.
        if in_flight is None:
            in_flight = {"start": max(list(results) + [first - 1]) + 1,
                         "target": "?", "case": "?"}
        last_line = (common.tail(log, 300).strip().splitlines() or [""])[-1]
        crashes[in_flight["start"]] = {
            "i": in_flight["start"], "target": in_flight["target"],
            "case": in_flight["case"], "outcome": "crash",
            "message": "worker exit %s: %s" % (rc, last_line)}
        restarts += 1
        first = in_flight["start"] + 1
    return {"results": results, "crashes": crashes, "restarts": restarts,
            "total": total, "failed": ""}


def _read_results(path, results, total, table=None):
    """Reads the worker's lines into `results`; (total, request in flight).

    `table` (a dict) gets the header line: "total" requests, of which the
    first "table" are the fixed table (run whatever the deadline).
    """
    in_flight = None
    if not os.path.exists(path):
        return total, None
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # A line cut by a crash.
            if "total" in entry:
                total = entry["total"]
                if table is not None:
                    table.update(entry)
            elif "start" in entry:
                in_flight = entry
            else:
                results[entry["i"]] = entry
                if in_flight and in_flight["start"] == entry["i"]:
                    in_flight = None
    return total, in_flight


def _summarise(results, crashes, restarts, total, seconds, ctx):
    by_target = {}
    for entry in list(results.values()) + list(crashes.values()):
        by_target.setdefault(entry["target"], []).append(entry)
    rows = []
    counts = {"refused": 0, "answered": 0, "crash": 0, "unclear": 0,
              "wrong": 0, "accepted": 0}
    for target in sorted(by_target):
        entries = sorted(by_target[target], key=lambda e: e["i"])
        kinds = {}
        for e in entries:
            kinds[e["outcome"]] = kinds.get(e["outcome"], 0) + 1
            counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
        good = kinds.get("refused", 0) + kinds.get("answered", 0)
        bad = [e for e in entries if e["outcome"] not in ("refused",
                                                          "answered")]
        detail = "refused %d, answered %d" % (kinds.get("refused", 0),
                                              kinds.get("answered", 0))
        if bad:
            detail += "; " + "; ".join(
                "%s: %s (%s)" % (e["case"], e["outcome"],
                                 e.get("message", "")[:160])
                for e in bad[:4])
        rows.append(common.row("malformed requests: " + target, len(entries),
                               good, len(bad), detail))
    done = len(results) + len(crashes)
    counts["crash"] = len(crashes)
    notes = []
    if total is None or done < total:
        notes.append("stopped at the deadline after %d of %s requests (the "
                     "fixed table whole, random requests cut short)" % (
                         done, total))
    if ctx.quick:
        notes.append("quick mode: the table only; full mode adds %d random "
                     "requests per signature" % FULL_RANDOM_REQUESTS)
    notes.append("TFLite: no in-graph checks (the converter drops asserts); "
                 "wrong ranks are refused by a TFLite kernel's own message, "
                 "NaN samples give NaN embeddings, empty input one padded "
                 "window, as export.py documents")
    hour = [e for e in results.values() if e.get("figures")]
    figures = {"requests": done, "refused": counts["refused"],
               "answered": counts["answered"], "crashes": len(crashes),
               "unclear_errors": counts["unclear"],
               "wrong_answers": counts["wrong"],
               "bad_requests_answered": counts["accepted"],
               "worker_restarts": restarts,
               "wall_seconds": round(seconds, 1)}
    for e in hour:
        figures.update(e["figures"])
    for e in results.values():
        if "timing" in e:
            figures.update(e["timing"])
    return common.part(SECTION, rows, figures, notes)


# ------------------------------------------------------------------ worker ---


def _export(export_dir):
    """Writes the tiny export (SavedModel, float32 TFLite), unless there."""
    # metadata.json is written last: a worker after a crash finds it.
    if os.path.exists(os.path.join(export_dir, "metadata.json")):
        return
    sys.path.insert(0, os.path.join(common.REPO_ROOT, "tests"))
    import tiny_model  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
    export.export_saved_model(tiny_model.tiny_model(EMBEDDING_SIZE),
                              export_dir, overwrite=True,
                              tflite_variants=("float32",))


class _Refuse:
    """A request that must be refused: error types and words per violation.

    `words` is a list of alternatives (one per thing wrong with the
    request), each a tuple of words the message must all hold. `answer`: an
    `_Answer` that may stand instead, where the request is only suspect
    (huge samples overflow only where the Hann window does not zero them).
    """

    def __init__(self, *words, errors=None, answer=None):
        self.words = [w if isinstance(w, tuple) else (w,) for w in words]
        self.errors = errors
        self.answer = answer


class _Answer:
    """A valid request: `check(output)` returns '' or what is wrong."""

    def __init__(self, check):
        self.check = check


def _cases(env):
    """[(target, case name, request function, expectation)] of the table."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from triplet_audio import constants as C  # pylint: disable=g-import-not-at-top
    from triplet_audio import hear  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top

    sd, el, ew = (env["signatures"][n] for n in (
        "serving_default", "embed_logmel", "embed_waveforms"))
    ref = env["reference"]
    rng = np.random.default_rng(env["seed"])

    def audio(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    def zeros(*shape, dtype=tf.float32):
        return tf.zeros(shape, dtype)

    def full(shape, value):
        return tf.constant(np.full(shape, value, np.float32))

    dtype_error = lambda name: _Refuse((name, "expected to be a float"))
    big = 1e20  # finite, but squares to Inf in float32
    max_samples = export.MAX_REQUEST_SAMPLES
    cases = []

    # serving_default(waveform [N])
    def sd_answer(wave):
        wave = np.asarray(wave, np.float32)
        return _Answer(lambda out: ref.check_clip(
            wave, C.WINDOW_FRAMES, out["window_embeddings"],
            out["clip_embedding"], out["start_times"]))
    clip, one = audio(56000), audio(1)
    for name, request, expect in [
            ("int16", lambda: sd(waveform=zeros(16000, dtype=tf.int16)),
             dtype_error("serving_default")),
            ("float64 tensor", lambda: sd(
                waveform=zeros(16000, dtype=tf.float64)),
             dtype_error("serving_default")),
            ("string", lambda: sd(waveform=tf.constant(["a", "b"])),
             dtype_error("serving_default")),
            ("scalar", lambda: sd(waveform=tf.constant(0.5)),
             _Refuse("1-D")),
            ("2-D", lambda: sd(waveform=zeros(2, 16000)), _Refuse("1-D")),
            ("3-D", lambda: sd(waveform=zeros(1, 1, 16000)), _Refuse("1-D")),
            ("empty", lambda: sd(waveform=zeros(0)), _Refuse("empty")),
            ("NaN", lambda: sd(waveform=full(16000, np.nan)),
             _Refuse("NaN or Inf")),
            ("Inf", lambda: sd(waveform=full(16000, -np.inf)),
             _Refuse("NaN or Inf")),
            ("samples of 1e20", lambda: sd(waveform=tf.constant(
                clip[:16000] * big)), _Refuse(("too large", "[-1, 1]"))),
            ("an hour and a sample", lambda: sd(
                waveform=zeros(max_samples + 1)), _Refuse("limit")),
            ("no argument", lambda: sd(), _Refuse(
                "waveform", errors=(TypeError,))),
            ("misnamed argument", lambda: sd(wave=zeros(16000)),
             _Refuse("waveform", errors=(TypeError,))),
            ("one sample", lambda: sd(waveform=tf.constant(one)),
             sd_answer(one)),
            ("3.5 s", lambda: sd(waveform=tf.constant(clip)),
             sd_answer(clip)),
            ("float64 NumPy (converted)", lambda: sd(
                waveform=clip.astype(np.float64)), sd_answer(clip)),
    ]:
        cases.append(("serving_default", name, request, expect))
    cases.append(("serving_default", "an hour", lambda: _timed_hour(
        sd, ref, np, tf), _Answer(lambda out: out)))

    # embed_logmel(logmel [B, 96, 64])
    logmel = ref.logmel(audio(40000))
    shape_words = _Refuse("[batch, 96, 64]")
    for name, request, expect in [
            ("int16", lambda: el(logmel=zeros(2, 96, 64, dtype=tf.int16)),
             dtype_error("embed_logmel")),
            ("float64 tensor", lambda: el(
                logmel=zeros(2, 96, 64, dtype=tf.float64)),
             dtype_error("embed_logmel")),
            ("string", lambda: el(logmel=tf.constant([["a"]])),
             dtype_error("embed_logmel")),
            ("scalar", lambda: el(logmel=tf.constant(1.0)), shape_words),
            ("2-D", lambda: el(logmel=zeros(96, 64)), shape_words),
            ("4-D", lambda: el(logmel=zeros(1, 2, 96, 64)), shape_words),
            ("96 x 63", lambda: el(logmel=zeros(2, 96, 63)), shape_words),
            ("64 x 96", lambda: el(logmel=zeros(2, 64, 96)), shape_words),
            ("1 x 1", lambda: el(logmel=zeros(2, 1, 1)), shape_words),
            ("no windows", lambda: el(logmel=zeros(0, 96, 64)),
             _Refuse("empty")),
            ("NaN", lambda: el(logmel=full([2, 96, 64], np.nan)),
             _Refuse("NaN or Inf")),
            ("Inf", lambda: el(logmel=full([2, 96, 64], np.inf)),
             _Refuse("NaN or Inf")),
            ("too many windows", lambda: el(logmel=zeros(
                export.MAX_REQUEST_WINDOWS + 1, 96, 64)),
             _Refuse(("more than", "windows"))),
            ("windows of a clip", lambda: el(logmel=tf.constant(logmel)),
             _Answer(lambda out: ref.check_logmel(logmel,
                                                  out["embeddings"]))),
    ]:
        cases.append(("embed_logmel", name, request, expect))

    # embed_waveforms(waveforms [B, N], hop_seconds [])
    hop_words = _Refuse("multiple of 0.01")

    def ew_answer(waves, hop_frames):
        return _Answer(lambda out: ref.check_batch(
            waves, hop_frames, out["window_embeddings"],
            out["clip_embeddings"], out["start_times"]))
    pair, short = audio(2, 32000), audio(3, 4800)
    half = tf.constant(0.5)
    for name, request, expect in [
            ("int16 waveforms", lambda: ew(
                waveforms=zeros(1, 16000, dtype=tf.int16), hop_seconds=half),
             dtype_error("embed_waveforms")),
            ("float64 hop", lambda: ew(
                waveforms=zeros(1, 16000),
                hop_seconds=tf.constant(0.5, tf.float64)),
             dtype_error("embed_waveforms")),
            ("string waveforms", lambda: ew(
                waveforms=tf.constant([["a"]]), hop_seconds=half),
             dtype_error("embed_waveforms")),
            ("scalar waveforms", lambda: ew(waveforms=tf.constant(0.5),
                                            hop_seconds=half),
             _Refuse("2-D")),
            ("1-D waveforms", lambda: ew(waveforms=zeros(16000),
                                         hop_seconds=half), _Refuse("2-D")),
            ("3-D waveforms", lambda: ew(waveforms=zeros(1, 1, 16000),
                                         hop_seconds=half), _Refuse("2-D")),
            ("hop a vector", lambda: ew(waveforms=zeros(1, 16000),
                                        hop_seconds=tf.constant([0.5])),
             _Refuse("scalar")),
            ("no sounds", lambda: ew(waveforms=zeros(0, 16000),
                                     hop_seconds=half), _Refuse("empty")),
            ("no samples", lambda: ew(waveforms=zeros(2, 0),
                                      hop_seconds=half), _Refuse("empty")),
            ("NaN samples", lambda: ew(waveforms=full([2, 16000], np.nan),
                                       hop_seconds=half),
             _Refuse("NaN or Inf")),
            ("samples of 1e20", lambda: ew(waveforms=tf.constant(
                pair * big), hop_seconds=half),
             _Refuse(("too large", "[-1, 1]"))),
            ("an hour of one-sample sounds", lambda: ew(
                waveforms=zeros(max_samples // C.MIN_WINDOW_SAMPLES + 1, 1),
                hop_seconds=half), _Refuse("limit")),
            ("hop 0", lambda: ew(waveforms=zeros(1, 16000),
                                 hop_seconds=tf.constant(0.0)), hop_words),
            ("hop -0.5", lambda: ew(waveforms=zeros(1, 16000),
                                    hop_seconds=tf.constant(-0.5)),
             hop_words),
            ("hop NaN", lambda: ew(waveforms=zeros(1, 16000),
                                   hop_seconds=tf.constant(np.nan,
                                                           tf.float32)),
             _Refuse("NaN or Inf")),
            ("hop Inf", lambda: ew(waveforms=zeros(1, 16000),
                                   hop_seconds=tf.constant(np.inf,
                                                           tf.float32)),
             _Refuse("NaN or Inf")),
            ("hop 0.005", lambda: ew(waveforms=zeros(1, 16000),
                                     hop_seconds=tf.constant(0.005)),
             hop_words),
            ("hop 0.015", lambda: ew(waveforms=zeros(1, 16000),
                                     hop_seconds=tf.constant(0.015)),
             hop_words),
            ("hop 0.97", lambda: ew(waveforms=zeros(1, 16000),
                                    hop_seconds=tf.constant(0.97)),
             hop_words),
            ("hop 5 s, longer than the clip", lambda: ew(
                waveforms=zeros(1, 16000), hop_seconds=tf.constant(5.0)),
             hop_words),
            ("hop 1e30", lambda: ew(waveforms=zeros(1, 16000),
                                    hop_seconds=tf.constant(1e30)),
             hop_words),
            ("two 2 s sounds, hop 0.5", lambda: ew(
                waveforms=tf.constant(pair), hop_seconds=half),
             ew_answer(pair, 50)),
            ("hop 0.96 on 0.3 s clips", lambda: ew(
                waveforms=tf.constant(short),
                hop_seconds=tf.constant(0.96)), ew_answer(short, 96)),
            ("hop 0.01, one sample", lambda: ew(
                waveforms=tf.constant(one[None]),
                hop_seconds=tf.constant(0.01)), ew_answer(one[None], 1)),
    ]:
        cases.append(("embed_waveforms", name, request, expect))

    # The HEAR API.
    model = env["hear_model"]
    sounds = audio(2, 40000)
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        target = "hear." + fn.__name__
        words = lambda *w: _Refuse(*w, errors=(ValueError,))
        answer = (lambda a: _Answer(lambda out: ref.check_hear_scene(a, out))
                  ) if fn is hear.get_scene_embeddings else (
                      lambda a: _Answer(lambda out: ref.check_hear_timestamps(
                          a, model.timestamp_hop_seconds, out)))
        for name, value, expect in [
                ("int16", np.zeros((1, 16000), np.int16),
                 words(("floating-point", "int16"))),
                ("string", np.array([["a"]]), words("floating-point")),
                ("string tensor", tf.constant([["a"]]),
                 words("floating-point")),
                ("complex", np.zeros((1, 16000), np.complex64),
                 words(("floating-point", "complex64"))),
                ("ragged", [[0.0] * 10, [0.0] * 5], words("2-D")),
                ("None", None, words("floating-point")),
                ("scalar", np.float32(0.1), words("2-D")),
                ("1-D", np.zeros(16000, np.float32), words("2-D")),
                ("3-D", np.zeros((1, 1, 16000), np.float32), words("2-D")),
                ("no sounds", np.zeros((0, 16000), np.float32),
                 words("empty")),
                ("no samples", np.zeros((2, 0), np.float32), words("empty")),
                ("NaN", np.full((2, 16000), np.nan, np.float32),
                 words("NaN or Inf")),
                ("Inf", np.full((1, 16000), np.inf, np.float32),
                 words("NaN or Inf")),
                ("samples of 1e20", sounds * np.float32(big),
                 words("too large")),
                ("one sample", one[None], answer(one[None])),
                ("float64", sounds.astype(np.float64), answer(sounds)),
                ("two 2.5 s sounds", sounds, answer(sounds)),
        ]:
            cases.append((target, name, (lambda f, v: lambda: f(v, model))(
                fn, value), expect))
        cases.append((target, "model None", (lambda f: lambda: f(
            sounds, None))(fn), _Refuse("load_model", errors=(ValueError,))))
    for hop in (0, -0.05, float("nan"), float("inf"), 0.055, 5.0, None, "x"):
        cases.append(("hear.load_model", "hop %r" % (hop,),
                      (lambda h: lambda: hear.load_model(
                          env["export_dir"], timestamp_hop_seconds=h))(hop),
                      _Refuse("timestamp_hop_seconds",
                              errors=(ValueError,))))
    cases.append(("hear.load_model", "no path", lambda: hear.load_model(""),
                  _Refuse("export directory", errors=(ValueError,))))
    cases.append(("hear.load_model", "missing path", lambda: hear.load_model(
        os.path.join(env["export_dir"], "missing")),
                  _Refuse("no SavedModel", errors=(FileNotFoundError,))))

    cases.extend(_tflite(env, np, one, clip, ref))
    if env["random_count"]:
        cases.extend(_random_cases(env, np, tf, C, export))
    return cases


def _tflite(env, np, one, clip, ref):
    """The TFLite interpreter's cases, held to what export.py documents.

    Wrong dtypes are refused by the interpreter (ValueError naming the input
    and both types); wrong ranks by a kernel (RuntimeError, "dims"), and the
    process lives on; short and empty waveforms are zero-padded to one
    window; NaN samples give NaN embeddings (no in-graph checks in TFLite:
    the caller keeps the samples finite).
    """
    runner = env["tflite"]
    dtype = lambda name: _Refuse(("expected type FLOAT32", name),
                                 errors=(ValueError,))
    rank = _Refuse("dims", errors=(RuntimeError,))

    def answer(wave):
        wave = np.asarray(wave, np.float32)
        return _Answer(lambda out: ref.check_clip(
            wave, ref.tflite_hop_frames, out["window_embeddings"],
            out["clip_embedding"], None, atol=1e-3))

    def nan_out(out):
        return "" if not np.isfinite(out["clip_embedding"]).any() else (
            "NaN samples gave a finite embedding")
    cases = []
    for name, value, expect in [
            ("int16", np.zeros(16000, np.int16), dtype("INT16")),
            ("float64", np.zeros(16000, np.float64), dtype("FLOAT64")),
            ("string", np.array(["a"]), dtype("STRING")),
            ("scalar", np.float32(0.5), rank),
            ("2-D", np.zeros((2, 16000), np.float32), rank),
            ("3-D", np.zeros((1, 1, 16000), np.float32), rank),
            ("NaN", np.full(16000, np.nan, np.float32), _Answer(nan_out)),
            ("empty", np.zeros(0, np.float32), answer(np.zeros(0))),
            ("one sample", one, answer(one)),
            ("3.5 s", clip, answer(clip)),
    ]:
        cases.append(("tflite", name, (lambda v: lambda: runner(
            waveform=v))(value), expect))
    return cases


def _random_cases(env, np, tf, C, export):
    """Full mode: random requests to the three signatures.

    Each draws a dtype, a rank, sizes, maybe a poisoned value and (for
    embed_waveforms) a hop; its expectation lists every rule it breaks
    (any one may be the one named), or, when it breaks none, the reference
    answer.
    """
    rng = np.random.default_rng([env["seed"], 17])
    sd, el, ew = (env["signatures"][n] for n in (
        "serving_default", "embed_logmel", "embed_waveforms"))
    ref = env["reference"]
    cases = []
    for i in range(env["random_count"] * 3):
        signature = ("serving_default", "embed_logmel",
                     "embed_waveforms")[i % 3]
        wrong = []
        dtype = rng.choice(["float32"] * 6 + ["int16", "float64", "int32"])
        if signature == "embed_logmel":
            rank = int(rng.choice([3] * 6 + [0, 1, 2, 4]))
            shape = [int(rng.integers(0, 4))] + [
                96 if rng.random() < 0.8 else int(rng.integers(1, 100)),
                64 if rng.random() < 0.8 else int(rng.integers(1, 100))]
            shape = (shape + [1, 1])[:rank] if rank != 3 else shape
            if rank != 3 or shape[1:] != [96, 64]:
                wrong.append("[batch, 96, 64]")
            if rank == 3 and shape[0] == 0:
                wrong.append("empty")
        else:
            want = 1 if signature == "serving_default" else 2
            rank = int(rng.choice([want] * 6 + [0, 1, 2, 3]))
            length = int(rng.choice([0, 1, 399, 15599, 15600, 16000,
                                     int(rng.integers(1, 48000))]))
            batch = int(rng.integers(0, 4))
            shape = {0: [], 1: [length], 2: [batch, length],
                     3: [1, batch, length]}[rank]
            if rank != want:
                wrong.append("1-D" if want == 1 else "2-D")
            elif 0 in shape:
                wrong.append("empty")
        if dtype != "float32":
            wrong = [(signature, "expected to be a float")]
        value = np.zeros(shape, dtype)
        if value.size and dtype == "float32":
            if signature == "embed_logmel":
                value = rng.uniform(-4.6, 3.0, shape).astype(np.float32)
            else:
                value = (0.3 * rng.standard_normal(shape)).astype(np.float32)
            poison = rng.choice(["none"] * 5 + ["nan", "inf", "big"])
            if poison in ("nan", "inf"):
                value.reshape(-1)[int(rng.integers(0, value.size))] = (
                    np.nan if poison == "nan" else -np.inf)
                wrong.append("NaN or Inf")
            elif poison == "big" and signature != "embed_logmel":
                # Finite, but every frame's power overflows to Inf.
                value *= np.float32(1e20)
                wrong.append("too large")
        tensor = tf.constant(value)
        if signature == "serving_default":
            request = (lambda t: lambda: sd(waveform=t))(tensor)
            expect = _Answer(
                (lambda v: lambda out: ref.check_clip(
                    v, C.WINDOW_FRAMES, out["window_embeddings"],
                    out["clip_embedding"], out["start_times"]))(value))
        elif signature == "embed_logmel":
            request = (lambda t: lambda: el(logmel=t))(tensor)
            expect = _Answer(
                (lambda v: lambda out: ref.check_logmel(
                    v, out["embeddings"]))(value))
        else:
            hop = float(rng.choice([0.5, 0.96, 0.05, 0.01, 0.0, -0.1, 0.97,
                                    0.055, np.nan]))
            hop_frames = int(round(hop / C.STFT_HOP_SECONDS)) if np.isfinite(
                hop) else 0
            if not np.isfinite(hop):
                wrong.append("NaN or Inf")
            elif not 1 <= hop_frames <= C.WINDOW_FRAMES or abs(
                    hop - hop_frames * C.STFT_HOP_SECONDS) > 1e-4:
                wrong.append("multiple of 0.01")
            request = (lambda t, h: lambda: ew(
                waveforms=t, hop_seconds=tf.constant(h, tf.float32)))(
                    tensor, hop)
            expect = _Answer(
                (lambda v, h: lambda out: ref.check_batch(
                    v, h, out["window_embeddings"], out["clip_embeddings"],
                    out["start_times"]))(value, hop_frames))
        if wrong:
            # Huge samples alone: refused, or (a sample the Hann window
            # zeroes, say) answered as the reference answers it.
            expect = _Refuse(*wrong, answer=expect if wrong == [
                "too large"] else None)
        cases.append((signature, "random %d (%s %s%s)" % (
            i, dtype, list(shape), ", " + "/".join(
                w if isinstance(w, str) else w[1] for w in wrong)
            if wrong else ""), request, expect))
    return cases


def _timed_hour(signature, ref, np, tf):
    """serving_default on an hour of audio: checked, timed, RSS sampled.

    Returns:
      "" or what was wrong, and the figures (seconds, peak RSS growth over
      the RSS with the input in memory).
    """
    from triplet_audio import constants as C  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
    seconds = export.MAX_REQUEST_SECONDS
    n = export.MAX_REQUEST_SAMPLES
    # A minute of noise, repeated (a whole number of windows, so the
    # windows differ within the minute but not the cost of making them).
    minute = (0.3 * np.random.default_rng(5).standard_normal(
        C.SAMPLE_RATE * 60)).astype(np.float32)
    wave = np.resize(minute, n)
    tensor = tf.constant(wave)
    base = peak = _rss_mb()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, _rss_mb())
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.monotonic()
    out = signature(waveform=tensor)
    took = time.monotonic() - started
    stop.set()
    thread.join()
    peak = max(peak, _rss_mb())
    got = out["window_embeddings"].numpy()
    num = (n - C.MIN_WINDOW_SAMPLES) // C.WINDOW_HOP_SAMPLES + 1
    problem = ""
    if got.shape != (num, EMBEDDING_SIZE):
        problem = "shape %s, expected %s" % (got.shape, (num,
                                                         EMBEDDING_SIZE))
    else:
        # The first and last windows against the reference.
        for w in (0, num - 1):
            start = w * C.WINDOW_HOP_SAMPLES
            piece = wave[start:start + C.MIN_WINDOW_SAMPLES]
            want = ref.embed(ref.windows(piece, C.WINDOW_FRAMES))[0]
            if np.abs(got[w] - want).max() > ATOL:
                problem = "window %d differs by %.2g" % (
                    w, np.abs(got[w] - want).max())
    return problem, {
        "longest_request_seconds_of_audio": seconds,
        "longest_request_latency_s": round(took, 2),
        "longest_request_rss_growth_mb": round(peak - base, 1),
        "longest_request_input_mb": round(wave.nbytes / 2 ** 20, 1)}


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class _Reference:
    """The Keras model of the export applied to the front end's windows."""

    def __init__(self, export_dir, tflite_hop_frames):
        import keras  # pylint: disable=g-import-not-at-top
        import numpy as np  # pylint: disable=g-import-not-at-top
        from triplet_audio.model import models  # pylint: disable=g-import-not-at-top,unused-import
        from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
        from triplet_audio.features import frontend  # pylint: disable=g-import-not-at-top
        self._np = np
        self._frontend = frontend
        self._model = keras.saving.load_model(os.path.join(
            export_dir, export.KERAS_NAME))
        self.tflite_hop_frames = tflite_hop_frames

    def windows(self, wave, hop_frames):
        return self._frontend.waveform_to_windows(
            self._np.asarray(wave, self._np.float32), pad_short=True,
            hop_frames=hop_frames).numpy()

    def logmel(self, wave):
        return self.windows(wave, 96)

    def embed(self, windows):
        return self._np.asarray(self._model(windows, training=False))

    def _close(self, got, want, what, atol=ATOL):
        np = self._np
        got = np.asarray(got)
        if got.shape != want.shape:
            return "%s: shape %s, expected %s" % (what, got.shape,
                                                  want.shape)
        if not np.all(np.abs(got - want) <= atol):
            return "%s: differs by %.2g" % (what, np.nanmax(np.abs(
                got - want)))
        return ""

    def check_clip(self, wave, hop_frames, window_emb, clip_emb, starts,
                   atol=ATOL):
        want = self.embed(self.windows(wave, hop_frames))
        problem = (self._close(window_emb, want, "window_embeddings", atol) or
                   self._close(clip_emb, want.mean(axis=0), "clip_embedding",
                               atol))
        if not problem and starts is not None:
            problem = self._close(starts, (self._np.arange(len(want)) *
                                           hop_frames * 0.01).astype(
                                               self._np.float32),
                                  "start_times", 1e-5)
        return problem

    def check_logmel(self, logmel, emb):
        return self._close(emb, self.embed(logmel), "embeddings")

    def check_batch(self, waves, hop_frames, window_emb, clip_emb, starts):
        for i, wave in enumerate(waves):
            problem = self.check_clip(wave, hop_frames, window_emb[i],
                                      clip_emb[i], starts)
            if problem:
                return "sound %d: %s" % (i, problem)
        return ""

    def check_hear_scene(self, sounds, out):
        np = self._np
        want = np.stack([self.embed(self.windows(s, 96)).mean(axis=0)
                         for s in sounds])
        return self._close(out, want, "scene embeddings")

    def check_hear_timestamps(self, sounds, hop_seconds, out):
        from triplet_audio import constants as C  # pylint: disable=g-import-not-at-top
        from triplet_audio.hear import api as hear  # pylint: disable=g-import-not-at-top
        np = self._np
        embeddings, stamps = out
        hop_frames = C.window_hop_frames(hop_seconds)
        lead = C.MIN_WINDOW_SAMPLES // 2
        count = hear.num_timestamps(sounds.shape[1], hop_seconds)
        for i, sound in enumerate(np.asarray(sounds, np.float32)):
            padded = np.pad(sound, (lead, lead))
            want = self.embed(self.windows(padded, hop_frames))[:count]
            problem = self._close(embeddings[i], want,
                                  "sound %d embeddings" % i)
            if problem:
                return problem
        return self._close(
            stamps, np.broadcast_to(hear.timestamps_ms(count, hop_seconds),
                                    (len(sounds), count)).astype(np.float32),
            "timestamps", 1e-3)


def _judge(expect, run):
    """(outcome, message, figures) of one request."""
    figures = None
    try:
        out = run()
    except Exception as e:  # pylint: disable=broad-except
        message = str(e)
        if isinstance(expect, _Answer):
            return "wrong", "valid request refused: %s: %s" % (
                type(e).__name__, message[-300:]), None
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        errors = expect.errors or (tf.errors.InvalidArgumentError,)
        clear = isinstance(e, errors) and any(
            all(w in message for w in words) for words in expect.words)
        summary = _summary(message)
        if not clear:
            return "unclear", "%s: %s (expected %s naming %s)" % (
                type(e).__name__, summary,
                "/".join(t.__name__ for t in errors),
                " or ".join("+".join(w) for w in expect.words)), None
        return "refused", "%s: %s" % (type(e).__name__, summary), None
    if isinstance(expect, _Refuse):
        if expect.answer is None:
            return "accepted", "answered a bad request", None
        expect = expect.answer
    try:
        problem = expect.check(out)
    except Exception as e:  # pylint: disable=broad-except
        # An answer the check cannot read (a wrong structure) is wrong too.
        problem = "unreadable answer: %s: %s" % (type(e).__name__, e)
    if isinstance(problem, tuple):  # The hour: (problem, figures).
        problem, figures = problem
    return ("wrong", problem, figures) if problem else (
        "answered", "", figures)


def _summary(message):
    """The line of an error message that says what was wrong."""
    for line in message.splitlines():
        if "assertion failed" in line or "NaN or Inf" in line:
            return line.strip()[:300]
    return message.strip().splitlines()[0][:300] if message.strip() else ""


def _requests(results_path, first, seconds_left, seed, export_dir,
              random_count):
    """Child: exports (the first time) and runs the request table."""
    deadline = time.monotonic() + seconds_left
    started = time.monotonic()
    _export(export_dir)  # In this process: one TensorFlow start, not two.
    export_seconds = time.monotonic() - started
    import warnings  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from triplet_audio import hear  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
    loaded = tf.saved_model.load(export.saved_model_path(export_dir))
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation note
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=os.path.join(
            export_dir, export.TFLITE_NAMES["float32"]), num_threads=1)
    meta = export.load_metadata(export_dir)
    env = {"signatures": loaded.signatures, "export_dir": export_dir,
           "hear_model": hear.load_model(export_dir),
           "tflite": interpreter.get_signature_runner(),
           "reference": _Reference(export_dir, int(round(
               meta["window_hop_seconds"] / 0.01))),
           "seed": seed, "random_count": random_count}
    cases = [(target, name, (lambda r, e: lambda: _judge(e, r))(run_case,
                                                             expect))
             for target, name, run_case, expect in _cases(env)]
    _run_table(cases, results_path, first, deadline,
               {"export_seconds": round(export_seconds, 1)}, "requests",
               table=len(cases) - 3 * random_count)


def _run_table(cases, results_path, first, deadline, timing, name,
               table=None):
    """Runs cases[first:], a "start" line before each and its result after.

    Args:
      cases: [(target, name, judge)], judge() -> (outcome, message,
        figures or None).
      results_path: the JSON-lines file the parent reads.
      first: the case to start with (after a crash, the one after it).
      deadline: time.monotonic() value to stop at, between cases, once
        the fixed table (the first `table` cases) is done.
      timing: figures to add to the last case's line (a run from 0 only).
      name: the table's name, for the figure of its duration.
      table: how many of the cases are the fixed table (default: all).
    """
    table = len(cases) if table is None else table
    started = time.monotonic()
    with open(results_path, "a") as out:
        if first == 0:
            out.write(json.dumps({"total": len(cases), "table": table}) +
                      "\n")
        for i in range(first, len(cases)):
            if i >= table and time.monotonic() > deadline:
                break
            target, case, judge = cases[i]
            out.write(json.dumps({"start": i, "target": target,
                                  "case": case}) + "\n")
            out.flush()
            outcome, message, figures = judge()
            entry = {"i": i, "target": target, "case": case,
                     "outcome": outcome, "message": message}
            if i == len(cases) - 1 and first == 0:
                entry["timing"] = dict(timing, **{
                    name + "_seconds": round(time.monotonic() - started, 1)})
            if figures:
                entry["figures"] = figures
            out.write(json.dumps(entry) + "\n")
            out.flush()


# -------------------------------------------------------------- web worker ---


def _web(results_path, first, seconds_left, seed, web_dir):
    """Child: the sound-search page's server, sent malformed HTTP requests.

    The index is the log-mel baseline of four synthetic clips (no model), as
    tests/test_search_web.py builds it; the server runs in a thread of this
    process, so a crash of the server is a crash of the worker. After each
    request the server must still answer /api/info.
    """
    del seed  # The table is fixed.
    deadline = time.monotonic() + seconds_left
    started = time.monotonic()
    import numpy as np  # pylint: disable=g-import-not-at-top
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    from triplet_audio.config import search as search_config  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import build  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import index as index_lib  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import query as query_lib  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import web  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import embed  # pylint: disable=g-import-not-at-top
    audio_dir = os.path.join(web_dir, "corpus")
    index_dir = os.path.join(web_dir, "index")
    # Made once: a worker after a crash finds them (the index last).
    if not os.path.isdir(index_dir):
        common.write_wavs(audio_dir, 4, 2.5, 0)
        emb = os.path.join(web_dir, "logmel.npz")
        embed.embed_corpus(audio_dir, emb, representation="logmel")
        build.build_index(search_config.IndexConfig(embeddings=emb,
                                                    output=index_dir))
    wavs = sorted(os.path.join(audio_dir, n) for n in os.listdir(audio_dir))
    searcher = query_lib.Searcher(index_lib.SoundIndex.load(index_dir))
    max_upload = 2 * 1024 * 1024
    # A stalled upload is cut after TIMEOUT_SECONDS; 2 s here, not 60.
    web.Handler.timeout = 2
    server = web.make_server(searcher, "127.0.0.1", 0,
                             max_upload_bytes=max_upload, k=3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    setup_seconds = time.monotonic() - started
    host, port = server.server_address[:2]
    recording = str(searcher.index.recording_ids[0])
    with open(wavs[0], "rb") as f:
        wav = f.read()
    bomb = os.path.join(web_dir, "silence.flac")
    if not os.path.exists(bomb):
        # Two hours of 8 kHz silence: 180 kB of FLAC, 460 MB decoded.
        with sf.SoundFile(bomb, "w", 8000, 1, "PCM_16", format="FLAC") as f:
            block = np.zeros(8000 * 600, np.int16)
            for _ in range(12):
                f.write(block)
    with open(bomb, "rb") as f:
        flac = f.read()
    empty_wav = _wav_bytes(sf, np.zeros(0, np.float32))
    cases = []

    def case(name, method, path, body=None, headers=None, status=(400,),
             words=(), stall=False, close_early=False):
        cases.append(("web " + name.split(":")[0], name, lambda: _http_case(
            host, port, method, path, body, headers, status, words, stall,
            close_early)))
    q = "/api/search?recording=%s" % recording
    case("GET: no such page", "GET", "/nope", status=(404,),
         words=("no such page",))
    case("GET: traversal", "GET", "/../../etc/passwd", status=(404,))
    case("GET: search without a query", "GET", "/api/search",
         words=("recording=ID",))
    case("GET: unknown recording", "GET", "/api/search?recording=nope",
         status=(400, 404), words=("nope",))
    case("GET: undecodable recording id", "GET",
         "/api/search?recording=%ff%fe%00", status=(400, 404))
    case("GET: k not an integer", "GET", q + "&k=abc",
         words=("k", "integer"))
    case("GET: k = 0", "GET", q + "&k=0", words=("k", ">= 1"))
    case("GET: k huge (capped)", "GET", q + "&k=" + "9" * 40, status=(200,))
    case("GET: start NaN", "GET", q + "&start=nan", words=("start",))
    case("GET: start -1", "GET", q + "&start=-1", words=("start",))
    case("GET: start 1e308", "GET", q + "&start=1e308",
         status=(400, 416), words=("1e+308",))
    case("GET: end before start", "GET", q + "&start=2&end=1",
         words=("[2.0, 1.0]",))
    case("GET: unknown pooling", "GET", q + "&pooling=median",
         words=("pooling",))
    case("GET: path outside the corpus", "GET",
         "/api/search?path=/etc/passwd", status=(403,),
         words=("not an audio file",))
    case("GET: empty path", "GET", "/api/search?path=", status=(400,),
         words=("recording=ID",))
    case("GET: URL of 100 kB", "GET", q + "&x=" + "a" * 100000,
         status=(414,))
    case("GET: audio rec -1", "GET", "/audio?rec=-1", words=("rec",))
    case("GET: audio rec abc", "GET", "/audio?rec=abc", words=("rec",))
    case("GET: audio rec past the end", "GET", "/audio?rec=99999",
         status=(404,), words=("no such recording",))
    case("GET: audio start past the end", "GET",
         "/audio?rec=0&start=100000", status=(416,), words=("past the end",))
    case("GET: audio dur Inf", "GET", "/audio?rec=0&dur=inf",
         words=("dur",))
    case("GET: audio of an unknown upload", "GET",
         "/audio?upload=../../etc", status=(404,), words=("no such upload",))
    case("GET: log-mel of zero seconds", "GET", "/logmel.png?rec=0&dur=0",
         status=(200,))
    case("POST: no Content-Length", "POST", "/api/search?name=a.wav",
         body=b"abc", headers={}, status=(411,), words=("Content-Length",))
    case("POST: Content-Length abc", "POST", "/api/search?name=a.wav",
         body=b"abc", headers={"Content-Length": "abc"},
         words=("Content-Length",))
    case("POST: Content-Length -5", "POST", "/api/search?name=a.wav",
         body=b"", headers={"Content-Length": "-5"}, words=("empty",))
    case("POST: Content-Length 1e12", "POST", "/api/search?name=a.wav",
         body=b"x" * 1000, headers={"Content-Length": str(10 ** 12)},
         status=(413,), words=("limit",))
    case("POST: over the byte limit", "POST", "/api/search?name=a.wav",
         body=b"x" * (max_upload + 1), status=(413,), words=("limit",))
    case("POST: JSON, not audio", "POST", "/api/search?name=q.json",
         body=b'{"recording": ', words=("q.json",))
    case("POST: random bytes as .wav", "POST", "/api/search?name=a.wav",
         body=bytes(np.random.default_rng(1).integers(0, 256, 5000,
                                                      np.uint8)),
         words=("a.wav",))
    case("POST: WAV cut in half", "POST", "/api/search?name=cut.wav",
         body=wav[:len(wav) // 2], status=(200, 400))
    case("POST: WAV with no samples", "POST", "/api/search?name=e.wav",
         body=empty_wav, words=("e.wav",))
    case("POST: two hours of FLAC silence (180 kB)", "POST",
         "/api/search?name=s.flac", body=flac, status=(413,),
         words=("more than", "s of audio"))
    case("POST: upload that stalls", "POST", "/api/search?name=a.wav",
         body=wav[:1000], headers={"Content-Length": str(len(wav))},
         status=(408,), words=("stalled",), stall=True)
    case("POST: client gone mid-upload", "POST", "/api/search?name=a.wav",
         body=wav[:1000], headers={"Content-Length": str(len(wav))},
         status=(None,), close_early=True)
    case("POST: a clip of the corpus", "POST",
         "/api/search?name=c.wav&k=2", body=wav, status=(200,),
         words=("hits",))
    case("POST: start past the clip", "POST",
         "/api/search?name=c.wav&start=50", body=wav, words=("empty",))
    _run_table(cases, results_path, first, deadline,
               {"web_setup_seconds": round(setup_seconds, 1)}, "web")
    server.shutdown()
    server.server_close()


def _wav_bytes(sf, samples):
    import io  # pylint: disable=g-import-not-at-top
    out = io.BytesIO()
    sf.write(out, samples, 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _http_case(host, port, method, path, body, headers, statuses, words,
               stall, close_early):
    """(outcome, message, None) of one HTTP request, the server checked after.

    statuses: the statuses that are right (None: no answer is expected, the
    client hung up); words: what the JSON error (or body) must hold.
    """
    import http.client  # pylint: disable=g-import-not-at-top
    import socket  # pylint: disable=g-import-not-at-top
    status, text = None, ""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers if headers is not None else (
                {"Content-Length": str(len(body))} if body is not None
                else {})).items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            try:
                conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # Answered (413) before reading it all.
        if close_early:
            conn.sock.shutdown(socket.SHUT_RDWR)
        else:
            if stall:
                time.sleep(0.1)  # then wait: the server must time out
            response = conn.getresponse()
            status, text = response.status, response.read().decode(
                "utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        if not close_early:
            text = "no answer: %s: %s" % (type(e).__name__, e)
    finally:
        conn.close()
    alive = _server_alive(host, port)
    if not alive:
        return "crash", "the server stopped answering after: %s %s" % (
            status, text[:200]), None
    if status not in statuses:
        return ("wrong" if status == 200 else "unclear"), "status %s (want %s): %s" % (
            status, "/".join(str(s) for s in statuses), text[:200]), None
    missing = [w for w in words if w not in text]
    if missing:
        return "unclear", "status %s, but %s not in %s" % (
            status, missing, text[:200]), None
    return ("answered" if status == 200 else "refused"), "%s %s" % (
        status, text[:150]), None


def _server_alive(host, port):
    import http.client  # pylint: disable=g-import-not-at-top
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/api/info")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


if __name__ == "__main__":
    _args = sys.argv[2:6]
    _common = (_args[0], int(_args[1]), float(_args[2]), int(_args[3]))
    if sys.argv[1] == "requests":
        _requests(*_common, sys.argv[6], int(sys.argv[7]))
    elif sys.argv[1] == "web":
        _web(*_common, sys.argv[6])
    elif sys.argv[1] == "crash_drill":  # tests: the second case aborts
        _run_table([("drill", name, judge) for name, judge in (
            ("before", lambda: ("refused", "", None)),
            ("abort", os.abort),
            ("after", lambda: ("answered", "", None)))],
                   _args[0], int(_args[1]), time.monotonic() + 60, {},
                   "drill")
