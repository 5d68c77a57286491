"""Extraction under faults: lost workers, kills, full disks, long files.

Regression tests of issue 17's extraction findings (the soak's parts
`extract_kills` and `resources_extract` measure the same at scale).
"""

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from triplet_audio import constants as C
from triplet_audio.features import audio_io
from triplet_audio.features import extract
from triplet_audio.features import inputs
from triplet_audio.features import local_runner
from triplet_audio.features import records
from triplet_audio.features import shards
from triplet_audio.serving import embed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO_ROOT, "bin", "extract_features")
_WORKER_TEMP = re.compile(r"^(shard-\d+-of-\d+\.tfrecord)\.(\d+)%s$" %
                          re.escape(records.TEMP_SUFFIX))


def _tone(path, seconds, freq, rate=16000, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * (
        np.random.default_rng(seed).standard_normal(t.shape[0]))
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return path


def _inputs(root, count=6, seconds=(1.0, 2.0, 3.0)):
    os.makedirs(root, exist_ok=True)
    for i in range(count):
        _tone(os.path.join(root, "clip_%02d.wav" % i),
              seconds[i % len(seconds)], 300 + 97 * i, seed=i)
    return root


def _corpus(directory):
    """{name: bytes} of every file of a corpus directory."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def _clean(src, out, num_shards):
    extract.run(extract.ExtractConfig(input=src, output_dir=out,
                                      num_shards=num_shards, workers=1))
    return _corpus(out)


class _WorkerKiller(threading.Thread):
    """SIGKILLs the worker writing a shard: `times` distinct attempts.

    A pool worker writes under `<shard>.<pid>.incomplete`
    (`local_runner.worker_temp_suffix`), which names it.
    """

    def __init__(self, directory, shard_names, times):
        super().__init__(daemon=True)
        self.directory = directory
        self.shard_names = set(shard_names)
        self.times = times
        self.killed = []  # (shard, pid)
        self.stop = threading.Event()

    def run(self):
        left = {name: self.times for name in self.shard_names}
        seen = set()
        while not self.stop.is_set() and any(left.values()):
            try:
                entries = os.listdir(self.directory)
            except FileNotFoundError:
                entries = []
            for entry in entries:
                match = _WORKER_TEMP.match(entry)
                if not match or match.group(1) not in left:
                    continue
                name, pid = match.group(1), int(match.group(2))
                if left[name] and (name, pid) not in seen:
                    seen.add((name, pid))
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    left[name] -= 1
                    self.killed.append((name, pid))
            time.sleep(0.002)


@pytest.mark.slow
def test_a_lost_worker_is_replaced_and_a_poison_shard_is_named(tmp_path):
    """A worker SIGKILLed mid-shard: the pool restarts and redoes the shard;
    a shard whose worker dies every time fails naming it, the rest finish,
    and a re-run completes the corpus byte-identical to a clean run."""
    # Shards 1 and 2 take seconds, so the killer (polling the directory)
    # sees each attempt's temporary file while it is written.
    src = _inputs(str(tmp_path / "in"), count=4, seconds=(2.0, 300.0, 300.0))
    clean = _clean(src, str(tmp_path / "clean"), 4)
    out = str(tmp_path / "out")
    os.makedirs(out)
    tasks = shards.make_shard_tasks(inputs.discover_inputs(src)[0], 4, True,
                                    out)
    poison, once = records.shard_name(1, 4), records.shard_name(2, 4)
    killer = _WorkerKiller(out, [poison], local_runner.MAX_WORKER_DEATHS)
    once_killer = _WorkerKiller(out, [once], 1)
    killer.start()
    once_killer.start()
    try:
        with pytest.raises(shards.RunnerError) as caught:
            local_runner.write_shards(tasks, workers=2)
    finally:
        killer.stop.set()
        once_killer.stop.set()
    assert len(killer.killed) == local_runner.MAX_WORKER_DEATHS
    assert once_killer.killed, "the once-killed shard was never seen"
    message = str(caught.value)
    assert poison in message and "SIGKILL" in message, message
    assert once not in message
    written = [t for t in tasks if os.path.exists(t.shard_path)]
    assert [os.path.basename(t.shard_path) for t in tasks
            if t not in written] == [poison]
    for task in written:  # Redone or not, each equals the clean run's.
        with open(task.shard_path, "rb") as f:
            assert f.read() == clean[os.path.basename(task.shard_path)]
    assert not [n for n in os.listdir(out) if n.endswith(records.TEMP_SUFFIX)]

    # The re-run (no more kills) does the poison shard only.
    resumed = extract.run(extract.ExtractConfig(input=src, output_dir=out,
                                                num_shards=4, workers=2))
    assert resumed["resumed_shards"] == 3
    assert _corpus(out) == clean


def test_workers_die_with_the_main_process(tmp_path):
    """SIGKILL of the main process only: its workers do not outlive it (they
    would go on writing), and the next run completes the same corpus."""
    src = _inputs(str(tmp_path / "in"), count=4, seconds=(10.0,))
    out = str(tmp_path / "out")
    proc = subprocess.Popen(
        [sys.executable, BINARY, "--input=" + src, "--output_dir=" + out,
         "--num_shards=4", "--workers=2"], cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    pids = set()
    try:
        deadline = time.monotonic() + 120
        while not pids and proc.poll() is None and (
                time.monotonic() < deadline):
            if os.path.isdir(out):
                pids = {int(m.group(2)) for m in map(_WORKER_TEMP.match,
                                                     os.listdir(out)) if m}
            time.sleep(0.005)
        assert pids, "no worker was seen writing"
        os.kill(proc.pid, signal.SIGKILL)  # The main process alone.
    finally:
        proc.wait()
    deadline = time.monotonic() + 10
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if os.path.exists("/proc/%d" % p) and
                 not _is_zombie(p)}
        time.sleep(0.05)
    assert not alive, "orphaned workers still running: %s" % sorted(alive)
    for shard in records.list_shards(out) if any(
            n.endswith(records.SHARD_SUFFIX) for n in os.listdir(out)) else []:
        records.check_shard_framing(shard)
    extract.run(extract.ExtractConfig(input=src, output_dir=out,
                                      num_shards=4, workers=1))
    assert _corpus(out) == _clean(src, str(tmp_path / "clean"), 4)


def _is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _limit_file_size(limit):
    def preexec():
        # The write then fails with EFBIG instead of killing the process,
        # as a full disk fails it with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_names_the_shard_and_leaves_no_partial_shard(tmp_path):
    src = str(tmp_path / "in")
    os.makedirs(src)
    _tone(os.path.join(src, "a_short.wav"), 2.0, 440.0)  # -> shard 0
    _tone(os.path.join(src, "b_long.wav"), 30.0, 880.0)  # -> shard 1
    clean = _clean(src, str(tmp_path / "clean"), 2)
    small, big = sorted(len(clean[records.shard_name(i, 2)]) for i in (0, 1))
    assert small * 2 < big
    out = str(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, BINARY, "--input=" + src, "--output_dir=" + out,
         "--num_shards=2", "--workers=1"], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
        preexec_fn=_limit_file_size((small + big) // 2), timeout=300)
    log = proc.stdout.decode(errors="replace")
    assert proc.returncode == 1, log[-3000:]
    failed = os.path.join(out, records.shard_name(1, 2))
    assert re.search(re.escape(failed) + r": could not write the shard "
                     r".*File too large", log), log[-3000:]
    # The shard committed before is intact; nothing partial is visible or
    # left behind; there is no manifest.
    assert records.list_shards(out) == [
        os.path.join(out, records.shard_name(0, 2))]
    assert sorted(os.listdir(out)) == sorted(
        [records.shard_name(0, 2), shards.shard_summary_name(0, 2)])
    for name in os.listdir(out):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read() == clean[name], name
    # With space again, the re-run finishes the same corpus.
    extract.run(extract.ExtractConfig(input=src, output_dir=out,
                                      num_shards=2, workers=1))
    assert _corpus(out) == clean


def test_write_shard_cleans_up_and_names_the_shard(tmp_path, monkeypatch):
    src = _inputs(str(tmp_path / "in"), count=2)
    out = str(tmp_path / "out")
    os.makedirs(out)
    task = shards.make_shard_tasks(inputs.discover_inputs(src)[0], 1, True,
                                   out)[0]

    def no_space(*args, **kwargs):
        del args, kwargs
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.jsonio, "write_json", no_space)
    with pytest.raises(shards.ShardWriteError,
                       match=re.escape(task.shard_path) +
                       ".*No space left on device"):
        shards.write_shard(task)
    assert os.listdir(out) == []


# ------------------------------------------------------- long files ---


def _long_item(tmp_path, seconds):
    path = _tone(str(tmp_path / "long.wav"), seconds, 523.0)
    return inputs.discover_inputs(path)[0][0]


def test_a_spilled_file_gives_the_same_records(tmp_path, monkeypatch):
    item = _long_item(tmp_path, 6.5 * C.MAX_WINDOWS_PER_RECORD *
                      C.WINDOW_SECONDS / 2)  # 3.25 records' windows
    monkeypatch.setattr(shards, "SPILL_WINDOWS", 10 ** 9)
    expected, result = shards.process_file(item)
    assert isinstance(expected, list) and result.num_records == 4
    monkeypatch.setattr(shards, "SPILL_WINDOWS", C.MAX_WINDOWS_PER_RECORD)
    got, spilled_result = shards.process_file(item, block_frames=7919)
    assert not isinstance(got, list)  # Read back from the temporary file.
    assert len(got) == 4
    assert list(got) == expected
    assert spilled_result == result


def test_spilling_bounds_what_a_long_file_holds(tmp_path, monkeypatch):
    """The windows one file holds until it is complete stop growing with it
    (unspilled, they were all of the file's: ~90 MB an hour)."""
    item = _long_item(tmp_path, 4 * C.MAX_WINDOWS_PER_RECORD *
                      C.WINDOW_SECONDS)
    add_windows = shards._PendingFile.add_windows  # pylint: disable=protected-access

    def held_at_most(spill_windows):
        monkeypatch.setattr(shards, "SPILL_WINDOWS", spill_windows)
        most = []

        def spy(pending, windows):
            add_windows(pending, windows)
            most.append(pending.buffered)

        monkeypatch.setattr(shards._PendingFile, "add_windows", spy)  # pylint: disable=protected-access
        (serialized, result), = shards.process_files([item])
        assert len(serialized) == result.num_records == 4
        return max(most), result.num_windows

    held, windows = held_at_most(10 ** 9)
    assert held == windows > 3 * C.MAX_WINDOWS_PER_RECORD
    held, _ = held_at_most(C.MAX_WINDOWS_PER_RECORD)
    # A front-end batch beyond the threshold, at most.
    assert held < 2 * C.MAX_WINDOWS_PER_RECORD


@pytest.mark.parametrize("hop_frames", [C.WINDOW_FRAMES, 5])
@pytest.mark.parametrize("block", [1000, 16000, 99991])
def test_streamed_windows_equal_the_whole_waveforms(hop_frames, block):
    """bin/embed streams audio: the same windows as the whole waveform's,
    for lengths around every boundary (short, one piece, pieces + tail)."""
    rng = np.random.default_rng(block + hop_frames)
    piece = embed.frontend.samples_for_windows(C.MAX_WINDOWS_PER_RECORD,
                                               hop_frames)
    step = C.MAX_WINDOWS_PER_RECORD * hop_frames * C.STFT_HOP_SAMPLES
    for length in (100, C.MIN_WINDOW_SAMPLES - 1, C.MIN_WINDOW_SAMPLES,
                   piece - 1, piece, piece + 1, step + piece,
                   2 * step + piece // 3):
        waveform = rng.uniform(-0.5, 0.5, length).astype(np.float32)
        blocks = [waveform[i:i + block] for i in range(0, length, block)]
        want = list(embed._audio_window_pieces(waveform, hop_frames))  # pylint: disable=protected-access
        got = list(embed._stream_window_pieces(blocks, hop_frames))  # pylint: disable=protected-access
        assert [w.shape for w in got] == [w.shape for w in want], length
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_embedding_a_file_streams_it_with_the_same_output(tmp_path,
                                                          monkeypatch):
    """embed_corpus on audio reads blocks, never the whole waveform, and
    writes the windows and start times the whole waveform gave."""
    src = str(tmp_path / "in")
    os.makedirs(src)
    _tone(os.path.join(src, "a.wav"), 3.3 * C.MAX_WINDOWS_PER_RECORD *
          C.WINDOW_SECONDS / 3, 440.0)
    _tone(os.path.join(src, "b.wav"), 0.5, 660.0)  # Padded to one window.
    names = ["a.wav", "b.wav"]
    expected = [embed._audio_windows(  # pylint: disable=protected-access
        audio_io.load_audio(os.path.join(src, n)), 48) for n in names]
    monkeypatch.setattr(audio_io, "load_audio", None)  # Must not be used.
    output = str(tmp_path / "emb.npz")
    embed.embed_corpus(src, output, representation="logmel",
                       window_hop_seconds=0.48)
    got = embed.embeddings_io.read_embeddings(output)
    assert list(got.segment_ids) == ["a", "b"]
    for i, windows in enumerate(expected):
        rows = got.segment_index == i
        np.testing.assert_array_equal(
            got.embeddings[rows],
            windows.reshape(windows.shape[0], -1).astype(np.float16))
        np.testing.assert_array_equal(
            got.start_times[rows],
            np.arange(windows.shape[0], dtype=np.float32) * np.float32(0.48))


def test_a_decoder_crash_while_embedding_costs_one_file(tmp_path, monkeypatch):
    """bin/embed decodes in the restartable child too: a file that crashes
    the decoder is listed as failed and the other files are embedded."""
    from triplet_audio.features import decode_worker  # pylint: disable=g-import-not-at-top
    src = str(tmp_path / "in")
    os.makedirs(src)
    for i, name in enumerate(["a.wav", "crash.wav", "c.wav"]):
        _tone(os.path.join(src, name), 1.5, 300.0 + 200 * i)
    monkeypatch.setenv(decode_worker.FAULT_ENV, "segv:crash.wav")
    decode_worker.shutdown()  # The child reads the hook when it starts.
    try:
        output = str(tmp_path / "emb.npz")
        embed.embed_corpus(src, output, representation="logmel")
    finally:
        monkeypatch.delenv(decode_worker.FAULT_ENV)
        decode_worker.shutdown()
    got = embed.embeddings_io.read_embeddings(output)
    assert list(got.segment_ids) == ["a", "c"]
    failed = got.metadata["failures"]
    assert [f["path"] for f in failed] == [os.path.join(src, "crash.wav")]
    assert "SIGSEGV" in failed[0]["reason"]
