"""The shard-writing core both extraction runners share.

  process_files(items, pad_short)     files -> (serialized records,
                                      `FileResult`) per file, in order; the
                                      front end runs on windows of many
                                      files at once. Never raises for a bad
                                      file: the reason goes in the result.
  process_file(item, pad_short)       the same for one file
  make_shard_tasks(items, ...)        file i of the sorted input -> shard
                                      i % num_shards, as `ShardTask`s
  write_shard(task)                   one shard's files -> its .tfrecord and
                                      .json summary, renamed into place
                                      atomically
  load_finished_shard(task)           the summary of a shard an earlier run
                                      committed for the same inputs, or None

The local runner (`local_runner`: worker processes) and the Beam runner
(`beam_runner`: one DoFn call per shard) both call `write_shard`, so the
bytes of a shard never depend on the runner. Nothing here depends on timing
or worker count either: a resumed run is byte-identical to an uninterrupted
one.
"""

import dataclasses
import hashlib
import json
import os
import struct
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import jsonio
from triplet_audio.features import audio_io
from triplet_audio.features import decode_worker
from triplet_audio.features import frontend
from triplet_audio.features import records

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"

_FORMAT_VERSION = 1
"""Bumped when the bytes written for the same inputs change, so a re-run
redoes shards written by an older version instead of mixing them in."""

SUMMARY_INDENT = 1
"""JSON indentation of a shard summary and the manifest (their bytes are
part of the corpus, compared across runs and runners)."""


class RunnerError(RuntimeError):
    """The runner failed as a whole (e.g. a Beam job failed).

    Never raised for a bad input file: those are reported in the manifest.
    """


class ShardWriteError(RunnerError):
    """A shard could not be written (disk full, file too large, ...).

    Its message names the shard and the cause. Nothing of the shard stays
    behind: its temporary files are removed, and shards committed before
    are untouched.
    """


@dataclasses.dataclass
class FileResult:
    """What happened to one file.

    Attributes:
      path: the file.
      recording_id: its recording id.
      status: STATUS_OK, STATUS_FAILED or STATUS_SKIPPED.
      reason: why it failed or was skipped ("" when ok).
      num_records: records written.
      num_windows: windows written.
      audio_seconds: input audio read, in seconds.
      warnings: things worth knowing about a usable file (e.g. silence).
    """

    path: str
    recording_id: str
    status: str = STATUS_OK
    reason: str = ""
    num_records: int = 0
    num_windows: int = 0
    audio_seconds: float = 0.0
    warnings: tuple = ()


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard's work, picklable for a worker process.

    Attributes:
      index: shard index.
      num_shards: total shards.
      items: the `inputs.InputItem`s of this shard, in order.
      pad_short: as in `extract.ExtractConfig`.
      output_dir: corpus directory.
      fingerprint: digest of everything that determines the shard's bytes.
      isolate_decoder: decode in a child process (`decode_worker`); not in
        the fingerprint, since the bytes are the same either way.
      decoder_timeout_seconds: the child's longest silence before it is
        killed and the file failed.
    """

    index: int
    num_shards: int
    items: tuple
    pad_short: bool
    output_dir: str
    fingerprint: str
    isolate_decoder: bool = True
    decoder_timeout_seconds: float = decode_worker.DEFAULT_TIMEOUT_SECONDS

    @property
    def shard_path(self):
        return os.path.join(self.output_dir,
                            records.shard_name(self.index, self.num_shards))

    @property
    def summary_path(self):
        return os.path.join(self.output_dir,
                            shard_summary_name(self.index, self.num_shards))


def shard_summary_name(index, num_shards):
    """File name of the JSON summary of shard `index` of `num_shards`."""
    name = records.shard_name(index, num_shards)
    return name[:-len(records.SHARD_SUFFIX)] + records.SUMMARY_SUFFIX


# ----------------------------------------------------------- the files ---


# autograph=False: the front end has no tensor-dependent Python control
# flow, and converting it cost ~0.3 s per process (every worker pays it).
@tf.function(
    input_signature=[tf.TensorSpec([None, C.MIN_WINDOW_SAMPLES], tf.float32)],
    autograph=False)
def _segments_to_windows(segments):
    """Log-mel windows of [N, MIN_WINDOW_SAMPLES] segments: [N, 96, 64].

    The front end's framing makes window w of a recording a function of its
    samples [w * hop, w * hop + MIN_WINDOW_SAMPLES) alone (96 STFT frames,
    no padding), so `frontend.waveform_to_logmel` on those segments gives
    exactly the windows `frontend.waveform_to_windows` gives on the whole
    recording. Segments of many files then go through TensorFlow in one
    call: one call per short clip would cost more than its computation.
    """
    return frontend.waveform_to_logmel(segments)


def _segments_of_stream(blocks, pad_short):
    """Cuts a stream of 16 kHz blocks into the segments of its windows.

    Once k windows are cut from the buffer, its first k * hop samples are
    never needed again, so at most one window's samples are carried over
    from block to block.

    Args:
      blocks: iterable of float32 [n] arrays at `constants.SAMPLE_RATE`.
      pad_short: zero-pad a stream shorter than one window to one window
        (as `frontend.waveform_to_windows`).

    Yields:
      float32 arrays [k, MIN_WINDOW_SAMPLES], k >= 1, in order.
    """
    buffer = np.zeros(0, np.float32)
    total = 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        k = frontend.num_windows_for_samples(buffer.shape[0], pad_short=False)
        if not k:
            continue
        views = np.lib.stride_tricks.sliding_window_view(
            buffer, C.MIN_WINDOW_SAMPLES)[::C.WINDOW_HOP_SAMPLES]
        yield np.array(views[:k])
        total += k
        buffer = buffer[k * C.WINDOW_HOP_SAMPLES:]
    if not total and pad_short:
        # frontend.pad_to_one_window's rule (zeros at the end), in NumPy.
        padded = np.zeros((1, C.MIN_WINDOW_SAMPLES), np.float32)
        padded[0, :buffer.shape[0]] = buffer
        yield padded


def _records_of_windows(windows, item, first_window=0):
    """Splits a recording's windows into serialized records.

    Args:
      windows: float32 [W, 96, 64], W >= 1.
      item: the `inputs.InputItem`.
      first_window: index in the recording of `windows[0]`, a multiple of
        `constants.MAX_WINDOWS_PER_RECORD` (records already written before).

    Returns:
      list of serialized tf.train.Example bytes: chunks of at most
      `constants.MAX_WINDOWS_PER_RECORD` windows, start times counted from
      the start of the recording.
    """
    serialized = []
    limit = C.MAX_WINDOWS_PER_RECORD
    for local in range(0, windows.shape[0], limit):
        chunk = windows[local:local + limit]
        first = first_window + local
        starts = (first + np.arange(chunk.shape[0])) * (
            C.WINDOW_HOP_SAMPLES / float(C.SAMPLE_RATE))
        window_labels = None
        if item.events is not None:
            window_labels = records.window_labels_of_events(item.events,
                                                            starts)
        example = records.make_example(
            chunk, starts, item.recording_id, labels=item.labels,
            chunk_index=first // limit, split=item.split,
            source_path=item.path, window_labels=window_labels)
        # deterministic=True sorts the feature map: the same bytes each run.
        serialized.append(example.SerializeToString(deterministic=True))
    return serialized


SPILL_WINDOWS = 2 * C.MAX_WINDOWS_PER_RECORD
"""Windows of one file kept in memory (~12 MB, ~8 minutes of audio) before
its finished records go to a temporary file: a file's records are handed
out only once it is complete, and a 10-hour file's would take ~0.9 GB."""

_LENGTH = struct.Struct("<Q")  # A spilled record's length prefix.


class _SpilledRecords:
    """A file's serialized records: those spilled to disk, then the rest.

    Iterable (once) like the list `process_files` gives for a short file;
    reading it back holds one record at a time.
    """

    def __init__(self, spill, count, tail):
        self._spill = spill
        self._count = count
        self._tail = tail

    def __len__(self):
        return self._count + len(self._tail)

    def __iter__(self):
        try:
            self._spill.seek(0)
            for _ in range(self._count):
                (length,) = _LENGTH.unpack(self._spill.read(_LENGTH.size))
                yield self._spill.read(length)
        finally:
            self._spill.close()
        yield from self._tail


class _PendingFile:
    """A file whose windows are (partly) waiting for the front end.

    Windows beyond `SPILL_WINDOWS` are serialized a record at a time into
    an anonymous temporary file in `spill_dir` (gone with the process, even
    on SIGKILL), so memory does not grow with the file's duration.
    """

    def __init__(self, item, spill_dir=None):
        self.item = item
        self.result = FileResult(path=item.path,
                                 recording_id=item.recording_id)
        self.windows = []
        self.buffered = 0  # Windows in self.windows.
        self.num_windows = 0  # Windows of the file so far.
        self.spill_dir = spill_dir
        self.spill = None  # The temporary file, once something is spilled.
        self.spilled = 0  # Records in it.

    def add_windows(self, windows):
        """Adds the next windows of the file (float32 [k, 96, 64])."""
        if self.result.status == STATUS_FAILED:
            return  # Nothing of a failed file is written.
        self.windows.append(windows)
        self.buffered += windows.shape[0]
        self.num_windows += windows.shape[0]
        if self.buffered >= SPILL_WINDOWS:
            self._spill_records()

    def _spill_records(self):
        limit = C.MAX_WINDOWS_PER_RECORD
        windows = np.concatenate(self.windows)
        whole = windows.shape[0] // limit * limit  # Whole records only.
        first = self.num_windows - windows.shape[0]
        try:
            serialized = _records_of_windows(windows[:whole], self.item,
                                             first_window=first)
        except ValueError as e:  # Non-finite log-mels (see finish).
            self.fail(str(e))
            self._drop()
            return
        if self.spill is None:
            self.spill = tempfile.TemporaryFile(dir=self.spill_dir,
                                                prefix=".spill-")
        for example in serialized:
            self.spill.write(_LENGTH.pack(len(example)))
            self.spill.write(example)
        self.spilled += len(serialized)
        self.windows = [windows[whole:]]
        self.buffered = windows.shape[0] - whole

    def _drop(self):
        self.windows, self.buffered = [], 0
        if self.spill is not None:
            self.spill.close()
            self.spill, self.spilled = None, 0

    def fail(self, reason):
        self.result.status = STATUS_FAILED
        self.result.reason = reason
        logging.warning("failed: %s: %s", self.item.path, reason)
        self._drop()

    def finish(self):
        """(serialized records, FileResult) of the file.

        The records are a list, or for a file that spilled, a
        `_SpilledRecords` (iterable once, with a length).
        """
        result = self.result
        if result.status == STATUS_FAILED:
            return [], result
        if not self.num_windows:
            result.status = STATUS_SKIPPED
            result.reason = "shorter than one window (%.3f s < %.3f s)" % (
                result.audio_seconds,
                C.MIN_WINDOW_SAMPLES / float(C.SAMPLE_RATE))
            return [], result
        serialized = []
        if self.buffered:
            try:
                serialized = _records_of_windows(
                    np.concatenate(self.windows), self.item,
                    first_window=self.num_windows - self.buffered)
            except ValueError as e:
                # make_example refuses non-finite log-mels (float input loud
                # enough to overflow the STFT).
                self.fail(str(e))
                return [], result
        self.windows = []
        result.num_records = self.spilled + len(serialized)
        result.num_windows = self.num_windows
        if self.spill is not None:
            self.spill.flush()
            serialized = _SpilledRecords(self.spill, self.spilled, serialized)
        return serialized, result


def process_files(items, pad_short=True,
                  block_frames=audio_io.DEFAULT_BLOCK_FRAMES, spill_dir=None,
                  isolate_decoder=True, decoder_timeout_seconds=None):
    """Extracts files into serialized records, in order.

    Audio is streamed (`audio_io.AudioStream`; by default decoded in a child
    process, `decode_worker`, so that a decoder that crashes or hangs on a
    corrupt file fails that file alone) and cut into window segments
    which are batched across files, about `constants.MAX_WINDOWS_PER_RECORD`
    windows per front-end call. A file's records are handed out together
    once it is complete, so a file found broken half-way (truncated, NaN)
    contributes nothing; beyond `SPILL_WINDOWS` windows a file's finished
    records wait in a temporary file, not in memory (they take ~40% of its
    16 kHz audio, ~90 MB an hour).

    Args:
      items: iterable of `inputs.InputItem`.
      pad_short: zero-pad a clip shorter than one window to one window
        (True), or skip it (False).
      block_frames: input frames read per block.
      spill_dir: directory of the temporary files of long files' records
        (None: the system's temporary directory).
      isolate_decoder: decode in this process's `decode_worker` child
        (True) or in this process (False); the records are the same.
      decoder_timeout_seconds: with isolate_decoder, how long the child may
        send nothing before it is killed and the file failed (None:
        `decode_worker.DEFAULT_TIMEOUT_SECONDS`).

    Yields:
      (serialized, result) per item, in order: the serialized
      tf.train.Example bytes in chunk order (a list; for a file longer than
      `SPILL_WINDOWS` windows an iterable, read once, with a length), and
      the `FileResult`. A bad
      file gives an empty list and a STATUS_FAILED result with the reason;
      nothing is raised for it.
    """
    queued = []  # (_PendingFile, segments) waiting for the front end.
    queued_windows = 0
    read = []  # Files read to the end, in order, not yet handed out.

    def run_front_end():
        nonlocal queued, queued_windows
        if queued:
            with tf.device("/CPU:0"):  # The same bytes on every host.
                windows = _segments_to_windows(
                    np.concatenate([s for _, s in queued])).numpy()
            start = 0
            for pending, segments in queued:
                pending.add_windows(windows[start:start + segments.shape[0]])
                start += segments.shape[0]
        queued, queued_windows = [], 0
        finished = read[:]
        del read[:]
        for pending in finished:
            yield pending.finish()

    open_segment = audio_io.open_segment
    if isolate_decoder:
        decoder = decode_worker.shared_decoder(decoder_timeout_seconds)
        open_segment = decoder.open_segment
        # The child decodes the next files while the front end runs.
        items = decoder.prefetching(items, block_frames)
    for item in items:
        pending = _PendingFile(item, spill_dir)
        try:
            # An item with start/end is a segment, cut from a file that holds
            # the whole recording (audio_io.open_segment).
            with open_segment(item.path, item.start, item.end,
                              block_frames=block_frames) as stream:
                for segments in _segments_of_stream(stream, pad_short):
                    queued.append((pending, segments))
                    queued_windows += segments.shape[0]
                    if queued_windows >= C.MAX_WINDOWS_PER_RECORD:
                        yield from run_front_end()
                pending.result.audio_seconds = (
                    stream.frames_read / float(stream.info.sample_rate))
                if stream.silent:
                    pending.result.warnings = ("silent: every sample is zero",)
        except audio_io.AudioError as e:
            pending.fail("%s: %s" % (e.kind, e.detail))
        read.append(pending)
    yield from run_front_end()


def process_file(item, pad_short=True,
                 block_frames=audio_io.DEFAULT_BLOCK_FRAMES,
                 isolate_decoder=True, decoder_timeout_seconds=None):
    """Extracts one file into serialized records (see `process_files`).

    Args:
      item: `inputs.InputItem`.
      pad_short: zero-pad a clip shorter than one window to one window
        (True), or skip it (False).
      block_frames: input frames read per block.
      isolate_decoder: as in `process_files`.
      decoder_timeout_seconds: as in `process_files`.

    Returns:
      (serialized, result): list of serialized tf.train.Example bytes, in
      chunk order, and the `FileResult`.
    """
    return next(process_files(
        [item], pad_short, block_frames, isolate_decoder=isolate_decoder,
        decoder_timeout_seconds=decoder_timeout_seconds))


# ------------------------------------------------------------ one shard ---


def item_fields(item):
    """An item as JSON-able fields: [path, recording_id, labels, split]
    (+ its `extras()` when it has any: segment bounds, strong labels)."""
    fields = [item.path, item.recording_id, list(item.labels), item.split]
    extras = item.extras()
    return fields + [extras] if extras else fields


def _shard_fingerprint(items, pad_short, num_shards):
    # Items of plain inputs have no extras: their fingerprints (and so the
    # corpora's summaries) are what they were before segments existed.
    payload = json.dumps(
        [_FORMAT_VERSION, C.frontend_params(), bool(pad_short), num_shards,
         [item_fields(i) for i in items]],
        sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def make_shard_tasks(items, num_shards, pad_short, output_dir,
                     isolate_decoder=True, decoder_timeout_seconds=None):
    """Assigns file i of `items` to shard i % num_shards.

    Args:
      items: sorted `inputs.InputItem`s.
      num_shards: number of shards.
      pad_short: as in `extract.ExtractConfig`.
      output_dir: corpus directory.
      isolate_decoder: as in `extract.ExtractConfig`.
      decoder_timeout_seconds: as in `extract.ExtractConfig` (None: the
        default, `decode_worker.DEFAULT_TIMEOUT_SECONDS`).

    Returns:
      list of `num_shards` `ShardTask`s (some may have no items).
    """
    tasks = []
    for index in range(num_shards):
        shard_items = tuple(items[index::num_shards])
        tasks.append(ShardTask(
            index=index, num_shards=num_shards, items=shard_items,
            pad_short=pad_short, output_dir=output_dir,
            fingerprint=_shard_fingerprint(shard_items, pad_short,
                                           num_shards),
            isolate_decoder=isolate_decoder,
            decoder_timeout_seconds=(
                decode_worker.DEFAULT_TIMEOUT_SECONDS
                if decoder_timeout_seconds is None
                else decoder_timeout_seconds)))
    return tasks


def _shard_summary(task, results):
    ok = [r for r in results if r.status == STATUS_OK]
    return {
        "shard": records.shard_name(task.index, task.num_shards),
        "index": task.index,
        "num_shards": task.num_shards,
        "fingerprint": task.fingerprint,
        "files": len(results),
        "recordings": len(ok),
        "records": sum(r.num_records for r in ok),
        "windows": sum(r.num_windows for r in ok),
        "audio_seconds": round(sum(r.audio_seconds for r in ok), 6),
        "failures": [{"path": r.path, "error": r.reason} for r in results
                     if r.status == STATUS_FAILED],
        "skipped": [{"path": r.path, "reason": r.reason} for r in results
                    if r.status == STATUS_SKIPPED],
        "warnings": [{"path": r.path, "warning": w} for r in results
                     for w in r.warnings],
    }


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove_quietly(*paths):
    """Removes what exists of `paths` (cleanup on a failure path)."""
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def write_shard(task, progress=None, temp_suffix=records.TEMP_SUFFIX):
    """Extracts one shard's files and commits the shard atomically.

    Writes `<shard>.tfrecord` + temp_suffix and `<shard>.json` + temp_suffix
    (the latter through `jsonio.write_json`, itself by way of
    `<shard>.json` + temp_suffix + `.incomplete`; both overwrite leftovers of
    a killed run), then renames the summary and last the TFRecord into
    place. The TFRecord is the commit point: readers
    (`records.list_shards`) and the resume check key on it, and whenever it
    is visible its summary is too. A kill between the two renames leaves a
    summary without a shard, which a re-run simply redoes.

    Args:
      task: `ShardTask`.
      progress: optional callable given each `FileResult` as it completes.
      temp_suffix: suffix of the temporary names; it must end with
        `records.TEMP_SUFFIX` so that readers never list them. A runner that
        may run two attempts of a shard at once (Beam) makes it unique per
        attempt.

    Returns:
      the shard's summary dict (as written to its JSON file).

    Raises:
      ShardWriteError: naming the shard and the cause, when it cannot be
        written (no space left, file too large, ...); its temporary files
        are removed first.
    """
    shard_tmp = task.shard_path + temp_suffix
    summary_tmp = task.summary_path + temp_suffix
    results = []
    try:
        with tf.io.TFRecordWriter(shard_tmp) as writer:
            for serialized, result in process_files(
                    task.items, task.pad_short, spill_dir=task.output_dir,
                    isolate_decoder=task.isolate_decoder,
                    decoder_timeout_seconds=task.decoder_timeout_seconds):
                for example in serialized:
                    writer.write(example)
                results.append(result)
                if progress is not None:
                    progress(result)
        _fsync_file(shard_tmp)
        summary = _shard_summary(task, results)
        # write_json goes through a temporary name of its own (summary_tmp +
        # TEMP_SUFFIX), so the summary is written under this attempt's names
        # only, then renamed into place before the shard.
        jsonio.write_json(summary_tmp, summary, indent=SUMMARY_INDENT)
    except (OSError, tf.errors.OpError) as e:
        # Disk full and the like: bad input files never get here
        # (process_files reports them). A half-written shard must not stay
        # behind to fill the disk further.
        _remove_quietly(shard_tmp, summary_tmp,
                        summary_tmp + jsonio.TEMP_SUFFIX)
        raise ShardWriteError("%s: could not write the shard (%s): %s" % (
            task.shard_path, type(e).__name__,
            getattr(e, "message", None) or e)) from e
    os.replace(summary_tmp, task.summary_path)
    os.replace(shard_tmp, task.shard_path)
    return summary


def load_finished_shard(task):
    """The summary of a shard a previous run completed, or None.

    A shard counts as finished when its TFRecord and its summary both exist
    and the summary's fingerprint matches `task` (same files, labels,
    front end): a directory reused for different inputs is redone.

    Args:
      task: `ShardTask`.

    Returns:
      summary dict, or None.
    """
    if not (os.path.isfile(task.shard_path) and
            os.path.isfile(task.summary_path)):
        return None
    try:
        summary = jsonio.read_json(task.summary_path)
    except (OSError, ValueError):
        return None
    if summary.get("fingerprint") != task.fingerprint:
        return None
    return summary


