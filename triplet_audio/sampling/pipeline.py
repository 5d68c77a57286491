"""The training input pipeline: record shards -> triplet batches for the loss.

Three separate steps, so the model never sees the file format:

1. decode: `records.records_from_paths` (parallel interleave over shuffled
   shards, `records.parse_example`), then `record_to_windows` flattens each
   record into window elements carrying their ids.
2. sample: a `samplers` function (dict -> dict) turns k *pairs* of stream
   elements into k triplets in one vectorised call. Pairs are consecutive
   elements of a shuffled stream, so the second element of a pair is a random
   other example and no corpus is held in memory.
3. batch: the k triplets become one batch of 3k windows
   (`_triplet_batch_to_windows`; `batch_triplets` for a stream of single
   triplets, as the joint mixture makes).

Batch layout (the loss relies on it):

  windows  float32 [B, 96, 64], B = 3k. Triplets are interleaved: windows
           [3i, 3i + 1, 3i + 2] are (anchor_i, positive_i, negative_i). A
           global batch cut into per-replica contiguous slices whose size is a
           multiple of 3 therefore keeps whole triplets.
  labels   int64 [B] for noise, translation, mixing, proximity and joint:
           anchor and positive share a label, and the in-batch miner may treat
           any two windows with different labels as negatives. noise,
           translation and mixing label a window by its source window id
           (`samplers.window_id`); proximity labels it by its recording
           (`samplers.recording_hash`), so two windows of one recording are
           never mined as each other's negatives. joint, when proximity is
           one of its parts, labels every window by its recording (the
           positive by its anchor's): with window ids for some triplets and
           recording ids for others, two windows of one recording would be
           pulled together by a proximity triplet and pushed apart as
           negatives of a noise triplet in the same batch. For the same
           reason a noise, translation or mixing triplet whose negative comes
           from its anchor's recording is dropped there. Without proximity,
           joint keeps the window ids.
           supervised: float32 multi-hot [B, num_classes] ("positive" =
           shares a class).

Determinism: shard order, shuffles and `sample_from_datasets` are seeded, maps
keep their order, and every random draw is a stateless op seeded from the
element's position (and window id), so one seed gives identical batches and
another seed different ones.

Single-window records and proximity: such a record (or a window with no
other window of its record within dt) cannot be an anchor, because a positive
must be a *different* window of the same recording (pairing the window with
itself would make a trivial zero-distance pair that teaches nothing). It is
still used as a negative, so short clips keep contributing contrast.
"""

import dataclasses
import functools

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio.sampling import class_index
from triplet_audio import constants as C
from triplet_audio.config import sampling as sampling_config
from triplet_audio.config import training as train_config
from triplet_audio.features import records
from triplet_audio.sampling import registry
from triplet_audio.sampling import samplers

# The sampler configuration's home is config/sampling.py (no TensorFlow);
# named here too because every caller of the pipeline builds one.
SamplerConfig = sampling_config.SamplerConfig
parse_joint_weights = sampling_config.parse_joint_weights
DEFAULT_SHUFFLE_BUFFER = sampling_config.DEFAULT_SHUFFLE_BUFFER

# The record-level shuffle holds shuffle_buffer / 32 records, at most 256:
# ~10-window clips add a third of the window buffer, and the cap bounds
# corpora of 256-window chunks (256 x 256 windows = 1.6 GB).
_RECORD_BUFFER_DIVISOR = 32
_MAX_RECORD_BUFFER = 256

# Records read round-robin while flattening, so consecutive windows of the
# stream come from different recordings before the window shuffle.
_INTERLEAVE_RECORDS = 8

# Triplets sampled per vectorised sampler call when `make_triplets` returns
# single triplets (tests, inspection, the joint mixture).
_SAMPLE_CHUNK = 32

# Tags for deriving independent seeds of each stage from the one seed.
_FILES, _RECORDS, _WINDOWS, _ELEMENTS, _JOINT = range(5)


# ------------------------------------------------------------ batching
def triplets_per_batch(batch_size, input_context=None):
    """Triplets in one batch this input pipeline produces.

    Args:
      batch_size: global batch in windows (3 per triplet).
      input_context: optional `tf.distribute.InputContext`; the per-replica
        batch is then `input_context.get_per_replica_batch_size(batch_size)`.

    Returns:
      int k, the batch holding 3k windows.

    Raises:
      ValueError: when the (per-replica) batch is not a positive multiple of 3.
    """
    replicas = 1 if input_context is None else (
        input_context.num_replicas_in_sync)
    return train_config.triplets_per_batch(batch_size, replicas)


def _triplet_batch_to_windows(batch):
    # One copy of every window, straight into the interleaved layout: a
    # stack of [k, 3, ...] and a reshape cost a second pass, and a separate
    # map stage for it cost more than the copy (benchmarks/bench_pipeline.py).
    k = tf.shape(batch[samplers.ANCHOR])[0]
    first = 3 * tf.range(k)
    windows = tf.dynamic_stitch(
        [first, first + 1, first + 2],
        [batch[samplers.ANCHOR], batch[samplers.POSITIVE],
         batch[samplers.NEGATIVE]])
    static_k = batch[samplers.ANCHOR].shape[0]
    windows.set_shape([None if static_k is None else 3 * static_k] +
                      list(C.WINDOW_SHAPE))
    labels = batch[samplers.LABELS]
    labels = tf.reshape(labels, [-1] + labels.shape[2:].as_list())
    return windows, labels


def label_by_recording(triplet):
    """Relabels a triplet dict by recording: (anchor's, anchor's, negative's).

    The positive takes its anchor's recording (a mixing positive carries the
    negative's energy but is its anchor's example). See the layout above for
    why joint needs this.

    Args:
      triplet: a `make_triplets` dict, or a batch of them (`RECORDING_IDS`
        [..., 3]).

    Returns:
      the dict with int64 `LABELS` [..., 3] replaced.
    """
    triplet = dict(triplet)
    ids = triplet[samplers.RECORDING_IDS]
    triplet[samplers.LABELS] = samplers.recording_hash(
        tf.stack([ids[..., 0], ids[..., 0], ids[..., 2]], axis=-1))
    return triplet


def joint_labels_by_recording(config):
    """Whether `joint` labels its triplets by recording (a part does)."""
    return registry.get(config.sampler).stream == "mixture" and any(
        registry.get(name).labels == "recording"
        for name, _ in config.active_joint_samplers())


def _without_own_recording_negatives(triplets):
    # Under labels by recording, a noise, translation or mixing triplet whose
    # random negative comes from the anchor's own recording would call that
    # negative a positive: such triplets are dropped (a few percent).
    rid = triplets[samplers.RECORDING_IDS]
    keep = tf.not_equal(rid[:, 0], rid[:, 2])
    return {key: tf.boolean_mask(value, keep)
            for key, value in triplets.items()}


def batch_triplets(triplets, num_triplets, by_recording=False):
    """Batches triplet dicts into (windows [3k, 96, 64], labels) (see LAYOUT).

    Args:
      triplets: dataset of triplet dicts (`make_triplets`).
      num_triplets: k, triplets per batch; a short last batch is dropped.
      by_recording: relabel every triplet by recording
        (`label_by_recording`), once per batch rather than per triplet.

    Returns:
      tf.data.Dataset of (windows float32 [3k, 96, 64], labels int64 [3k] or
      float32 [3k, num_classes]).
    """
    def to_windows(batch):
        if by_recording:
            batch = label_by_recording(batch)
        return _triplet_batch_to_windows(batch)

    ds = triplets.batch(num_triplets, drop_remainder=True)
    return ds.map(to_windows, num_parallel_calls=tf.data.AUTOTUNE)


# -------------------------------------------------------------- decoding
def _derive_seed(seed, *tags):
    # Independent, reproducible seeds per stage and input pipeline.
    state = np.random.SeedSequence(
        [int(seed) % 2 ** 64] + [int(t) for t in tags]).generate_state(
            2, np.uint64)
    return int(state[0] >> np.uint64(1)), int(state[1] >> np.uint64(1))


def _stateless_base(seed, *tags):
    return tf.constant(_derive_seed(seed, *tags), tf.int64)


def shard_paths(file_pattern, input_context=None, skip_corrupt=False):
    """The shards this input pipeline reads.

    With an input context, pipeline i of n reads shards i, i + n, ... of the
    sorted listing, so pipelines see disjoint shards (and so disjoint
    recordings, whose chunks the extractor keeps in one shard). With fewer
    shards than pipelines it falls back to reading every shard and keeping
    every n-th record (logged), which is still disjoint but reads n times.

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      input_context: optional `tf.distribute.InputContext`.
      skip_corrupt: keep a shard with damaged framing or fewer records than
        its summary says (logged; the reader reads its intact records and
        counts the rest, `records.iter_shard`) instead of raising.

    Returns:
      (paths, record_shard): the shard paths to read and None, or
      (num_input_pipelines, input_pipeline_id) when records must be sharded.

    Raises:
      FileNotFoundError: when nothing matches.
      records.CorruptShardError: on a truncated shard unless `skip_corrupt`,
        or when the first record of every shard is damaged.
    """
    paths = records.list_shards(file_pattern)
    record_shard = None
    if input_context is not None and input_context.num_input_pipelines > 1:
        num = input_context.num_input_pipelines
        index = input_context.input_pipeline_id
        if len(paths) >= num:
            paths = paths[index::num]
        else:
            logging.warning(
                "%d shards for %d input pipelines: every pipeline reads all "
                "shards and keeps every %d-th record; write at least %d shards "
                "to read each once", len(paths), num, num, num)
            record_shard = (num, index)
    good = records.check_shards(paths, skip_corrupt)
    if not good:
        raise records.CorruptShardError(
            "every shard of %r this input pipeline reads is corrupt" %
            file_pattern)
    return good, record_shard


def _pipeline_id(input_context):
    return 0 if input_context is None else input_context.input_pipeline_id


def read_corpus(file_pattern, seed=0, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
                input_context=None, skip_corrupt=False):
    """Decoded records of this input pipeline's shards, shuffled (one pass).

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      seed: int seed of the shard and record shuffles.
      shuffle_buffer: window shuffle size; the record shuffle holds
        `shuffle_buffer // 32` records (1 to 256).
      input_context: optional `tf.distribute.InputContext`.
      skip_corrupt: skip corrupt records (each logged and counted in
        `records.SKIPPED`).

    Returns:
      tf.data.Dataset of `records.parse_example` dicts.
    """
    paths, record_shard = shard_paths(file_pattern, input_context,
                                      skip_corrupt=skip_corrupt)
    pid = _pipeline_id(input_context)
    ds = records.records_from_paths(
        paths, skip_corrupt=skip_corrupt, shuffle_files=True,
        seed=_derive_seed(seed, pid, _FILES)[0], deterministic=True)
    if record_shard is not None:
        ds = ds.shard(*record_shard)
    record_buffer = min(_MAX_RECORD_BUFFER,
                        max(1, shuffle_buffer // _RECORD_BUFFER_DIVISOR))
    if record_buffer > 1:
        ds = ds.shuffle(record_buffer,
                        seed=_derive_seed(seed, pid, _RECORDS)[0])
    return ds


def multi_hot(labels, num_classes):
    """Multi-hot vector of a record's class indices.

    Args:
      labels: int `[L]` class indices (may be empty).
      num_classes: vocabulary size C.

    Returns:
      float32 `[C]`, zeros for no labels. Running it raises
      InvalidArgumentError when a label is outside [0, C): one_hot would
      silently drop it.
    """
    labels = tf.convert_to_tensor(labels, tf.int64)
    message = "record label outside the manifest's vocabulary"
    checks = [
        tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64),
                                 message=message),
        tf.debugging.assert_non_negative(labels, message=message),
    ]
    with tf.control_dependencies(checks):
        hot = tf.reduce_sum(tf.one_hot(labels, num_classes, dtype=tf.float32),
                            axis=0)
    return tf.minimum(hot, 1.0)


def record_to_windows(record, num_classes=None):
    """Splits a decoded record into per-window fields (dict -> dict).

    Args:
      record: `records.parse_example` dict.
      num_classes: vocabulary size; when given, `LABELS` is the record's
        multi-hot repeated per window, otherwise labels are left out.

    Returns:
      dict of [W, ...] tensors: `LOGMEL` [W, 96, 64], `WINDOW_ID` int64,
      `RECORDING_ID` string, `RECORDING_HASH` int64, `START_TIME` float32 and
      optionally `LABELS` float32 [W, num_classes].
    """
    logmel = record[records.LOGMEL]
    w = tf.shape(logmel)[0]
    rid = record[records.RECORDING_ID]
    out = {
        samplers.LOGMEL: logmel,
        samplers.WINDOW_ID: samplers.window_id(
            rid, record[records.CHUNK_INDEX], tf.range(w, dtype=tf.int64)),
        samplers.RECORDING_ID: tf.fill([w], rid),
        samplers.RECORDING_HASH: tf.fill([w], samplers.recording_hash(rid)),
        samplers.START_TIME: tf.ensure_shape(record[records.START_TIMES],
                                             [None]),
    }
    if num_classes:
        hot = multi_hot(record[records.LABELS], num_classes)
        out[samplers.LABELS] = tf.tile(hot[None, :], [w, 1])
    return out


def record_to_proximity_elements(record, seed, dt):
    """Per-window proximity elements of a record (dict -> dict).

    Args:
      record: `records.parse_example` dict.
      seed: int [2] stateless seed of the partner draw.
      dt: proximity bound in seconds.

    Returns:
      dict of [W, ...] tensors: `LOGMEL` [W, 2, 96, 64] (window, partner),
      `HAS_PARTNER` bool, `RECORDING_ID`, `RECORDING_HASH`, `WINDOW_ID`.
    """
    windows = record_to_windows(record)
    partner, has_partner = samplers.proximity_partners(
        windows[samplers.START_TIME], seed, dt)
    logmel = windows[samplers.LOGMEL]
    return {
        samplers.LOGMEL: tf.stack([logmel, tf.gather(logmel, partner)], axis=1),
        samplers.HAS_PARTNER: has_partner,
        samplers.RECORDING_ID: windows[samplers.RECORDING_ID],
        samplers.RECORDING_HASH: windows[samplers.RECORDING_HASH],
        samplers.WINDOW_ID: windows[samplers.WINDOW_ID],
    }


def _flatten(per_record):
    # Round-robin over a few records: consecutive windows differ in recording.
    return per_record.interleave(
        tf.data.Dataset.from_tensor_slices, cycle_length=_INTERLEAVE_RECORDS,
        block_length=1)


def windows_from_records(record_ds, num_classes=None):
    """Flattens decoded records into window elements (see record_to_windows)."""
    per_record = record_ds.map(
        functools.partial(record_to_windows, num_classes=num_classes),
        num_parallel_calls=tf.data.AUTOTUNE)
    return _flatten(per_record)


def make_window_dataset(file_pattern, seed=0, shuffle_buffer=0,
                        input_context=None, num_classes=None,
                        skip_corrupt=False):
    """Decoded, flattened windows (one pass): the parse-only stream.

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      seed: int seed.
      shuffle_buffer: window shuffle size; 0 keeps shard order (no record or
        window shuffle).
      input_context: optional `tf.distribute.InputContext`.
      num_classes: include multi-hot labels of this size.
      skip_corrupt: skip corrupt records (each logged and counted in
        `records.SKIPPED`).

    Returns:
      tf.data.Dataset of window dicts (`record_to_windows` fields, unbatched).
    """
    if shuffle_buffer:
        record_ds = read_corpus(file_pattern, seed, shuffle_buffer,
                                input_context, skip_corrupt)
    else:
        paths, record_shard = shard_paths(file_pattern, input_context,
                                          skip_corrupt)
        record_ds = records.records_from_paths(paths, skip_corrupt=skip_corrupt)
        if record_shard is not None:
            record_ds = record_ds.shard(*record_shard)
    ds = windows_from_records(record_ds, num_classes)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=_derive_seed(
            seed, _pipeline_id(input_context), _WINDOWS)[0])
    return ds


# --------------------------------------------------------------- sampling
def _drop_valid(triplets):
    return {k: v for k, v in triplets.items() if k != samplers.VALID}


def _finish(triplets, as_windows):
    # as_windows: lay the batch out for the loss inside the sampling map
    # itself, saving a map stage per batch.
    triplets = _drop_valid(triplets)
    return _triplet_batch_to_windows(triplets) if as_windows else triplets


def _split_pairs(tensor, k):
    # [2k, ...] -> [k, 2, ...]: consecutive stream elements pair up (a
    # reshape, no copy). k None: a last, short batch; an odd element is left
    # out.
    if k is None:
        even = tf.shape(tensor)[0] // 2 * 2
        tensor = tensor[:even]
        k = -1
    return tf.reshape(tensor, [k, 2] + tensor.shape[1:].as_list())


def _pair_batches(spec, config, windows, base_seed, k, drop_remainder,
                  as_windows):
    # A "pairs" sampler (noise, translation, mixing, ...): k pairs of
    # consecutive shuffled windows per vectorised call.
    fn = functools.partial(spec.fn, **spec.kwargs(config))

    def sample(index, batch):
        pairs = {key: _split_pairs(value, k if drop_remainder else None)
                 for key, value in batch.items()}
        seed = samplers.element_seed(base_seed, index,
                                     pairs[samplers.WINDOW_ID][0, 0])
        return _finish(fn(pairs, seed), as_windows)

    batches = windows.batch(2 * k, drop_remainder=drop_remainder).enumerate()
    return batches.map(sample, num_parallel_calls=tf.data.AUTOTUNE)


def _valid_pair_batches(pairs, is_valid, sampler_fn, k, drop_remainder,
                        as_windows):
    # The validity test is a handful of ops per pair; the sampler runs once
    # per batch of valid pairs.
    ds = pairs.filter(is_valid).batch(k, drop_remainder=drop_remainder)
    return ds.map(lambda batch: _finish(sampler_fn(batch), as_windows),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _proximity_batches(spec, config, record_ds, base_seed, window_seed, k,
                       drop_remainder, as_windows):
    dt = float(config.proximity_dt)
    if dt <= C.WINDOW_SECONDS:
        logging.warning(
            "--proximity_dt=%g s is not more than one window (%g s): no two "
            "consecutive windows qualify, so proximity yields no triplets",
            dt, C.WINDOW_SECONDS)

    def elements(index, record):
        salt = samplers.window_id(record[records.RECORDING_ID],
                                  record[records.CHUNK_INDEX], 0)
        seed = samplers.element_seed(base_seed, index, salt)
        return record_to_proximity_elements(record, seed, dt)

    per_record = record_ds.enumerate().map(
        elements, num_parallel_calls=tf.data.AUTOTUNE)
    # An element is a window and its partner: half as many fit the memory.
    pairs = _flatten(per_record).shuffle(max(1, config.shuffle_buffer // 2),
                                         seed=window_seed)
    return _valid_pair_batches(pairs.batch(2, drop_remainder=True),
                               samplers.proximity_pair_valid,
                               spec.fn, k, drop_remainder,
                               as_windows)


def _supervised_batches(spec, config, paths, record_shard, seed, pid,
                        num_classes, k, drop_remainder, as_windows, repeat,
                        skip_corrupt):
    # Drawn by index from the whole class, not paired out of the shuffle
    # buffer: see class_index's docstring for why.
    index = class_index.load(paths, num_classes, skip_corrupt, record_shard)
    reader = class_index.WindowReader(index)
    sampler_id = samplers.sampler_index(spec.name)
    seed_words = list(_derive_seed(seed, pid, sampler_id, _ELEMENTS))

    def draw(batch_index, size):
        rng = np.random.default_rng(seed_words + [int(batch_index)])
        _, rows, windows = class_index.draw_triplets(
            index, rng, int(size), config.class_sampling)
        logmel = reader.read(rows, windows).reshape(
            (int(size), 3) + C.WINDOW_SHAPE)
        labels = index.labels_multi_hot(rows).reshape(int(size), 3,
                                                      num_classes)
        return (logmel[:, 0], logmel[:, 1], logmel[:, 2], labels,
                index.recording_ids[rows].astype(object).astype(bytes))

    def batch(batch_index, size):
        anchor, positive, negative, labels, rids = tf.numpy_function(
            draw, [batch_index, size],
            [tf.float32, tf.float32, tf.float32, tf.float32, tf.string],
            stateful=False)
        static_k = k if drop_remainder else None
        for window in (anchor, positive, negative):
            window.set_shape([static_k] + list(C.WINDOW_SHAPE))
        labels.set_shape([static_k, 3, num_classes])
        rids.set_shape([static_k, 3])
        triplets = {
            samplers.ANCHOR: anchor, samplers.POSITIVE: positive,
            samplers.NEGATIVE: negative, samplers.LABELS: labels,
            samplers.RECORDING_IDS: rids,
            samplers.SAMPLER: tf.fill(tf.shape(rids)[:1],
                                      tf.constant(sampler_id, tf.int32)),
        }
        return _finish(triplets, as_windows)

    # One pass: as many triplets as half the labelled windows (each window is
    # an anchor or a positive about once per pass on average).
    per_pass = index.total_windows // 2
    sizes = [k] * (per_pass // k)
    if not drop_remainder and per_pass % k:
        sizes.append(per_pass % k)
    if repeat:
        numbers = tf.data.Dataset.range(2 ** 62)
        sizes_ds = tf.data.Dataset.from_tensor_slices(
            tf.constant(sizes or [k], tf.int64)).repeat()
    else:
        numbers = tf.data.Dataset.range(len(sizes))
        sizes_ds = tf.data.Dataset.from_tensor_slices(
            tf.constant(sizes, tf.int64) if sizes else
            tf.zeros([0], tf.int64))
    return tf.data.Dataset.zip((numbers, sizes_ds)).map(
        batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _sampler_batches(name, config, file_pattern, seed, input_context,
                     num_classes, skip_corrupt, k, drop_remainder,
                     as_windows=False, repeat=False):
    """One pass of triplet batches of one (non-joint) sampler.

    Batches are triplet dicts, or with `as_windows` the (windows, labels)
    layout of this module's docstring. `repeat` matters only to supervised,
    which draws by index and so repeats by itself; the others make one pass.
    """
    pid = _pipeline_id(input_context)
    tag = samplers.sampler_index(name)
    spec = registry.get(name)
    if spec.stream == "class_index":
        paths, record_shard = shard_paths(file_pattern, input_context,
                                          skip_corrupt)
        return _supervised_batches(spec, config, paths, record_shard, seed,
                                   pid, num_classes, k, drop_remainder,
                                   as_windows, repeat, skip_corrupt)
    # Each sampler of a joint mixture reads with its own seeds, so the
    # streams it mixes are not copies of one another.
    record_ds = read_corpus(file_pattern, _derive_seed(seed, tag)[0],
                            config.shuffle_buffer, input_context, skip_corrupt)
    base_seed = _stateless_base(seed, pid, tag, _ELEMENTS)
    window_seed = _derive_seed(seed, pid, tag, _WINDOWS)[0]
    if spec.stream == "proximity":
        return _proximity_batches(spec, config, record_ds, base_seed,
                                  window_seed, k, drop_remainder, as_windows)
    windows = windows_from_records(record_ds).shuffle(config.shuffle_buffer,
                                                      seed=window_seed)
    return _pair_batches(spec, config, windows, base_seed, k, drop_remainder,
                         as_windows)


def _resolve_num_classes(file_pattern, num_classes):
    if num_classes:
        return int(num_classes)
    n = len(records.corpus_classes(file_pattern))
    if not n:
        raise ValueError("--sampler=supervised needs num_classes or a corpus "
                         "manifest with a class vocabulary (%s)" % (file_pattern,))
    return n


def make_triplets(file_pattern, sampler_config, seed=0, input_context=None,
                  num_classes=None, skip_corrupt=False, repeat=True):
    """Unbatched triplet dicts of a sampler (decode + sample).

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      sampler_config: `SamplerConfig`.
      seed: int; one seed gives one sequence of triplets.
      input_context: optional `tf.distribute.InputContext`: this pipeline
        then reads only its share of the shards.
      num_classes: vocabulary size for `supervised` (default: the manifest's
        class count).
      skip_corrupt: skip corrupt records (each logged and counted in
        `records.SKIPPED`) instead of raising.
      repeat: repeat indefinitely (reshuffling each pass). One pass that
        yields no triplet (e.g. proximity on single-window recordings) ends
        the dataset instead of spinning forever.

    Returns:
      tf.data.Dataset of dicts: `ANCHOR`, `POSITIVE`, `NEGATIVE` float32
      [96, 64]; `LABELS` int64 [3] (float32 [3, num_classes] for
      supervised); `SAMPLER` int32 (index into `options.SAMPLERS`);
      `RECORDING_IDS` string [3].
    """
    sampler_config.validate()
    name = sampler_config.sampler
    stream = registry.get(name).stream
    if stream == "class_index":
        num_classes = _resolve_num_classes(file_pattern, num_classes)
        # Draws by index: repeats by itself.
        return _sampler_batches(name, sampler_config, file_pattern, seed,
                                input_context, num_classes, skip_corrupt,
                                _SAMPLE_CHUNK, drop_remainder=False,
                                repeat=repeat).unbatch()
    if stream != "mixture":
        ds = _sampler_batches(name, sampler_config, file_pattern, seed,
                              input_context, num_classes, skip_corrupt,
                              _SAMPLE_CHUNK, drop_remainder=False).unbatch()
        return ds.repeat() if repeat else ds
    by_recording = joint_labels_by_recording(sampler_config)
    active = sampler_config.active_joint_samplers()
    # Every part has its own buffers; together they hold shuffle_buffer.
    part_config = dataclasses.replace(
        sampler_config,
        shuffle_buffer=max(1, sampler_config.shuffle_buffer // len(active)))
    parts, weights = [], []
    for part, weight in active:
        ds = _sampler_batches(part, part_config, file_pattern, seed,
                              input_context, None, skip_corrupt,
                              _SAMPLE_CHUNK, drop_remainder=False)
        if by_recording and registry.get(part).labels != "recording":
            ds = ds.map(_without_own_recording_negatives,
                        num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.unbatch()
        parts.append(ds.repeat() if repeat else ds)
        weights.append(weight)
    if len(parts) == 1:
        return parts[0]
    # Mixed per triplet, so every batch holds every sampler in proportion. A
    # part whose pass is empty ends and the others carry on with their
    # weights renormalised.
    return tf.data.Dataset.sample_from_datasets(
        parts, weights=weights,
        seed=_derive_seed(seed, _pipeline_id(input_context), _JOINT)[0],
        stop_on_empty_dataset=False)


def make_triplet_dataset(file_pattern, sampler_config, batch_size, seed=0,
                         input_context=None, num_classes=None,
                         skip_corrupt=False, repeat=True):
    """The training input: batches of triplet windows and their labels.

    Usable directly or as the `dataset_fn` body of
    `strategy.distribute_datasets_from_function`.

    Args:
      file_pattern: corpus directory, glob or comma-separated globs.
      sampler_config: `SamplerConfig`.
      batch_size: global batch in windows, a multiple of 3 (per replica too).
      seed: int; one seed gives identical batches, another seed different
        ones.
      input_context: optional `tf.distribute.InputContext`: disjoint shards per
        input pipeline and the per-replica batch size.
      num_classes: vocabulary size for `supervised` (default: the manifest's).
      skip_corrupt: skip corrupt records (each logged and counted in
        `records.SKIPPED`) instead of raising.
      repeat: repeat indefinitely (training) or make one pass.

    Returns:
      tf.data.Dataset of (windows float32 [B, 96, 64], labels) with the layout
      in this module's docstring; labels int64 [B], or float32
      [B, num_classes] for `supervised`.

    Raises:
      ValueError: on a bad batch size or config, or a supervised corpus with no
        vocabulary.
      FileNotFoundError: when no shard matches.
    """
    k = triplets_per_batch(batch_size, input_context)
    sampler_config.validate()
    name = sampler_config.sampler
    stream = registry.get(name).stream
    if stream == "mixture":
        triplets = make_triplets(file_pattern, sampler_config, seed=seed,
                                 input_context=input_context,
                                 skip_corrupt=skip_corrupt, repeat=repeat)
        ds = batch_triplets(
            triplets, k,
            by_recording=joint_labels_by_recording(sampler_config))
    else:
        if stream == "class_index":
            num_classes = _resolve_num_classes(file_pattern, num_classes)
        # Sampled a batch at a time: the triplets of a batch come out of one
        # vectorised sampler call, already in place.
        ds = _sampler_batches(name, sampler_config, file_pattern, seed,
                              input_context, num_classes, skip_corrupt, k,
                              drop_remainder=True, as_windows=True,
                              repeat=repeat)
        if repeat and stream != "class_index":
            ds = ds.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    data_options = tf.data.Options()
    data_options.deterministic = True
    return ds.with_options(data_options)
