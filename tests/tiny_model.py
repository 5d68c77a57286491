"""A tiny embedding model for the tests of exports (HEAR, dense windows).

The export code is model-agnostic ([B, 96, 64] -> [B, D]); these tests
check framing, batching, chunking and shapes, so they use a model that costs
next to nothing per window, yet depends on where in the window each value
sits (a strided convolution, flattened): a window framed one hop off gives
another embedding.
"""

import keras

from triplet_audio import constants as C
from triplet_audio.model import models


def tiny_model(embedding_size=16, seed=0):
    """Conv 8x8/8 (2 channels) -> flatten -> Dense(D) -> L2 normalisation."""
    inputs = keras.Input(C.WINDOW_SHAPE, name=models.INPUT_NAME)
    x = keras.layers.Reshape(C.WINDOW_SHAPE + (1,))(inputs)
    x = keras.layers.Conv2D(
        2, 8, strides=8, activation="tanh",
        kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(
        embedding_size,
        kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    outputs = models.L2Normalize(name=models.EMBEDDING_LAYER_NAME)(x)
    return keras.Model(inputs, outputs, name="tiny")
