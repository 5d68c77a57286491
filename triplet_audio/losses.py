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
and tf-addons.
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
    sq_norms = tf.reduce_sum(tf.square(x), axis=1)
    dist = (sq_norms[:, None] + sq_norms[None, :]
            - 2.0 * tf.matmul(x, x, transpose_b=True))
    dist = tf.maximum(dist, 0.0)
    off_diagonal = tf.logical_not(
        tf.cast(tf.eye(tf.shape(x)[0]), tf.bool))
    dist = tf.where(off_diagonal, dist, 0.0)
    if distance == "euclidean":
        # sqrt has an infinite derivative at 0 (the diagonal, duplicates):
        # feed sqrt a dummy 1 there and zero the result, so the gradient is
        # exactly 0 instead of NaN.
        positive = dist > 0.0
        dist = tf.where(positive, tf.sqrt(tf.where(positive, dist, 1.0)), 0.0)
    return dist


def _pair_masks(labels):
    """(positive, negative) boolean [B, B] masks, both False on the diagonal.

    Args:
      labels: [B] class ids (any dtype tf.equal accepts) or [B, C] multi-hot
        (non-zero = has the class).

    Returns:
      positive[a, j]: j != a and j is a positive of a.
      negative[a, j]: j != a and j is not a positive of a.

    Raises:
      ValueError: if the rank of `labels` is not statically 1 or 2.
    """
    labels = tf.convert_to_tensor(labels)
    rank = labels.shape.rank
    if rank == 1:
        same = tf.equal(labels[:, None], labels[None, :])
    elif rank == 2:
        has_class = tf.cast(tf.not_equal(labels, 0), tf.float32)
        same = tf.matmul(has_class, has_class, transpose_b=True) > 0.0
    else:
        raise ValueError(
            "labels must be [B] class ids or [B, C] multi-hot, got shape "
            f"{labels.shape}.")
    off_diagonal = tf.logical_not(
        tf.cast(tf.eye(tf.shape(labels)[0]), tf.bool))
    positive = tf.logical_and(same, off_diagonal)
    negative = tf.logical_and(tf.logical_not(same), off_diagonal)
    return positive, negative


def _mine(dist, negative):
    """Sorts each anchor's row once and derives the mining from it.

    Args:
      dist: float32 [B, B].
      negative: bool [B, B].

    Returns:
      order: [B, B] int32, argsort of each row of `dist`.
      count: [B, B] int32 in that sorted order: count[a, k] is the number of
        negatives n of a with dist[a, n] <= dist[a, order[a, k]].
      negatives_by_distance: [B, B + 1] int32; row a starts with a's
        negatives in increasing distance (the rest is padding).
    """
    b = tf.shape(dist)[0]
    order = tf.argsort(dist, axis=1)
    sorted_dist = tf.gather(dist, order, batch_dims=1)
    sorted_negative = tf.gather(tf.cast(negative, tf.int32), order,
                                batch_dims=1)
    running = tf.cumsum(sorted_negative, axis=1)
    row_start = tf.range(b)[:, None]
    # Negatives tied with d(a, j) but sorted after j must be counted too
    # (strict ">" in the mining rule), and sorts need not order ties in any
    # particular way: take the running count at the end of each tie group.
    starts_group = tf.concat(
        [tf.ones([b, 1], tf.bool),
         sorted_dist[:, 1:] > sorted_dist[:, :-1]], axis=1)
    group = (tf.cumsum(tf.cast(starts_group, tf.int32), axis=1) - 1
             + row_start * b)
    group_count = tf.math.unsorted_segment_max(
        tf.reshape(running, [-1]), tf.reshape(group, [-1]), b * b)
    count = tf.gather(group_count, group)
    # The negative at sorted position k has rank running - 1 among its
    # anchor's negatives: scatter the column ids to their ranks (cheaper
    # than a second sort). Non-negatives all land in the padding column B,
    # which is never read; empty slots are 0, a valid index.
    slot = tf.where(sorted_negative > 0, running - 1, b) + row_start * (b + 1)
    negatives_by_distance = tf.reshape(
        tf.math.unsorted_segment_sum(tf.reshape(order, [-1]),
                                     tf.reshape(slot, [-1]), b * (b + 1)),
        [b, b + 1])
    return order, count, negatives_by_distance


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
        dist = pairwise_distances(embeddings, distance)
        positive, negative = _pair_masks(labels)
        b = tf.shape(dist)[0]

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

        has_negative = tf.broadcast_to(num_negatives > 0, [b, b])
        counted = tf.logical_and(is_pair, has_negative)
        weight = tf.cast(counted, tf.float32)
        num_pairs = tf.reduce_sum(weight)
        # A batch without counted pairs must give 0, not 0 / 0.
        denominator = tf.maximum(num_pairs, 1.0)

        hinge = tf.nn.relu(positive_dist - negative_dist + margin)
        loss = tf.reduce_sum(hinge * weight) / denominator
        if not return_metrics:
            return loss

        def mean(values):
            return tf.reduce_sum(tf.cast(values, tf.float32) * weight) / (
                denominator)

        metrics = {
            "fraction_active": mean(hinge > 0.0),
            "fraction_semi_hard": mean(found_semi_hard),
            "mean_positive_distance": mean(positive_dist),
            "mean_negative_distance": mean(negative_dist),
            "num_pairs": num_pairs,
            "num_pairs_without_negative": tf.reduce_sum(
                tf.cast(is_pair, tf.float32)) - num_pairs,
        }
        # The statistics describe the mining; they are not training targets.
        metrics = {k: tf.stop_gradient(v) for k, v in metrics.items()}
        return loss, metrics


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
