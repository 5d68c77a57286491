"""Triplet samplers of the paper (section 3.2) as pure TensorFlow functions.

Two layers, both usable eagerly and inside `tf.data.Dataset.map`:

* Augmentation ops on log-mel windows `[..., T, F]` (T, F = 96, 64)
  (`noise_positive`, `translation_positive`, `mixing_positive`,
  `proximity_partners`). Every random op is stateless and
  takes an explicit `seed` (int32/int64 `[2]`), so the same seed gives the same
  result eagerly and in a traced `Dataset.map`, on any machine.
* Sampler functions `dict -> dict` (`noise_sampler`, `translation_sampler`,
  `mixing_sampler`, `proximity_sampler`): each takes k
  *pairs* of stream elements (the input pipeline groups its shuffled stream
  two by two, so the second element of a pair is a random other example; no
  corpus is held in memory) and returns a batch of k triplets: a dict with
  the keys `ANCHOR`, `POSITIVE`, `NEGATIVE`, `LABELS`, `SAMPLER`,
  `RECORDING_IDS` and `VALID`. They work on whole batches because a tf.data
  map pays a fixed cost per op call: per-pair calls cost more than the
  arithmetic (see benchmarks/bench_pipeline.py). `proximity_pair_valid` says
  which pairs make a triplet; the pipeline keeps only those. The supervised
  sampler draws by class index instead of pairing a stream
  (`class_index`).

Energy-domain math: log-mels are `log(mel + LOG_OFFSET)`, so every
augmentation that acts on energies works on `exp(logmel) - LOG_OFFSET`
(clipped at 0, see `ENERGY_FLOOR`) and takes the log again afterwards.
Translation only moves cells, so it works on log-mels directly (bit-exact),
filling vacated bins with `log(LOG_OFFSET)`, which is zero energy.

Labels (what the in-batch semi-hard miner treats as "same"):

* noise, translation, mixing: anchor and positive carry the window id of the
  source window (a stable 63-bit hash of recording id, chunk and window index);
  the negative its own window id.
* proximity: all three carry the hash of their recording id, so two windows of
  one recording in a batch are never mined as each other's negatives.
* supervised: float32 multi-hot `[num_classes]` per window.
"""

import math

import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import options
from triplet_audio.features import records

# Keys of a window element of the flattened stream (see
# pipeline.record_to_windows). Record-schema keys are reused where they mean
# the same thing.
LOGMEL = records.LOGMEL
RECORDING_ID = records.RECORDING_ID
LABELS = records.LABELS
WINDOW_ID = "window_id"
RECORDING_HASH = "recording_hash"
START_TIME = "start_time"
HAS_PARTNER = "has_partner"

# Keys of a triplet dict.
ANCHOR = "anchor"
POSITIVE = "positive"
NEGATIVE = "negative"
SAMPLER = "sampler"
RECORDING_IDS = "recording_ids"
VALID = "valid"

ZERO_ENERGY_LOGMEL = math.log(C.LOG_OFFSET)
"""The log-mel value of a cell with zero energy."""

ENERGY_FLOOR = C.LOG_OFFSET * 2.0 ** -20
"""Energies at or below this (~1e-8, ten float32 ulps of LOG_OFFSET) are zero:
they are what float32 rounding leaves of a zero-energy cell."""

_HASH_BUCKETS = 2 ** 63 - 1


def sampler_index(name):
    """Index of a sampler name in `options.SAMPLERS` (the `SAMPLER` value)."""
    return options.SAMPLERS.index(name)


# ------------------------------------------------------------------ ids
def window_id(recording_id, chunk_index, window_index):
    """Stable 63-bit id of a window.

    The string hashed is "window:<recording_id>#<chunk>#<index>"; the last two
    fields are integers, so distinct windows give distinct strings whatever
    the recording id contains, and the "window:" prefix keeps them apart from
    `recording_hash` strings.

    Args:
      recording_id: string tensor (broadcast against `window_index`).
      chunk_index: int tensor, the record's chunk index.
      window_index: int tensor, window index within the chunk.

    Returns:
      int64 tensor in [0, 2**63 - 1).
    """
    key = tf.strings.join([
        "window:", recording_id, "#",
        tf.strings.as_string(tf.cast(chunk_index, tf.int64)), "#",
        tf.strings.as_string(tf.cast(window_index, tf.int64))])
    return tf.strings.to_hash_bucket_fast(key, _HASH_BUCKETS)


def recording_hash(recording_id):
    """Stable 63-bit id of a recording (all its chunks share it).

    Args:
      recording_id: string tensor.

    Returns:
      int64 tensor of the same shape.
    """
    return tf.strings.to_hash_bucket_fast(
        tf.strings.join(["recording:", recording_id]), _HASH_BUCKETS)


def element_seed(base_seed, index, salt=None):
    """Derives the stateless seed of one stream element (a record or a batch).

    Args:
      base_seed: int `[2]` seed of the stream.
      index: int scalar, the element's position (from `Dataset.enumerate`).
      salt: optional int64 scalar mixed in as well (the pipeline passes a
        window id, so a pass that restarts `enumerate` at 0 still draws fresh
        randomness for different windows at the same position).

    Returns:
      int64 `[2]` seed.
    """
    seed = tf.random.experimental.stateless_fold_in(
        tf.cast(base_seed, tf.int64), tf.cast(index, tf.int64))
    if salt is not None:
        seed = tf.random.experimental.stateless_fold_in(
            seed, tf.cast(salt, tf.int64))
    return seed


def _sub_seed(seed, tag):
    # One independent stream per random draw of an op, from the op's seed.
    return tf.random.experimental.stateless_fold_in(seed, tag)


# ---------------------------------------------------------- energy domain
def _energy_from_exp(exp_logmel):
    # exp(log(0 + offset)) comes back within a float32 ulp (~1e-9) of the
    # offset, on either side. Without the floor a silent (zero-padded) window
    # would have a tiny nonzero total energy made of rounding noise, and the
    # mixing sampler would divide by it and add that noise, rescaled to
    # alpha * E(x_a), to the positive. Subtracting the floor as well (1e-8,
    # invisible after the log) makes this two elementwise passes, not four.
    return tf.nn.relu(exp_logmel - (C.LOG_OFFSET + ENERGY_FLOOR))


def logmel_to_energy(logmel):
    """Linear mel energies from log-mels: `max(exp(x) - LOG_OFFSET, 0)`.

    Energies at or below `ENERGY_FLOOR` are returned as exactly 0, and the
    floor is subtracted from the others (an error of ~1e-8 in energy).
    """
    return _energy_from_exp(tf.exp(logmel))


def _energy_plus_offset(exp_logmel):
    # energy + LOG_OFFSET in one pass: exp(x) itself, with rounding below the
    # offset clipped (a zero-energy cell). Within ENERGY_FLOOR of the exact
    # value, so the log is the same to ~1e-6.
    return tf.maximum(exp_logmel, C.LOG_OFFSET)


def energy_to_logmel(energy):
    """Log-mels from linear mel energies: `log(energy + LOG_OFFSET)`."""
    return tf.math.log(energy + C.LOG_OFFSET)


# ------------------------------------------------------------------- ops
def half_normal(shape, seed):
    """Draws |z| with z ~ N(0, 1), iid, by Box-Muller on stateless uniforms.

    The same law as `tf.abs(tf.random.stateless_normal(shape, seed))` at
    about half the cost on CPU (7 against 13 ns per value on one core): TF's
    normal sampler transforms its uniforms one value at a time, where these
    elementwise ops are vectorised. Each pair of uniforms (u, v) gives the
    pair r |cos(theta)|, r |sin(theta)| with r = sqrt(-2 log(1 - u)) and
    theta = v pi / 2: a quarter turn is enough, since only |z| is wanted.
    TF's float32 uniforms are multiples of 2**-23 below 1, so draws are
    capped at 5.65 (P(|z| > 5.65) ~ 2e-8).

    Args:
      shape: 1-D int shape of the output.
      seed: int `[2]` stateless seed.

    Returns:
      float32 tensor of `shape`, values >= 0.
    """
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
    count = tf.reduce_prod(shape)
    pairs = (count + 1) // 2
    uniform = tf.random.stateless_uniform(tf.stack([2, pairs]), seed,
                                          dtype=tf.float32)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-uniform[0]))
    angle = (0.5 * math.pi) * uniform[1]
    draws = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], 0)
    return tf.reshape(draws[:count], shape)


def noise_positive(logmel, seed, sigma):
    """Gaussian-noise positive: `x_tf * (1 + |eps_tf|)` in the energy domain.

    Args:
      logmel: float32 `[..., T, F]` log-mel window(s).
      seed: int `[2]` stateless seed.
      sigma: standard deviation of eps ~ N(0, sigma^2).

    Returns:
      float32 tensor like `logmel`.
    """
    logmel = tf.convert_to_tensor(logmel, tf.float32)
    abs_eps = sigma * half_normal(tf.shape(logmel), seed)
    exp_logmel = tf.exp(logmel)
    # log(x (1 + |eps|) + offset), written as log(x + offset + x |eps|) to
    # save passes over the window; the normal draws are most of the cost.
    return tf.math.log(_energy_plus_offset(exp_logmel) +
                       _energy_from_exp(exp_logmel) * abs_eps)


def translation_shifts(seed, max_shift, shape=()):
    """The shifts `translation_positive` draws for a seed.

    Args:
      seed: int `[2]` stateless seed.
      max_shift: S, the largest frequency shift in bins.
      shape: shape of the shifts: the leading dimensions of the windows.

    Returns:
      (time_shift, freq_shift): int32 tensors of `shape`, time uniform in
      [0, T - 1], frequency uniform in [-S, S].
    """
    time_shift = tf.random.stateless_uniform(
        shape, _sub_seed(seed, 1), minval=0, maxval=C.WINDOW_FRAMES,
        dtype=tf.int32)
    freq_shift = tf.random.stateless_uniform(
        shape, _sub_seed(seed, 2), minval=-max_shift, maxval=max_shift + 1,
        dtype=tf.int32)
    return time_shift, freq_shift


def translate(logmel, time_shift, freq_shift):
    """Circular time shift, then truncated frequency shift with zero energy.

    Output cell `[t, f]` of each window is its input cell
    `[(t - time_shift) mod T, f - freq_shift]`, or `ZERO_ENERGY_LOGMEL` where
    `f - freq_shift` falls outside `[0, F)` (as `np.roll` along time, then a
    shift along frequency).

    Args:
      logmel: float32 `[..., T, F]`.
      time_shift: int tensor of the leading shape `[...]`, in [0, T).
      freq_shift: int tensor of the leading shape; a shift of F or more in
        either direction leaves only zero energy.

    Returns:
      float32 `[..., T, F]`.
    """
    logmel = tf.convert_to_tensor(logmel, tf.float32)
    shape = tf.shape(logmel)
    x = tf.reshape(logmel, (-1,) + C.WINDOW_SHAPE)
    time_shift = tf.reshape(tf.cast(time_shift, tf.int32), [-1, 1])
    freq_shift = tf.reshape(tf.cast(freq_shift, tf.int32), [-1, 1])
    # Both shifts are gathers of whole rows with a per-window index map:
    # exact (values are only moved) and one op for a batch of windows, each
    # with its own shifts. Frequency rows are reached through a transpose:
    # gathering single cells along the last axis cost 5x as much.
    frames = tf.range(C.WINDOW_FRAMES)[None, :]
    x = tf.gather(x, (frames - time_shift) % C.WINDOW_FRAMES, axis=1,
                  batch_dims=1)
    # [n, F + 1, T]: band F is a zero-energy row for vacated bins.
    x = tf.pad(tf.transpose(x, [0, 2, 1]), [[0, 0], [0, 1], [0, 0]],
               constant_values=ZERO_ENERGY_LOGMEL)
    source = tf.range(C.NUM_MEL_BANDS)[None, :] - freq_shift
    source = tf.where((source >= 0) & (source < C.NUM_MEL_BANDS), source,
                      C.NUM_MEL_BANDS)
    x = tf.transpose(tf.gather(x, source, axis=1, batch_dims=1), [0, 2, 1])
    out = tf.reshape(x, shape)
    return tf.ensure_shape(out, logmel.shape)


def translation_positive(logmel, seed, max_shift):
    """Time/frequency translation positive, shifts drawn from `seed`.

    Args:
      logmel: float32 `[..., T, F]`; each window gets its own shifts.
      seed: int `[2]` stateless seed.
      max_shift: S, the largest frequency shift in bins.

    Returns:
      float32 `[..., T, F]`.
    """
    logmel = tf.convert_to_tensor(logmel, tf.float32)
    time_shift, freq_shift = translation_shifts(seed, max_shift,
                                                tf.shape(logmel)[:-2])
    return translate(logmel, time_shift, freq_shift)


def mixing_positive(anchor, negative, alpha):
    """Example-mixing positive `x_a + alpha * E(x_a) / E(x_n) * x_n` (energies).

    Args:
      anchor: float32 `[..., T, F]` log-mels of x_a.
      negative: float32 `[..., T, F]` log-mels of x_n (same shape).
      alpha: mixing weight.

    Returns:
      float32 `[..., T, F]` log-mels. A silent negative (E(x_n) = 0) adds
      nothing, so the positive is the anchor (in the energy domain).
    """
    exp_a = tf.exp(tf.convert_to_tensor(anchor, tf.float32))
    e_n = logmel_to_energy(tf.convert_to_tensor(negative, tf.float32))
    # float32 totals are enough: the tree reduction's relative error (~1e-6)
    # moves the positive's log-mels by ~1e-7.
    total_a = tf.reduce_sum(_energy_from_exp(exp_a), axis=[-2, -1],
                            keepdims=True)
    total_n = tf.reduce_sum(e_n, axis=[-2, -1], keepdims=True)
    scale = alpha * tf.math.divide_no_nan(total_a, total_n)
    return tf.math.log(_energy_plus_offset(exp_a) + scale * e_n)


def proximity_partners(start_times, seed, dt):
    """Draws a temporal-proximity positive for every window of a record.

    The partner of window i is uniform among the other windows j of the record
    with `|t_i - t_j| < dt`.

    Args:
      start_times: float32 `[W]` window start times (seconds).
      seed: int `[2]` stateless seed.
      dt: the proximity bound in seconds (may be inf).

    Returns:
      (partner, has_partner): int32 `[W]` index of the partner of each window
      (meaningless where it has none) and bool `[W]`.
    """
    t = tf.convert_to_tensor(start_times, tf.float32)
    n = tf.shape(t)[0]
    distance = tf.abs(t[:, None] - t[None, :])
    allowed = tf.logical_and(distance < dt,
                             tf.logical_not(tf.eye(n, dtype=tf.bool)))
    # argmax of iid uniforms restricted to the allowed set is uniform on it.
    uniform = tf.random.stateless_uniform([n, n], seed, dtype=tf.float32)
    score = tf.where(allowed, uniform, -1.0)
    partner = tf.argmax(score, axis=1, output_type=tf.int32)
    return partner, tf.reduce_any(allowed, axis=1)


# ------------------------------------------------------------- samplers
def _pick(values, index):
    # values [k, 2, ...], index [k] in {0, 1} -> values[i, index[i]].
    return tf.gather(values, index, axis=1, batch_dims=1)


def _sampler_ids(name, like):
    return tf.fill(tf.shape(like)[:1], tf.constant(sampler_index(name),
                                                   tf.int32))


def augmentation_triplets(pairs, positive, name):
    """The triplet dict of a "pairs" sampler, given its positives.

    Window 0 of each pair is the anchor, window 1 (a random other example)
    the negative; anchor and positive carry the anchor's window id.

    Args:
      pairs: k pairs of windows (`LOGMEL` `[k, 2, T, F]`, `WINDOW_ID` and
        `RECORDING_ID` `[k, 2]`).
      positive: float32 `[k, T, F]`, the positive of each anchor.
      name: the sampler's registered name (its `SAMPLER` id).

    Returns:
      triplet batch dict, as for `noise_sampler`.
    """
    ids = pairs[WINDOW_ID]
    rid = pairs[RECORDING_ID]
    return {
        ANCHOR: pairs[LOGMEL][:, 0],
        POSITIVE: positive,
        NEGATIVE: pairs[LOGMEL][:, 1],
        LABELS: tf.stack([ids[:, 0], ids[:, 0], ids[:, 1]], axis=1),
        SAMPLER: _sampler_ids(name, ids),
        RECORDING_IDS: tf.stack([rid[:, 0], rid[:, 0], rid[:, 1]], axis=1),
        VALID: tf.ones_like(ids[:, 0], dtype=tf.bool),
    }


def noise_sampler(pairs, seed, sigma):
    """Gaussian-noise triplets from pairs of windows.

    Args:
      pairs: window dicts stacked as k pairs: `LOGMEL` `[k, 2, T, F]`,
        `WINDOW_ID` `[k, 2]`, `RECORDING_ID` `[k, 2]`. Window 0 of a pair is
        the anchor, window 1 the negative.
      seed: int `[2]` stateless seed (of the whole batch).
      sigma: noise standard deviation.

    Returns:
      triplet batch dict: `ANCHOR`, `POSITIVE`, `NEGATIVE` `[k, T, F]`,
      `LABELS` int64 `[k, 3]`, `SAMPLER` int32 `[k]`, `RECORDING_IDS` `[k, 3]`,
      `VALID` bool `[k]`.
    """
    return augmentation_triplets(
        pairs, noise_positive(pairs[LOGMEL][:, 0], seed, sigma), "noise")


def translation_sampler(pairs, seed, max_shift):
    """Time/frequency translation triplets from pairs of windows.

    Args:
      pairs: k pairs of windows, as for `noise_sampler`.
      seed: int `[2]` stateless seed (of the whole batch).
      max_shift: S, the largest frequency shift in bins.

    Returns:
      triplet batch dict, as for `noise_sampler`.
    """
    return augmentation_triplets(
        pairs, translation_positive(pairs[LOGMEL][:, 0], seed, max_shift),
        "translation")


def mixing_sampler(pairs, seed, alpha):
    """Example-mixing triplets: window 0 of a pair is x_a, window 1 is x_n.

    Args:
      pairs: k pairs of windows, as for `noise_sampler`.
      seed: unused (mixing is deterministic); kept so every sampler has the
        signature `(pairs, seed, ...)`.
      alpha: mixing weight.

    Returns:
      triplet batch dict, as for `noise_sampler`; the positive carries x_a's
      window id.
    """
    del seed
    return augmentation_triplets(
        pairs, mixing_positive(pairs[LOGMEL][:, 0], pairs[LOGMEL][:, 1],
                               alpha), "mixing")


def proximity_pair_valid(pairs):
    """Whether a pair of proximity elements makes a triplet.

    Args:
      pairs: proximity elements stacked by two along the last leading axis
        (`HAS_PARTNER` `[..., 2]`, `RECORDING_ID` `[..., 2]`).

    Returns:
      bool `[...]`: at least one element has a partner and the two come from
      different recordings.
    """
    rid = pairs[RECORDING_ID]
    return tf.logical_and(tf.reduce_any(pairs[HAS_PARTNER], axis=-1),
                          tf.not_equal(rid[..., 0], rid[..., 1]))


def proximity_sampler(pairs, seed=None):
    """Temporal-proximity triplets from pairs of proximity elements.

    A proximity element (see `pipeline.record_to_proximity_elements`) holds a
    window and a partner from its record (`LOGMEL` `[2, T, F]`), `HAS_PARTNER`
    and its recording's id and hash. In each pair, the first element with a
    partner gives anchor and positive; the first window of the other element
    is the negative. So a window without a partner (a single-window record, or
    no other window within dt) is never an anchor but can still be a
    negative.

    Args:
      pairs: k pairs of proximity elements (`LOGMEL` `[k, 2, 2, T, F]`,
        `HAS_PARTNER` `[k, 2]`, `RECORDING_ID` `[k, 2]`, `RECORDING_HASH`
        `[k, 2]`).
      seed: unused (the partners were drawn per record upstream).

    Returns:
      triplet batch dict (labels are recording hashes); `VALID` is
      `proximity_pair_valid`.
    """
    del seed
    a = tf.where(pairs[HAS_PARTNER][:, 0], 0, 1)
    n = 1 - a
    chosen = _pick(pairs[LOGMEL], a)  # [k, 2, T, F]: window and partner
    rid = pairs[RECORDING_ID]
    rhash = pairs[RECORDING_HASH]
    rid_a, rid_n = _pick(rid, a), _pick(rid, n)
    hash_a, hash_n = _pick(rhash, a), _pick(rhash, n)
    return {
        ANCHOR: chosen[:, 0],
        POSITIVE: chosen[:, 1],
        NEGATIVE: _pick(pairs[LOGMEL][:, :, 0], n),
        LABELS: tf.stack([hash_a, hash_a, hash_n], axis=1),
        SAMPLER: _sampler_ids("proximity", rhash),
        RECORDING_IDS: tf.stack([rid_a, rid_a, rid_n], axis=1),
        VALID: proximity_pair_valid(pairs),
    }
