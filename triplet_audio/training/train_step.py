"""The train step: forward, semi-hard triplet loss, backward, update.

`make_train_step` builds the one tf.function that `trainer.train` runs each
step, under any strategy, with local or global mining. Public so that
benchmarks can time the real step on batches they make.
"""

import tensorflow as tf

from triplet_audio.model import losses


def make_train_step(config, strategy, model, optimizer, step_var=None,
                    bad_step=None):
    """The step `train` runs: forward, loss, backward, update (one tf.function).

    Public so that benchmarks can time the real step on batches they make.

    Loss scaling: with local mining each replica's loss is the mean over its
    own pairs, divided by the number of replicas so that the optimizer's sum
    of the replicas' gradients is their mean. With global mining each
    replica's loss is already its share of the global-batch loss (the shares
    sum to it), so it is not divided; see `losses`.

    XLA (`config.jit_compile`): on one replica the whole replica step is
    compiled. On several, the optimizer update and the cross-replica
    all-gather of global mining synchronise replicas, which a compiled
    function nested in `strategy.run` cannot do, so what is compiled is the
    forward and backward pass (local mining) or the model's forward pass
    (global mining; its backward pass is compiled with it).

    Args:
      config: TrainConfig (margin, distance, mining, mixed_precision,
        jit_compile).
      strategy: the tf.distribute strategy `model` and `optimizer` were built
        under.
      model: the embedding model.
      optimizer: from `make_optimizer`, built for the model's variables.
      step_var: int64 variable counting steps (created when None).
      bad_step: int64 variable set to the first step whose loss is not
        finite, -1 until then (created when None).

    Returns:
      A function of a (windows [B, 96, 64], labels) batch, plain or from a
      distributed dataset, returning the dict of the loss and mining metrics
      of the global batch (averaged over replicas with local mining, the
      global batch's own with global mining).
    """
    with strategy.scope():
        if step_var is None:
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False,
                                   name="step")
        if bad_step is None:
            bad_step = tf.Variable(
                -1, dtype=tf.int64, trainable=False,
                name="first_nonfinite_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    replicas = strategy.num_replicas_in_sync
    fp16 = config.mixed_precision == "fp16"
    global_mining = config.mining == "global" and replicas > 1

    def forward(windows):
        return model(windows, training=True)

    def gradients(windows, labels):
        with tf.GradientTape() as tape:
            embeddings = forward(windows)
            if global_mining:
                loss, stats = losses.cross_replica_semi_hard_triplet_loss(
                    labels, embeddings, margin=config.margin,
                    distance=config.distance, return_metrics=True)
                scaled = loss
            else:
                loss, stats = losses.semi_hard_triplet_loss(
                    labels, embeddings, margin=config.margin,
                    distance=config.distance, return_metrics=True)
                scaled = loss / replicas
            if model.losses:
                scaled += tf.add_n([tf.cast(l, tf.float32)
                                    for l in model.losses]) / replicas
            if fp16:
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        out = {"loss": loss}
        for key in ("fraction_active", "fraction_semi_hard",
                    "mean_positive_distance", "mean_negative_distance"):
            if key in stats:
                out[key] = tf.cast(stats[key], tf.float32)
        return grads, out

    if config.jit_compile and replicas > 1:
        if global_mining:
            forward = tf.function(forward, jit_compile=True)
        else:
            gradients = tf.function(gradients, jit_compile=True)

    def replica_step(windows, labels):
        grads, out = gradients(windows, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return out

    if config.jit_compile and replicas == 1:
        replica_step = tf.function(replica_step, jit_compile=True)

    # Global mining returns each replica's share of the global values.
    reduce_op = (tf.distribute.ReduceOp.SUM if global_mining
                 else tf.distribute.ReduceOp.MEAN)

    @tf.function
    def train_step(batch):
        windows, labels = batch
        per_replica = strategy.run(replica_step, args=(windows, labels))
        out = {k: strategy.reduce(reduce_op, v, axis=None)
               for k, v in per_replica.items()}
        step_var.assign_add(1)
        finite = tf.math.is_finite(out["loss"])
        bad_step.assign(tf.where(
            tf.logical_and(tf.logical_not(finite), bad_step < 0),
            step_var, bad_step))
        return out

    return train_step

