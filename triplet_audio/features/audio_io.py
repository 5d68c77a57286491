"""Audio file reading: any libsndfile format -> 16 kHz mono float32, streamed.

Every waveform that reaches the front end comes through here. A file in any
format libsndfile reads (WAV of any subtype, FLAC, OGG/Vorbis/Opus, MP3, AIFF,
...), at any sample rate and with any number of channels, is read in blocks,
mixed down to mono (mean of the channels) and resampled band-limited to
`constants.SAMPLE_RATE` with a streaming soxr resampler. Only one block of
input sits in memory at a time, so hours-long recordings are fine:

    with AudioStream(path) as stream:
        for block in stream:        # float32 [n] at 16 kHz
            ...
        if stream.silent:
            ...

`load_audio(path)` is the convenience for short files (tests, embedding a
clip); it goes through the same stream, so its result is bit-identical to the
concatenated blocks.

A segment of a longer recording (an AudioSet clip inside a file holding the
whole video) is read with `open_segment(path, start, end)`: the stream then
seeks to `start` and stops at `end`; a file no longer than the segment (by
more than `CUT_TOLERANCE_SECONDS`) is taken to be the clip already cut and
read whole.

Anything that makes a file unusable raises `AudioError`, whose `kind` is one
of the `KIND_*` constants below and whose message names the file and the kind.
A silent (all-zero) file is valid; `AudioStream.silent` reports it so callers
can warn.
"""

import dataclasses
import os
import re

from absl import logging
import numpy as np
import soundfile as sf
import soxr

from triplet_audio.config import options
from triplet_audio import constants as C

KIND_UNREADABLE = "unreadable"
"""Missing, not audio, or a format/encoding libsndfile cannot decode."""
KIND_EMPTY = "empty"
"""Zero bytes, or a valid header with zero frames."""
KIND_TRUNCATED = "truncated"
"""Fewer frames present or decodable than the header declares."""
KIND_NON_FINITE = "non-finite samples"
"""NaN or Inf samples (float subtypes), or finite float samples so large
that mixing down or resampling them overflows float32."""
KIND_ZERO_CHANNELS = "zero channels"
KIND_BAD_SAMPLE_RATE = "invalid sample rate"

MIN_SAMPLE_RATE = 1000
"""Lowest input rate accepted (Hz). Real audio is 4 kHz or more (telephony
8 kHz); a rate below this is a corrupt header, not a recording."""
MAX_SAMPLE_RATE = 768000
"""Highest input rate accepted (Hz): the fastest rate audio hardware uses."""

DEFAULT_BLOCK_FRAMES = 1 << 16
"""Input frames read per block: 1.4 s at 48 kHz, ~0.5 MB for stereo float32."""

RESAMPLE_QUALITY = "HQ"
"""soxr quality: 'HQ' is 20-bit precision with a steep band-limiting filter,
far below the log(mel + 0.01) floor; 'VHQ' costs more for no visible change."""

AUDIO_EXTENSIONS = options.AUDIO_EXTENSIONS
"""File extensions of the formats above (their home: config/options.py)."""

# libsndfile clamps a too-large chunk size to what the file holds and notes it
# in its log as e.g. "data : 16000 (should be 7978)"; that note is the only
# trace of a truncated WAV/AIFF, since `frames` is already the clamped value.
_SHOULD_BE = re.compile(
    r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Chunk sizes that streaming writers leave behind when they never finalise
# the header: the data is all there, only its length is unknown.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)
# Formats whose frame count libsndfile estimates rather than reads (MP3
# without an exact Xing/LAME header): allow this much shortfall before calling
# the file truncated.
_ESTIMATED_LENGTH_FORMATS = ("MP3",)
_ESTIMATE_TOLERANCE = 0.01
_ESTIMATE_TOLERANCE_FRAMES = 4 * 1152  # Four MPEG-1 Layer III frames.

CUT_TOLERANCE_SECONDS = 0.5
"""A file longer than its segment (end - start) by more than this holds the
whole recording and is cut to [start, end]; a shorter one is the segment
already cut (downloaders trim to the segment, give or take a frame or two)."""


class AudioError(ValueError):
    """An audio file cannot be used.

    Attributes:
      path: the file.
      kind: one of the `KIND_*` constants.
      detail: what exactly was found.
    """

    def __init__(self, path, kind, detail):
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__("%s: %s: %s" % (self.path, kind, detail))


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """Header facts of an opened audio file.

    Attributes:
      path: the file.
      sample_rate: input rate in Hz.
      channels: input channel count.
      frames: frames the header declares (after libsndfile's own clamping).
      format: libsndfile container name, e.g. 'WAV', 'FLAC'.
      subtype: libsndfile encoding name, e.g. 'PCM_16', 'VORBIS'.
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_seconds(self):
        """Declared duration in seconds."""
        return self.frames / float(self.sample_rate)


def _wav_header_fields(path):
    """(channels, sample_rate) from a RIFF/WAVE fmt chunk, or None.

    Only used to explain why libsndfile refused a file: its message for a bad
    rate ("SF_INFO struct incomplete") does not say which field was wrong.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or (
            head[8:12] != b"WAVE"):
        return None
    order = "little" if head[:4] == b"RIFF" else "big"
    offset = 12
    while offset + 8 <= len(head):
        chunk_id = head[offset:offset + 4]
        size = int.from_bytes(head[offset + 4:offset + 8], order)
        if chunk_id == b"fmt " and offset + 16 <= len(head):
            channels = int.from_bytes(head[offset + 10:offset + 12], order)
            rate = int.from_bytes(head[offset + 12:offset + 16], order)
            return channels, rate
        offset += 8 + size + (size & 1)
    return None


def _open_error(path, error):
    """Maps a libsndfile open failure to the most specific AudioError."""
    # error_string drops libsndfile's "Error opening '<path>': " prefix; the
    # AudioError message names the file already.
    message = getattr(error, "error_string", None) or str(error)
    if "channel count is zero" in message.lower():
        return AudioError(path, KIND_ZERO_CHANNELS, message)
    fields = _wav_header_fields(path)
    if fields is not None:
        channels, rate = fields
        if channels == 0:
            return AudioError(path, KIND_ZERO_CHANNELS,
                              "header declares 0 channels")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            return AudioError(
                path, KIND_BAD_SAMPLE_RATE,
                "header declares %d Hz (accepted: %d to %d Hz)" %
                (rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE))
    return AudioError(path, KIND_UNREADABLE, "libsndfile: %s" % message)


def _declared_truncation(sound_file):
    """Bytes the header declares beyond the end of the file (0 if none)."""
    missing = 0
    for _, declared, present in _SHOULD_BE.findall(sound_file.extra_info):
        declared, present = int(declared), int(present)
        if declared in _UNKNOWN_SIZES:
            continue
        missing = max(missing, declared - present)
    return missing


class BlockStream:
    """What every stream of 16 kHz blocks shares (`AudioStream`, and
    `decode_worker.RemoteStream`, which decodes in a child process).

    A subclass sets `path`, `peak`, `_segment` and `_iterated` (False), and
    defines `close()` and `_blocks()` (the generator of blocks).
    """

    @property
    def segment_frames(self):
        """(first, last) input frames of a cut stream, or None."""
        return self._segment

    @property
    def silent(self):
        """True if every sample read so far is exactly zero."""
        return self.peak == 0.0

    def close(self):
        raise NotImplementedError

    def _blocks(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        if self._iterated:
            raise RuntimeError("%s: an AudioStream can be iterated once" %
                               self.path)
        self._iterated = True
        return self._blocks()


class AudioStream(BlockStream):
    """Reads one audio file as blocks of 16 kHz mono float32 samples.

    Opening validates the header (raising `AudioError`); iterating reads the
    file block by block, mixes down, resamples and yields 1-D float32 arrays
    at `constants.SAMPLE_RATE`. Iterate once. After iteration `frames_read`,
    `samples_out`, `blocks_read`, `peak` and `silent` describe what was read.

    Attributes:
      info: `AudioInfo` of the file.
      block_frames: input frames per block.
      frames_read: input frames read so far.
      samples_out: output (16 kHz) samples yielded so far.
      blocks_read: input blocks read so far.
      peak: largest absolute input sample seen so far.
    """

    def __init__(self, path, block_frames=DEFAULT_BLOCK_FRAMES,
                 quality=RESAMPLE_QUALITY):
        """Opens `path` and validates its header.

        Args:
          path: an audio file.
          block_frames: input frames per block (bounds memory use).
          quality: soxr quality string ('HQ', 'VHQ', ...).

        Raises:
          AudioError: if the file is missing, empty, not audio, or its header
            declares zero channels or an out-of-range sample rate, or (WAV,
            AIFF) more data than the file holds.
          ValueError: if `block_frames` is not positive.
        """
        if block_frames <= 0:
            raise ValueError("block_frames must be positive, got %r" %
                             (block_frames,))
        self.path = str(path)
        self.block_frames = int(block_frames)
        self._quality = quality
        self.frames_read = 0
        self.samples_out = 0
        self.blocks_read = 0
        self.peak = 0.0
        self._iterated = False
        self._segment = None  # (first, last) input frames, once cut.
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise AudioError(self.path, KIND_UNREADABLE,
                             e.strerror or str(e)) from e
        if size == 0:
            raise AudioError(self.path, KIND_EMPTY, "file has 0 bytes")
        try:
            self._file = sf.SoundFile(self.path)
        except RuntimeError as e:  # sf.LibsndfileError and its kin.
            raise _open_error(self.path, e) from e
        try:
            self.info = self._validate_header()
        except AudioError:
            self._file.close()
            raise

    def _validate_header(self):
        f = self._file
        if f.channels < 1:
            raise AudioError(self.path, KIND_ZERO_CHANNELS,
                             "header declares %d channels" % f.channels)
        if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
            raise AudioError(
                self.path, KIND_BAD_SAMPLE_RATE,
                "header declares %d Hz (accepted: %d to %d Hz)" %
                (f.samplerate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE))
        missing = _declared_truncation(f)
        if missing > 0:
            raise AudioError(
                self.path, KIND_TRUNCATED,
                "header declares %d more data bytes than the file holds "
                "(%d frames readable)" % (missing, f.frames))
        if f.frames == 0:
            raise AudioError(self.path, KIND_EMPTY, "header declares 0 frames")
        return AudioInfo(self.path, f.samplerate, f.channels, f.frames,
                         f.format, f.subtype)

    def cut(self, start_seconds, end_seconds=None):
        """Restricts the stream to [start_seconds, end_seconds) of the file.

        Call before iterating. Frames are counted at the file's rate
        (rounded); the read seeks to the start where the format allows, and
        otherwise reads and drops the frames before it. An end past the
        file's end reads to the end.

        Args:
          start_seconds: segment start (>= 0).
          end_seconds: segment end, or None for the end of the file.

        Raises:
          AudioError: (KIND_EMPTY) if the segment is empty or starts at or
            after the end of the file.
          RuntimeError: after iteration has started.
        """
        if self._iterated:
            raise RuntimeError("%s: cut before iterating" % self.path)
        rate = self.info.sample_rate
        first = max(0, int(round(float(start_seconds) * rate)))
        last = self.info.frames if end_seconds is None else min(
            self.info.frames, int(round(float(end_seconds) * rate)))
        if first >= self.info.frames or last <= first:
            raise AudioError(
                self.path, KIND_EMPTY,
                "segment [%.3f, %s] s is empty or starts after the end of "
                "the file (%.3f s)" % (
                    float(start_seconds), "end" if end_seconds is None else
                    "%.3f" % float(end_seconds),
                    self.info.duration_seconds))
        self._segment = (first, last)

    def close(self):
        """Closes the file (idempotent)."""
        self._file.close()

    def _read_block(self, frames=None):
        try:
            data = self._file.read(
                self.block_frames if frames is None else frames,
                dtype="float32", always_2d=True)
        except RuntimeError as e:
            # Decoders (FLAC, Vorbis) fail mid-stream on cut-off data.
            raise AudioError(
                self.path, KIND_TRUNCATED,
                "decoding stopped after %d of %d declared frames (%s)" %
                (self.frames_read, self.info.frames,
                 getattr(e, "error_string", None) or e)) from e
        if data.size and not np.isfinite(data).all():
            bad = np.flatnonzero(~np.isfinite(data).all(axis=1))[0]
            raise AudioError(
                self.path, KIND_NON_FINITE,
                "sample %r at frame %d" %
                (float(data[bad][~np.isfinite(data[bad])][0]),
                 self.frames_read + int(bad)))
        return data

    def _check_overflow(self, samples):
        """Raises for output made non-finite from finite input.

        A corrupt float file can hold finite samples near the float32 limit
        (3e38); their mean or the resampling filter's sum overflows to Inf.
        Found by the audio fuzzing (benchmarks/soak_parts/audio_fuzz.py).
        """
        if samples.size and not np.isfinite(samples).all():
            raise AudioError(
                self.path, KIND_NON_FINITE,
                "samples as large as %g overflow float32 when mixed down or "
                "resampled (input frames before %d)" % (
                    self.peak, self.frames_read))

    def _check_length(self):
        declared = self.info.frames
        if self._segment is not None:
            declared = self._segment[1] - self._segment[0]
        shortfall = declared - self.frames_read
        if self.info.format in _ESTIMATED_LENGTH_FORMATS:
            shortfall -= max(int(declared * _ESTIMATE_TOLERANCE),
                             _ESTIMATE_TOLERANCE_FRAMES)
        if shortfall > 0:
            raise AudioError(
                self.path, KIND_TRUNCATED,
                "read %d of %d declared frames" % (self.frames_read, declared))

    def _blocks(self):
        rate = self.info.sample_rate
        resampler = None
        if rate != C.SAMPLE_RATE:
            resampler = soxr.ResampleStream(rate, C.SAMPLE_RATE, 1,
                                            dtype="float32",
                                            quality=self._quality)
        remaining = None
        if self._segment is not None:
            first, last = self._segment
            self._skip_to(first)
            remaining = last - first
        while remaining is None or remaining > 0:
            want = self.block_frames if remaining is None else min(
                self.block_frames, remaining)
            data = self._read_block(want)
            if not data.shape[0]:
                break
            if remaining is not None:
                remaining -= data.shape[0]
            self.blocks_read += 1
            self.frames_read += data.shape[0]
            self.peak = max(self.peak, float(np.abs(data).max()))
            with np.errstate(over="ignore"):  # Checked just below.
                mono = data[:, 0] if data.shape[1] == 1 else data.mean(
                    axis=1)
                mono = np.ascontiguousarray(mono, dtype=np.float32)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
            self._check_overflow(mono)
            if mono.shape[0]:
                self.samples_out += mono.shape[0]
                yield mono
            if data.shape[0] < want:
                break
        self._check_length()
        if resampler is not None:
            # Flushes the filter's delay line: the tail of the file.
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._check_overflow(tail)
            if tail.shape[0]:
                self.samples_out += tail.shape[0]
                yield tail

    def _skip_to(self, frame):
        """Positions the file at input frame `frame` (seek, else read)."""
        if not frame:
            return
        if self._file.seekable():
            try:
                self._file.seek(frame)
                return
            except RuntimeError as e:
                error = e
            try:
                self._file.seek(0)  # Fall back to reading up to it.
            except RuntimeError:
                # A corrupt FLAC whose decoder lost sync fails both seeks:
                # found by the audio fuzzing (benchmarks/soak_parts).
                raise AudioError(
                    self.path, KIND_TRUNCATED,
                    "cannot seek to frame %d of %d declared, nor back to "
                    "the start (%s)" % (
                        frame, self.info.frames,
                        getattr(error, "error_string", None) or error)
                ) from error
        skipped = 0
        while skipped < frame:
            data = self._read_block(min(self.block_frames, frame - skipped))
            if not data.shape[0]:
                break
            skipped += data.shape[0]


def is_whole_recording(duration_seconds, start_seconds, end_seconds):
    """Whether a file of `duration_seconds` holds more than the segment.

    Args:
      duration_seconds: the file's duration.
      start_seconds: the segment's start in the whole recording.
      end_seconds: the segment's end.

    Returns:
      True if the file is longer than end - start by more than
      `CUT_TOLERANCE_SECONDS` (cut it to the segment), False if it is the
      segment already cut (read it whole).
    """
    return duration_seconds > (float(end_seconds) - float(start_seconds) +
                               CUT_TOLERANCE_SECONDS)


def open_segment(path, start_seconds=None, end_seconds=None,
                 block_frames=DEFAULT_BLOCK_FRAMES):
    """An `AudioStream` of a file, or of a segment of it.

    Args:
      path: an audio file.
      start_seconds: None to read the whole file; else the segment's start
        in the recording the file holds (AudioSet's start_seconds).
      end_seconds: the segment's end (with `start_seconds`).
      block_frames: input frames per block.

    Returns:
      an `AudioStream`, cut to [start, end] when the file holds more than
      the segment (`is_whole_recording`); a context manager, iterate once.

    Raises:
      AudioError: as `AudioStream`, or (KIND_EMPTY) when the file is longer
        than the segment but ends before the segment starts.
    """
    stream = AudioStream(path, block_frames=block_frames)
    if start_seconds is not None and is_whole_recording(
            stream.info.duration_seconds, start_seconds, end_seconds):
        try:
            stream.cut(start_seconds, end_seconds)
        except AudioError:
            stream.close()
            raise
    return stream


def read_info(path):
    """Validates a file's header without reading its samples.

    Args:
      path: an audio file.

    Returns:
      `AudioInfo`.

    Raises:
      AudioError: as `AudioStream`.
    """
    with AudioStream(path) as stream:
        return stream.info


def load_audio(path, block_frames=DEFAULT_BLOCK_FRAMES, start_seconds=None,
               end_seconds=None):
    """Reads a whole (short) file, or a segment of it, as 16 kHz mono float32.

    Streams like `AudioStream` and concatenates, so the result is identical to
    the blocks extraction sees. Logs a warning for a silent file.

    Args:
      path: an audio file.
      block_frames: input frames per block.
      start_seconds: None, or a segment to read (see `open_segment`).
      end_seconds: the segment's end.

    Returns:
      float32 array [num_samples] at `constants.SAMPLE_RATE`.

    Raises:
      AudioError: if the file is unusable (see the `KIND_*` constants).
    """
    with open_segment(path, start_seconds, end_seconds,
                      block_frames=block_frames) as stream:
        blocks = list(stream)
        if stream.silent:
            logging.warning("%s: silent (every sample is zero)", path)
    if not blocks:
        return np.zeros(0, np.float32)
    return np.concatenate(blocks)
