"""Embedding networks: a log-mel window [B, 96, 64] -> an embedding [B, D].

Every model has the paper's head: a convolutional trunk, global average
pooling, a linear `Dense(embedding_size)` and L2 normalisation, so the squared
Euclidean distance between two embeddings is 2 - 2 cos and the triplet margin
has a fixed scale.

Trunks (pick with `build_model(name=...)`):

  * "resnet50": the paper's network, a bottleneck ResNet-50 ([3, 4, 6, 3]
    blocks, widths 256..2048). The layers of `keras.applications.ResNet50`
    with one input channel, except: no conv biases (BN follows each conv),
    stride in the 3x3 conv of a block (v1.5) and seeded He initialisation.
  * "resnet18": a basic-block ResNet-18 ([2, 2, 2, 2], widths 64..512): about
    half the parameters and under half the FLOPs of ResNet-50.
  * "small": four conv-BN-ReLU-max-pool blocks (32..256 channels, ~0.4 M
    parameters), for CPU runs, tests and the demo.

Mixed precision: the trunk follows the global Keras dtype policy (e.g.
"mixed_bfloat16"), but the input normalisation, the embedding Dense and the L2
normalisation are pinned to float32, so embeddings are float32 and unit-norm
under any policy.

Determinism: with `seed` set, every kernel initialiser gets its own integer
seed derived from it, so two builds with the same seed hold identical weights
without touching any global random state.
"""

import math
import numbers

import keras
from absl import logging

from triplet_audio.config import options
from triplet_audio import constants as C

MODEL_NAMES = options.MODELS
"""Valid `name`s of `build_model`, the paper's network first."""

INPUT_NAME = "logmel"
"""Name of the model's input (a [B, 96, 64] float32 log-mel window batch)."""

EMBEDDING_LAYER_NAME = "embedding"
"""Name of the final (L2-normalisation) layer, whose output is the embedding."""

# Keras' ResNet uses this BN epsilon; kept so the trunk matches its numerics.
_BN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="triplet_audio")
class L2Normalize(keras.layers.Layer):
    """Scales each vector along `axis` to unit L2 norm.

    Computes x / sqrt(max(sum(x^2), epsilon)). The floor makes an all-zero
    vector map to zeros (not NaN) and keeps the gradient finite there.

    Args:
      axis: axis along which to normalise.
      epsilon: lower bound on the squared norm; must be > 0.
      **kwargs: standard Layer arguments (name, dtype, ...).
    """

    def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.axis = axis
        self.epsilon = float(epsilon)

    def call(self, inputs):
        squared_norm = keras.ops.sum(
            keras.ops.square(inputs), axis=self.axis, keepdims=True)
        return inputs * keras.ops.rsqrt(
            keras.ops.maximum(squared_norm, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config


class _SeedSequence:
    """Hands out a fresh integer seed per initialiser, derived from one seed.

    An integer-seeded Keras initialiser draws the same values on every call,
    so sharing one seed across layers would give equal-shaped kernels equal
    weights; each layer therefore gets seed, seed + 1, ... With seed=None the
    initialisers are unseeded (Keras' global seed, if any, decides).
    """

    def __init__(self, seed):
        self._next = seed

    def __call__(self):
        if self._next is None:
            return None
        seed = self._next
        self._next += 1
        return seed


def _conv(x, filters, kernel_size, strides, name, seeds):
    # No bias: every conv is followed by BatchNormalization, whose beta
    # subsumes it.
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer=keras.initializers.HeNormal(seed=seeds()),
        name=name)(x)


def _bn(x, name, zero_gamma=False):
    # zero_gamma on the last BN of a residual branch makes each block start as
    # the identity (Goyal et al. 2017), which keeps deep trunks stable early in
    # training, when triplet gradients are noisy.
    return keras.layers.BatchNormalization(
        epsilon=_BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name)(x)


def _relu(x, name):
    return keras.layers.Activation("relu", name=name)(x)


def _resnet_stem(x, seeds):
    x = _conv(x, 64, 7, 2, "conv1_conv", seeds)
    x = _bn(x, "conv1_bn")
    x = _relu(x, "conv1_relu")
    return keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                     name="pool1_pool")(x)


def _shortcut(x, filters, strides, name, seeds):
    if strides == 1 and x.shape[-1] == filters:
        return x
    shortcut = _conv(x, filters, 1, strides, name + "_0_conv", seeds)
    return _bn(shortcut, name + "_0_bn")


def _bottleneck_block(x, width, strides, name, seeds):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (4x width) + skip."""
    shortcut = _shortcut(x, 4 * width, strides, name, seeds)
    y = _relu(_bn(_conv(x, width, 1, 1, name + "_1_conv", seeds),
                  name + "_1_bn"), name + "_1_relu")
    # Striding in the 3x3 rather than the first 1x1 (v1.5) loses less
    # information at the same cost.
    y = _relu(_bn(_conv(y, width, 3, strides, name + "_2_conv", seeds),
                  name + "_2_bn"), name + "_2_relu")
    y = _bn(_conv(y, 4 * width, 1, 1, name + "_3_conv", seeds),
            name + "_3_bn", zero_gamma=True)
    y = keras.layers.Add(name=name + "_add")([shortcut, y])
    return _relu(y, name + "_out")


def _basic_block(x, width, strides, name, seeds):
    """ResNet basic block: two 3x3 convs (width), the first strided."""
    shortcut = _shortcut(x, width, strides, name, seeds)
    y = _relu(_bn(_conv(x, width, 3, strides, name + "_1_conv", seeds),
                  name + "_1_bn"), name + "_1_relu")
    y = _bn(_conv(y, width, 3, 1, name + "_2_conv", seeds),
            name + "_2_bn", zero_gamma=True)
    y = keras.layers.Add(name=name + "_add")([shortcut, y])
    return _relu(y, name + "_out")


def _resnet_trunk(x, block_fn, blocks_per_stage, seeds):
    x = _resnet_stem(x, seeds)
    for stage, num_blocks in enumerate(blocks_per_stage):
        width = 64 * 2**stage
        for block in range(num_blocks):
            # Stage 2 follows the stem's max-pool, so it keeps the resolution.
            strides = 2 if block == 0 and stage > 0 else 1
            x = block_fn(x, width, strides,
                         f"conv{stage + 2}_block{block + 1}", seeds)
    return x


def _small_trunk(x, seeds):
    # 96 x 64 -> 6 x 4 after four 2x2 pools; one 3x3 conv per block keeps it
    # at ~0.4 M parameters, fast enough for CPU training and tests.
    for block, filters in enumerate((32, 64, 128, 256)):
        name = f"block{block + 1}"
        x = _conv(x, filters, 3, 1, name + "_conv", seeds)
        x = _relu(_bn(x, name + "_bn"), name + "_relu")
        x = keras.layers.MaxPooling2D(2, name=name + "_pool")(x)
    return x


def build_model(name="resnet50", embedding_size=128, l2_normalize=True,
                seed=None):
    """Builds an embedding network from log-mel windows to embeddings.

    Args:
      name: trunk, one of `MODEL_NAMES` ("resnet50" is the paper's).
      embedding_size: embedding dimension D (the paper uses 128).
      l2_normalize: if True (the paper's setting), the output is L2-normalised;
        if False the last layer is the identity, so the output is the linear
        Dense output (for losses that want raw embeddings).
      seed: optional integer; when set, the initial weights are a
        deterministic function of it.

    Returns:
      A functional `keras.Model` named `name`, mapping float32 [B, 96, 64]
      (input "logmel") to float32 [B, embedding_size] (output layer
      "embedding"), under any global dtype policy.

    Raises:
      ValueError: on an unknown `name`, an `embedding_size` < 1 or a
        non-integer `seed`.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model name {name!r}; valid choices: "
                         f"{', '.join(MODEL_NAMES)}")
    if (isinstance(embedding_size, bool) or not isinstance(embedding_size, int)
            or embedding_size < 1):
        raise ValueError(
            f"embedding_size must be an integer >= 1, got {embedding_size!r}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be None or an integer, got {seed!r}")
        # Keras initialisers accept only a Python int (not e.g. np.int64).
        seed = int(seed)
    seeds = _SeedSequence(seed)

    inputs = keras.Input(shape=C.WINDOW_SHAPE, dtype="float32",
                         name=INPUT_NAME)
    # Float32 up to and through the input normalisation: rounding raw log-mel
    # (|x| up to ~5) to bfloat16 before centering would quantise it in steps
    # of 0.03 (3% in energy); the two layers cost nothing.
    x = keras.layers.Reshape(C.WINDOW_SHAPE + (1,), dtype="float32",
                             name="add_channel")(inputs)
    # Learned input normalisation: one BatchNormalization over the single
    # channel standardises the log-mel level (mean -1.9, std 1.6 on the FSDD
    # speech recordings; both move with recording gain and content) without
    # hard-coding corpus statistics. Being one scalar shift and scale, it
    # keeps the spectral shape, and it ships inside the model, so export and
    # serving need no separate normalisation step. Its moving statistics, like
    # those of every BN in the trunk, are only meaningful after some hundred
    # training steps (momentum 0.99).
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, dtype="float32",
                                        name="input_bn")(x)
    if name == "resnet50":
        x = _resnet_trunk(x, _bottleneck_block, (3, 4, 6, 3), seeds)
    elif name == "resnet18":
        x = _resnet_trunk(x, _basic_block, (2, 2, 2, 2), seeds)
    else:
        x = _small_trunk(x, seeds)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # float32 head: the loss takes differences of squared distances between
    # embeddings, where cancellation would amplify bfloat16's 0.4% rounding.
    x = keras.layers.Dense(
        embedding_size, dtype="float32",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds()),
        name="projection")(x)
    if l2_normalize:
        outputs = L2Normalize(dtype="float32", name=EMBEDDING_LAYER_NAME)(x)
    else:
        outputs = keras.layers.Identity(dtype="float32",
                                        name=EMBEDDING_LAYER_NAME)(x)
    model = keras.Model(inputs, outputs, name=name)
    logging.info("Built model %s: %d parameters, embedding size %d.", name,
                 model.count_params(), embedding_size)
    return model


def model_summary_dict(model):
    """Describes a model for run configs and export metadata.

    Args:
      model: a built `keras.Model` whose output is [B, embedding_size].

    Returns:
      A JSON-serialisable dict with keys "name" (the model's name, e.g.
      "resnet50"), "params" (all weights, including BN moving statistics),
      "trainable_params" and "embedding_size".
    """
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return {
        "name": model.name,
        "params": int(model.count_params()),
        "trainable_params": trainable,
        "embedding_size": int(model.output_shape[-1]),
    }
