"""Triplet loss with within-batch semi-hard negative mining (FaceNet).

The paper's loss (Jansen et al., eq. 1) is the triplet hinge

    [ d(a, p) - d(a, n) + margin ]_+ ,   d = squared Euclidean distance,

where, for every anchor-positive pair (a, p) of the batch, the negative n is
re-chosen among all examples of the batch that are not positives of a (and
not a itself):

  * the closest negative that is still farther than the positive
    (d(a, n) > d(a, p), strictly): the "semi-hard" negative;
  * if no negative is farther, the farthest negative of a (all of them are
    then closer than the positive): the usual fallback.

The loss is the mean over every anchor-positive pair whose anchor has at
least one negative. Pairs whose anchor has no negative at all (every other
example of the batch shares a label with it, e.g. a single-class batch) have
no triplet, so they are left out of the mean; a batch with no counted pair
has loss 0 (not NaN) and zero gradients.

Mining in O(B^2) memory. The textbook form compares d(a, n) with d(a, p) for
every (a, p, n) and needs B x B x B masks. Here every anchor's row of the
distance matrix is sorted once (B x B). Along a sorted row, a running count
of negatives gives, for each example j, the number of negatives n of the
anchor with d(a, n) <= d(a, j): the running count at the last element tied
with d(a, j) (a segment max over the tie group, so the result does not
depend on how the sort orders equal distances). That count r is the rank of
the semi-hard negative among the anchor's negatives sorted by distance, and
r == (number of negatives) means there is none, in which case rank
(number of negatives - 1) is the fallback. The same sorted row, compacted
to its negatives (a scatter by running count), turns the rank into an
example index. One B x B sort, so O(B^2 log B) time; everything else is
B x B cumulative sums, segment reductions and gathers. It compiles under XLA
(where `tf.searchsorted` would lower to a B x B x B comparison). The mined
distances are gathered from the distance matrix, so gradients flow to the
anchor, the positive and the mined negative only.

Everything is computed in float32 whatever the embedding dtype (float16 and
bfloat16 distances lose the ordering that mining depends on); the loss is
float32.

Mining uses the examples of the batch it is given. Under `tf.distribute`,
called in replica context, that is the replica's local batch, as in FaceNet
and tf-addons ("local" mining).

Cross-replica ("global") mining: `cross_replica_semi_hard_triplet_loss`,
called in replica context, mines every anchor's negatives (and positives)
in the global batch, the concatenation G = [E_0; ...; E_{R-1}] of the R
replicas' embeddings, as a single device holding G would. Replica r
all-gathers G and the labels, but computes only the rows of its own anchors
(an [b, N] slice of the N x N problem, N = R b), so the O(N^2 log N) mining
is split across replicas rather than repeated on each. With P the number of
counted pairs of G (an all-reduced sum) and h_ap the hinge of a pair, replica
r returns

    L_r = (1 / P) sum_{a in replica r} sum_p h_ap,   so   sum_r L_r = L(G),

the single-device loss of G. Gradients: L_r depends on every replica's
embeddings (a's positives and mined negatives may live anywhere), and the
gradient of `ReplicaContext.all_gather` all-reduces (sums) the incoming
gradients over replicas and hands each replica the slice of its own rows, so
replica r receives sum_s dL_s / dE_r = dL(G) / dE_r. Back-propagated through
the replica's copy of the model, and summed over replicas by the optimizer's
all-reduce, that gives sum_r dL/dE_r dE_r/dtheta = dL(G)/dtheta: the
single-device gradient. Hence the replica losses must *not* be divided by
the number of replicas (unlike per-replica means), and a training step
reports sum_r L_r as the loss.
"""

from absl import logging
import keras
import tensorflow as tf

DISTANCES = ("squared", "euclidean")
"""Accepted values of the `distance` argument."""

METRIC_NAMES = ("fraction_active", "fraction_semi_hard",
                "mean_positive_distance", "mean_negative_distance",
                "num_pairs", "num_pairs_without_negative")
"""Keys of the metrics dict that `semi_hard_triplet_loss` can return."""


def _check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(
            f"Unknown distance {distance!r}; expected one of {DISTANCES}.")


def _check_margin(margin):
    # A tensor margin (e.g. a schedule) can only be checked when it runs.
    if not isinstance(margin, tf.Tensor) and not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}.")


def pairwise_distances(embeddings, distance="squared"):
    """Distances between every pair of rows of `embeddings`.

    Uses |x|^2 + |y|^2 - 2 x.y (B x B memory, one matmul). Rounding can make
    that slightly negative, so it is clamped at 0, and the diagonal is set to
    exactly 0.

    Args:
      embeddings: float tensor [B, D]; cast to float32.
      distance: "squared" (squared Euclidean) or "euclidean".

    Returns:
      float32 tensor [B, B].

    Raises:
      ValueError: if `distance` is not one of `DISTANCES`.
    """
    _check_distance(distance)
    x = tf.cast(embeddings, tf.float32)
    return _row_distances(x, x, tf.range(tf.shape(x)[0]), distance)


def _row_distances(rows, x, row_index, distance):
    """Distances [A, N] from each of `rows` to every row of `x` (float32).

    Args:
      rows: float32 [A, D], rows of `x`.
      x: float32 [N, D].
      row_index: int32 [A], the position of each of `rows` in `x`; the
        distance there is exactly 0.
      distance: "squared" or "euclidean".

    Returns:
      float32 [A, N].
    """
    row_sq_norms = tf.reduce_sum(tf.square(rows), axis=1)
    sq_norms = tf.reduce_sum(tf.square(x), axis=1)
    dist = (row_sq_norms[:, None] + sq_norms[None, :]
            - 2.0 * tf.matmul(rows, x, transpose_b=True))
    dist = tf.maximum(dist, 0.0)
    dist = tf.where(_is_self(row_index, tf.shape(x)[0]), 0.0, dist)
    if distance == "euclidean":
        # sqrt has an infinite derivative at 0 (the diagonal, duplicates):
        # feed sqrt a dummy 1 there and zero the result, so the gradient is
        # exactly 0 instead of NaN.
        positive = dist > 0.0
        dist = tf.where(positive, tf.sqrt(tf.where(positive, dist, 1.0)), 0.0)
    return dist


def _is_self(row_index, n):
    """bool [A, N]: column j is row a itself (the diagonal of a square)."""
    return tf.equal(row_index[:, None], tf.range(n)[None, :])


def _pair_masks(labels, row_index=None):
    """(positive, negative) boolean masks, both False where j is a itself.

    Args:
      labels: [N] class ids (any dtype tf.equal accepts) or [N, C] multi-hot
        (non-zero = has the class).
      row_index: optional int32 [A], the anchors (rows) as positions in
        `labels`; default: every example, giving [N, N] masks.

    Returns:
      positive[a, j]: j != a and j is a positive of a.
      negative[a, j]: j != a and j is not a positive of a.

    Raises:
      ValueError: if the rank of `labels` is not statically 1 or 2.
    """
    labels = tf.convert_to_tensor(labels)
    n = tf.shape(labels)[0]
    if row_index is None:
        row_index = tf.range(n)
    rank = labels.shape.rank
    if rank not in (1, 2):
        raise ValueError(
            "labels must be [B] class ids or [B, C] multi-hot, got shape "
            f"{labels.shape}.")
    row_labels = tf.gather(labels, row_index)
    if rank == 1:
        same = tf.equal(row_labels[:, None], labels[None, :])
    else:
        has_class = tf.cast(tf.not_equal(labels, 0), tf.float32)
        row_has_class = tf.cast(tf.not_equal(row_labels, 0), tf.float32)
        same = tf.matmul(row_has_class, has_class, transpose_b=True) > 0.0
    other = tf.logical_not(_is_self(row_index, n))
    positive = tf.logical_and(same, other)
    negative = tf.logical_and(tf.logical_not(same), other)
    return positive, negative


def _mine(dist, negative):
    """Sorts each anchor's row once and derives the mining from it.

    Args:
      dist: float32 [A, N], anchors by examples (A = N: the whole batch).
      negative: bool [A, N].

    Returns:
      order: [A, N] int32, argsort of each row of `dist`.
      count: [A, N] int32 in that sorted order: count[a, k] is the number of
        negatives n of a with dist[a, n] <= dist[a, order[a, k]].
      negatives_by_distance: [A, N + 1] int32; row a starts with a's
        negatives in increasing distance (the rest is padding).
    """
    a = tf.shape(dist)[0]
    n = tf.shape(dist)[1]
    order = tf.argsort(dist, axis=1)
    sorted_dist = tf.gather(dist, order, batch_dims=1)
    sorted_negative = tf.gather(tf.cast(negative, tf.int32), order,
                                batch_dims=1)
    running = tf.cumsum(sorted_negative, axis=1)
    row_start = tf.range(a)[:, None]
    # Negatives tied with d(a, j) but sorted after j must be counted too
    # (strict ">" in the mining rule), and sorts need not order ties in any
    # particular way: take the running count at the end of each tie group.
    starts_group = tf.concat(
        [tf.ones([a, 1], tf.bool),
         sorted_dist[:, 1:] > sorted_dist[:, :-1]], axis=1)
    group = (tf.cumsum(tf.cast(starts_group, tf.int32), axis=1) - 1
             + row_start * n)
    group_count = tf.math.unsorted_segment_max(
        tf.reshape(running, [-1]), tf.reshape(group, [-1]), a * n)
    count = tf.gather(group_count, group)
    # The negative at sorted position k has rank running - 1 among its
    # anchor's negatives: scatter the column ids to their ranks (cheaper
    # than a second sort). Non-negatives all land in the padding column N,
    # which is never read; empty slots are 0, a valid index.
    slot = tf.where(sorted_negative > 0, running - 1, n) + row_start * (n + 1)
    negatives_by_distance = tf.reshape(
        tf.math.unsorted_segment_sum(tf.reshape(order, [-1]),
                                     tf.reshape(slot, [-1]), a * (n + 1)),
        [a, n + 1])
    return order, count, negatives_by_distance


def _semi_hard_sums(labels, embeddings, margin, distance, row_index=None):
    """Mines the anchors `row_index` against the whole batch; returns sums.

    Args:
      labels: [N] class ids or [N, C] multi-hot.
      embeddings: float [N, D].
      margin: the hinge margin.
      distance: "squared" or "euclidean".
      row_index: optional int32 [A], the anchors as positions in the batch;
        default: every example.

    Returns:
      dict of float32 scalars summed over the counted anchor-positive pairs
      of those anchors: "hinge", "num_pairs", "active", "semi_hard",
      "positive_distance", "negative_distance", plus
      "num_pairs_without_negative". Dividing by a pair count gives the means
      of `semi_hard_triplet_loss`.
    """
    x = tf.cast(embeddings, tf.float32)
    if row_index is None:
        row_index = tf.range(tf.shape(x)[0])
    dist = _row_distances(tf.gather(x, row_index), x, row_index, distance)
    positive, negative = _pair_masks(labels, row_index)
    order, count, negatives_by_distance = _mine(dist, negative)
    positive_dist = tf.gather(dist, order, batch_dims=1)
    is_pair = tf.gather(positive, order, batch_dims=1)

    num_negatives = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1,
                                  keepdims=True)
    found_semi_hard = count < num_negatives
    # count is the rank of the semi-hard negative among the anchor's
    # negatives by distance; rank num_negatives - 1 is the farthest one.
    rank = tf.maximum(tf.minimum(count, num_negatives - 1), 0)
    mined = tf.gather(negatives_by_distance, rank, batch_dims=1)
    negative_dist = tf.gather(dist, mined, batch_dims=1)

    has_negative = tf.broadcast_to(num_negatives > 0, tf.shape(is_pair))
    weight = tf.cast(tf.logical_and(is_pair, has_negative), tf.float32)
    hinge = tf.nn.relu(positive_dist - negative_dist + margin)

    def total(values):
        return tf.reduce_sum(tf.cast(values, tf.float32) * weight)

    num_pairs = tf.reduce_sum(weight)
    return {
        "hinge": total(hinge),
        "num_pairs": num_pairs,
        # The statistics describe the mining; they are not training targets.
        "active": tf.stop_gradient(total(hinge > 0.0)),
        "semi_hard": tf.stop_gradient(total(found_semi_hard)),
        "positive_distance": tf.stop_gradient(total(positive_dist)),
        "negative_distance": tf.stop_gradient(total(negative_dist)),
        "num_pairs_without_negative": tf.reduce_sum(
            tf.cast(is_pair, tf.float32)) - num_pairs,
    }


def _loss_and_metrics(sums, denominator):
    """Divides the sums of `_semi_hard_sums` into the loss and its metrics."""
    metrics = {
        "fraction_active": sums["active"] / denominator,
        "fraction_semi_hard": sums["semi_hard"] / denominator,
        "mean_positive_distance": sums["positive_distance"] / denominator,
        "mean_negative_distance": sums["negative_distance"] / denominator,
        "num_pairs": sums["num_pairs"],
        "num_pairs_without_negative": sums["num_pairs_without_negative"],
    }
    metrics = {k: tf.stop_gradient(v) for k, v in metrics.items()}
    return sums["hinge"] / denominator, metrics


def semi_hard_triplet_loss(labels, embeddings, margin=0.2,
                           distance="squared", return_metrics=False):
    """Triplet loss with within-batch semi-hard negative mining.

    See the module docstring for the mining rule, the O(B^2) method and the
    handling of anchors without negatives.

    Args:
      labels: [B] integer class ids (positive = same id), or [B, C] multi-hot
        labels (positive = shares at least one class; an example without any
        class is a negative of every other example). Must have a static rank.
      embeddings: float tensor [B, D] (float16, bfloat16, float32 or float64;
        computed in float32).
      margin: non-negative float, the hinge margin (delta).
      distance: "squared" (squared Euclidean, the paper's) or "euclidean".
      return_metrics: also return a dict of mining statistics.

    Returns:
      loss: float32 scalar, the mean hinge over counted anchor-positive pairs
        (0 if there is none).
      metrics: only if `return_metrics`; dict of float32 scalars over the
        counted pairs (0 if there is none):
          fraction_active: fraction with a positive hinge (loss > 0).
          fraction_semi_hard: fraction that found a semi-hard negative (the
            rest used the farthest-negative fallback).
          mean_positive_distance: mean d(a, p).
          mean_negative_distance: mean d(a, n) of the mined negatives.
          num_pairs: number of counted pairs.
          num_pairs_without_negative: anchor-positive pairs left out because
            the anchor has no negative in the batch.

    Raises:
      ValueError: on an unknown `distance`, a negative `margin`, or labels of
        rank other than 1 or 2.
    """
    _check_distance(distance)
    _check_margin(margin)
    with tf.name_scope("semi_hard_triplet_loss"):
        sums = _semi_hard_sums(labels, embeddings, margin, distance)
        # A batch without counted pairs must give 0, not 0 / 0.
        loss, metrics = _loss_and_metrics(
            sums, tf.maximum(sums["num_pairs"], 1.0))
        return (loss, metrics) if return_metrics else loss


def _placed(tensor):
    """`tensor`, placed on this replica's device if it has no device yet.

    Replica-context collectives send each value to its tensor's device.
    MultiWorkerMirroredStrategy runs a worker's only replica without a device
    scope, so graph tensors there have none and the collective would fail
    ("destinations can not be empty"); pin them to the worker's device.
    """
    if tensor.device:
        return tensor
    devices = tf.distribute.get_strategy().extended.worker_devices
    if len(devices) != 1:
        return tensor
    with tf.device(devices[0]):
        return tf.identity(tensor)


def cross_replica_semi_hard_triplet_loss(labels, embeddings, margin=0.2,
                                         distance="squared",
                                         return_metrics=False):
    """This replica's share of the semi-hard loss mined over the global batch.

    Call in replica context (inside `strategy.run`). The replicas' batches
    are all-gathered (in replica order) into the global batch; this replica's
    anchors are mined against all of it. The returned loss and metrics are
    this replica's shares: summed over replicas (`ReduceOp.SUM`) they equal
    `semi_hard_triplet_loss` of the global batch, and so do the gradients
    summed over replicas (see the module docstring for why). Do not divide
    the loss by the number of replicas.

    Outside a strategy (one replica) it equals `semi_hard_triplet_loss`.

    Args:
      labels: this replica's [b] class ids or [b, C] multi-hot labels, with
        ids that mean the same on every replica.
      embeddings: this replica's float [b, D] embeddings.
      margin: non-negative float, the hinge margin.
      distance: "squared" or "euclidean".
      return_metrics: also return the metrics dict (the keys of
        `semi_hard_triplet_loss`, as shares of the global values: fractions
        and mean distances are divided by the global pair count, counts are
        this replica's).

    Returns:
      loss (float32 scalar), and the metrics dict if `return_metrics`.

    Raises:
      ValueError: as `semi_hard_triplet_loss`.
    """
    _check_distance(distance)
    _check_margin(margin)
    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError("cross_replica_semi_hard_triplet_loss must be "
                         "called in replica context (inside strategy.run)")
    if context.num_replicas_in_sync == 1:
        return semi_hard_triplet_loss(labels, embeddings, margin, distance,
                                      return_metrics)
    with tf.name_scope("cross_replica_semi_hard_triplet_loss"):
        labels = _placed(tf.convert_to_tensor(labels))
        embeddings = _placed(tf.cast(embeddings, tf.float32))
        local = tf.shape(embeddings)[0]
        # Separate gathers: a batched one must not mix host-placed (int32)
        # and device tensors.
        all_embeddings = context.all_gather(embeddings, axis=0)
        all_labels = context.all_gather(labels, axis=0)
        # Replicas may hold batches of different sizes (a last partial
        # batch): the offset of this replica's rows is the sum of the sizes
        # before it, not replica_id * local.
        sizes = context.all_gather(_placed(tf.reshape(local, [1])), axis=0)
        offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
        row_index = offset + tf.range(local)
        sums = _semi_hard_sums(all_labels, all_embeddings, margin, distance,
                               row_index)
        global_pairs = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            _placed(tf.stop_gradient(sums["num_pairs"])))
        loss, metrics = _loss_and_metrics(sums,
                                          tf.maximum(global_pairs, 1.0))
        return (loss, metrics) if return_metrics else loss


def log_metrics(metrics, step=None, prefix="triplet"):
    """Logs the metrics dict of `semi_hard_triplet_loss` on one line.

    Call it eagerly (e.g. every N steps of a training loop, on the values a
    compiled train step returned).

    Args:
      metrics: dict name -> scalar (tensor, NumPy or Python number).
      step: optional training step, shown first.
      prefix: text at the start of the line.
    """
    parts = [f"{name}={float(metrics[name]):.4g}" for name in sorted(metrics)]
    if step is not None:
        parts.insert(0, f"step={int(step)}")
    logging.info("%s: %s", prefix, " ".join(parts))


@keras.saving.register_keras_serializable(package="triplet_audio")
class SemiHardTripletLoss(keras.losses.Loss):
    """Keras wrapper of `semi_hard_triplet_loss`.

    `y_true` holds the labels ([B] or [B, 1] class ids, or [B, C] multi-hot
    with C > 1), `y_pred` the [B, D] embeddings. Keras converts `y_true` to
    float32, so class ids must be below 2**24 to stay exact. The loss is
    already a mean over the batch's pairs: `call` returns that scalar, which
    Keras passes through unreduced.

    Attributes:
      margin: the hinge margin (>= 0).
      distance: "squared" or "euclidean".
    """

    def __init__(self, margin=0.2, distance="squared",
                 name="semi_hard_triplet_loss"):
        """Validates the arguments.

        Args:
          margin: non-negative float, the hinge margin.
          distance: one of `DISTANCES`.
          name: name of the loss.

        Raises:
          ValueError: on a negative margin or an unknown distance.
        """
        margin = float(margin)
        _check_distance(distance)
        _check_margin(margin)
        # float32 whatever the global dtype policy: a float16 policy would
        # round the labels (class ids) that Keras casts to this dtype.
        super().__init__(name=name, reduction="sum_over_batch_size",
                         dtype="float32")
        self.margin = margin
        self.distance = distance

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Computes the loss; `sample_weight` is not supported.

        Args:
          y_true: labels, see the class docstring.
          y_pred: [B, D] embeddings.
          sample_weight: must be None: the loss is a mean over pairs, which
            per-example weights do not define.

        Returns:
          float32 scalar.

        Raises:
          ValueError: if `sample_weight` is given.
        """
        if sample_weight is not None:
            raise ValueError("SemiHardTripletLoss does not support "
                             "sample_weight.")
        return super().__call__(y_true, y_pred)

    def call(self, y_true, y_pred):
        """Returns the batch's loss, scaled for distribution like Keras's.

        Args:
          y_true: labels, see the class docstring.
          y_pred: [B, D] embeddings.

        Returns:
          float32 scalar.
        """
        labels = y_true
        # Keras pipelines often give class ids as [B, 1]. Read as multi-hot,
        # [B, 1] would make examples without the class negatives of each
        # other, which no single-class dataset means.
        if labels.shape.rank == 2 and labels.shape[-1] == 1:
            labels = tf.squeeze(labels, axis=-1)
        loss = semi_hard_triplet_loss(labels, y_pred, margin=self.margin,
                                      distance=self.distance)
        # Keras returns a scalar from call() as is and so skips the
        # 1 / num_replicas scaling it gives reduced losses; without it the
        # gradients summed over replicas (and the loss Keras reports after
        # un-scaling) would be num_replicas times too large.
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if num_replicas > 1:
            loss = loss / num_replicas
        return loss

    def get_config(self):
        """Returns the constructor arguments."""
        return {"name": self.name, "margin": self.margin,
                "distance": self.distance}
