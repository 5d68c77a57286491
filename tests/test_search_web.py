"""bin/search --serve: the local web page, over HTTP and in a real browser.

The index is the log-mel baseline of a few synthetic clips (bin/embed
--representation=logmel, then bin/index), so uploads are embedded without a
model. The browser test drives Debian's chromium through its chromedriver
(selenium); it is skipped, saying what to install, where either is missing.
"""

import contextlib
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

import wav_files  # pylint: disable=g-bad-import-order
from triplet_audio.config import search as search_config
from triplet_audio.search import build
from triplet_audio.search import index as index_lib
from triplet_audio.search import query as query_lib
from triplet_audio.search import web

MAX_UPLOAD = 200_000
TONES = {"low": 300, "mid": 1200, "high": 3000, "noise": None}


def _write_wav(path, seconds, seed, tone_hz=None, rate=16000):
    return wav_files.write_wav(path, seconds, seed, tone_hz, rate)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(audio folder, index directory) of four clips."""
    from triplet_audio.serving import embed  # pylint: disable=g-import-not-at-top
    root = tmp_path_factory.mktemp("web")
    audio = root / "corpus"
    for i, (name, hz) in enumerate(TONES.items()):
        _write_wav(str(audio / ("%s.wav" % name)), 2.5, i, hz)
    emb = str(root / "logmel.npz")
    embed.embed_corpus(str(audio), emb, representation="logmel")
    out = str(root / "ix")
    build.build_index(search_config.IndexConfig(embeddings=emb, output=out))
    return str(audio), out


@pytest.fixture(scope="module")
def server(corpus):
    """The page's server on a free port of localhost, serving in a thread."""
    _, out = corpus
    searcher = query_lib.Searcher(index_lib.SoundIndex.load(out))
    httpd = web.make_server(searcher, "127.0.0.1", 0,
                            max_upload_bytes=MAX_UPLOAD, k=3)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    assert not os.path.exists(httpd.upload_dir)  # Uploads are gone.


def _get(server, path):
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path,
                                    timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _post(server, path, body, headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.putrequest("POST", path)
        for k, v in (headers if headers is not None else {
                "Content-Length": str(len(body))}).items():
            conn.putheader(k, v)
        conn.endheaders()
        # The server may answer (413) without reading it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_listens_on_localhost_by_default():
    assert search_config.SearchConfig().host == "127.0.0.1"


def test_page_info_and_search_by_recording(server):
    status, kind, body = _get(server, "/")
    assert status == 200 and kind.startswith("text/html")
    assert b'id="search-recording"' in body
    info = json.loads(_get(server, "/api/info")[2])
    assert (info["recordings"], info["representation"]) == (4, "logmel")
    status, _, body = _get(server, "/api/search?recording=mid&k=2")
    assert status == 200, body
    result = json.loads(body)
    hits = result["hits"]
    assert [h["rank"] for h in hits] == [1, 2]
    assert "mid" not in [h["recording"] for h in hits]
    assert result["query"]["audio"].startswith("/audio?rec=")
    for hit in hits:
        status, kind, wav = _get(server, hit["audio"])
        assert status == 200 and kind == "audio/wav" and wav[:4] == b"RIFF"
        status, kind, png = _get(server, hit["logmel"])
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_upload_is_searched_and_kept_in_a_temporary_folder(server, corpus):
    audio, _ = corpus
    before = sorted(os.listdir(audio))
    with open(os.path.join(audio, "high.wav"), "rb") as f:
        body = f.read()
    # pooling=max: the clip's own windows are in the index, at similarity 1.
    status, result = _post(
        server, "/api/search?name=../../evil.wav&k=2&pooling=max", body)
    assert status == 200, result
    assert result["hits"][0]["recording"] == "high"
    assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert result["query"]["name"] == "evil.wav"
    # Written only into the server's own temporary folder, named by it.
    assert os.path.dirname(server.upload_dir) == tempfile.gettempdir()
    assert all(n.startswith("upload-") for n in os.listdir(
        server.upload_dir))
    assert sorted(os.listdir(audio)) == before
    status, kind, wav = _get(server, result["query"]["audio"])
    assert status == 200 and wav[:4] == b"RIFF"


def test_uploads_are_size_limited(server):
    status, result = _post(server, "/api/search?name=big.wav",
                           b"x" * (MAX_UPLOAD + 1))
    assert status == 413 and "limit" in result["error"]
    status, result = _post(server, "/api/search?name=x.wav", b"abc",
                           headers={})
    assert status == 411
    status, result = _post(server, "/api/search?name=x.wav", b"not audio")
    assert status == 400


def test_request_paths_cannot_escape_the_indexed_corpus(server, corpus,
                                                        tmp_path):
    audio, _ = corpus
    outside = _write_wav(str(tmp_path / "outside.wav"), 1.0, 9, 500)
    link = os.path.join(audio, "link.wav")
    os.symlink(outside, link)
    try:
        for path in (os.path.join(audio, "..", "..", "etc", "passwd"),
                     "/etc/passwd", outside, link,
                     os.path.join(audio, "sub", "..", "..", "outside.wav")):
            for route in ("/api/search", "/audio", "/logmel.png"):
                status, _, body = _get(server, "%s?path=%s" % (
                    route, urllib.request.quote(path)))
                assert status == 403, (route, path, body)
    finally:
        os.remove(link)
    # An indexed file, however spelled, is fine.
    spelled = os.path.join(audio, "x", "..", "low.wav")
    status, _, body = _get(server, "/api/search?path=%s&k=1" %
                           urllib.request.quote(spelled))
    assert status == 200, body
    assert _get(server, "/../../etc/passwd")[0] == 404
    assert _get(server, "/audio?rec=99")[0] == 404


# ------------------------------------------------------- a real browser


def _browser():
    """A headless chromium driven by selenium, or skips saying why."""
    try:
        # pylint: disable=g-import-not-at-top
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        # pylint: enable=g-import-not-at-top
    except ImportError:
        pytest.skip("selenium is not installed (the test extra: pip install "
                    "-e '.[test]')")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                              "google-chrome")
                   if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser: install Debian's chromium and its "
                    "driver (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--mute-audio"):
        options.add_argument(arg)
    # The driver named explicitly: selenium looks for nothing on the network.
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_the_page_in_a_real_browser(server, corpus):
    from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
    audio, _ = corpus
    browser = _browser()
    try:
        browser.get(server.url)
        _wait(lambda: browser.find_element(By.ID, "info").get_attribute(
            "data-ready"))
        assert "4 recordings" in browser.find_element(By.ID, "info").text
        # A recording of the index.
        browser.find_element(By.ID, "recording").send_keys("low")
        browser.find_element(By.ID, "search-recording").click()
        hits = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".hit"))
        assert len(hits) == 3
        for hit in hits:
            player = hit.find_element(By.CSS_SELECTOR, "audio.player")
            assert "/audio?rec=" in player.get_attribute("src")
            assert hit.find_element(By.CSS_SELECTOR, ".score").text.startswith(
                "score ")
        # The images decoded: the server's PNGs reached the page.
        _wait(lambda: browser.execute_script(
            "return [...document.querySelectorAll('.hit img.logmel')]"
            ".every((i) => i.complete && i.naturalWidth > 0)"))
        # A clip of one's own.
        browser.find_element(By.ID, "upload").send_keys(
            os.path.join(audio, "noise.wav"))
        browser.find_element(By.ID, "search-upload").click()
        _wait(lambda: "noise.wav" in browser.find_element(
            By.ID, "query").text)
        hits = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".hit"))
        assert hits[0].find_element(By.TAG_NAME, "h3").text == "1. noise"
        assert browser.find_element(
            By.CSS_SELECTOR, "#query audio.player").get_attribute(
                "src").split("/")[-1].startswith("audio?upload=")
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()
