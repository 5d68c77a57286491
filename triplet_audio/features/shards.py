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

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import jsonio
from triplet_audio.features import audio_io
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
    """

    index: int
    num_shards: int
    items: tuple
    pad_short: bool
    output_dir: str
    fingerprint: str

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


def _records_of_windows(windows, item):
    """Splits a recording's windows into serialized records.

    Args:
      windows: float32 [W, 96, 64], W >= 1.
      item: the `inputs.InputItem`.

    Returns:
      list of serialized tf.train.Example bytes: chunks of at most
      `constants.MAX_WINDOWS_PER_RECORD` windows, start times counted from
      the start of the recording.
    """
    serialized = []
    limit = C.MAX_WINDOWS_PER_RECORD
    for first in range(0, windows.shape[0], limit):
        chunk = windows[first:first + limit]
        starts = (first + np.arange(chunk.shape[0])) * (
            C.WINDOW_HOP_SAMPLES / float(C.SAMPLE_RATE))
        window_labels = None
        if item.events is not None:
            window_labels = records.window_labels_of_events(item.events,
                                                            starts)
        example = records.make_example(
            chunk, starts, item.recording_id, labels=item.labels,
            chunk_index=len(serialized), split=item.split,
            source_path=item.path, window_labels=window_labels)
        # deterministic=True sorts the feature map: the same bytes each run.
        serialized.append(example.SerializeToString(deterministic=True))
    return serialized


class _PendingFile:
    """A file whose windows are (partly) waiting for the front end."""

    def __init__(self, item):
        self.item = item
        self.result = FileResult(path=item.path,
                                 recording_id=item.recording_id)
        self.windows = []

    def fail(self, reason):
        self.result.status = STATUS_FAILED
        self.result.reason = reason
        logging.warning("failed: %s: %s", self.item.path, reason)

    def finish(self):
        """(serialized records, FileResult) of the file."""
        result = self.result
        if result.status == STATUS_FAILED:
            return [], result
        if not self.windows:
            result.status = STATUS_SKIPPED
            result.reason = "shorter than one window (%.3f s < %.3f s)" % (
                result.audio_seconds,
                C.MIN_WINDOW_SAMPLES / float(C.SAMPLE_RATE))
            return [], result
        windows = np.concatenate(self.windows)
        try:
            serialized = _records_of_windows(windows, self.item)
        except ValueError as e:
            # make_example refuses non-finite log-mels (float input loud
            # enough to overflow the STFT).
            self.fail(str(e))
            return [], result
        result.num_records, result.num_windows = (len(serialized),
                                                  windows.shape[0])
        return serialized, result


def process_files(items, pad_short=True,
                  block_frames=audio_io.DEFAULT_BLOCK_FRAMES):
    """Extracts files into serialized records, in order.

    Audio is streamed (`audio_io.AudioStream`) and cut into window segments
    which are batched across files, about `constants.MAX_WINDOWS_PER_RECORD`
    windows per front-end call. A file's records are handed out together
    once it is complete, so a file found broken half-way (truncated, NaN)
    contributes nothing; they take ~40% of its 16 kHz audio (~90 MB an hour).

    Args:
      items: iterable of `inputs.InputItem`.
      pad_short: zero-pad a clip shorter than one window to one window
        (True), or skip it (False).
      block_frames: input frames read per block.

    Yields:
      (serialized, result) per item, in order: the list of serialized
      tf.train.Example bytes in chunk order, and the `FileResult`. A bad
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
                pending.windows.append(
                    windows[start:start + segments.shape[0]])
                start += segments.shape[0]
        queued, queued_windows = [], 0
        finished = read[:]
        del read[:]
        for pending in finished:
            yield pending.finish()

    for item in items:
        pending = _PendingFile(item)
        try:
            # An item with start/end is a segment, cut from a file that holds
            # the whole recording (audio_io.open_segment).
            with audio_io.open_segment(item.path, item.start, item.end,
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
                 block_frames=audio_io.DEFAULT_BLOCK_FRAMES):
    """Extracts one file into serialized records (see `process_files`).

    Args:
      item: `inputs.InputItem`.
      pad_short: zero-pad a clip shorter than one window to one window
        (True), or skip it (False).
      block_frames: input frames read per block.

    Returns:
      (serialized, result): list of serialized tf.train.Example bytes, in
      chunk order, and the `FileResult`.
    """
    return next(process_files([item], pad_short, block_frames))


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


def make_shard_tasks(items, num_shards, pad_short, output_dir):
    """Assigns file i of `items` to shard i % num_shards.

    Args:
      items: sorted `inputs.InputItem`s.
      num_shards: number of shards.
      pad_short: as in `extract.ExtractConfig`.
      output_dir: corpus directory.

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
                                           num_shards)))
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
    """
    shard_tmp = task.shard_path + temp_suffix
    summary_tmp = task.summary_path + temp_suffix
    results = []
    with tf.io.TFRecordWriter(shard_tmp) as writer:
        for serialized, result in process_files(task.items, task.pad_short):
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


