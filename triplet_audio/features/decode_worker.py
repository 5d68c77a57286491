"""Audio decoding in a child process: a decoder crash or hang costs one file.

libsndfile and the codecs under it (FLAC, Vorbis, mpg123) are native code;
a corrupt file that makes one of them segfault, abort or loop would take the
whole extraction with it if it were decoded in the extracting process. Here
`audio_io` runs in a child process (`python -m
triplet_audio.features.decode_worker`, which imports NumPy, soundfile and
soxr but never TensorFlow, so it starts in a fraction of a second) and sends
the 16 kHz mono float32 blocks back over a pipe:

    decoder = decode_worker.shared_decoder()
    for item in decoder.prefetching(items):    # asks for files ahead
        with decoder.open_segment(item.path, item.start,
                                  item.end) as stream:        # AudioError
            for block in stream:                              # AudioError
                ...

`prefetching` sends the requests of the next `PREFETCH_FILES` files ahead,
so the child decodes them while the caller runs the front end, and a short
clip costs no round trip of its own.

`RemoteStream` has the attributes of an `audio_io.AudioStream` that callers
read (`info`, `frames_read`, `samples_out`, `blocks_read`, `peak`, `silent`,
`segment_frames`), and the blocks are the child's `audio_io` blocks byte for
byte, so a good file's records do not depend on where it was decoded; a bad
file raises the same `audio_io.AudioError` (kind and detail) as in-process.

A child that dies while decoding (signal, non-zero exit) or sends nothing
for `timeout_seconds` (it is then killed) fails that file with a
`DecoderError` (an `AudioError` of kind `KIND_CRASHED` or `KIND_TIMED_OUT`);
the next file gets a fresh child, which is sent the requests that were
queued behind the failed file. A Python exception other than
`AudioError` inside the child fails the file as `KIND_ERROR` with the
exception's type and message (the child's traceback is logged).

Wire format, both ways: 1 byte of message type, 4 bytes big-endian payload
length, the payload (JSON, or raw float32 samples for a block).

Fault injection (tests and benchmarks/soak_parts/audio_fuzz.py only; not a
user setting): the child reads `FAULT_ENV`, a ';'-separated list of
`action:file-name` entries, when it starts. On decoding a file whose base
name is listed, it does `action` after sending the file's first block (or
before its end when it has none): `segv` and `abort` kill the child with
SIGSEGV / SIGABRT as a crashing codec would, `exit` exits with status 3,
`hang` sleeps forever.
"""

import atexit
import collections
import ctypes
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback

from absl import logging
import numpy as np

from triplet_audio.config import extract as extract_config
from triplet_audio.features import audio_io

KIND_CRASHED = "decoder crashed"
"""The decoder process died while decoding the file (signal or exit)."""
KIND_TIMED_OUT = "decoder timed out"
"""The decoder process sent nothing for `timeout_seconds`; it was killed."""
KIND_ERROR = "decoder error"
"""An unexpected Python exception in the decoder (a bug, not a bad file)."""

DEFAULT_TIMEOUT_SECONDS = extract_config.DECODER_TIMEOUT_SECONDS
"""How long the parent waits for the child's next message by default."""

STARTUP_TIMEOUT_SECONDS = 120.0
"""How long a new child may take to import its modules (~0.3 s when idle;
not counted in `timeout_seconds`, which is for decoding)."""
PREFETCH_FILES = 8
"""Files asked for ahead of the one being read (`Decoder.prefetching`)."""
PIPE_BYTES = 1 << 20
"""Capacity asked for the child's output pipe: room for the prefetched
files' blocks (~16 s of 16 kHz audio)."""
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named only in 3.10+.
_PR_SET_PDEATHSIG = 1  # prctl option (Linux), from <sys/prctl.h>.
_PARENT_POLL_SECONDS = 1.0  # The watchdog's poll, where prctl is missing.

FAULT_ENV = "TRIPLET_AUDIO_DECODER_FAULT"
"""Fault-injection hook read by the child only (see the module docstring)."""

_HEADER = struct.Struct(">cI")
_REQUEST = b"R"  # parent -> child: JSON {path, start, end, block_frames}
_PING = b"P"  # parent -> child: empty; the child answers _PONG.
_INFO = b"I"  # child -> parent: JSON AudioInfo fields + segment
_BLOCK = b"B"  # child -> parent: float32 samples
_END = b"E"  # child -> parent: JSON stream statistics
_AUDIO_ERROR = b"A"  # child -> parent: JSON {kind, detail}
_EXCEPTION = b"X"  # child -> parent: JSON {type, message, traceback}
_PONG = b"O"  # child -> parent: JSON {pid, tensorflow}
_READY = b"Y"  # child -> parent: empty, once its imports are done.
_FAULT_ACTIONS = ("segv", "abort", "exit", "hang")


class DecoderError(audio_io.AudioError):
    """The decoder process failed on a file (crash, timeout, exception)."""


class DecoderStartError(RuntimeError):
    """The decoder process could not start: no file can be decoded (a
    broken environment, not a bad file), so extraction stops."""


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


# ------------------------------------------------------------- the parent ---


class Decoder:
    """A decoder child process, started on first use and after each death.

    Requests are answered in order, so the next files can be asked for
    before the current one is read (`prefetching`): the child decodes them
    while this process runs the front end, and a short file costs no round
    trip of its own. A child found dead, or killed for silence, fails the
    file at the head of the queue; the requests behind it go to a new
    child. Not thread-safe; one stream open at a time.

    Attributes:
      timeout_seconds: longest wait for one message of the child.
      starts: child processes started so far.
      crashes: files on which the child died.
      timeouts: files on which the child was killed for silence.
    """

    def __init__(self, timeout_seconds=DEFAULT_TIMEOUT_SECONDS):
        if not timeout_seconds > 0:
            raise ValueError("timeout_seconds must be positive, got %r" %
                             (timeout_seconds,))
        self.timeout_seconds = float(timeout_seconds)
        self.starts = 0
        self.crashes = 0
        self.timeouts = 0
        self._process = None
        self._buffer = bytearray()
        # (key, payload) of the requests sent and not yet answered to the
        # end, oldest first: the child answers them in this order.
        self._pending = collections.deque()
        self._open = False  # The head request's stream is being read.

    # -- the child's life --------------------------------------------------

    def _start(self):
        """Starts a child and sends it the pending requests."""
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(audio_io.__file__))))
        env = dict(os.environ)
        # This process may have found the package through sys.path alone
        # (bin/ scripts insert the checkout); the child must find the same.
        env["PYTHONPATH"] = package_root + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                close_fds=True)
        except OSError as e:  # Out of processes or memory.
            raise DecoderStartError(
                "the decoder process (%s -m %s) could not be started: %s" % (
                    sys.executable, __name__, e)) from e
        self._buffer = bytearray()
        self.starts += 1
        self._await_ready()
        try:
            # Room for the prefetched files' blocks (Linux; else 64 KB).
            fcntl.fcntl(self._process.stdout.fileno(), _F_SETPIPE_SZ,
                        PIPE_BYTES)
        except (OSError, AttributeError):
            pass
        try:
            for _, payload in self._pending:
                self._send(_REQUEST, payload)
        except OSError:
            pass  # Died at once: reading finds it dead, at the head file.

    def _await_ready(self):
        """Waits for the new child's ready message."""
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while len(self._buffer) < _HEADER.size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._kill()
                raise DecoderStartError(
                    "the decoder process (%s -m %s) did not start within "
                    "%g s" % (sys.executable, __name__,
                              STARTUP_TIMEOUT_SECONDS))
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise DecoderStartError(
                    "the decoder process (%s -m %s) ended at start with "
                    "status %s (its error is in the log above)" % (
                        sys.executable, __name__, self._kill()))
            self._buffer += chunk
        kind, _ = _HEADER.unpack(bytes(self._buffer[:_HEADER.size]))
        del self._buffer[:_HEADER.size]
        if kind != _READY:
            self._kill()
            raise DecoderStartError("the decoder process sent %r, not its "
                                    "ready message" % kind)

    def _kill(self):
        """Kills the child (if any) and reaps it; returns its exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        return process.wait()

    def close(self):
        """Stops the child (idempotent); the next file starts a new one."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()  # EOF: the child exits by itself.
                process.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        self._pending.clear()
        self._open = False

    @property
    def pid(self):
        """The child's process id, or None when none is running."""
        return None if self._process is None else self._process.pid

    # -- messages ------------------------------------------------------------

    def _send(self, kind, payload=b""):
        self._process.stdin.write(_HEADER.pack(kind, len(payload)) + payload)
        self._process.stdin.flush()

    def _submit(self, key, payload):
        """Queues a file request and sends it to the child."""
        if not self._pending and self._process is not None and (
                self._process.poll() is not None):
            # Died between files (killed from outside): nothing of ours is
            # left in its pipe, so a new child loses nothing.
            self._kill()
        self._pending.append((key, payload))
        if self._process is None:
            self._start()  # Sends every pending request.
            return
        try:
            self._send(_REQUEST, payload)
        except (OSError, ValueError):
            # The child is dead: reading finds out, at the head file.
            pass

    def _pop_head(self):
        if self._pending:
            self._pending.popleft()
        self._open = False

    def _read_exact(self, count, path):
        if self._process is None:
            self._start()
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + self.timeout_seconds
        while len(self._buffer) < count:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0.0))[0] if (
                left > 0) else []
            if not ready:
                self.timeouts += 1
                self._kill()
                self._pop_head()
                raise DecoderError(
                    path, KIND_TIMED_OUT,
                    "no output for %g s; the decoder was killed and "
                    "restarted" % self.timeout_seconds)
            chunk = os.read(fd, max(count - len(self._buffer), 1 << 16))
            if not chunk:
                raise self._died(path)
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _died(self, path):
        """The DecoderError of a child found dead (it is reaped)."""
        self.crashes += 1
        status = self._kill()
        self._pop_head()
        if status is not None and status < 0:
            detail = "signal %d (%s)" % (-status, _signal_name(-status))
        else:
            detail = "exit status %s" % status
        return DecoderError(path, KIND_CRASHED,
                            detail + "; the decoder was restarted")

    def _receive(self, path):
        """The child's next message: (type, payload bytes)."""
        kind, length = _HEADER.unpack(self._read_exact(_HEADER.size, path))
        return kind, self._read_exact(length, path)

    def ping(self):
        """The child's pid and whether it has TensorFlow loaded (a dict).

        Raises:
          RuntimeError: while files are pending or a stream is open.
        """
        if self._pending or self._open:
            raise RuntimeError("decoder: ping while files are pending")
        if self._process is not None and self._process.poll() is not None:
            self._kill()
        if self._process is None:
            self._start()
        self._send(_PING)
        kind, payload = self._receive("<ping>")
        if kind != _PONG:
            raise RuntimeError("decoder: unexpected reply %r to a ping" % kind)
        return json.loads(payload)

    # -- files ---------------------------------------------------------------

    @staticmethod
    def _request_of(path, start_seconds, end_seconds, block_frames):
        key = (str(path), start_seconds, end_seconds, int(block_frames))
        return key, json.dumps({
            "path": key[0], "start": start_seconds, "end": end_seconds,
            "block_frames": key[3]}).encode("utf-8")

    def prefetching(self, items, block_frames=audio_io.DEFAULT_BLOCK_FRAMES):
        """Yields `items`, asking the child for up to `PREFETCH_FILES` ahead.

        Open each yielded item with `open_segment` (same path, start, end
        and block_frames) before taking the next.

        Args:
          items: iterable of objects with `path`, `start` and `end`
            (`inputs.InputItem`).
          block_frames: input frames per block, as given to open_segment.

        Yields:
          the items, in order.
        """
        if self._pending and not self._open:
            # Left by a reader that stopped early: their output would be
            # read as ours.
            self._kill()
            self._pending.clear()
        ahead = collections.deque()
        for item in items:
            ahead.append(item)
            self._submit(*self._request_of(item.path, item.start, item.end,
                                           block_frames))
            if len(ahead) > PREFETCH_FILES:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()

    def open_segment(self, path, start_seconds=None, end_seconds=None,
                     block_frames=audio_io.DEFAULT_BLOCK_FRAMES):
        """`audio_io.open_segment`, decoded in the child.

        Args:
          path: an audio file.
          start_seconds: None, or a segment (see `audio_io.open_segment`).
          end_seconds: the segment's end.
          block_frames: input frames per block.

        Returns:
          a `RemoteStream` (context manager; iterate once).

        Raises:
          audio_io.AudioError: what `audio_io.open_segment` raises for the
            file, or a `DecoderError` if the child died, hung or raised.
          RuntimeError: if the previous stream is still open.
        """
        if self._open:
            raise RuntimeError("decoder: %s opened before the previous stream "
                               "was closed" % path)
        key, payload = self._request_of(path, start_seconds, end_seconds,
                                        block_frames)
        if self._pending and self._pending[0][0] != key:
            # Not the file asked for first: start afresh.
            self._kill()
            self._pending.clear()
        if not self._pending:
            self._submit(key, payload)
        kind, payload = self._receive(key[0])
        if kind == _INFO:
            self._open = True
            return RemoteStream(self, key[0], json.loads(payload),
                                key[3])
        raise self._failure(key[0], kind, payload)

    def _failure(self, path, kind, payload):
        """The exception for a message that ends a file unsuccessfully."""
        self._pop_head()
        if kind == _AUDIO_ERROR:
            error = json.loads(payload)
            return audio_io.AudioError(path, error["kind"], error["detail"])
        if kind == _EXCEPTION:
            error = json.loads(payload)
            logging.warning("decoder: %s raised in the decoder process:\n%s",
                            path, error["traceback"])
            return DecoderError(path, KIND_ERROR, "%s: %s" % (
                error["type"], error["message"]))
        self._kill()  # Out of step with us: start afresh.
        return DecoderError(path, KIND_ERROR,
                            "unexpected message %r from the decoder" % kind)

    def _next_block(self, stream):
        """The next block of `stream`, or None at its end (stats set)."""
        kind, payload = self._receive(stream.path)
        if kind == _BLOCK:
            return np.frombuffer(payload, dtype=np.float32)
        if kind == _END:
            self._pop_head()
            stats = json.loads(payload)
            for name in ("frames_read", "samples_out", "blocks_read"):
                setattr(stream, name, int(stats[name]))
            stream.peak = float(stats["peak"])
            return None
        raise self._failure(stream.path, kind, payload)

    def _abandon(self):
        """A stream closed before its end: the child is mid-file; restart
        it (the requests behind go to the new child)."""
        if self._open:
            self._pop_head()
            self._kill()


class RemoteStream(audio_io.BlockStream):
    """An `audio_io.AudioStream` whose decoding happens in a `Decoder`."""

    def __init__(self, decoder, path, info, block_frames):
        self.path = path
        self.block_frames = block_frames
        segment = info.pop("segment")
        self.info = audio_io.AudioInfo(path=path, **info)
        self._segment = tuple(segment) if segment else None
        self._decoder = decoder
        self._iterated = False
        self._done = False
        self.frames_read = 0
        self.samples_out = 0
        self.blocks_read = 0
        self.peak = 0.0

    def close(self):
        """Ends the stream (idempotent); an unfinished one restarts the
        child, which is still sending blocks."""
        if not self._done:
            self._done = True
            self._decoder._abandon()  # pylint: disable=protected-access

    def _blocks(self):
        try:
            while True:
                # pylint: disable-next=protected-access
                block = self._decoder._next_block(self)
                if block is None:
                    return
                yield block
        except audio_io.AudioError:
            # The child has finished with the file, or is dead already.
            self._done = True
            raise
        else:
            self._done = True


_local = threading.local()  # .decoder: this thread's shared Decoder.
_every = []  # Every shared Decoder made, for `shutdown`.
_every_lock = threading.Lock()


def shared_decoder(timeout_seconds=None):
    """This thread's `Decoder`: one child per decoding thread (a process of
    the local runner has one; a Beam worker may run shards in threads),
    kept across shards.

    Args:
      timeout_seconds: set on the decoder for the calls that follow (None:
        `DEFAULT_TIMEOUT_SECONDS`).

    Returns:
      `Decoder`; its child is stopped when this process exits.
    """
    if timeout_seconds is None:
        timeout_seconds = DEFAULT_TIMEOUT_SECONDS
    if not timeout_seconds > 0:
        raise ValueError("timeout_seconds must be positive, got %r" %
                         (timeout_seconds,))
    decoder = getattr(_local, "decoder", None)
    if decoder is None:
        decoder = _local.decoder = Decoder(timeout_seconds)
        with _every_lock:
            if not _every:
                atexit.register(shutdown)
            _every.append(decoder)
    decoder.timeout_seconds = float(timeout_seconds)
    return decoder


def shutdown():
    """Stops the shared decoders' children (the next use starts new ones)."""
    with _every_lock:
        decoders = list(_every)
    for decoder in decoders:
        decoder.close()


# -------------------------------------------------------------- the child ---


def _faults_from_env():
    faults = {}
    for entry in os.environ.get(FAULT_ENV, "").split(";"):
        action, _, name = entry.strip().partition(":")
        if action in _FAULT_ACTIONS and name:
            faults[name] = action
    return faults


def _inject(action):
    if action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "abort":
        os.abort()
    elif action == "exit":
        os._exit(3)  # pylint: disable=protected-access
    elif action == "hang":
        while True:
            time.sleep(3600)


def _serve(inp, out):
    """The child's loop: one request at a time until EOF on `inp`."""
    faults = _faults_from_env()

    def send(kind, payload=b"", flush=False):
        # Buffered: a short file's info, block and end leave in one write
        # (one wake-up of the parent); a block larger than the buffer, and
        # whatever is buffered before it, is written at once.
        out.write(_HEADER.pack(kind, len(payload)))
        out.write(payload)
        if flush:
            out.flush()

    def send_json(kind, value, flush=False):
        send(kind, json.dumps(value).encode("utf-8"), flush)

    def read_exact(count):
        data = b""
        while len(data) < count:
            chunk = inp.read(count - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    send(_READY, flush=True)
    while True:
        header = read_exact(_HEADER.size)
        if header is None:
            return
        kind, length = _HEADER.unpack(header)
        payload = read_exact(length) if length else b""
        if payload is None:
            return
        if kind == _PING:
            send_json(_PONG, {"pid": os.getpid(), "tensorflow": any(
                m == "tensorflow" or m.startswith("tensorflow.")
                for m in sys.modules)}, flush=True)
            continue
        request = json.loads(payload)
        fault = faults.get(os.path.basename(request["path"]))
        try:
            with audio_io.open_segment(
                    request["path"], request["start"], request["end"],
                    block_frames=request["block_frames"]) as stream:
                info = stream.info
                send_json(_INFO, {
                    "sample_rate": info.sample_rate,
                    "channels": info.channels, "frames": info.frames,
                    "format": info.format, "subtype": info.subtype,
                    "segment": stream.segment_frames})
                for block in stream:
                    send(_BLOCK, np.ascontiguousarray(
                        block, dtype=np.float32).tobytes(), flush=bool(fault))
                    if fault:
                        _inject(fault)
                if fault:
                    _inject(fault)
                send_json(_END, {
                    "frames_read": stream.frames_read,
                    "samples_out": stream.samples_out,
                    "blocks_read": stream.blocks_read,
                    "peak": stream.peak}, flush=True)
        except audio_io.AudioError as e:
            send_json(_AUDIO_ERROR, {"kind": e.kind, "detail": e.detail},
                      flush=True)
        except Exception as e:  # pylint: disable=broad-except
            # A bug, not a bad file; the parent fails the file and logs it.
            send_json(_EXCEPTION, {"type": type(e).__name__,
                                   "message": str(e),
                                   "traceback": traceback.format_exc()},
                      flush=True)


def die_with_parent(parent_pid):
    """Ends this process when its parent `parent_pid` ends, even by SIGKILL.

    An orphaned extraction worker or decoder (stuck in native code, say)
    would go on writing or decoding and take the cores the next run needs.
    On Linux the kernel does it (prctl PR_SET_PDEATHSIG); elsewhere a daemon
    thread polls the parent's pid.

    Args:
      parent_pid: the pid of the parent this process must not outlive.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent_pid:  # It died before the prctl.
                    os._exit(1)  # pylint: disable=protected-access
                return
        except (OSError, AttributeError):
            pass  # No prctl: the watchdog below.

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)  # pylint: disable=protected-access

    threading.Thread(target=watch, name="parent-watchdog",
                     daemon=True).start()


def main():
    die_with_parent(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid())
    # The protocol owns the original stdout; anything a library prints goes
    # to stderr instead of corrupting it.
    out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)
    inp = os.fdopen(0, "rb")
    try:
        _serve(inp, out)
    except BrokenPipeError:
        pass  # The parent went away.


if __name__ == "__main__":
    main()
