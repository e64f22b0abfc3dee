"""Every JAX formulation of DepthwiseConv2D against `keras.layers.DepthwiseConv2D`.

The formulations exist for the GPU, where they are measured against each other
(`benchmarks/gpu_run.py`); here each one is forced through
the `jax_depthwise` setting on CPU and must give Keras' values and gradients.
On the other backends the setting must change nothing.
"""

import keras
import numpy as np
import pytest

from convnext_hub import config
from convnext_hub.layers import DepthwiseConv2D

ENV = "CONVNEXT_HUB_JAX_DEPTHWISE"
BACKEND = keras.backend.backend()
# Relative to max|reference|: float32 sums taken in another order differ by ~1e-7.
TOLERANCE = 1e-6
# (batch, height, width, channels), kernel size: odd spatial sizes and a channel count
# that the "pad" formulation must pad; 64 channels, which it must leave alone.
CASES = [((2, 9, 11, 6), 7), ((1, 5, 4, 3), 3), ((1, 7, 6, 64), 7)]


def _pair(shape, kernel_size, seed=0):
    """Our layer and Keras' with the same random weights, and an input."""
    rng = np.random.RandomState(seed)
    channels = shape[-1]
    ours = DepthwiseConv2D(kernel_size, padding="same")
    reference = keras.layers.DepthwiseConv2D(kernel_size, padding="same")
    kernel = rng.standard_normal((kernel_size, kernel_size, channels, 1)).astype("float32")
    bias = rng.standard_normal((channels,)).astype("float32")
    for layer in (ours, reference):
        layer.build(shape)
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    return ours, reference, rng.standard_normal(shape).astype("float32")


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    assert actual.shape == expected.shape, what
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= TOLERANCE, f"{what}: max|d| = {error:.2e} x max|keras|"


def _value_and_grads(layer, x, training):
    """Output, and the gradients of sum(output * weights) w.r.t. input, kernel and bias."""
    import jax

    weights = np.random.RandomState(1).standard_normal(layer.compute_output_shape(x.shape)).astype("float32")

    kwargs = {"training": training} if isinstance(layer, DepthwiseConv2D) else {}  # Keras' takes none

    def loss(trainable, inputs):
        out, _ = layer.stateless_call(trainable, [], inputs, **kwargs)
        return (out * weights).sum(), out

    trainable = [v.value for v in layer.trainable_variables]
    (_, out), (grad_vars, grad_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(trainable, x)
    return out, grad_x, grad_vars


@pytest.mark.skipif(BACKEND != "jax", reason="the formulations are JAX code paths")
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("shape,kernel_size", CASES)
@pytest.mark.parametrize("formulation", DepthwiseConv2D.JAX_FORMULATIONS)
def test_each_jax_formulation_equals_keras(monkeypatch, formulation, shape, kernel_size, training):
    monkeypatch.setattr(config.current(), "jax_depthwise", formulation)
    ours, reference, x = _pair(shape, kernel_size)
    assert DepthwiseConv2D.jax_formulation(shape[-1], training, on_cpu=True) == formulation
    out, grad_x, (grad_kernel, grad_bias) = _value_and_grads(ours, x, training)
    ref_out, ref_grad_x, (ref_kernel, ref_bias) = _value_and_grads(reference, x, training)
    _assert_close(out, ref_out, "output")
    _assert_close(grad_x, ref_grad_x, "d/dinput")
    _assert_close(grad_kernel, ref_kernel, "d/dkernel")
    _assert_close(grad_bias, ref_bias, "d/dbias")


@pytest.mark.skipif(BACKEND != "jax", reason="the formulations are JAX code paths")
def test_jit_retraces_with_the_variable(monkeypatch):
    """The benchmark switches formulations in one process: each new trace reads the setting."""
    import jax

    ours, reference, x = _pair((1, 6, 6, 5), 7)
    for formulation in DepthwiseConv2D.JAX_FORMULATIONS:
        monkeypatch.setattr(config.current(), "jax_depthwise", formulation)
        forward = jax.jit(lambda tv, inputs: ours.stateless_call(tv, [], inputs)[0])
        _assert_close(forward([v.value for v in ours.trainable_variables], x), reference(x), formulation)


def test_selection(monkeypatch):
    """The default per device, the channel limit, and refusal of unknown names."""
    select = DepthwiseConv2D.jax_formulation
    monkeypatch.setattr(config.current(), "jax_depthwise", "auto")
    assert select(96, training=None, on_cpu=True) == "shifted"
    assert select(96, training=True, on_cpu=True) == "xla"
    assert select(96, training=None, on_cpu=False) == "xla"
    assert select(96, training=False, on_cpu=False) == "xla"
    # A batch split over part of the mesh: XLA's grouped-conv kernel gradient is wrong there (DepthwiseConv2D).
    assert select(96, training=True, on_cpu=False, partial_batch_mesh=True) == "shifted"
    with config.settings(jax_depthwise="Pad:96"):
        assert select(96, training=True, on_cpu=False) == "pad"
        assert select(192, training=True, on_cpu=False) == "xla"
    assert config.current().jax_depthwise == "auto"
    assert config.from_environment({ENV: "nchw:64"}).jax_depthwise == "nchw:64"
    for bad in ("cudnn", "pad:", "pad:x", "nchw:-1"):
        with pytest.raises(ValueError, match="jax_depthwise"):
            config.set_jax_depthwise(bad)
        with pytest.raises(ValueError, match=ENV):
            config.from_environment({ENV: bad})
    assert config.current().jax_depthwise == "auto"


@pytest.mark.skipif(BACKEND == "jax", reason="checks the backends the setting must not touch")
@pytest.mark.parametrize("formulation", DepthwiseConv2D.JAX_FORMULATIONS)
def test_other_backends_ignore_the_setting(monkeypatch, formulation):
    monkeypatch.setattr(config.current(), "jax_depthwise", formulation)
    ours, reference, x = _pair(*CASES[0])
    for training in (False, True):
        _assert_close(
            keras.ops.convert_to_numpy(ours(x, training=training)),
            keras.ops.convert_to_numpy(reference(x)),
            f"{formulation}, training={training}",
        )
