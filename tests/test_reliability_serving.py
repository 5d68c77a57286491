"""Regression tests of the serving fixes of issue 17 (soak part `serving`).

Each names what failed before its fix:

  * embed_logmel on a scalar or 4-D request failed with "Incompatible
    shapes: [2] vs. [3]", naming neither the signature nor what it expects;
  * finite samples of 1e19 or more (or log-mel values that overflow the
    model) gave NaN embeddings, returned as an answer;
  * serving_default at the default hop framed the whole clip at once: an
    hour of audio took 1.7 GB beyond the request (now one step of windows
    at a time, as embed_waveforms);
  * no request was too long: an hour and more (or a million one-sample
    sounds, each padded to a window) went through (now the export's
    `MAX_REQUEST_SECONDS` / `MAX_REQUEST_WINDOWS`, checked in the graph,
    so TF Serving enforces them too, and written to metadata.json);
  * the HEAR API let a ragged list through to NumPy's message, and the
    export's refusals through as InvalidArgumentError, not its ValueError.

And the soak part's own bookkeeping: a request in flight when the worker
dies is counted as a crash, and only clear refusals count as survived.
"""

import os
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tiny_model
from triplet_audio import constants as C
from triplet_audio import hear
from triplet_audio.features import frontend
from triplet_audio.serving import export

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
from soak_parts import serving as soak_serving  # pylint: disable=g-import-not-at-top,wrong-import-position

D = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export dir, loaded SavedModel) of the tiny model."""
    path = str(tmp_path_factory.mktemp("reliability") / "export")
    export.export_saved_model(tiny_model.tiny_model(D), path)
    return path, tf.saved_model.load(export.saved_model_path(path))


def _audio(shape, seed=0):
    return (0.3 * np.random.default_rng(seed).standard_normal(shape)).astype(
        np.float32)


def _refused(call, *words):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        call()
    for word in words:
        assert word in str(info.value)
    return str(info.value)


# ---------------------------------------------------------- embed_logmel ---
@pytest.mark.parametrize("shape", [[], [7], [96, 64], [1, 2, 96, 64],
                                   [0, 1, 1], [2, 96, 63]])
def test_embed_logmel_names_the_expected_shape_for_any_rank(exported, shape):
    _, loaded = exported
    message = _refused(
        lambda: loaded.signatures["embed_logmel"](logmel=tf.zeros(shape)),
        "embed_logmel", "[batch, 96, 64]", "got shape")
    assert "Incompatible shapes" not in message


# ------------------------------------------------------- overflowing input ---
def test_samples_too_large_to_square_are_refused_not_embedded(exported):
    _, loaded = exported
    loud = _audio(16000) * np.float32(1e20)
    message = _refused(lambda: loaded.signatures["serving_default"](
        waveform=tf.constant(loud)), "serving_default", "NaN or Inf",
                       "too large", "[-1, 1]")
    assert "e+19" in message or "e+20" in message  # the largest |sample|
    _refused(lambda: loaded.signatures["embed_waveforms"](
        waveforms=tf.constant(loud[None]), hop_seconds=tf.constant(0.5)),
             "embed_waveforms", "too large")
    # Loud but finite after squaring: still answered.
    out = loaded.signatures["serving_default"](
        waveform=tf.constant(_audio(16000) * np.float32(1e6)))
    assert np.isfinite(out["clip_embedding"].numpy()).all()


def test_hear_refuses_overflowing_samples_with_a_value_error(exported):
    path, _ = exported
    model = hear.load_model(path)
    audio = _audio((2, 16000)) * np.float32(1e20)
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match=fn.__name__ + ": sounds 0-1: "
                           ".*too large"):
            fn(audio, model)


def test_hear_refuses_a_ragged_list_naming_the_function(exported):
    path, _ = exported
    model = hear.load_model(path)
    with pytest.raises(ValueError, match="get_scene_embeddings: audio must "
                       "be a 2-D array .*equal length"):
        hear.get_scene_embeddings([[0.0] * 10, [0.0] * 5], model)


# ------------------------------------------------------------ long requests ---
def test_the_limits_are_in_the_graph_and_the_metadata(exported):
    path, loaded = exported
    limits = export.load_metadata(path)["limits"]
    assert limits["max_request_seconds"] == export.MAX_REQUEST_SECONDS
    assert limits["max_request_samples"] == export.MAX_REQUEST_SAMPLES == (
        export.MAX_REQUEST_SECONDS * C.SAMPLE_RATE)
    assert limits["max_request_windows"] == export.MAX_REQUEST_WINDOWS
    # The reloaded SavedModel itself refuses (what TF Serving runs).
    _refused(lambda: loaded.signatures["serving_default"](
        waveform=tf.zeros([export.MAX_REQUEST_SAMPLES + 1])),
             "serving_default", "limit of %d" % export.MAX_REQUEST_SAMPLES)
    # A million one-sample sounds: each is padded to a window.
    _refused(lambda: loaded.signatures["embed_waveforms"](
        waveforms=tf.zeros([export.MAX_REQUEST_SAMPLES //
                            C.MIN_WINDOW_SAMPLES + 1, 1]),
        hop_seconds=tf.constant(0.96)), "embed_waveforms", "limit")


def test_limits_bound_each_signature_exactly(monkeypatch):
    # Small limits, so the boundary is cheap to reach: one over is refused,
    # the limit itself answered.
    monkeypatch.setattr(export, "MAX_REQUEST_SAMPLES", 2 * 16000)
    monkeypatch.setattr(export, "MAX_REQUEST_WINDOWS", 3)
    module = export.EmbeddingModule(tiny_model.tiny_model(D))
    assert module.serving_default(tf.zeros([32000]))[
        "window_embeddings"].shape == (2, D)
    _refused(lambda: module.serving_default(tf.zeros([32001])), "limit")
    hop = tf.constant(0.5)
    # Two short sounds are two windows of samples (31,200): within.
    assert module.embed_waveforms(tf.zeros([2, 1]), hop)[
        "window_embeddings"].shape == (2, 1, D)
    _refused(lambda: module.embed_waveforms(tf.zeros([3, 1]), hop),
             "embed_waveforms", "batch x max(num_samples, 15600)")
    _refused(lambda: module.embed_waveforms(tf.zeros([1, 32001]), hop),
             "limit")
    assert module.embed_logmel(tf.zeros([3, 96, 64]))[
        "embeddings"].shape == (3, D)
    _refused(lambda: module.embed_logmel(tf.zeros([4, 96, 64])),
             "embed_logmel", "more than 3 windows")


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_serving_default_embeds_long_audio_in_bounded_memory():
    module = export.EmbeddingModule(tiny_model.tiny_model(D))
    module.serving_default(tf.zeros([16000]))  # trace outside the measure
    minutes = 30
    waveform = tf.constant(np.resize(_audio(16000 * 60), 16000 * 60 *
                                     minutes))
    base = peak = _rss_mb()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, _rss_mb())
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out = module.serving_default(waveform)
    done.set()
    thread.join()
    assert out["window_embeddings"].shape == (
        (16000 * 60 * minutes - C.MIN_WINDOW_SAMPLES) //
        C.WINDOW_HOP_SAMPLES + 1, D)
    # Whole-clip framing grew by about 1 GB here (the STFT of 30 min);
    # one step of 256 windows takes about 130 MB.
    assert peak - base < 450, "grew by %.0f MB" % (peak - base)


def test_serving_default_still_equals_the_whole_clip_framing():
    model = tiny_model.tiny_model(D)
    module = export.EmbeddingModule(model)
    for num_samples in (1, 4800, 56000, 16000 * 300 + 123):
        waveform = _audio(num_samples, seed=num_samples)
        out = module.serving_default(tf.constant(waveform))
        want = model(frontend.waveform_to_windows(waveform), training=False)
        np.testing.assert_allclose(out["window_embeddings"].numpy(),
                                   want.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            out["start_times"].numpy(),
            np.arange(want.shape[0]) * C.WINDOW_SECONDS, atol=1e-4)


# ------------------------------------------------------- the soak's rules ---
def test_a_request_in_flight_when_the_worker_died_is_counted(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(
        '{"total": 5}\n{"start": 0, "target": "t", "case": "a"}\n'
        '{"i": 0, "target": "t", "case": "a", "outcome": "refused", '
        '"message": ""}\n{"start": 1, "target": "t", "case": "b"}\n'
        '{"i": 1, "target": "t", "ca')  # the worker died writing it
    results = {}
    total, in_flight = soak_serving._read_results(str(path), results, None)  # pylint: disable=protected-access
    assert (total, sorted(results)) == (5, [0])
    assert (in_flight["start"], in_flight["case"]) == (1, "b")


def test_a_crashing_request_is_counted_and_the_rest_still_run(tmp_path):
    ctx = soak_serving.common.Context(str(tmp_path), 0, True,
                                      time.monotonic() + 120)
    got = soak_serving._drive(ctx, "crash_drill", [])  # pylint: disable=protected-access
    assert got["failed"] == "" and got["total"] == 3
    assert sorted(got["results"]) == [0, 2]
    assert got["restarts"] == 1
    assert got["crashes"][1]["case"] == "abort"
    assert got["crashes"][1]["outcome"] == "crash"


def test_only_clear_refusals_and_right_answers_survive():
    judge = soak_serving._judge  # pylint: disable=protected-access
    refuse = soak_serving._Refuse(("serving_default", "1-D"), "empty")  # pylint: disable=protected-access

    def fail(message, error=tf.errors.InvalidArgumentError):
        def run():
            raise error(None, None, message)
        return run
    assert judge(refuse, fail("serving_default: must be 1-D"))[0] == (
        "refused")
    assert judge(refuse, fail("waveform is empty"))[0] == "refused"
    assert judge(refuse, fail("Incompatible shapes: [2] vs. [3]"))[0] == (
        "unclear")
    assert judge(refuse, lambda: {"x": 1})[0] == "accepted"
    answer = soak_serving._Answer(lambda out: "" if out == 1 else "off")  # pylint: disable=protected-access
    assert judge(answer, lambda: 1)[0] == "answered"
    assert judge(answer, lambda: 2)[0] == "wrong"
    assert judge(answer, fail("serving_default: must be 1-D"))[0] == "wrong"


# ------------------------------------------------------- the search page ---
@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(server URL host, port, a WAV of the corpus) of the search page over
    the log-mel baseline of three clips, its stall timeout 1 s."""
    import wav_files  # pylint: disable=g-import-not-at-top
    from triplet_audio.config import search as search_config  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import build  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import index as index_lib  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import query as query_lib  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import web  # pylint: disable=g-import-not-at-top
    from triplet_audio.serving import embed  # pylint: disable=g-import-not-at-top
    root = tmp_path_factory.mktemp("page")
    wavs = [wav_files.write_wav(str(root / "corpus" / ("%d.wav" % i)), 2.0,
                                i, 300 * (i + 1)) for i in range(3)]
    emb = str(root / "logmel.npz")
    embed.embed_corpus(str(root / "corpus"), emb, representation="logmel")
    build.build_index(search_config.IndexConfig(embeddings=emb,
                                                output=str(root / "ix")))
    server = web.make_server(
        query_lib.Searcher(index_lib.SoundIndex.load(str(root / "ix"))),
        "127.0.0.1", 0, max_upload_bytes=1 << 20, k=2)
    server.RequestHandlerClass = type("QuickHandler", (web.Handler,),
                                      {"timeout": 1})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with open(wavs[0], "rb") as f:
        wav = f.read()
    yield server.server_address[:2], wav
    server.shutdown()
    server.server_close()


def _post(address, body, declared=None, name="q.wav"):
    import http.client  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.putrequest("POST", "/api/search?name=" + name)
        conn.putheader("Content-Length", str(
            len(body) if declared is None else declared))
        conn.endheaders()
        conn.send(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_an_upload_that_decodes_to_hours_is_refused_unread(page, tmp_path):
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    from triplet_audio.search import web  # pylint: disable=g-import-not-at-top
    address, wav = page
    path = str(tmp_path / "silence.flac")
    # An hour of 8 kHz silence: 90 kB of FLAC, 230 MB once decoded.
    with sf.SoundFile(path, "w", 8000, 1, "PCM_16", format="FLAC") as f:
        for _ in range(6):
            f.write(np.zeros(8000 * 600, np.int16))
    with open(path, "rb") as f:
        body = f.read()
    assert len(body) < 200_000
    status, result = _post(address, body, name="silence.flac")
    assert status == 413
    assert "more than %g s of audio" % web.MAX_UPLOAD_SECONDS in (
        result["error"])
    status, result = _post(address, wav)  # the server is fine
    assert status == 200 and result["hits"]


def test_a_stalled_upload_is_answered_408_and_frees_its_thread(page):
    address, wav = page
    status, result = _post(address, wav[:100], declared=len(wav))
    assert status == 408
    assert "stalled" in result["error"] and str(len(wav)) in result["error"]
    assert _post(address, wav)[0] == 200
