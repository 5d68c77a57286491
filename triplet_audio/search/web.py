"""The local web page of bin/search --serve.

One page, served by the standard library's `http.server` (no web framework,
no JavaScript build chain: the page is the HTML, CSS and plain JavaScript in
`PAGE`). Pick a recording of the index or upload a clip, listen to the query
and to each hit at its best-matching moment, and see their log-mel images
and scores.

Routes (all answers JSON unless said otherwise):

  GET  /                         the page (HTML)
  GET  /api/info                 the index: level, kind, counts, export,
                                 labels, the upload limit
  GET  /api/recordings?q=TEXT    up to 100 recording ids containing TEXT
  GET  /api/search?recording=ID  hits of a recording of the index
  GET  /api/search?path=FILE     hits of an indexed audio file
  POST /api/search?name=NAME     hits of the uploaded clip (the request body)
       (each takes &k=N &label=NAME &pooling=mean|max &start=S &end=S)
  GET  /audio?rec=ROW&start=S&dur=S      WAV clip of an indexed recording
  GET  /audio?upload=ID                  WAV of an uploaded query
  GET  /logmel.png?rec=...|upload=...    its log-mel image (PNG)

Safety, for a page that listens on localhost by default:
  * audio is read only from the files the index records: a request names a
    recording by its row in the index, or by a path that must be (after
    resolving `..` and links) one of the indexed files; anything else is
    refused with 403, so no request reads outside the indexed corpus;
  * an upload must declare its length, at most `max_upload_bytes` (413
    otherwise, before anything is read); it is written only into the
    server's own temporary folder, under a name the server makes (never the
    client's), and the folder is removed when the server stops; only the
    last `MAX_UPLOADS` uploads are kept;
  * an upload is decoded block by block and refused (413) past
    `MAX_UPLOAD_SECONDS` of audio, whatever its header says: a compressed
    file of silence under the byte limit can hold days of audio;
  * a connection that sends nothing for `TIMEOUT_SECONDS` (a stalled
    upload) is answered 408 and closed, rather than holding its thread.
"""

import http.server
import io
import json
import os
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import urllib.parse

from absl import logging
import numpy as np

from triplet_audio import constants as C
from triplet_audio.config import jsonio
from triplet_audio.config import search as search_config
from triplet_audio.search import query as query_lib

MAX_UPLOADS = 20
CONTEXT_SECONDS = 1.0
"""Audio played around a hit's best moment, before and after it."""
MAX_CLIP_SECONDS = 30.0
MAX_UPLOAD_SECONDS = 600.0
"""The most audio an uploaded query may decode to (38 MB at 16 kHz): 20 MB
of FLAC silence decodes to about 200 hours, which took the server down."""
TIMEOUT_SECONDS = 60
"""Seconds a connection may stay silent mid-request (or idle between
requests) before it is closed."""
_EXTENSION_RE = re.compile(r"^[a-z0-9]{1,5}$")


class HttpError(Exception):
    """An answer other than 200: status and message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class SearchServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The page's server: an index, its searcher, an upload folder.

    Attributes:
      searcher: the `query.Searcher`.
      max_upload_bytes: the largest upload accepted.
      defaults: k, moments, pooling, labels of a query that does not say.
      upload_dir: the temporary folder uploads are written to.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, searcher, max_upload_bytes, defaults):
        super().__init__(address, Handler)
        self.searcher = searcher
        self.max_upload_bytes = int(max_upload_bytes)
        self.defaults = defaults
        self.upload_dir = tempfile.mkdtemp(prefix="triplet_audio_uploads_")
        self.uploads = {}  # id -> {"path": 16 kHz WAV, "name": str}
        self._next_upload = 0
        self.lock = threading.Lock()
        index = searcher.index
        self.lower_ids = np.char.lower(index.recording_ids)
        self._indexed = {}
        for row, path in enumerate(index.source_paths.tolist()):
            if path:
                self._indexed.setdefault(os.path.realpath(path), row)

    @property
    def url(self):
        """http://HOST:PORT/ of the page."""
        host, port = self.server_address[:2]
        return "http://%s:%d/" % (host, port)

    def server_close(self):
        super().server_close()
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    def indexed_row(self, path):
        """The recording row of an indexed audio file, else HttpError 403."""
        if not path:
            raise HttpError(400, "path: empty")
        real = os.path.realpath(path)
        row = self._indexed.get(real)
        if row is None:
            raise HttpError(403, "path %r is not an audio file of the "
                            "indexed corpus" % path)
        return row

    def new_upload(self, name, extension):
        """(id, path in the upload folder) for a new upload."""
        with self.lock:
            self._next_upload += 1
            upload_id = "%06d" % self._next_upload
            for old in sorted(self.uploads)[:-MAX_UPLOADS + 1]:
                entry = self.uploads.pop(old)
                if os.path.exists(entry["path"]):
                    os.remove(entry["path"])
        return upload_id, os.path.join(
            self.upload_dir, "upload-%s.%s" % (upload_id, extension))


def make_server(searcher, host="127.0.0.1", port=8000,
                max_upload_bytes=20 * 1024 * 1024, k=10, moments=3,
                pooling=search_config.MEAN, labels=()):
    """A `SearchServer` bound to host:port (not yet serving).

    Args:
      searcher: a `query.Searcher`.
      host: address to listen on ("127.0.0.1": this machine only).
      port: port (0 picks a free one; see `SearchServer.url`).
      max_upload_bytes: the largest upload accepted.
      k, moments, pooling, labels: defaults of a query.

    Returns:
      the server; call `serve_forever()` (and `server_close()` after).
    """
    return SearchServer((host, port), searcher, max_upload_bytes,
                        {"k": k, "moments": moments, "pooling": pooling,
                         "labels": tuple(labels)})


def serve(searcher, config):
    """Serves the page until Ctrl-C / SIGTERM (bin/search --serve).

    Args:
      searcher: a `query.Searcher`.
      config: the `SearchConfig` (host, port, max_upload_mb, k, moments,
        pooling, label).
    """
    import signal  # pylint: disable=g-import-not-at-top
    server = make_server(
        searcher, config.host, config.port,
        max_upload_bytes=int(config.max_upload_mb * 1024 * 1024),
        k=config.k, moments=config.moments, pooling=config.pooling,
        labels=config.label)

    def stop(signum, frame):
        del signum, frame
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    logging.info("serving %s (index %s, %d recordings); Ctrl-C stops it",
                 server.url, searcher.index.directory,
                 searcher.index.num_recordings)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logging.info("stopping")
    finally:
        server.server_close()


def run_serve(config):
    """bin/search --serve: loads the index and the export, then `serve`.

    The export is checked against the index's (and loaded) before the page
    is served, so a mismatched --saved_model is refused at start. When the
    index's export is gone and none is given, the page still answers
    queries by recording; uploads then fail, saying why.

    Args:
      config: a `SearchConfig`.
    """
    from triplet_audio.search import index as index_lib  # pylint: disable=g-import-not-at-top
    searcher = query_lib.Searcher(index_lib.SoundIndex.load(config.index),
                                  saved_model=config.saved_model)
    try:
        searcher.check_export()
    except FileNotFoundError as e:
        if config.saved_model:
            raise
        logging.warning("%s; uploads cannot be embedded", e)
    serve(searcher, config)


# ------------------------------------------------------------------ audio ---


def read_clip(path, start, duration):
    """Mono float32 samples of [start, start + duration) s and their rate."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    with sf.SoundFile(path) as f:
        rate = f.samplerate
        first = max(0, int(start * rate))
        if first >= f.frames:
            raise HttpError(416, "start %.2f s is past the end of the "
                            "recording" % start)
        f.seek(first)
        data = f.read(int(duration * rate), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def _decode_upload(path, name):
    """16 kHz mono float32 samples of an uploaded file, or HttpError.

    Decoded block by block, stopping past `MAX_UPLOAD_SECONDS` (the header's
    length is checked first, but a header can lie).
    """
    from triplet_audio.features import audio_io  # pylint: disable=g-import-not-at-top
    limit = int(MAX_UPLOAD_SECONDS * C.SAMPLE_RATE)
    too_long = HttpError(413, "%s decodes to more than %g s of audio, the "
                         "limit of a query" % (name, MAX_UPLOAD_SECONDS))
    try:
        with audio_io.AudioStream(path) as stream:
            if stream.info.duration_seconds > MAX_UPLOAD_SECONDS:
                raise too_long
            blocks, total = [], 0
            for block in stream:
                total += block.shape[0]
                if total > limit:
                    raise too_long
                blocks.append(block)
    except audio_io.AudioError as e:
        raise HttpError(400, "%s: %s" % (name, e.kind))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def wav_bytes(samples, rate):
    """16-bit PCM WAV file bytes of mono `samples`."""
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    out = io.BytesIO()
    sf.write(out, np.clip(samples, -1.0, 1.0), rate, format="WAV",
             subtype="PCM_16")
    return out.getvalue()


def logmel_png(samples, rate):
    """PNG bytes of the log-mel image of mono `samples` (low bands at the
    bottom), as the model sees them: this package's front end at 16 kHz."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
    import soxr  # pylint: disable=g-import-not-at-top
    from triplet_audio.features import frontend  # pylint: disable=g-import-not-at-top
    if rate != C.SAMPLE_RATE:
        samples = soxr.resample(samples, rate, C.SAMPLE_RATE)
    samples = np.asarray(samples, np.float32)
    if samples.size < C.STFT_WINDOW_SAMPLES:
        samples = np.pad(samples, (0, C.STFT_WINDOW_SAMPLES - samples.size))
    logmel = frontend.waveform_to_logmel(samples).numpy()  # [frames, bands]
    image = np.repeat(np.repeat(logmel.T[::-1], 2, axis=0), 2, axis=1)
    out = io.BytesIO()
    plt.imsave(out, image, cmap="magma", format="png")
    return out.getvalue()


# ---------------------------------------------------------------- handler ---


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes the page's requests (module docstring)."""

    server_version = "triplet-audio-search"
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_SECONDS  # socketserver sets it on the connection.

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        logging.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------- verbs
    def do_GET(self):  # pylint: disable=invalid-name
        self._dispatch({
            "/": self._page,
            "/api/info": self._info,
            "/api/recordings": self._recordings,
            "/api/search": self._search_get,
            "/audio": self._audio,
            "/logmel.png": self._logmel,
        })

    def do_POST(self):  # pylint: disable=invalid-name
        self._dispatch({"/api/search": self._search_upload})

    def _dispatch(self, routes):
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query)
        self.params = {k: v[-1] for k, v in params.items()}
        self.multi = params
        route = routes.get(url.path)
        try:
            if route is None:
                raise HttpError(404, "no such page: %s" % url.path)
            route()
        except HttpError as e:
            self._error(e.status, str(e))
        except (ValueError, KeyError, FileNotFoundError) as e:
            logging.debug("bad request", exc_info=True)
            self._error(400, str(e.args[0] if isinstance(e, KeyError)
                                 else e))
        except Exception as e:  # pylint: disable=broad-except
            logging.exception("error answering %s", self.path)
            self._error(500, "%s: %s" % (type(e).__name__, e))

    # ------------------------------------------------------------ answers
    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client hung up (mid-upload, say): nobody to answer, and
            # not worth socketserver's traceback on stderr.
            logging.debug("%s hung up before the answer",
                          self.address_string())
            self.close_connection = True

    def _json(self, value, status=200):
        self._send(status, json.dumps(jsonio.to_jsonable(value)).encode(
            "utf-8"), "application/json")

    def _error(self, status, message):
        if status == 413:
            self.close_connection = True  # The body was not read.
        self._json({"error": message}, status)

    # ------------------------------------------------------------- params
    def _int(self, name, default, minimum=0):
        value = self.params.get(name)
        if value in (None, ""):
            return default
        try:
            value = int(value)
        except ValueError:
            raise HttpError(400, "%s: not an integer: %r" % (name, value))
        if value < minimum:
            raise HttpError(400, "%s: must be >= %d" % (name, minimum))
        return value

    def _float(self, name, default=None):
        value = self.params.get(name)
        if value in (None, ""):
            return default
        try:
            value = float(value)
        except ValueError:
            raise HttpError(400, "%s: not a number: %r" % (name, value))
        if not np.isfinite(value) or value < 0:
            raise HttpError(400, "%s: must be a number >= 0" % name)
        return value

    def _query_settings(self):
        d = self.server.defaults
        labels = [l for l in self.multi.get("label", []) if l]
        pooling = self.params.get("pooling") or d["pooling"]
        if pooling not in search_config.POOLINGS:
            raise HttpError(400, "pooling: one of %s" %
                            ", ".join(search_config.POOLINGS))
        return {"k": min(self._int("k", d["k"], 1), 1000),
                "moments": min(self._int("moments", d["moments"], 1), 20),
                "labels": tuple(labels) or d["labels"], "pooling": pooling}

    # -------------------------------------------------------------- pages
    def _page(self):
        self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")

    def _info(self):
        index = self.server.searcher.index
        self._json({
            "index": index.directory, "level": index.level,
            "index_type": index.index_type, "vectors": index.num_vectors,
            "recordings": index.num_recordings,
            "representation": index.info.get("representation"),
            "export": index.info.get("export", {}).get("export_dir"),
            "labels": index.class_names,
            "max_upload_bytes": self.server.max_upload_bytes,
            "defaults": self.server.defaults,
        })

    def _recordings(self):
        index = self.server.searcher.index
        text = self.params.get("q", "").lower()
        limit = min(self._int("limit", 100, 1), 1000)
        rows = np.flatnonzero(np.char.find(self.server.lower_ids, text) >= 0)
        self._json({"recordings": [
            {"recording": str(index.recording_ids[row]),
             "labels": index.labels_of(row),
             "playable": bool(index.source_paths[row])}
            for row in rows[:limit]]})

    def _search_get(self):
        searcher = self.server.searcher
        start, end = self._float("start"), self._float("end")
        if "recording" in self.params:
            with self.server.lock:
                query = searcher.query_recording(self.params["recording"],
                                                 start, end)
        elif "path" in self.params:
            row = self.server.indexed_row(self.params["path"])
            with self.server.lock:
                query = searcher.query_file(
                    searcher.index.source_paths[row], start, end)
        else:
            raise HttpError(400, "give recording=ID or path=FILE (or POST "
                            "a clip)")
        self._answer(query, self._audio_of_query(query))

    def _search_upload(self):
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(411, "an upload must declare its Content-Length")
        try:
            length = int(length)
        except ValueError:
            raise HttpError(400, "Content-Length: not an integer")
        if length > self.server.max_upload_bytes:
            raise HttpError(413, "the upload is %d bytes, more than the "
                            "limit of %d" % (length,
                                             self.server.max_upload_bytes))
        if length <= 0:
            raise HttpError(400, "the upload is empty")
        name = os.path.basename(self.params.get("name") or "upload")[:200]
        extension = os.path.splitext(name)[1][1:].lower()
        if not _EXTENSION_RE.match(extension):
            extension = "bin"
        upload_id, raw_path = self.server.new_upload(name, extension)
        remaining = length
        try:
            with open(raw_path, "wb") as f:
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    f.write(chunk)
                    remaining -= len(chunk)
        except (socket.timeout, TimeoutError):
            self.close_connection = True
            raise HttpError(408, "the upload stalled: nothing received for "
                            "%g s, %d of %d bytes missing" % (
                                self.timeout, remaining, length))
        finally:
            if remaining and os.path.exists(raw_path):
                os.remove(raw_path)
        if remaining:
            raise HttpError(400, "the upload ended early")
        try:
            waveform = _decode_upload(raw_path, name)
        finally:
            os.remove(raw_path)
        if waveform.size == 0:
            raise HttpError(400, "%s holds no audio" % name)
        start, end = self._float("start"), self._float("end")
        waveform, start, end = query_lib._cut(  # pylint: disable=protected-access
            waveform, start, end, name)
        wav_path = os.path.join(self.server.upload_dir,
                                "upload-%s.wav" % upload_id)
        with open(wav_path, "wb") as f:
            f.write(wav_bytes(waveform, C.SAMPLE_RATE))
        with self.server.lock:
            self.server.uploads[upload_id] = {"path": wav_path, "name": name}
            query = self.server.searcher.query_waveform(
                waveform, name, start=start, end=end)
        self._answer(query, {"audio": "/audio?upload=%s" % upload_id,
                             "logmel": "/logmel.png?upload=%s" % upload_id})

    def _audio_of_query(self, query):
        index = self.server.searcher.index
        row = query.exclude
        if row is None and query.source_path:
            row = self.server._indexed.get(  # pylint: disable=protected-access
                os.path.realpath(query.source_path))
        if row is None or not index.source_paths[row]:
            return {}
        start = query.start or 0.0
        duration = (query.end - start if query.end is not None else
                    min(MAX_CLIP_SECONDS, float(
                        index.window_start[index.windows_of(row)].max()) +
                        C.WINDOW_SECONDS - start))
        args = "rec=%d&start=%.3f&dur=%.3f" % (row, start, max(duration, 0.1))
        return {"audio": "/audio?" + args, "logmel": "/logmel.png?" + args}

    def _answer(self, query, media):
        settings = self._query_settings()
        with self.server.lock:
            hits = self.server.searcher.search(
                query, k=settings["k"], moments=settings["moments"],
                labels=settings["labels"], pooling=settings["pooling"])
        for hit in hits:
            if hit["source_path"]:
                best = hit["moments"][0]["start"]
                start = max(0.0, best - CONTEXT_SECONDS)
                args = "rec=%d&start=%.3f&dur=%.3f" % (
                    hit["row"], start,
                    best - start + C.WINDOW_SECONDS + CONTEXT_SECONDS)
                hit["audio"] = "/audio?" + args
                hit["logmel"] = "/logmel.png?" + args
                hit["moment_offset"] = round(best - start, 3)
            del hit["row"]
        self._json({"query": dict(query.describe(), **media), "hits": hits})

    def _clip(self):
        """(samples, rate) a media request names (upload or recording)."""
        if "upload" in self.params:
            entry = self.server.uploads.get(self.params["upload"])
            if entry is None:
                raise HttpError(404, "no such upload (only the last %d are "
                                "kept)" % MAX_UPLOADS)
            return read_clip(entry["path"], 0.0, MAX_CLIP_SECONDS * 20)
        index = self.server.searcher.index
        if "path" in self.params:
            row = self.server.indexed_row(self.params["path"])
        else:
            row = self._int("rec", None)
            if row is None or row >= index.num_recordings:
                raise HttpError(404, "no such recording row")
        path = index.source_paths[row]
        if not path:
            raise HttpError(404, "recording %r has no audio file on record"
                            % str(index.recording_ids[row]))
        duration = min(self._float("dur", MAX_CLIP_SECONDS), MAX_CLIP_SECONDS)
        return read_clip(path, self._float("start", 0.0), duration)

    def _audio(self):
        samples, rate = self._clip()
        self._send(200, wav_bytes(samples, rate), "audio/wav")

    def _logmel(self):
        samples, rate = self._clip()
        self._send(200, logmel_png(samples, rate), "image/png")


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>triplet-audio sound search</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 70em; }
 h1 { font-size: 1.4em; margin: 0 0 .2em; }
 #info { color: #555; margin-bottom: 1em; }
 fieldset { border: 1px solid #ccc; border-radius: 6px; margin-bottom: 1em; }
 label { margin-right: 1em; }
 .hit, .query { border: 1px solid #ddd; border-radius: 6px; padding: .6em;
   margin: .5em 0; display: grid; grid-template-columns: 16em 1fr;
   gap: .3em 1em; }
 .hit h3, .query h3 { margin: 0; font-size: 1em; grid-column: 1 / 3; }
 .score { font-weight: bold; }
 .labels { color: #375; }
 .muted { color: #777; }
 img.logmel { max-width: 100%; height: 96px; image-rendering: pixelated; }
 #error { color: #b00; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Sound search</h1>
<div id="info">loading the index...</div>
<fieldset>
 <legend>Query</legend>
 <p>
  <label>Recording of the index
   <input id="recording" list="recording-list" size="40"
          placeholder="type to find a recording id">
   <datalist id="recording-list"></datalist></label>
  <button id="search-recording">Search</button>
 </p>
 <p>
  <label>or a clip of your own
   <input id="upload" type="file" accept="audio/*,.wav,.flac,.ogg,.mp3">
  </label>
  <button id="search-upload">Search</button>
 </p>
 <p>
  <label>hits <input id="k" type="number" min="1" max="1000" value="10"
                     style="width:5em"></label>
  <label>label <select id="label"><option value="">any</option></select>
  </label>
  <label>pooling <select id="pooling"><option>mean</option>
         <option>max</option></select></label>
 </p>
</fieldset>
<div id="error"></div>
<div id="query"></div>
<div id="hits"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let maxUpload = 0;

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children || [])
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

function media(item) {
  const box = el("div");
  if (item.audio) {
    box.append(el("audio", {controls: "", preload: "none",
                            src: item.audio, class: "player"}));
    box.append(el("br"));
    box.append(el("img", {src: item.logmel, class: "logmel",
                          alt: "log-mel image"}));
  } else {
    box.append(el("span", {class: "muted"}, ["(no audio file on record)"]));
  }
  return box;
}

function settings() {
  const p = new URLSearchParams();
  p.set("k", $("k").value || "10");
  if ($("label").value) p.set("label", $("label").value);
  p.set("pooling", $("pooling").value);
  return p;
}

function show(result) {
  $("error").textContent = "";
  const q = result.query;
  $("query").replaceChildren(el("div", {class: "query"}, [
    el("h3", {}, ["Query: " + q.kind + " " + q.name + " (" + q.windows +
                  " window" + (q.windows === 1 ? "" : "s") +
                  (q.padded ? ", zero-padded to one window" : "") + ")"]),
    el("div", {}, []), media(q)]));
  const hits = result.hits.map((h) => el("div", {class: "hit"}, [
    el("h3", {}, [h.rank + ". " + h.recording]),
    el("div", {}, [
      el("div", {class: "score"}, ["score " + h.score.toFixed(3)]),
      el("div", {class: "labels"}, [h.labels.join(", ") || "no labels"]),
      el("div", {class: "muted"}, ["best moments: " + h.moments.map(
        (m) => m.start.toFixed(2) + " s (" + m.score.toFixed(3) + ")"
      ).join(", ")]),
      el("div", {class: "muted"}, [h.source_path || ""])]),
    media(h)]));
  $("hits").replaceChildren(...(hits.length ? hits :
                                [el("p", {}, ["no hits"])]));
}

async function answer(response) {
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  show(body);
}

function fail(e) {
  $("error").textContent = String(e.message || e);
  $("hits").replaceChildren();
}

$("search-recording").addEventListener("click", () => {
  const p = settings();
  p.set("recording", $("recording").value);
  $("hits").replaceChildren(el("p", {}, ["searching..."]));
  fetch("/api/search?" + p).then(answer).catch(fail);
});

$("search-upload").addEventListener("click", () => {
  const file = $("upload").files[0];
  if (!file) return fail(new Error("choose a file first"));
  if (file.size > maxUpload)
    return fail(new Error("the file is larger than the limit of " +
                          maxUpload + " bytes"));
  const p = settings();
  p.set("name", file.name);
  $("hits").replaceChildren(el("p", {}, ["embedding and searching..."]));
  fetch("/api/search?" + p, {method: "POST", body: file})
    .then(answer).catch(fail);
});

let pending = null;
$("recording").addEventListener("input", () => {
  clearTimeout(pending);
  pending = setTimeout(() => {
    fetch("/api/recordings?limit=50&q=" +
          encodeURIComponent($("recording").value))
      .then((r) => r.json()).then((body) => {
        $("recording-list").replaceChildren(...body.recordings.map(
          (r) => el("option", {value: r.recording}, [r.labels.join(", ")])));
      });
  }, 150);
});

fetch("/api/info").then((r) => r.json()).then((info) => {
  maxUpload = info.max_upload_bytes;
  $("k").value = info.defaults.k;
  $("pooling").value = info.defaults.pooling;
  $("info").textContent = info.recordings + " recordings, " + info.vectors +
    " " + info.level + " vectors (" + info.index_type + ", " +
    info.representation + ") in " + info.index;
  for (const name of info.labels)
    $("label").append(el("option", {value: name}, [name]));
  $("info").setAttribute("data-ready", "1");
  $("recording").dispatchEvent(new Event("input"));
}).catch(fail);
</script>
</body>
</html>
"""
