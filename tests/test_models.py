"""Tests of triplet_audio.model.models: shapes, norms, dtypes, seeds, saving."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.model import models

# ResNet-50 parameter count, derived rather than copied from a run:
#   keras.applications.ResNet50(include_top=False, weights=None,
#       input_shape=(96, 64, 1))                         23,581,440
#   minus its conv biases (we drop them: BN follows
#       every conv); 53 convs, 26,560 output channels   -    26,560
#   = our trunk                                          23,554,880
#   + input BatchNormalization on 1 channel (gamma, beta,
#       moving mean, moving variance)                   +         4
#   + projection Dense 2048 * 128 + 128                 +   262,272
#   = total                                              23,817,156
# Non-trainable: the BN moving means and variances, 2 per channel of every
# BN: 2 * (1 + 26,560) = 53,122, so 23,764,034 are trainable.
# test_resnet50_trunk_matches_keras_applications checks the first two lines.
RESNET50_PARAMS = 23_817_156
RESNET50_TRAINABLE_PARAMS = 23_764_034
RESNET50_KERAS_APPLICATIONS_TRUNK = 23_581_440
RESNET50_CONV_BIASES = 26_560


def _windows(batch, seed=0):
    # Log-mel-like values: silence floor log(0.01) = -4.6 up to about +5.
    rng = np.random.default_rng(seed)
    return rng.uniform(np.log(C.LOG_OFFSET), 5.0,
                       (batch,) + C.WINDOW_SHAPE).astype(np.float32)


def _numpy(x):
    # np.asarray on a Keras variable (and keras.ops.convert_to_numpy) raises
    # a NumPy 2 copy-keyword DeprecationWarning; .numpy() does not.
    return x.numpy()


@pytest.fixture(scope="module")
def resnet50():
    return models.build_model("resnet50", seed=0)


@pytest.fixture
def policy():
    """Yields a setter of the global dtype policy; restores it afterwards."""
    previous = keras.mixed_precision.global_policy()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(previous)


def test_resnet50_param_count(resnet50):
    assert models.model_summary_dict(resnet50) == {
        "name": "resnet50",
        "params": RESNET50_PARAMS,
        "trainable_params": RESNET50_TRAINABLE_PARAMS,
        "embedding_size": 128,
    }


def test_resnet50_trunk_matches_keras_applications(resnet50):
    reference = keras.applications.ResNet50(
        include_top=False, weights=None,
        input_shape=C.WINDOW_SHAPE + (1,), pooling="avg")
    reference_biases = sum(
        layer.filters for layer in reference.layers
        if isinstance(layer, keras.layers.Conv2D))
    assert reference.count_params() == RESNET50_KERAS_APPLICATIONS_TRUNK
    assert reference_biases == RESNET50_CONV_BIASES
    ours_trunk = (resnet50.count_params() - 4 -
                  resnet50.get_layer("projection").count_params())
    assert ours_trunk == reference.count_params() - reference_biases
    # Same layer-by-layer layout: convs pair up by name and kernel shape.
    ours = {layer.name: layer.kernel.shape for layer in resnet50.layers
            if isinstance(layer, keras.layers.Conv2D)}
    theirs = {layer.name: layer.kernel.shape for layer in reference.layers
              if isinstance(layer, keras.layers.Conv2D)}
    assert ours == theirs


def test_other_param_counts():
    # resnet18: ImageNet ResNet-18 without fc (11,176,512 trainable) minus
    # 2 * 7 * 7 * 64 for the 1-channel stem = 11,170,240, + the BN moving
    # statistics Keras also counts (2 * 4,800 channels), + 4 (input BN)
    # + 512 * 128 + 128.
    # small: four 3x3 convs (1->32->64->128->256, 387,360 weights), their BNs
    # (4 * 480 = 1,920), input BN (4) and 256 * 128 + 128.
    assert models.build_model("resnet18").count_params() == 11_245_508
    assert models.build_model("small").count_params() == 422_180


@pytest.mark.parametrize("name", ["small", "resnet18", "resnet50"])
def test_output_shape_dtype_and_unit_norm(name, resnet50):
    model = (resnet50 if name == "resnet50"
             else models.build_model(name, seed=0))
    out = model(_windows(2), training=False)
    out = np.asarray(out)
    assert out.shape == (2, 128)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Distinct inputs must not collapse onto one embedding at init.
    assert not np.allclose(out[0], out[1], atol=1e-4)


def test_embedding_size_and_names():
    model = models.build_model("small", embedding_size=7, seed=0)
    assert model.input_shape == (None,) + C.WINDOW_SHAPE
    assert model.inputs[0].name == models.INPUT_NAME
    assert isinstance(model.get_layer(models.EMBEDDING_LAYER_NAME),
                      models.L2Normalize)
    out = model(_windows(3), training=True)
    assert tuple(out.shape) == (3, 7)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_without_l2_normalization_output_is_the_projection():
    model = models.build_model("small", l2_normalize=False, seed=0)
    normalised = models.build_model("small", seed=0)
    raw = np.asarray(model(_windows(4), training=False))
    unit = np.asarray(normalised(_windows(4), training=False))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_inference_is_independent_of_the_batch():
    model = models.build_model("small", seed=0)
    x = _windows(5)
    batched = np.asarray(model(x, training=False))
    alone = np.asarray(model(x[2:3], training=False))
    np.testing.assert_allclose(batched[2:3], alone, atol=1e-5)


@pytest.mark.parametrize("name,policy_name", [
    ("small", "mixed_bfloat16"),
    ("small", "mixed_float16"),
    ("resnet18", "mixed_bfloat16"),
    ("resnet50", "mixed_bfloat16"),
])
def test_mixed_precision_outputs_float32(name, policy_name, policy):
    reference = models.build_model(name, seed=3)
    policy(policy_name)
    model = models.build_model(name, seed=3)
    compute_dtype = policy_name.split("_")[1]
    # The policy really reached the trunk, and the head stayed float32.
    assert model.get_layer("conv1_conv" if name != "small" else
                           "block1_conv").compute_dtype == compute_dtype
    for layer_name in ("input_bn", "projection", models.EMBEDDING_LAYER_NAME):
        assert model.get_layer(layer_name).compute_dtype == "float32"

    x = _windows(2)
    # Inference first: the training-mode call below moves BN statistics.
    for training in (False, True):
        out = model(x, training=training)
        assert out.dtype == tf.float32
        out = np.asarray(out)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0,
                                   atol=1e-5)
        if not training:
            # Same seed, same weights: the low-precision trunk only adds
            # rounding.
            expected = np.asarray(reference(x, training=False))
            cosine = np.sum(out * expected, axis=1)
            assert np.all(cosine > 0.999), cosine


def test_mixed_precision_policy_is_restored():
    # Guards the `policy` fixture: runs after the tests above in file order.
    assert keras.mixed_precision.global_policy().name == "float32"


def test_seed_determines_weights():
    a = models.build_model("small", seed=11)
    b = models.build_model("small", seed=11)
    c = models.build_model("small", seed=12)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernels_a = [w for w in a.get_weights() if w.ndim > 1]
    kernels_c = [w for w in c.get_weights() if w.ndim > 1]
    assert len(kernels_a) == 5  # 4 convs + the projection.
    for wa, wc in zip(kernels_a, kernels_c):
        assert not np.allclose(wa, wc)
    x = _windows(2)
    np.testing.assert_array_equal(a(x, training=False), b(x, training=False))


def test_numpy_integer_seed_is_accepted():
    a = models.build_model("small", seed=np.int64(4))
    b = models.build_model("small", seed=4)
    np.testing.assert_array_equal(_numpy(a.get_layer("block1_conv").kernel),
                                  _numpy(b.get_layer("block1_conv").kernel))


def test_unseeded_builds_differ():
    a = models.build_model("small")
    b = models.build_model("small")
    assert not np.allclose(_numpy(a.get_layer("block1_conv").kernel),
                           _numpy(b.get_layer("block1_conv").kernel))


def test_equal_shaped_kernels_get_different_seeds():
    # Both 3x3x64x64: one shared integer seed would make them equal.
    model = models.build_model("resnet18", seed=5)
    first = _numpy(model.get_layer("conv2_block1_1_conv").kernel)
    second = _numpy(model.get_layer("conv2_block1_2_conv").kernel)
    assert first.shape == second.shape == (3, 3, 64, 64)
    assert not np.allclose(first, second)


def test_keras_save_load_round_trip(tmp_path):
    model = models.build_model("small", embedding_size=16, seed=0)
    # A training-mode call moves the BN statistics off their initial values,
    # so the round trip covers non-trivial non-trainable state too.
    model(_windows(8, seed=1), training=True)
    assert not np.allclose(_numpy(model.get_layer("input_bn").moving_mean),
                           0.0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    # No custom_objects: L2Normalize must be found by its registered name.
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer(models.EMBEDDING_LAYER_NAME)
    assert isinstance(layer, models.L2Normalize)
    assert layer.get_config()["epsilon"] == 1e-12
    x = _windows(4)
    np.testing.assert_allclose(loaded(x, training=False),
                               model(x, training=False), rtol=0, atol=1e-6)
    assert models.model_summary_dict(loaded) == models.model_summary_dict(
        model)


def test_jit_compiled_matches_eager():
    model = models.build_model("small", seed=0)
    x = tf.constant(_windows(4))
    compiled = tf.function(lambda inputs: model(inputs, training=False),
                           jit_compile=True)
    np.testing.assert_allclose(compiled(x), model(x, training=False),
                               atol=1e-5)


def test_l2_normalize_layer():
    layer = models.L2Normalize(epsilon=1e-6)
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0]], np.float32)
    x_var = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = layer(x_var)
        loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0]]))
    grad = tape.gradient(loss, x_var)
    # Below the epsilon floor the vector is scaled by 1 / sqrt(epsilon).
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [0.1, 0.0]],
                               rtol=1e-6)
    assert np.all(np.isfinite(grad))
    # d/dx of v . x / |x| at x = (3, 4), v = (1, 2), y = (0.6, 0.8):
    # (v - (y . v) y) / |x| = ((1, 2) - 2.2 (0.6, 0.8)) / 5 = (-0.064, 0.048).
    np.testing.assert_allclose(grad[0], [-0.064, 0.048], atol=1e-6)

    config = layer.get_config()
    assert config["epsilon"] == 1e-6 and config["axis"] == -1
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, models.L2Normalize)
    assert restored.epsilon == 1e-6
    assert keras.saving.get_registered_name(
        models.L2Normalize) == "triplet_audio>L2Normalize"
    with pytest.raises(ValueError, match="epsilon"):
        models.L2Normalize(epsilon=0.0)


def test_model_summary_dict_is_json_serialisable():
    model = models.build_model("small", embedding_size=32, seed=0)
    summary = models.model_summary_dict(model)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["name"] == "small"
    assert summary["embedding_size"] == 32
    assert summary["params"] == model.count_params()
    assert 0 < summary["trainable_params"] < summary["params"]


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "resnet34"}, "resnet50, resnet18, small"),
    ({"name": "small", "embedding_size": 0}, "embedding_size"),
    ({"name": "small", "embedding_size": 12.0}, "embedding_size"),
    ({"name": "small", "embedding_size": True}, "embedding_size"),
    ({"name": "small", "seed": 1.5}, "seed"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build_model(**kwargs)
