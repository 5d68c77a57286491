"""Feature extraction: audio files -> sharded TFRecords of log-mel windows.

The library behind bin/extract_features, in layers a Beam pipeline can reuse:

  discover_inputs(input, extensions)  directory / glob / CSV -> sorted
                                      `InputItem`s and the class vocabulary
  process_files(items, pad_short)     files -> (serialized records,
                                      `FileResult`) per file, in order; the
                                      front end runs on windows of many
                                      files at once. Never raises for a bad
                                      file: the reason goes in the result.
  process_file(item, pad_short)       the same for one file
  write_shard(task)                   one shard's files -> its .tfrecord and
                                      .json summary, renamed into place
                                      atomically
  run(config)                         plan, resume, run the shards with
                                      the local runner (worker processes)
                                      or a Beam runner (`extract_beam`),
                                      then write manifest.json
  main(make_config)                   the binary's single call: exit code

Output layout and record schema are those of `records`. File i of the sorted
input goes to shard i % num_shards. A shard is committed by renaming its
summary and then its TFRecord into place, so `records.list_shards` never sees
a partial shard, and a re-run skips every shard whose TFRecord and summary
exist for the same inputs. Shards, summaries and the manifest hold nothing
that depends on timing or worker count, so a resumed run is byte-identical to
an uninterrupted one.
"""

import concurrent.futures
from concurrent.futures import process as futures_process
import csv
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import queue as queue_lib
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio.features import audio_io
from triplet_audio import constants as C
from triplet_audio.features import frontend
from triplet_audio.features import records

PROGRESS_SECONDS = 5.0
"""How often the main process logs progress."""

LOCAL_RUNNER = "local"

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"

_FORMAT_VERSION = 1
"""Bumped when the bytes written for the same inputs change, so a re-run
redoes shards written by an older version instead of mixing them in."""

_CSV_HEADER_NAMES = ("path", "file", "filename")
_GLOB_MAGIC = re.compile(r"[*?[]")


class ExtractError(ValueError):
    """A config or input extraction cannot use; the message names the field."""


class RunnerError(RuntimeError):
    """The runner failed as a whole (e.g. a Beam job failed).

    Never raised for a bad input file: those are reported in the manifest.
    """


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What to extract and how; validated on construction.

    Field names are the flag names of bin/extract_features, so a ValueError
    naming a field names the flag too.

    Attributes:
      input: a directory (searched recursively for `extensions`), a glob, or
        a CSV file `path,labels[,split]` (labels ';'-separated class names,
        header row optional, relative paths relative to the CSV).
      output_dir: corpus directory for shards, summaries and manifest.json.
      num_shards: number of TFRecord shards (>= 1).
      workers: worker processes; 0 means one per CPU core.
      strict: whether any failed file makes the run fail (see `exit_code`).
      pad_short: zero-pad clips shorter than one window to one window
        (True) or skip them (False).
      extensions: file extensions picked up from a directory input, lower
        case without dots; a comma-separated string is accepted.
      runner: 'local' (worker processes on this machine), or the name of an
        Apache Beam runner (DirectRunner, DataflowRunner, FlinkRunner,
        SparkRunner, ...; needs the `beam` extra, see `extract_beam`).
      beam_pipeline_options: Beam pipeline options for a Beam runner, each
        '--name=value' (or '--flag'); a comma-separated string is accepted.
        Must be empty for the local runner.
    """

    input: str
    output_dir: str
    num_shards: int = 8
    workers: int = 0
    strict: bool = False
    pad_short: bool = True
    extensions: tuple = audio_io.AUDIO_EXTENSIONS
    runner: str = LOCAL_RUNNER
    beam_pipeline_options: tuple = ()

    def __post_init__(self):
        for name in ("input", "output_dir", "runner"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError("%s: must be a non-empty string, got %r" %
                                 (name, value))
        for name, lowest in (("num_shards", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(
                    value, (int, np.integer)) or value < lowest:
                raise ValueError("%s: must be an integer >= %d, got %r" %
                                 (name, lowest, value))
        extensions = self.extensions
        if isinstance(extensions, str):
            extensions = extensions.split(",")
        extensions = tuple(e.strip().lstrip(".").lower() for e in extensions
                           if e.strip().lstrip("."))
        if not extensions:
            raise ValueError("extensions: need at least one file extension, "
                             "got %r" % (self.extensions,))
        options = self.beam_pipeline_options
        if isinstance(options, str):
            options = options.split(",")
        options = tuple(o.strip() for o in options if o.strip())
        for option in options:
            if not option.startswith("--"):
                raise ValueError("beam_pipeline_options: expected "
                                 "--name=value items, got %r" % option)
        if options and self.runner == LOCAL_RUNNER:
            # Most likely a forgotten --runner: say so rather than ignore them.
            raise ValueError("beam_pipeline_options: only used with a Beam "
                             "--runner, not %r" % LOCAL_RUNNER)
        # Frozen dataclass: normalised values are set through object.
        object.__setattr__(self, "beam_pipeline_options", options)
        object.__setattr__(self, "extensions", extensions)
        object.__setattr__(self, "num_shards", int(self.num_shards))
        object.__setattr__(self, "workers", int(self.workers))

    @property
    def resolved_workers(self):
        """`workers`, with 0 replaced by the number of CPU cores."""
        return self.workers or os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One audio file to extract.

    Attributes:
      path: absolute path of the file.
      recording_id: its path relative to the input root, without extension.
      labels: class indices into the vocabulary (sorted, unique).
      split: split name from the CSV, or "".
    """

    path: str
    recording_id: str
    labels: tuple = ()
    split: str = ""


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
      items: the `InputItem`s of this shard, in order.
      pad_short: as in `ExtractConfig`.
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


# ---------------------------------------------------------------- inputs ---


def _extension(path):
    return os.path.splitext(path)[1][1:].lower()


def _recording_ids(paths, root):
    """Path relative to `root` without extension, '/'-separated.

    Two files differing only in extension (a.wav, a.flac) keep their
    extensions, so ids stay unique.
    """
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    stems = [os.path.splitext(r)[0] for r in rel]
    counts = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else r for s, r in zip(stems, rel)]


def _walk_directory(root, extensions):
    found = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Symlinked directories are followed (data sets are often assembled
        # from links) but each real directory is visited once: no cycles.
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # Hidden entries are never audio: .git, macOS "._x.wav" resource forks.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and _extension(f) in extensions)
    return found


def _glob_root(pattern):
    """The directory above the first wildcard component of a glob."""
    parts = os.path.abspath(pattern).split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


def _read_csv(csv_path):
    """Rows (path, labels, split, line) of an input CSV."""
    base = os.path.dirname(os.path.abspath(csv_path))
    rows = []
    with open(csv_path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not any(row):
                continue
            if not rows and row[0].lower() in _CSV_HEADER_NAMES and (
                    not os.path.isfile(os.path.join(base, row[0]))):
                continue  # Header row.
            if len(row) > 3:
                raise ExtractError(
                    "input: %s line %d: expected path,labels[,split], got %d "
                    "columns" % (csv_path, line, len(row)))
            row += [""] * (3 - len(row))
            path = os.path.normpath(os.path.join(base, row[0]))
            labels = sorted({l.strip() for l in row[1].split(";") if l.strip()})
            rows.append((path, labels, row[2], line))
    return base, rows


def discover_inputs(input_spec, extensions=audio_io.AUDIO_EXTENSIONS):
    """Lists the files to extract and the class vocabulary.

    Args:
      input_spec: a directory, a glob, a single audio file, or a CSV file
        (see `ExtractConfig.input`).
      extensions: extensions picked up from a directory.

    Returns:
      (items, classes): `InputItem`s sorted by path, and the sorted class
      names (empty unless the input is a CSV); label indices point into it.

    Raises:
      ExtractError: naming `input` when nothing matches or the CSV is
        malformed.
    """
    extensions = tuple(extensions)
    if input_spec.lower().endswith(".csv") and os.path.isfile(input_spec):
        root, rows = _read_csv(input_spec)
        first_line = {}
        for path, _, _, line in rows:
            if path in first_line:
                raise ExtractError("input: %s lists %s twice (lines %d and %d)"
                                   % (input_spec, path, first_line[path], line))
            first_line[path] = line
        classes = sorted({l for _, labels, _, _ in rows for l in labels})
        index = {name: i for i, name in enumerate(classes)}
        rows.sort(key=lambda r: r[0])
        ids = _recording_ids([r[0] for r in rows], root)
        items = [InputItem(path, rid, tuple(index[l] for l in labels), split)
                 for (path, labels, split, _), rid in zip(rows, ids)]
        what = "CSV %s lists no files" % input_spec
    else:
        if os.path.isdir(input_spec):
            root = os.path.abspath(input_spec)
            paths = _walk_directory(root, extensions)
            what = "no files with extension %s under %s" % (
                ",".join(extensions), input_spec)
        else:
            root = _glob_root(input_spec)
            paths = [p for p in glob.glob(input_spec, recursive=True)
                     if os.path.isfile(p)]
            what = "%r matches no files" % input_spec
        paths = sorted({os.path.abspath(p) for p in paths})
        items = [InputItem(p, rid)
                 for p, rid in zip(paths, _recording_ids(paths, root))]
        classes = []
    if not items:
        raise ExtractError("input: " + what)
    return items, classes


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
      item: the `InputItem`.

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
        example = records.make_example(
            chunk, starts, item.recording_id, labels=item.labels,
            chunk_index=len(serialized), split=item.split,
            source_path=item.path)
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
      items: iterable of `InputItem`.
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
            with audio_io.AudioStream(item.path,
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
      item: `InputItem`.
      pad_short: zero-pad a clip shorter than one window to one window
        (True), or skip it (False).
      block_frames: input frames read per block.

    Returns:
      (serialized, result): list of serialized tf.train.Example bytes, in
      chunk order, and the `FileResult`.
    """
    return next(process_files([item], pad_short, block_frames))


# ------------------------------------------------------------ one shard ---


def _shard_fingerprint(items, pad_short, num_shards):
    payload = json.dumps(
        [_FORMAT_VERSION, C.frontend_params(), bool(pad_short), num_shards,
         [[i.path, i.recording_id, list(i.labels), i.split] for i in items]],
        sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def make_shard_tasks(items, num_shards, pad_short, output_dir):
    """Assigns file i of `items` to shard i % num_shards.

    Args:
      items: sorted `InputItem`s.
      num_shards: number of shards.
      pad_short: as in `ExtractConfig`.
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


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_shard(task, progress=None, temp_suffix=records.TEMP_SUFFIX):
    """Extracts one shard's files and commits the shard atomically.

    Writes `<shard>.tfrecord` + temp_suffix and `<shard>.json` + temp_suffix
    (overwriting leftovers of a killed run), then renames the summary and
    last the TFRecord into place. The TFRecord is the commit point: readers
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
    _write_json(summary_tmp, summary)
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
        with open(task.summary_path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if summary.get("fingerprint") != task.fingerprint:
        return None
    return summary


# ------------------------------------------------------- worker processes ---

_worker_progress = None  # The progress queue, in a worker process.


def _init_worker(progress_queue):
    """Runs once in each worker process."""
    global _worker_progress
    _worker_progress = progress_queue
    # Parallelism comes from the worker processes; TF's own thread pools on
    # top would oversubscribe the cores and slow every worker down.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Features are computed on the CPU whatever the host has: the same bytes
    # everywhere, and N workers do not fight over one accelerator.
    tf.config.set_visible_devices([], "GPU")


def _report(result):
    _worker_progress.put((result.status, result.audio_seconds))


def _timed_write_shard(task, progress):
    """`write_shard`, plus the seconds it took (kept out of the summary)."""
    start = time.monotonic()
    summary = write_shard(task, progress=progress)
    return summary, time.monotonic() - start


def _write_shard_in_worker(task):
    return _timed_write_shard(task, _report)


class _Progress:
    """Counts per-file reports and logs throughput every few seconds."""

    def __init__(self, total_files, total_shards, interval):
        self.total_files = total_files
        self.total_shards = total_shards
        self.interval = interval
        self.files = 0
        self.failed = 0
        self.audio_seconds = 0.0
        self.shards = 0
        self.start = time.monotonic()
        self.last_log = self.start
        self.first_file = None  # When the first file finished.
        self.busy_seconds = 0.0  # Summed over workers, start-up excluded.

    def add(self, status, audio_seconds):
        if self.first_file is None:
            self.first_file = time.monotonic()
        self.files += 1
        self.failed += status == STATUS_FAILED
        self.audio_seconds += audio_seconds

    def drain(self, progress_queue):
        while True:
            try:
                self.add(*progress_queue.get_nowait())
            except queue_lib.Empty:
                return

    def log(self, force=False):
        now = time.monotonic()
        if not force and now - self.last_log < self.interval:
            return
        self.last_log = now
        elapsed = max(now - self.start, 1e-9)
        logging.info(
            "extract: %d/%d files (%.0f%%), %d failed, %d/%d shards, "
            "%.1f files/s, %.1f audio-s/s",
            self.files, self.total_files,
            100.0 * self.files / max(self.total_files, 1), self.failed,
            self.shards, self.total_shards, self.files / elapsed,
            self.audio_seconds / elapsed)


def _run_in_process(tasks, progress):
    """Writes `tasks` one after the other in this process.

    With a single worker there is nothing to run in parallel, and a spawned
    process would spend seconds importing TensorFlow. TF's thread settings
    are left as the caller has them.
    """
    summaries = {}

    def report(result):
        progress.add(result.status, result.audio_seconds)
        progress.log()

    for task in tasks:
        summaries[task.index], seconds = _timed_write_shard(task, report)
        progress.busy_seconds += seconds
        progress.shards += 1
    return summaries


def _run_local(tasks, workers, progress):
    """Writes `tasks` with a pool of `workers` spawned worker processes."""
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    summaries = {}
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker,
        initargs=(progress_queue,))
    try:
        futures = {pool.submit(_write_shard_in_worker, t): t for t in tasks}
        not_done = set(futures)
        while not_done:
            done, not_done = concurrent.futures.wait(
                not_done, timeout=min(progress.interval, 0.5),
                return_when=concurrent.futures.FIRST_COMPLETED)
            progress.drain(progress_queue)
            for future in done:
                task = futures[future]
                summaries[task.index], seconds = future.result()
                progress.busy_seconds += seconds
                progress.shards += 1
            progress.log()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    progress.drain(progress_queue)
    return summaries


# ----------------------------------------------------------------- run ---


def _prepare_output_dir(output_dir, tasks):
    """Creates `output_dir`, checks it is ours, and clears what must go."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, records.MANIFEST_NAME +
                             records.TEMP_SUFFIX)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ExtractError("output_dir: cannot write to %s: %s" %
                           (output_dir, e.strerror or e)) from e
    ours = {os.path.basename(t.shard_path) for t in tasks}
    foreign = sorted(
        os.path.basename(p) for p in
        glob.glob(os.path.join(glob.escape(output_dir),
                               "*" + records.SHARD_SUFFIX))
        if os.path.basename(p) not in ours)
    if foreign:
        raise ExtractError(
            "output_dir: %s holds shards of another extraction (%s%s); use "
            "an empty directory or the same --num_shards" %
            (output_dir, foreign[0], ", ..." if len(foreign) > 1 else ""))
    # Leftovers of a killed run would be overwritten anyway; removing them
    # keeps the directory clean if this run has fewer shards to do.
    names = ours | {os.path.basename(t.summary_path) for t in tasks} | {
        records.MANIFEST_NAME}
    for name in names:
        stale = os.path.join(output_dir, name + records.TEMP_SUFFIX)
        if os.path.exists(stale):
            logging.info("removing stale %s", stale)
            os.remove(stale)


def _manifest(config, classes, summaries):
    """The corpus manifest: deterministic, no timings, no output paths."""
    keys = ("files", "recordings", "records", "windows", "audio_seconds")
    shards = []
    for s in summaries:
        entry = {k: s[k] for k in keys}
        entry.update(name=s["shard"], failed=len(s["failures"]),
                     skipped=len(s["skipped"]))
        shards.append(entry)
    totals = {k: sum(s[k] for s in summaries) for k in keys}
    totals["audio_seconds"] = round(totals["audio_seconds"], 6)
    failures = [f for s in summaries for f in s["failures"]]
    skipped = [f for s in summaries for f in s["skipped"]]
    warnings = [w for s in summaries for w in s["warnings"]]
    totals.update(failed=len(failures), skipped=len(skipped),
                  warnings=len(warnings))

    def by_path(entries):
        return sorted(entries, key=lambda e: e["path"])

    return {
        "frontend": C.frontend_params(),
        "classes": list(classes),
        "num_shards": config.num_shards,
        "config": {"input": config.input, "pad_short": config.pad_short,
                   "extensions": list(config.extensions)},
        "shards": shards,
        "totals": totals,
        "failures": by_path(failures),
        "skipped": by_path(skipped),
        "warnings": by_path(warnings),
    }


def _beam_module():
    """`extract_beam`, or an ExtractError saying how to install Beam."""
    try:
        # Imported only for a Beam runner: apache-beam is an optional extra
        # and importing it costs seconds.
        from triplet_audio.features import extract_beam  # pylint: disable=g-import-not-at-top
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "apache_beam":
            raise
        raise ExtractError(
            "runner: Beam runners need Apache Beam, which is not installed: "
            "pip install 'triplet-audio[beam]' (or use --runner=%s)" %
            LOCAL_RUNNER) from e
    return extract_beam


def run(config, progress_seconds=PROGRESS_SECONDS):
    """Extracts a corpus, resuming a killed run.

    Shards are written by worker processes on this machine, or with
    `config.runner` naming a Beam runner, by a Beam pipeline
    (`extract_beam.BeamShardWriter`); planning, resume and the manifest are the
    same for both, and so are the bytes written.

    Args:
      config: `ExtractConfig`.
      progress_seconds: interval between progress log lines.

    Returns:
      the manifest dict (as written to manifest.json), plus
      `resumed_shards`: how many shards an earlier run had completed;
      `seconds`: wall time of the extraction; `startup_seconds`: of which
      before the first file was done (worker start-up, TF tracing);
      `busy_seconds`: time workers spent writing shards, summed over
      workers. The timings stay out of manifest.json, which must not depend
      on them; the last two are None with a Beam runner, whose workers are
      out of sight.

    Raises:
      ExtractError: naming the field, for an unusable runner, input or
        output directory.
      RunnerError: the Beam job failed.
    """
    beam_runner = None
    if config.runner != LOCAL_RUNNER:
        # Checked before anything is written: a typo in the runner name
        # must not leave an output directory behind.
        beam_runner = _beam_module().BeamShardWriter(config)
    items, classes = discover_inputs(config.input, config.extensions)
    tasks = make_shard_tasks(items, config.num_shards, config.pad_short,
                             config.output_dir)
    _prepare_output_dir(config.output_dir, tasks)
    summaries, pending = {}, []
    for task in tasks:
        summary = load_finished_shard(task)
        if summary is None:
            pending.append(task)
        else:
            summaries[task.index] = summary
    if summaries:
        logging.info("resuming: %d of %d shards already complete",
                     len(summaries), len(tasks))
    for task in pending:
        # A shard of other inputs (or a summary left by a kill between the
        # two renames) must not stay visible while its replacement is made.
        for path in (task.shard_path, task.summary_path):
            if os.path.exists(path):
                logging.warning("replacing %s (not from these inputs, or "
                                "incomplete)", path)
                os.remove(path)
    if beam_runner is not None:
        start = time.monotonic()
        summaries.update(beam_runner.write_shards(pending))
        return _finish(config, classes, tasks, summaries, dict(
            resumed_shards=len(tasks) - len(pending),
            seconds=time.monotonic() - start, startup_seconds=None,
            busy_seconds=None))
    workers = min(config.resolved_workers, len(pending))
    logging.info("extracting %d files into %d shards (%d to do) with %d "
                 "worker(s)", len(items), len(tasks), len(pending), workers)
    progress = _Progress(sum(len(t.items) for t in pending), len(pending),
                         progress_seconds)
    if workers == 1:
        summaries.update(_run_in_process(pending, progress))
    elif workers > 1:
        summaries.update(_run_local(pending, workers, progress))
    if pending:
        progress.log(force=True)
    end = time.monotonic()
    return _finish(config, classes, tasks, summaries, dict(
        resumed_shards=len(tasks) - len(pending), seconds=end - progress.start,
        startup_seconds=(progress.first_file or end) - progress.start,
        busy_seconds=progress.busy_seconds))


def _finish(config, classes, tasks, summaries, timings):
    """Writes manifest.json and returns it merged with `timings`."""
    manifest = _manifest(config, classes,
                         [summaries[t.index] for t in tasks])
    manifest_path = os.path.join(config.output_dir, records.MANIFEST_NAME)
    _write_json(manifest_path + records.TEMP_SUFFIX, manifest)
    os.replace(manifest_path + records.TEMP_SUFFIX, manifest_path)
    totals = manifest["totals"]
    # Each failure was logged as it happened; manifest.json lists them all.
    logging.info(
        "extracted %d/%d files (%d records, %d windows, %.1f s of audio); "
        "%d failed, %d skipped (see %s) -> %s", totals["recordings"],
        totals["files"], totals["records"], totals["windows"],
        totals["audio_seconds"], totals["failed"], totals["skipped"],
        records.MANIFEST_NAME, config.output_dir)
    return dict(manifest, **timings)


def exit_code(summary, strict):
    """The binary's exit status for a finished run.

    Args:
      summary: what `run` returned.
      strict: whether any failed file fails the run.

    Returns:
      0 on success, 1 if no file was extracted or (strict) any file failed.
    """
    totals = summary["totals"]
    if not totals["recordings"]:
        logging.error("no file could be extracted (%d failed, %d skipped)",
                      totals["failed"], totals["skipped"])
        return 1
    if strict and totals["failed"]:
        logging.error("--strict: %d of %d files failed", totals["failed"],
                      totals["files"])
        return 1
    return 0


def main(make_config):
    """Entry point of bin/extract_features.

    Args:
      make_config: zero-argument callable returning an `ExtractConfig`
        (`flagdefs.extract_config_from_flags`). It is called here so that an
        invalid setting ends like any other unusable input: one logged line
        naming the flag, and a non-zero status.

    Returns:
      process exit status: 0 success, 1 extraction failed (see `exit_code`),
      2 unusable flags, input or output directory.
    """
    try:
        config = make_config()
    except ValueError as e:
        logging.error("%s", e)
        return 2
    try:
        summary = run(config)
    except (ExtractError, OSError) as e:
        logging.error("%s", e)
        return 2
    except futures_process.BrokenProcessPool as e:
        logging.error("a worker process died (out of memory?): %s", e)
        return 1
    except RunnerError as e:
        logging.error("%s", e)
        return 1
    return exit_code(summary, config.strict)
