"""decode_worker: audio decoded in a restarted child process.

A crash or hang of the decoder must cost one file, not the extraction; good
files must give the same bytes as decoding in-process, bad files the same
AudioError kinds and details.
"""

import json
import os
import signal

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from testdata import make_fixtures as F
from triplet_audio.config import extract as extract_config
from triplet_audio.features import audio_io
from triplet_audio.features import decode_worker
from triplet_audio.features import extract
from triplet_audio.features import inputs
from triplet_audio.features import records
from triplet_audio.features import shards


def _audio(fixtures_dir, rel):
    return os.path.join(fixtures_dir, F.AUDIO_DIR, rel)


@pytest.fixture
def faults(monkeypatch):
    """Sets the child's fault hook; the shared child restarts to read it."""

    def set_faults(**by_name):
        monkeypatch.setenv(decode_worker.FAULT_ENV, ";".join(
            "%s:%s" % (action, name) for name, action in by_name.items()))
        decode_worker.shutdown()

    yield set_faults
    monkeypatch.delenv(decode_worker.FAULT_ENV, raising=False)
    decode_worker.shutdown()


def _tones(directory, count, seconds=1.2, rate=22050):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        t = np.arange(int(seconds * rate)) / float(rate)
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
        path = os.path.join(directory, "tone_%d.wav" % i)
        sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def _items(paths):
    return [inputs.InputItem(p, os.path.splitext(os.path.basename(p))[0],
                             (), "") for p in paths]


def test_child_runs_without_tensorflow():
    assert "tensorflow" in __import__("sys").modules  # The parent has it.
    decoder = decode_worker.Decoder()
    try:
        pong = decoder.ping()
        assert pong["tensorflow"] is False
        assert pong["pid"] == decoder.pid != os.getpid()
    finally:
        decoder.close()
    assert decoder.pid is None


@pytest.mark.parametrize("rel", F.GOOD)
def test_good_file_blocks_are_identical_to_in_process(fixtures_dir, rel):
    path = _audio(fixtures_dir, rel)
    decoder = decode_worker.Decoder()
    try:
        for start, end in ((None, None), (0.2, 0.4)):
            with audio_io.open_segment(path, start, end,
                                       block_frames=3001) as local:
                expected = list(local)
            with decoder.open_segment(path, start, end,
                                      block_frames=3001) as remote:
                got = list(remote)
            assert remote.info == local.info
            assert remote.segment_frames == local.segment_frames
            assert [b.tobytes() for b in got] == [
                b.tobytes() for b in expected]
            for name in ("frames_read", "samples_out", "blocks_read", "peak",
                         "silent"):
                assert getattr(remote, name) == getattr(local, name), name
    finally:
        decoder.close()
    assert decoder.starts == 1


@pytest.mark.parametrize(
    "rel", [r for rels in sorted(F.BAD.values()) for r in rels] +
    [F.MISSING])
def test_bad_file_raises_the_same_error(fixtures_dir, rel):
    path = _audio(fixtures_dir, rel)
    with pytest.raises(audio_io.AudioError) as local:
        audio_io.load_audio(path)
    decoder = decode_worker.Decoder()
    try:
        with pytest.raises(audio_io.AudioError) as remote:
            with decoder.open_segment(path) as stream:
                list(stream)
    finally:
        decoder.close()
    assert type(remote.value) is audio_io.AudioError
    assert (remote.value.path, remote.value.kind, remote.value.detail) == (
        local.value.path, local.value.kind, local.value.detail)


def test_process_files_gives_the_same_records_either_way(fixtures_dir):
    paths = [_audio(fixtures_dir, r) for r in F.GOOD] + [
        _audio(fixtures_dir, rels[0]) for rels in F.BAD.values()]
    items = _items(paths)
    local = list(shards.process_files(items, isolate_decoder=False))
    remote = list(shards.process_files(items, isolate_decoder=True))
    assert [s for s, _ in remote] == [s for s, _ in local]
    assert [r for _, r in remote] == [r for _, r in local]
    assert sum(bool(s) for s, _ in local) >= len(F.GOOD) - 1
    assert any(r.status == shards.STATUS_FAILED for _, r in local)


def _records_by_path(corpus):
    found = {}
    for shard in records.list_shards(corpus):
        for raw in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            ex = tf.train.Example.FromString(raw)
            path = ex.features.feature[records.SOURCE_PATH].bytes_list.value[
                0].decode("utf-8")
            found.setdefault(path, []).append(raw)
    return found


@pytest.mark.parametrize("action,signum", [("segv", signal.SIGSEGV),
                                           ("abort", signal.SIGABRT)])
def test_decoder_crash_fails_one_file_and_the_shard_goes_on(
        tmp_path, faults, action, signum):
    paths = _tones(str(tmp_path / "in"), 4)
    victim = paths[1]
    clean = {}
    for item in _items(paths):
        serialized, _ = shards.process_file(item, isolate_decoder=False)
        clean[item.path] = serialized
    faults(**{os.path.basename(victim): action})
    decoder = decode_worker.shared_decoder()
    crashes, starts = decoder.crashes, decoder.starts
    out = str(tmp_path / "out")
    summary = extract.run(extract.ExtractConfig(
        input=str(tmp_path / "in"), output_dir=out, num_shards=1, workers=1))
    assert summary["totals"]["files"] == 4
    assert summary["totals"]["recordings"] == 3
    (failure,) = summary["failures"]
    assert failure["path"] == victim
    assert failure["error"].startswith(
        "%s: signal %d (%s)" % (decode_worker.KIND_CRASHED, signum,
                                signal.Signals(signum).name))
    written = _records_by_path(out)
    assert set(written) == set(paths) - {victim}
    for path, serialized in written.items():
        assert serialized == clean[path]  # Byte for byte.
    # One start for the shard, one restart after the crash.
    assert (decoder.crashes, decoder.starts) == (crashes + 1, starts + 2)


def test_decoder_hang_times_out_and_the_next_file_is_read(tmp_path, faults):
    paths = _tones(str(tmp_path / "in"), 3)
    faults(**{os.path.basename(paths[0]): "hang"})
    timeouts = decode_worker.shared_decoder().timeouts
    results = [r for _, r in shards.process_files(
        _items(paths), decoder_timeout_seconds=1.0)]
    assert [r.status for r in results] == [
        shards.STATUS_FAILED, shards.STATUS_OK, shards.STATUS_OK]
    assert results[0].reason.startswith(
        "%s: no output for 1 s" % decode_worker.KIND_TIMED_OUT)
    assert decode_worker.shared_decoder().timeouts == timeouts + 1


def test_exit_mid_stream_is_a_crash_with_its_status(tmp_path, faults):
    paths = _tones(str(tmp_path / "in"), 2, seconds=20.0, rate=8000)
    faults(**{os.path.basename(paths[0]): "exit"})
    decoder = decode_worker.shared_decoder()
    with pytest.raises(decode_worker.DecoderError) as caught:
        with decoder.open_segment(paths[0], block_frames=4000) as stream:
            blocks = []
            for block in stream:
                blocks.append(block)
    assert len(blocks) == 1  # The hook fires after the first block.
    assert caught.value.kind == decode_worker.KIND_CRASHED
    assert caught.value.detail.startswith("exit status 3")
    with decoder.open_segment(paths[1]) as stream:
        assert sum(b.shape[0] for b in stream) == 20 * 16000


def test_abandoned_stream_and_outside_kill_do_not_desync(tmp_path):
    paths = _tones(str(tmp_path / "in"), 2, seconds=20.0, rate=8000)
    decoder = decode_worker.Decoder()
    try:
        with decoder.open_segment(paths[0], block_frames=4000) as stream:
            next(iter(stream))  # Then closed with blocks still coming.
        expected = audio_io.load_audio(paths[1])
        with decoder.open_segment(paths[1]) as stream:
            assert np.concatenate(list(stream)).tobytes() == (
                expected.tobytes())
        os.kill(decoder.pid, signal.SIGKILL)  # Between files.
        decoder._process.wait()  # pylint: disable=protected-access
        with decoder.open_segment(paths[1]) as stream:
            assert np.concatenate(list(stream)).tobytes() == (
                expected.tobytes())
        assert decoder.crashes == 0
        with pytest.raises(RuntimeError, match="previous stream"):
            with decoder.open_segment(paths[0]):
                decoder.open_segment(paths[1])
    finally:
        decoder.close()


def test_settings_reach_the_tasks_but_not_the_fingerprint(tmp_path):
    items = _items(_tones(str(tmp_path / "in"), 2))
    default = shards.make_shard_tasks(items, 1, True, str(tmp_path))
    off = shards.make_shard_tasks(items, 1, True, str(tmp_path), False, 5.0)
    assert default[0].isolate_decoder is True
    assert default[0].decoder_timeout_seconds == (
        extract_config.DECODER_TIMEOUT_SECONDS)
    assert (off[0].isolate_decoder, off[0].decoder_timeout_seconds) == (
        False, 5.0)
    assert off[0].fingerprint == default[0].fingerprint
    config = extract.ExtractConfig(input="x", output_dir="y")
    assert config.isolate_decoder is True
    with pytest.raises(ValueError, match="decoder_timeout_seconds"):
        extract.ExtractConfig(input="x", output_dir="y",
                              decoder_timeout_seconds=0)
    beam_runner = pytest.importorskip(
        "triplet_audio.features.beam_runner")
    line = beam_runner.task_to_json(off[0])
    assert beam_runner.task_from_json(line) == off[0]
    old = json.loads(line)  # A plan written before these settings.
    del old["isolate_decoder"], old["decoder_timeout_seconds"]
    assert beam_runner.task_from_json(json.dumps(old)) == default[0]


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_child_dies_with_a_killed_parent(tmp_path):
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    script = (
        "import sys, time\n"
        "from triplet_audio.features import decode_worker\n"
        "d = decode_worker.Decoder()\n"
        "print(d.ping()['pid'], flush=True)\n"
        "time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, "-c", script], env=env,
                              stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    for _ in range(100):  # Up to 10 s for the kernel to deliver it.
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def test_each_thread_has_its_own_decoder(fixtures_dir):
    import threading  # pylint: disable=g-import-not-at-top
    path = _audio(fixtures_dir, F.TONES[8000])
    expected = audio_io.load_audio(path).tobytes()
    seen = {}

    def work(name):
        decoder = decode_worker.shared_decoder()
        for _ in range(5):
            with decoder.open_segment(path) as stream:
                assert np.concatenate(list(stream)).tobytes() == expected
        seen[name] = (decoder, decoder.pid)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decoders = {id(d) for d, _ in seen.values()}
    assert len(seen) == 3 and len(decoders) == 3
    assert decode_worker.shared_decoder() not in [d for d, _ in seen.values()]


def test_a_decoder_that_cannot_start_stops_the_job(tmp_path, monkeypatch):
    paths = _tones(str(tmp_path / "in"), 1)
    decoder = decode_worker.Decoder()
    monkeypatch.setattr(decode_worker.sys, "executable", "/bin/false")
    with pytest.raises(decode_worker.DecoderStartError,
                       match="ended at start with status 1"):
        decoder.open_segment(paths[0])
    assert decoder.pid is None


def test_child_startup_is_not_counted_in_the_timeout(tmp_path, monkeypatch):
    # Found by the soak on a loaded machine: the restart after a hang took
    # longer than a short timeout, failing the next (good) file too.
    import sys  # pylint: disable=g-import-not-at-top
    slow = tmp_path / "slow_python"
    slow.write_text("#!/bin/sh\nsleep 1.5\nexec %s \"$@\"\n" % sys.executable)
    slow.chmod(0o755)
    path = _tones(str(tmp_path / "in"), 1, seconds=0.5, rate=16000)[0]
    monkeypatch.setattr(decode_worker.sys, "executable", str(slow))
    decoder = decode_worker.Decoder(timeout_seconds=1.0)
    try:
        with decoder.open_segment(path) as stream:
            assert sum(b.shape[0] for b in stream) == 8000
    finally:
        decoder.close()
    assert (decoder.starts, decoder.timeouts) == (1, 0)


def test_extraction_settings_reach_the_decoder(tmp_path, faults):
    """--decoder_timeout_seconds and --noisolate_decoder act on extract.run."""
    paths = _tones(str(tmp_path / "in"), 2)
    faults(**{os.path.basename(paths[0]): "hang"})

    def run(out, **settings):
        manifest = extract.run(extract.ExtractConfig(
            input=str(tmp_path / "in"), output_dir=str(tmp_path / out),
            num_shards=1, workers=1, **settings))
        return {f["path"]: f["error"] for f in manifest["failures"]}

    # Isolated with a 1 s timeout: the hanging file fails alone.
    failed = run("isolated", decoder_timeout_seconds=1.0)
    assert list(failed) == [paths[0]]
    assert failed[paths[0]].startswith(
        "%s: no output for 1 s" % decode_worker.KIND_TIMED_OUT)
    # In-process decoding never starts the child, so its hook cannot fire.
    assert run("in_process", isolate_decoder=False) == {}


def test_bin_extract_features_ends_with_status_1_when_no_decoder_starts(
        tmp_path, monkeypatch):
    _tones(str(tmp_path / "in"), 1)
    decode_worker.shutdown()
    monkeypatch.setattr(decode_worker.sys, "executable", "/bin/false")
    try:
        status = extract.main(lambda: extract.ExtractConfig(
            input=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
            num_shards=1, workers=1))
    finally:
        decode_worker.shutdown()
    assert status == 1
    assert not os.path.exists(str(tmp_path / "out" / records.MANIFEST_NAME))
