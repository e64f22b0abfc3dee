"""Each custom layer against a numpy formula written here, and its serialization."""

import keras
import numpy as np
import pytest

from convnext_hub import GlobalResponseNorm, LayerScale, RMSNorm, SimpleNorm, StochasticDepth
from convnext_hub.layers import GELU, Conv2D, Dense, DepthwiseConv2D, HostTruncatedNormal


def _x(shape=(2, 5, 7, 6), scale=1.0, seed=0):
    return (scale * np.random.RandomState(seed).standard_normal(shape)).astype("float32")


def _run(layer, x, **kwargs):
    return keras.ops.convert_to_numpy(layer(x, **kwargs))


def _set(layer, x, **weights):
    layer.build(x.shape)
    for name, value in weights.items():
        getattr(layer, name).assign(value)
    return layer


def test_layer_scale():
    x = _x()
    gamma = np.linspace(-1, 2, 6).astype("float32")
    layer = _set(LayerScale(0.1), x, gamma=gamma)
    np.testing.assert_allclose(_run(layer, x), x * gamma, rtol=1e-6)
    np.testing.assert_allclose(_run(LayerScale(1e-6), x) / x, 1e-6, rtol=1e-6)


def test_global_response_norm():
    x = _x()
    gamma, beta = _x((6,), seed=1), _x((6,), seed=2)
    layer = _set(GlobalResponseNorm(), x, gamma=gamma, beta=beta)
    gx = np.sqrt((x.astype("float64") ** 2).sum(axis=(1, 2), keepdims=True))
    nx = gx / (gx.mean(axis=-1, keepdims=True) + 1e-6)
    expected = gamma * (x * nx) + beta + x
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_rms_norm():
    x = _x(scale=3.0)
    gamma = _x((6,), seed=3)
    layer = _set(RMSNorm(epsilon=1e-6), x, gamma=gamma)
    expected = x / np.sqrt((x.astype("float64") ** 2).mean(axis=-1, keepdims=True) + 1e-6) * gamma
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-6)


def test_simple_norm_uses_unbiased_variance_and_no_centering():
    x = _x(scale=3.0) + 2.0
    gamma = _x((6,), seed=4)
    layer = _set(SimpleNorm(epsilon=1e-6), x, gamma=gamma)
    variance = x.astype("float64").var(axis=-1, ddof=1, keepdims=True)
    np.testing.assert_allclose(_run(layer, x), x / np.sqrt(variance + 1e-6) * gamma, rtol=1e-5, atol=1e-6)


def test_stochastic_depth_drops_whole_samples_and_rescales():
    x = np.ones((4000, 2, 2, 3), "float32")
    layer = StochasticDepth(0.25, seed=1)
    np.testing.assert_array_equal(_run(layer, x, training=False), x)
    y = _run(layer, x, training=True)
    per_sample = y.reshape(4000, -1)
    assert np.all((per_sample == 0).all(axis=1) | np.isclose(per_sample, 1 / 0.75).all(axis=1))
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03


def test_depthwise_conv_equals_direct_formula():
    x = _x((2, 9, 8, 4))
    layer = DepthwiseConv2D(7, padding="same")
    layer.build(x.shape)
    kernel, bias = _x((7, 7, 4, 1), seed=5), _x((4,), seed=6)
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0))).astype("float64")
    expected = np.zeros(x.shape) + bias
    for i in range(7):
        for j in range(7):
            expected += padded[:, i : i + 9, j : j + 8, :] * kernel[i, j, :, 0]
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_dense_equals_matmul_plus_bias():
    x = _x((3, 4, 4, 6))
    layer = Dense(5)
    layer.build(x.shape)
    kernel, bias = _x((6, 5), seed=7), _x((5,), seed=8)
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    np.testing.assert_allclose(_run(layer, x), x @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_dense_gelu_equals_erf_gelu_of_matmul():
    from math import erf

    x = _x((2, 3, 3, 6))
    layer = Dense(5, activation="gelu")
    layer.build(x.shape)
    kernel, bias = _x((6, 5), seed=9), _x((5,), seed=10)
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    z = x.astype("float64") @ kernel + bias
    expected = 0.5 * z * (1 + np.vectorize(erf)(z / np.sqrt(2)))
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)
    # predict runs without autograd, where torch applies the GELU in place
    predicted = keras.Sequential([keras.Input(x.shape[1:]), layer]).predict_on_batch(x)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size, stride", [(4, 4), (2, 2), (3, 2)])
def test_conv_equals_direct_formula(kernel_size, stride):
    x = _x((2, 11, 9, 3))
    layer = Conv2D(4, kernel_size, strides=stride)
    layer.build(x.shape)
    kernel, bias = _x((kernel_size, kernel_size, 3, 4), seed=11), _x((4,), seed=12)
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    out_h, out_w = (11 - kernel_size) // stride + 1, (9 - kernel_size) // stride + 1
    expected = np.zeros((2, out_h, out_w, 4)) + bias
    for i in range(kernel_size):
        for j in range(kernel_size):
            patch = x[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride, :]
            expected += patch.astype("float64") @ kernel[i, j]
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        LayerScale(0.5),
        GlobalResponseNorm(epsilon=1e-5),
        RMSNorm(epsilon=1e-5),
        SimpleNorm(epsilon=1e-5),
        StochasticDepth(0.2, seed=3),
        DepthwiseConv2D(7, padding="same"),
        Dense(3),
        Conv2D(3, 2, strides=2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layers_serialize(layer):
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_statistics_in_float32_under_float16():
    """Values whose squares overflow float16 (> 65504) still normalize correctly."""
    x = _x((1, 4, 4, 8), scale=400.0)
    for layer in (
        GlobalResponseNorm(dtype="mixed_float16"),
        RMSNorm(dtype="mixed_float16"),
        SimpleNorm(dtype="mixed_float16"),
    ):
        layer.build(x.shape)
        y = _run(layer, x.astype("float16"))
        assert y.dtype == np.float16 and np.isfinite(y).all(), type(layer).__name__
    norm = RMSNorm(dtype="mixed_float16")
    norm.build(x.shape)
    expected = x / np.sqrt((x.astype("float64") ** 2).mean(axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(_run(norm, x.astype("float16")), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", ["float32", "mixed_float16"])
@pytest.mark.parametrize(
    "make",
    [
        lambda dtype: LayerScale(0.5, dtype=dtype),
        lambda dtype: GlobalResponseNorm(dtype=dtype),
        lambda dtype: RMSNorm(dtype=dtype),
        lambda dtype: SimpleNorm(dtype=dtype),
        lambda dtype: StochasticDepth(0.2, dtype=dtype),
        lambda dtype: GELU(dtype=dtype),
    ],
    ids=["LayerScale", "GlobalResponseNorm", "RMSNorm", "SimpleNorm", "StochasticDepth", "GELU"],
)
def test_symbolic_output_is_the_real_outputs_shape_and_dtype(make, dtype):
    """A model's build takes these layers' output spec from `compute_output_shape`, without tracing
    `call`: it must be what `call` gives."""
    x = _x((2, 5, 7, 6))
    layer = make(dtype)
    spec = layer(keras.KerasTensor(x.shape, dtype="float32"))
    real = layer(x, training=True) if isinstance(layer, StochasticDepth) else layer(x)
    assert tuple(spec.shape) == tuple(real.shape)
    assert spec.dtype == keras.backend.standardize_dtype(real.dtype) == layer.compute_dtype


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_host_truncated_normal_is_keras_distribution_seeded_by_keras(dtype):
    """Keras' TruncatedNormal: a normal of `stddev` cut at two standard deviations, whose standard
    deviation is then 0.880 x `stddev` and whose mean is 0; `keras.utils.set_random_seed` fixes the values."""
    initializer = HostTruncatedNormal(stddev=0.02)
    keras.utils.set_random_seed(7)
    values = keras.ops.convert_to_numpy(keras.ops.cast(initializer((256, 384), dtype=dtype), "float32"))
    assert keras.backend.standardize_dtype(initializer((3,), dtype=dtype).dtype) == dtype
    assert np.abs(values).max() <= 2 * 0.02 * (1 + 2**-7)  # bfloat16 rounds to 8 bits of mantissa
    assert abs(values.std() - 0.8796 * 0.02) < 0.01 * 0.02  # 98,304 draws: the std's error is about 0.3 %
    assert abs(values.mean()) < 0.01 * 0.02
    keras.utils.set_random_seed(7)
    again = keras.ops.convert_to_numpy(keras.ops.cast(initializer((256, 384), dtype=dtype), "float32"))
    np.testing.assert_array_equal(again, values)
    assert not np.array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(initializer((256, 384), dtype=dtype), "float32")), values
    )
    rebuilt = keras.initializers.deserialize(keras.initializers.serialize(initializer))
    assert type(rebuilt) is HostTruncatedNormal and rebuilt.stddev == 0.02
