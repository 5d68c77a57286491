"""Embedding a corpus: TFRecords or audio files -> an `embeddings_io` file.

The library behind bin/embed. `embed_corpus` reads either

  * a TFRecord corpus written by bin/extract_features (a corpus directory
    holding manifest.json, a directory of shards, a shard glob or
    comma-separated globs), or
  * audio files (a directory searched recursively, a glob, or a CSV
    `path,labels[,split]`, listed by `inputs.discover_inputs`; or a dataset
    as distributed, `input_format` one of AudioSet, FSD50K, ESC-50,
    UrbanSound8K or auto, listed by `datasets.discover`: its labels, split
    or fold, and AudioSet segments cut from whole-video files), streamed
    block by block (`audio_io.open_segment`) and cut into windows by the
    front end, so a 10-hour file takes no more memory than a short one
    (beyond its embeddings),

and writes one row per 0.96 s window (windows `window_hop_seconds` apart:
0.96, non-overlapping, by default; audio input can be cut denser), grouped
into segments (segment = recording), with multi-hot labels and split names,
through
`embeddings_io.write_embeddings`, so `bin/evaluate` reads every
representation alike.

Representations:

  * `saved_model=EXPORT_DIR`: the `embed_logmel` signature of a SavedModel
    written by bin/export (loaded with plain `tf.saved_model.load`); the
    representation is named after the export's metadata.json, e.g.
    "proximity-resnet50". Audio input goes through this package's front end,
    the same code the SavedModel's `serving_default` carries in its graph.
  * `representation="logmel"`: the log-mel baseline, each 96 x 64 window
    flattened to 6,144 values and stored as float16. float16 halves the file
    (an AudioSet-sized baseline is otherwise ~25 KB a window); its relative
    rounding of 5e-4 is far below the spread of log-mel values (std ~1.6)
    that the evaluation's cosine similarities and standardised classifiers
    see.

Clips shorter than one window are zero-padded to one window, as in
`serving_default`. Unusable audio files are logged and listed in the
output's metadata; the rest are embedded.
"""

import collections
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.serving import embeddings_io
from triplet_audio.config import options
from triplet_audio.features import datasets
from triplet_audio.features import frontend
from triplet_audio.features import inputs
from triplet_audio.features import records

LOGMEL = "logmel"
REPRESENTATIONS = (LOGMEL,)
"""Values of `representation` that need no model."""

INPUT_TFRECORD = "tfrecord"
INPUT_AUDIO = "audio"

PROGRESS_SECONDS = 10.0
"""How often progress is logged."""


class EmbedError(ValueError):
    """Settings or input `embed_corpus` cannot use; names the argument."""


# ------------------------------------------------------------ embedders ---


class _LogmelEmbedder:
    """The baseline: flattened windows as float16 (see the module docstring)."""

    def __init__(self):
        self.representation = LOGMEL
        self.embedding_size = C.WINDOW_FRAMES * C.NUM_MEL_BANDS
        self.metadata = {}

    def __call__(self, windows):
        return windows.reshape(windows.shape[0], -1).astype(np.float16)


class _SavedModelEmbedder:
    """The `embed_logmel` signature of an exported SavedModel."""

    def __init__(self, export_dir):
        from triplet_audio.serving import export  # pylint: disable=g-import-not-at-top
        if not os.path.isdir(export_dir):
            raise FileNotFoundError("saved_model: %s is not a directory" %
                                    export_dir)
        path, _, meta = export.checked_metadata(
            export_dir, remedy="embed with the code that made it, or retrain "
            "and export with this one")
        if meta is None:
            logging.warning("%s has no %s; naming the representation "
                            "'saved_model'", export_dir, export.METADATA_NAME)
            meta = {}
        loaded = tf.saved_model.load(path)
        if "embed_logmel" not in loaded.signatures:
            raise EmbedError("saved_model: %s has no embed_logmel signature "
                             "(signatures: %s)" %
                             (path, ", ".join(loaded.signatures)))
        # Keep the loaded object alive: the signature only holds weak
        # references to its variables.
        self._loaded = loaded
        self._fn = loaded.signatures["embed_logmel"]
        self.representation = _representation_name(meta)
        self.embedding_size = meta.get("embedding_size")
        self.metadata = {
            "saved_model": os.path.abspath(path),
            "export": {k: meta.get(k) for k in (
                "version", "model", "step", "embedding_size",
                "tensorflow_version")},
        }

    def __call__(self, windows):
        out = self._fn(logmel=tf.constant(windows, tf.float32))
        out = out["embeddings"].numpy()
        if self.embedding_size is None:
            self.embedding_size = int(out.shape[1])
        elif out.shape[1] != self.embedding_size:
            raise EmbedError(
                "saved_model: embed_logmel returned D=%d but metadata.json "
                "says embedding_size=%d" % (out.shape[1], self.embedding_size))
        return out


def _representation_name(meta):
    """e.g. "proximity-resnet50" from an export's metadata.json."""
    model = (meta.get("model") or {}).get("name") or "saved_model"
    sampler = (meta.get("training_config") or {}).get("sampler")
    if isinstance(sampler, dict):
        sampler = sampler.get("sampler")
    return "%s-%s" % (sampler, model) if isinstance(sampler, str) else model


class _Batcher:
    """Feeds windows of many segments to an embedder in full batches.

    Windows are queued per key (a record or a file); every call of the
    embedder gets exactly `batch_size` windows (cut across keys) except the
    last one of `flush`, so a corpus of short clips is not embedded one tiny
    batch per clip.
    """

    def __init__(self, embed_fn, batch_size):
        self._embed_fn = embed_fn
        self._batch_size = batch_size
        self._queue = collections.deque()  # [key, windows not yet embedded]
        self._queued = 0
        self._outputs = {}  # key -> list of embedding arrays
        self.windows_done = 0

    def add(self, key, windows):
        """Queues the windows of `key`; returns [(key, embeddings)] finished."""
        self._queue.append((key, windows))
        self._queued += windows.shape[0]
        self._outputs[key] = []
        finished = []
        while self._queued >= self._batch_size:
            finished += self._run(self._batch_size)
        return finished

    def flush(self):
        """Embeds everything queued; returns [(key, embeddings)] finished."""
        finished = []
        while self._queued:
            finished += self._run(min(self._batch_size, self._queued))
        return finished

    def _run(self, n):
        parts, owners = [], []
        need = n
        while need:
            key, windows = self._queue[0]
            take = min(need, windows.shape[0])
            parts.append(windows[:take])
            owners.append((key, take))
            if take == windows.shape[0]:
                self._queue.popleft()
            else:
                self._queue[0] = (key, windows[take:])
            need -= take
        out = self._embed_fn(np.concatenate(parts) if len(parts) > 1
                             else parts[0])
        self._queued -= n
        self.windows_done += n
        finished, offset = [], 0
        for key, take in owners:
            self._outputs[key].append(out[offset:offset + take])
            offset += take
            if not (self._queue and self._queue[0][0] == key):
                pieces = self._outputs.pop(key)
                finished.append((key, np.concatenate(pieces)
                                 if len(pieces) > 1 else pieces[0]))
        return finished


class _Progress:
    """Logs windows/s and segments done every `PROGRESS_SECONDS`."""

    def __init__(self, what):
        self._what = what
        self.start = time.monotonic()
        self._last = self.start

    def maybe_log(self, windows, segments, force=False):
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_SECONDS:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        logging.info("embedded %d windows of %d %s in %.1f s (%.0f windows/s)",
                     windows, segments, self._what, elapsed, windows / elapsed)


# ---------------------------------------------------------------- inputs ---


def input_kind(input_spec, input_format=options.CSV_FORMAT):
    """Whether `input_spec` names a TFRecord corpus or audio files.

    Args:
      input_spec: see `embed_corpus`.
      input_format: see `embed_corpus`; a dataset layout (named, or found
        by auto) is audio.

    Returns:
      `INPUT_TFRECORD` or `INPUT_AUDIO`.

    Raises:
      FileNotFoundError: naming `input` when the path does not exist.
    """
    from triplet_audio.features import audio_io  # pylint: disable=g-import-not-at-top
    spec = str(input_spec)
    if input_format == options.AUTO_FORMAT:
        input_format = datasets.detect_format(spec)
    if input_format != options.CSV_FORMAT:
        if not os.path.exists(spec):
            raise FileNotFoundError("input: %s does not exist" % spec)
        return INPUT_AUDIO
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, records.MANIFEST_NAME)) or (
                inputs.expand_globs(
                    spec, directory_glob="*" + records.SHARD_SUFFIX)):
            return INPUT_TFRECORD
        return INPUT_AUDIO
    if os.path.isfile(spec):
        ext = inputs.extension(spec)
        if ext == "csv" or ext in audio_io.AUDIO_EXTENSIONS:
            return INPUT_AUDIO
        return INPUT_TFRECORD
    parts = [p for p in spec.split(",") if p.strip()]
    if inputs.is_glob(spec) or len(parts) > 1:
        matches = inputs.expand_globs(spec, split_commas=True)
        if any(records.SHARD_SUFFIX in m for m in matches) or (
                not matches and records.SHARD_SUFFIX in spec):
            return INPUT_TFRECORD
        if matches:
            return INPUT_AUDIO
    raise FileNotFoundError("input: %s matches no file or directory" % spec)


def _manifest_classes(input_spec):
    """The class vocabulary of a TFRecord corpus, or None without manifest.

    Raises:
      records.FrontendMismatchError: the manifest names another front end.
    """
    manifest = records.load_corpus_manifest(input_spec)
    if manifest is None:
        return None
    return [str(c) for c in manifest.get("classes", [])]


def _tfrecord_segments(input_spec, batcher, progress):
    """Embeds a TFRecord corpus; returns the segment table and window rows.

    Chunks of one recording are grouped by recording_id wherever they sit
    (consecutive in one shard when bin/extract_features wrote them, but a
    merged or re-sharded corpus may scatter them), ordered by chunk_index.
    """
    # cycle_length=1 reads shard after shard: segments come out in shard
    # order, and the order never depends on interleaving.
    ds = records.read_records(input_spec, cycle_length=1)
    meta = {}  # record number -> its non-window fields
    embedded = {}  # record number -> [W, D]
    num_records = 0
    for rec in ds.as_numpy_iterator():
        key = num_records
        num_records += 1
        windows = rec[records.LOGMEL]
        if windows.shape[0] == 0:
            logging.warning("record %d of %s (recording %s) has no window; "
                            "skipped", key, input_spec,
                            rec[records.RECORDING_ID].decode("utf-8"))
            continue
        meta[key] = {
            "recording_id": rec[records.RECORDING_ID].decode("utf-8"),
            "chunk_index": int(rec[records.CHUNK_INDEX]),
            "start_times": rec[records.START_TIMES],
            "labels": tuple(int(l) for l in rec[records.LABELS]),
            "split": rec[records.SPLIT].decode("utf-8"),
        }
        embedded.update(batcher.add(key, windows))
        progress.maybe_log(batcher.windows_done, num_records)
    embedded.update(batcher.flush())
    progress.maybe_log(batcher.windows_done, num_records, force=True)

    by_recording = collections.OrderedDict()
    for key in sorted(meta):
        by_recording.setdefault(meta[key]["recording_id"], []).append(key)
    segments = []
    for recording_id, keys in by_recording.items():
        keys.sort(key=lambda k: meta[k]["chunk_index"])
        chunk_indices = [meta[k]["chunk_index"] for k in keys]
        if len(set(chunk_indices)) != len(chunk_indices):
            raise EmbedError(
                "input: recording %r has chunk_index %s more than once in %s "
                "(the same recording extracted twice?)" %
                (recording_id, chunk_indices, input_spec))
        labels = {l for k in keys for l in meta[k]["labels"]}
        splits = [meta[k]["split"] for k in keys]
        if any(meta[k]["labels"] != meta[keys[0]]["labels"] for k in keys) or (
                len(set(splits)) > 1):
            logging.warning("recording %r: chunks disagree on labels or split;"
                            " using the union of labels and split %r",
                            recording_id, splits[0])
        segments.append({
            "id": recording_id,
            "embeddings": [embedded[k] for k in keys],
            "start_times": [meta[k]["start_times"] for k in keys],
            "labels": sorted(labels),
            "split": splits[0],
        })
    counts = {"records": num_records}
    return segments, counts


def _audio_window_pieces(waveform, hop_frames=C.WINDOW_FRAMES):
    """Log-mel windows of a 16 kHz waveform, in bounded pieces.

    Pieces of `MAX_WINDOWS_PER_RECORD` windows start on window boundaries,
    which are whole STFT hops apart, so the frames (and windows) are those of
    the whole waveform while the STFT of an hour-long file never sits in
    memory at once.

    Args:
      waveform: float32 [num_samples] at 16 kHz.
      hop_frames: STFT frames between window starts (96: non-overlapping).

    Yields:
      float32 arrays [count, 96, 64], in order.
    """
    num = waveform.shape[0]
    if num < C.MIN_WINDOW_SAMPLES:
        yield _windows_fn(waveform).numpy()
        return
    total = frontend.num_windows_for_samples(num, hop_frames=hop_frames)
    for first in range(0, total, C.MAX_WINDOWS_PER_RECORD):
        count = min(C.MAX_WINDOWS_PER_RECORD, total - first)
        start = first * hop_frames * C.STFT_HOP_SAMPLES
        piece = waveform[start:start + frontend.samples_for_windows(
            count, hop_frames)]
        if hop_frames == C.WINDOW_FRAMES:
            yield _windows_fn(piece).numpy()
        else:
            yield _dense_windows_fn(piece, hop_frames).numpy()


def _stream_window_pieces(blocks, hop_frames=C.WINDOW_FRAMES):
    """`_audio_window_pieces` of a stream of blocks, without its waveform.

    The same pieces, cut from the same samples (so the same windows, bit for
    bit), while at most one piece's samples and a block are held: once a
    piece of `MAX_WINDOWS_PER_RECORD` windows is cut, the samples before the
    next piece's first window are never needed again.

    Args:
      blocks: iterable of float32 [n] arrays at 16 kHz (an
        `audio_io.AudioStream`); the stream's own errors pass through.
      hop_frames: STFT frames between window starts (96: non-overlapping).

    Yields:
      float32 arrays [count, 96, 64], in order; nothing for an empty stream.
    """
    piece_samples = frontend.samples_for_windows(C.MAX_WINDOWS_PER_RECORD,
                                                 hop_frames)
    step = C.MAX_WINDOWS_PER_RECORD * hop_frames * C.STFT_HOP_SAMPLES

    def windows_of(piece):
        if hop_frames == C.WINDOW_FRAMES:
            return _windows_fn(piece).numpy()
        return _dense_windows_fn(piece, hop_frames).numpy()

    # Blocks are joined once a piece's worth is held, not one by one: joining
    # each block to a growing buffer copies it again for every block.
    pending, held = [], 0
    cut = 0  # Pieces yielded.
    for block in blocks:
        pending.append(block)
        held += block.shape[0]
        if held < piece_samples:
            continue
        buffer = np.concatenate(pending)
        while buffer.shape[0] >= piece_samples:
            yield windows_of(buffer[:piece_samples])
            buffer = buffer[step:]
            cut += 1
        pending, held = [buffer], buffer.shape[0]
    buffer = (np.concatenate(pending) if pending
              else np.zeros(0, np.float32))
    if not cut and buffer.shape[0] < C.MIN_WINDOW_SAMPLES:
        if buffer.shape[0]:
            yield _windows_fn(buffer).numpy()  # Padded to one window.
        return
    count = frontend.num_windows_for_samples(buffer.shape[0], pad_short=False,
                                             hop_frames=hop_frames)
    if count:
        yield windows_of(buffer[:frontend.samples_for_windows(count,
                                                              hop_frames)])


def _audio_windows(waveform, hop_frames=C.WINDOW_FRAMES):
    """All of `_audio_window_pieces`, concatenated."""
    return np.concatenate(list(_audio_window_pieces(waveform, hop_frames)))


@tf.function(input_signature=[tf.TensorSpec([None], tf.float32)],
             reduce_retracing=True, autograph=False)  # see frontend.windows_fn
def _windows_fn(waveform):
    return frontend.waveform_to_windows(waveform, pad_short=True)


@tf.function(input_signature=[tf.TensorSpec([None], tf.float32),
                              tf.TensorSpec([], tf.int32)],
             reduce_retracing=True, autograph=False)
def _dense_windows_fn(waveform, hop_frames):
    # Overlapping windows of a waveform of at least one window.
    return frontend.waveform_to_windows(waveform, pad_short=False,
                                        hop_frames=hop_frames)


def _audio_segments(input_spec, batcher, progress,
                    input_format=options.CSV_FORMAT,
                    hop_frames=C.WINDOW_FRAMES):
    """Embeds audio files; unusable ones are listed, not fatal.

    A file is streamed and its windows go to the batcher piece by piece
    (`_stream_window_pieces`, keyed (file, piece)), so neither a long file's
    waveform nor its windows sit in memory at once: only its embeddings do.
    A file found unusable half-way contributes nothing. Audio is decoded in
    the restartable child process of `decode_worker` (as extraction does),
    so a file that crashes or hangs the decoder is one failure, not the end
    of the run.
    """
    from triplet_audio.features import audio_io  # pylint: disable=g-import-not-at-top
    from triplet_audio.features import decode_worker  # pylint: disable=g-import-not-at-top
    open_segment = decode_worker.shared_decoder().open_segment
    found = datasets.discover(input_spec, input_format=input_format)
    items, classes = found.items, found.classes
    segments, failures = [], []
    dropped = set()  # Segments of files found unusable half-way.
    audio_seconds = 0.0

    def collect(done):
        for (segment, piece), emb in done:
            segments[segment]["embeddings"][piece] = emb

    for item in items:
        segment = {
            "id": item.recording_id,
            "embeddings": [],
            "labels": sorted(item.labels),
            "split": item.split,
        }
        segments.append(segment)
        num_samples = 0
        try:
            with open_segment(item.path, item.start, item.end) as stream:

                def counted(stream=stream):
                    nonlocal num_samples
                    for block in stream:
                        num_samples += block.shape[0]
                        yield block

                for piece, windows in enumerate(_stream_window_pieces(
                        counted(), hop_frames)):
                    segment["embeddings"].append(None)
                    collect(batcher.add((len(segments) - 1, piece), windows))
                if stream.silent:
                    logging.warning("%s: silent (every sample is zero)",
                                    item.path)
            if num_samples == 0:
                raise audio_io.AudioError(item.path, audio_io.KIND_EMPTY,
                                          "no samples")
        except (audio_io.AudioError, OSError) as e:
            logging.warning("skipping %s", e)
            failures.append({"path": item.path, "reason": str(e),
                             "kind": getattr(e, "kind", type(e).__name__)})
            dropped.add(len(segments) - 1)
            continue
        audio_seconds += num_samples / float(C.SAMPLE_RATE)
        num_windows = frontend.num_windows_for_samples(num_samples,
                                                       hop_frames=hop_frames)
        # 96 frames: 0.96 exactly, the start times there always were.
        segment["start_times"] = [np.arange(num_windows, dtype=np.float32) *
                                  np.float32(hop_frames * C.STFT_HOP_SECONDS)]
        progress.maybe_log(batcher.windows_done, len(segments) - len(dropped))
    collect(batcher.flush())
    segments = [s for i, s in enumerate(segments) if i not in dropped]
    progress.maybe_log(batcher.windows_done, len(segments), force=True)
    if not segments:
        raise EmbedError("input: none of the %d audio file(s) of %s could be "
                         "read (first: %s)" % (len(items), input_spec,
                                               failures[0]["reason"]))
    counts = {"files": len(items), "failed": len(failures),
              "audio_seconds": round(audio_seconds, 3)}
    return segments, counts, failures, list(classes), found


# ------------------------------------------------------------------ main ---


# `input` is the flag's name (the command-line contract), hence the builtin's.
def embed_corpus(input, output, saved_model=None, representation=None,  # pylint: disable=redefined-builtin
                 batch_size=512, num_output_shards=1,
                 input_format=options.CSV_FORMAT,
                 window_hop_seconds=C.DEFAULT_WINDOW_HOP_SECONDS):
    """Embeds every window of a corpus and writes an embeddings file.

    Args:
      input: a TFRecord corpus (directory with manifest.json or shards, shard
        glob, comma-separated globs) or audio (directory, glob or CSV
        `path,labels[,split]`).
      output: output `.npz` path (see `embeddings_io.write_embeddings`).
      saved_model: export directory written by bin/export (or the SavedModel
        inside it). Exactly one of `saved_model` and `representation`.
      representation: "logmel" for the flattened log-mel baseline (float16).
      batch_size: windows per inference call.
      num_output_shards: output `.npz` shards (a segment never spans two).
      input_format: one of `options.INPUT_FORMATS`: "csv" (the inputs
        above), a dataset layout whose root (or metadata file) `input` is,
        or "auto" (`datasets.detect_format`). A dataset's files missing
        from its folder are listed in the output's metadata ("dataset").
      window_hop_seconds: seconds between window starts for audio input, a
        multiple of 0.01 from 0.01 to 0.96 (default 0.96: non-overlapping;
        smaller: overlapping windows, start times `hop` apart). A TFRecord
        corpus holds non-overlapping windows only.

    Returns:
      A summary dict: input_kind, representation, embedding_size, segments,
      windows, counts (records, or files / failed / audio_seconds), failures
      (audio files that could not be read, with reasons), outputs (paths
      written), seconds and windows_per_second.

    Raises:
      EmbedError: on invalid settings, a corpus with no window, or audio
        input of which no file could be read.
      FileNotFoundError: when `input` or `saved_model` does not exist.
    """
    if (saved_model is None) == (representation is None):
        raise EmbedError("need exactly one of saved_model and representation "
                         "(got %s)" % ("both" if saved_model else "neither"))
    if representation is not None and representation not in REPRESENTATIONS:
        raise EmbedError("representation: %r is not one of %s" %
                         (representation, ", ".join(REPRESENTATIONS)))
    if not output:
        raise EmbedError("output: must be a non-empty path")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or (
            batch_size < 1):
        raise EmbedError("batch_size: must be an integer >= 1, got %r" %
                         (batch_size,))
    if input_format not in options.INPUT_FORMATS:
        raise EmbedError("input_format: %r is not one of %s" % (
            input_format, ", ".join(options.INPUT_FORMATS)))
    try:
        hop_frames = C.window_hop_frames(window_hop_seconds)
    except ValueError as e:
        raise EmbedError(str(e)) from None
    kind = input_kind(input, input_format)
    if kind == INPUT_TFRECORD and hop_frames != C.WINDOW_FRAMES:
        raise EmbedError(
            "window_hop_seconds: %s is a TFRecord corpus, which holds "
            "non-overlapping %g s windows only; embed the audio files for a "
            "hop of %g s" % (input, C.WINDOW_SECONDS, window_hop_seconds))
    embedder = (_LogmelEmbedder() if representation is not None
                else _SavedModelEmbedder(saved_model))
    batcher = _Batcher(embedder, int(batch_size))
    failures = []
    found = None
    if kind == INPUT_TFRECORD:
        progress = _Progress("records")
        segments, counts = _tfrecord_segments(input, batcher, progress)
        class_names = _manifest_classes(input)
    else:
        progress = _Progress("files")
        segments, counts, failures, class_names, found = _audio_segments(
            input, batcher, progress, input_format, hop_frames)
    if not segments:
        raise EmbedError("input: %s holds no window to embed" % input)
    emb_set = _embedding_set(segments, class_names, embedder, input)
    seconds = time.monotonic() - progress.start
    emb_set.metadata = {
        "source": os.path.abspath(input) if os.path.exists(input) else input,
        "input_kind": kind,
        "representation": embedder.representation,
        "embedding_size": emb_set.dim,
        "dtype": str(emb_set.embeddings.dtype),
        "saved_model": embedder.metadata.get("saved_model"),
        "export": embedder.metadata.get("export"),
        "frontend": C.frontend_params(),
        "window_hop_seconds": round(hop_frames * C.STFT_HOP_SECONDS, 6),
        "counts": dict(counts, segments=emb_set.num_segments,
                       windows=emb_set.num_windows),
        "failures": failures,
    }
    if found is not None and found.info:
        emb_set.metadata["input_format"] = input_format
        emb_set.metadata["dataset"] = found.info
    paths = embeddings_io.write_embeddings(output, emb_set,
                                           num_shards=num_output_shards)
    summary = {
        "input_kind": kind,
        "representation": embedder.representation,
        "embedding_size": emb_set.dim,
        "segments": emb_set.num_segments,
        "windows": emb_set.num_windows,
        "counts": emb_set.metadata["counts"],
        "failures": failures,
        "outputs": paths,
        "seconds": seconds,
        "windows_per_second": emb_set.num_windows / max(seconds, 1e-9),
    }
    logging.info("embedded %d windows of %d segments (%s, D=%d) in %.1f s "
                 "(%.0f windows/s) -> %s%s", summary["windows"],
                 summary["segments"], summary["representation"],
                 summary["embedding_size"], seconds,
                 summary["windows_per_second"], ", ".join(paths),
                 "; %d file(s) failed" % len(failures) if failures else "")
    return summary


def _embedding_set(segments, class_names, embedder, source):
    """Assembles the `EmbeddingSet` of the embedded segments.

    Empties each segment's list of embedding pieces (they are copied).
    """
    max_label = max((l for s in segments for l in s["labels"]), default=-1)
    if class_names is None:
        logging.warning("%s has no %s: naming classes by index", source,
                        records.MANIFEST_NAME)
        class_names = [str(c) for c in range(max_label + 1)]
    if max_label >= len(class_names):
        raise EmbedError("input: label index %d but the vocabulary has %d "
                         "classes" % (max_label, len(class_names)))
    labels = np.zeros((len(segments), len(class_names)), np.uint8)
    for row, seg in enumerate(segments):
        labels[row, seg["labels"]] = 1
    sizes = [sum(e.shape[0] for e in s["embeddings"]) for s in segments]
    embeddings = np.concatenate([e for s in segments for e in s["embeddings"]])
    for s in segments:
        # The pieces are copied: freed now, a long file's embeddings are held
        # twice only during the concatenation, not while they are written.
        s["embeddings"].clear()
    return embeddings_io.EmbeddingSet(
        embeddings=embeddings,
        segment_index=np.repeat(np.arange(len(segments)), sizes),
        start_times=np.concatenate([t for s in segments
                                    for t in s["start_times"]]),
        segment_ids=[s["id"] for s in segments],
        labels=labels,
        split=[s["split"] for s in segments],
        class_names=class_names,
        representation=embedder.representation,
        metadata={},
        source=str(source))
