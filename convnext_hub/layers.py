"""Keras layers that ConvNeXt needs beyond Keras' own.

Every layer is registered for `.keras` serialization. The norms and GRN compute
their statistics in float32 whatever the dtype policy, so mixed precision
cannot overflow them (channel-first LayerNorm and GRN overflow in float16).
"""

import contextlib
import contextvars
import math

import keras
import numpy as np
from keras import ops

from . import config

PACKAGE = "convnext_hub"
_SQRT_HALF = 0.5**0.5
_SQRT_TWO = 2.0**0.5
_EXPORT_FORMAT = contextvars.ContextVar("convnext_hub_export_format", default=None)


@contextlib.contextmanager
def tracing_for_export(export_format):
    """Layers traced inside write the op patterns that `export_format`'s runtime fuses.

    onnxruntime fuses LayerNorm, RMSNorm and exact GELU into single kernels only
    when it finds their textbook patterns; TensorFlow's own kernels (oneDNN, LiteRT's
    converter) fuse other forms of the same arithmetic, so the ONNX forms are
    written only while a model is traced for `format="onnx"` on TensorFlow.
    """
    token = _EXPORT_FORMAT.set(export_format)
    try:
        yield
    finally:
        _EXPORT_FORMAT.reset(token)


@keras.saving.register_keras_serializable(package=PACKAGE)
class HostTruncatedNormal(keras.initializers.Initializer):
    """A normal distribution truncated at two standard deviations (Keras' `TruncatedNormal`), drawn
    by NumPy on the host.

    Keras' `TruncatedNormal` on JAX compiles one XLA program per variable shape (about 0.2 s each on a
    2-core CPU): creating convnext_atto with random weights in a new process took 10.3 s on JAX, nearly
    all of it in those compilations, and 0.6 s on TensorFlow and torch. NumPy draws the same
    distribution without compiling anything: 0.7 / 0.4 / 0.2 s on JAX / TensorFlow / torch
    (`benchmarks/random_init.py`). One seed also gives the same initial weights on every backend.

    Values come from NumPy's global generator, which `keras.utils.set_random_seed` seeds (it seeds
    Python's, NumPy's and the backend's generators), so a seeded run starts from the same weights.

    Args:
        stddev: standard deviation before truncation (timm's ConvNeXt: 0.02).
    """

    def __init__(self, stddev=0.05):
        self.stddev = stddev

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        values = rng.standard_normal(shape, dtype=np.float32)
        outside = np.abs(values) > 2.0
        while outside.any():  # redraw what falls outside: 4.6 % of draws, so a few rounds
            values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
            outside = np.abs(values) > 2.0
        values *= np.float32(self.stddev)
        return ops.convert_to_tensor(values, dtype=dtype or keras.backend.floatx())

    def get_config(self):
        return {"stddev": self.stddev}


class ExportsFusablePatterns:
    """Model mixin: `export()` traces the layers with `tracing_for_export(format)`."""

    def export(self, filepath, format="tf_saved_model", **kwargs):
        with tracing_for_export(format):
            return super().export(filepath, format=format, **kwargs)


def _onnx_patterns():
    return _EXPORT_FORMAT.get() == "onnx" and keras.backend.backend() == "tensorflow"


def gelu(x):
    """Exact GELU, `x/2 * (1 + erf(x/sqrt(2)))`, in each backend's fastest form.

    TensorFlow: this order of the erf form is the one oneDNN fuses after a matmul
    and LiteRT maps to its GELU builtin (`tf.nn.gelu`'s erfc has no ONNX op: tf2onnx
    writes a graph onnxruntime rejects). For ONNX the divisor passes through
    `check_numerics`, because constant folding (which tf2onnx runs) rewrites `x / c`
    as `x * (1/c)`, and onnxruntime's GELU fusion matches only the division.
    JAX: `jax.nn.gelu` goes through `erfc`, whose XLA expansion makes the GELU
    fusion compute-bound. torch: Keras' exact GELU.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if _onnx_patterns():
            divisor = tf.debugging.check_numerics(tf.constant(_SQRT_TWO, x.dtype), "GELU divisor")
            return (x * 0.5) * (1.0 + tf.math.erf(x / divisor))
        return (x * 0.5) * (1.0 + tf.math.erf(x * _SQRT_HALF))
    if backend == "jax":
        from jax import lax

        return x * (0.5 * (1.0 + lax.erf(x * _SQRT_HALF)))
    return keras.activations.gelu(x, approximate=False)


def _tf_rows(x):
    """`x` as a `(-1, channels)` matrix (TensorFlow).

    In an ONNX graph the reshape also keeps tf2onnx's transpose optimizer from moving a
    preceding NCHW->NHWC transpose below the statistics, which would then run over
    axis 1 and no longer match onnxruntime's norm fusions.
    """
    import tensorflow as tf

    return tf.reshape(x, (-1, x.shape[-1]))


def _tf_unrows(y, like):
    """`(-1, channels)` rows back to the leading shape of `like` (TensorFlow).

    A constant target shape where at most one size is unknown: exported graphs then
    need no shape arithmetic, which LiteRT's XNNPack delegate cannot take (each one
    splits the graph).
    """
    import tensorflow as tf

    leading = like.shape[:-1]
    if sum(side is None for side in leading) > 1:  # unknown sizes: read them at run time
        return tf.reshape(y, tf.concat([tf.shape(like)[:-1], [y.shape[-1]]], axis=0))
    return tf.reshape(y, [-1 if side is None else side for side in leading] + [y.shape[-1]])


def _check_rate(name, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Transpose(keras.layers.Layer):
    """Permutes the non-batch axes (`perm`, 1-based, as `keras.layers.Permute` takes it).

    `keras.layers.Permute`'s output spec reads an attribute only symbolic
    tensors have, so `model.compute_output_spec(array)` (which keras-hub's model
    tests call) fails on a model holding one; this layer's spec comes from its
    output shape, for any input.
    """

    def __init__(self, perm, **kwargs):
        super().__init__(**kwargs)
        self.perm = tuple(perm)

    def call(self, inputs):
        return ops.transpose(inputs, (0, *self.perm))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(input_shape[axis] for axis in self.perm))

    def get_config(self):
        return {**super().get_config(), "perm": list(self.perm)}


class KeepsShape:
    """For layers whose output has their input's shape: said outright, so that building a model does
    not trace the layer's `call` to find out (which Keras does for layers that do not say)."""

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(KeepsShape, keras.layers.Layer):
    """Multiplies each channel by a learned scale `gamma` (ConvNeXt V1).

    Args:
        init_value: initial value of every entry of `gamma` (timm: 1e-6).
    """

    def __init__(self, init_value=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


GRN_SUM_SQUARES_FLOOR = 1e-30  # a float32 normal number: sqrt of it is 1e-15


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalResponseNorm(KeepsShape, keras.layers.Layer):
    """Global Response Normalization (ConvNeXt V2), channels-last.

    `Gx = ||x||_2 over H, W`; `Nx = Gx / (mean_c Gx + epsilon)`;
    `out = gamma * (x * Nx) + beta + x`. Statistics in float32: the sum of
    squares over H x W overflows float16 (65504) once |x| averages above
    sqrt(65504 / (H * W)), about 4.6 for a 56 x 56 map.

    A channel that is zero over the whole map (exact GELU is exactly 0 below about
    -5 in float32 and -3 to -5.5 in half precision, where `1 + erf` rounds to 0, and
    a late stage on a small input has one position) has `Gx = 0`, where the square root's derivative is
    infinite: its gradient is taken as 0 there, as torch's `norm` (timm's GRN) does,
    instead of the NaN that would spread to every weight below.

    Args:
        epsilon: added to the channel mean of `Gx` (timm: 1e-6).
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="zeros")
        self.beta = self.add_weight(name="beta", shape=channels, initializer="zeros")

    def call(self, x):
        x32 = ops.cast(x, "float32")
        sum_squares = ops.sum(ops.square(x32), axis=(1, 2), keepdims=True)
        # The floor takes the gradient where a channel is zero (`maximum` passes none to a value below it) and
        # changes Gx by at most 1e-15, far below `epsilon`; unlike a `where`, it stays one op that the export
        # runtimes' delegates (XNNPack) run.
        gx = ops.sqrt(ops.maximum(sum_squares, GRN_SUM_SQUARES_FLOOR))
        nx = gx / (ops.mean(gx, axis=-1, keepdims=True) + self.epsilon)
        # x + gamma * (x * Nx) + beta, with the per-sample, per-channel factor formed first:
        # two passes over the activations instead of four.
        scale = 1.0 + ops.cast(self.gamma, "float32") * nx
        out = x32 * scale + ops.cast(self.beta, "float32")
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RMSNorm(KeepsShape, keras.layers.Layer):
    """`x * rsqrt(mean_c(x^2) + epsilon) * gamma` over channels; no bias (timm RmsNorm2d)."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")

    def _inverse_scale(self, x32):
        return ops.rsqrt(ops.mean(ops.square(x32), axis=-1, keepdims=True) + self.epsilon)

    def call(self, x):
        if _onnx_patterns() and type(self) is RMSNorm:
            return self._onnx_call(x)
        x32 = ops.cast(x, "float32")
        out = x32 * self._inverse_scale(x32) * ops.cast(self.gamma, "float32")
        return ops.cast(out, self.compute_dtype)

    def _onnx_call(self, x):
        """`x / sqrt(mean(x^2) + epsilon) * gamma` on rows: onnxruntime's SimplifiedLayerNormalization."""
        import tensorflow as tf

        rows = _tf_rows(tf.cast(x, "float32"))
        mean_square = tf.reduce_mean(tf.pow(rows, 2.0), axis=-1, keepdims=True)
        out = rows / tf.sqrt(mean_square + self.epsilon) * tf.cast(self.gamma, "float32")
        return tf.cast(_tf_unrows(out, x), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerNorm(keras.layers.LayerNormalization):
    """Keras' LayerNormalization over the last axis; same weights and results.

    Traced for ONNX on TensorFlow it writes `(x - mean) / sqrt(var + epsilon) * gamma + beta`
    on rows, the pattern onnxruntime fuses into one LayerNormalization kernel (Keras'
    form `x * inv + (beta - mean * inv)` is left as about ten separate ops).
    """

    def call(self, inputs):
        if not _onnx_patterns() or self.rms_scaling or not (self.center and self.scale):
            return super().call(inputs)
        if [axis % len(inputs.shape) for axis in self.axis] != [len(inputs.shape) - 1]:
            return super().call(inputs)
        import tensorflow as tf

        rows = _tf_rows(tf.cast(inputs, "float32"))
        centred = rows - tf.reduce_mean(rows, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.pow(centred, 2.0), axis=-1, keepdims=True)
        out = centred / tf.sqrt(variance + self.epsilon) * tf.cast(self.gamma, "float32")
        out = out + tf.cast(self.beta, "float32")
        return tf.cast(_tf_unrows(out, inputs), self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GELU(KeepsShape, keras.layers.Layer):
    """Exact GELU as a layer (the `overlap_act` stem), through `gelu`."""

    def call(self, x):
        return gelu(x)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimpleNorm(RMSNorm):
    """`x * rsqrt(var_c(x) + epsilon) * gamma`, unbiased variance, x not centred (timm SimpleNorm2d)."""

    def _inverse_scale(self, x32):
        channels = ops.shape(x32)[-1]
        centred = x32 - ops.mean(x32, axis=-1, keepdims=True)
        variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / (channels - 1)
        return ops.rsqrt(variance + self.epsilon)


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(KeepsShape, keras.layers.Layer):
    """Drops the whole residual branch of a sample with probability `rate` in training.

    Survivors are scaled by `1 / (1 - rate)`; the noise has shape `(B, 1, 1, 1)`.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_rate("rate", rate)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


NORM_LAYERS = {
    "layernorm": LayerNorm,
    "rmsnorm2d": RMSNorm,
    "simplenorm": SimpleNorm,
}


def make_norm(kind, epsilon, name, dtype):
    """A channels-last norm layer of the kind timm calls `kind`."""
    if kind not in NORM_LAYERS:
        raise ValueError(f"Unknown norm. Received: norm={kind!r}; accepted: {sorted(NORM_LAYERS)}")
    return NORM_LAYERS[kind](epsilon=epsilon, name=name, dtype=dtype)


def _jax_on_cpu():
    import jax

    return jax.devices()[0].platform == "cpu"


def _torch_conv_channels_last(x, weight, bias, strides, padding=(0, 0), groups=1):
    """`conv2d` on a channels-last tensor through a channels-first view: no layout copies."""
    import torch.nn.functional as F

    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=strides, padding=padding, groups=groups)
    return y.permute(0, 2, 3, 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """Keras' Conv2D; on torch, a "valid" conv is one `conv2d` call on a channels-last view.

    Keras' torch path copies input, kernel and output between layouts and adds
    the bias as a separate op. Weights and results are those of `keras.layers.Conv2D`.
    """

    def call(self, inputs):
        plain = (
            self.padding == "valid"
            and self.groups == 1
            and self.use_bias
            and self.dilation_rate == (1, 1)
            and self.data_format == "channels_last"
            and self.activation is keras.activations.linear
        )
        if keras.backend.backend() != "torch" or not plain:
            return super().call(inputs)
        weight = self.kernel.value.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        return _torch_conv_channels_last(inputs, weight, self.bias.value, self.strides)


def _splits_batch_over_part_of_mesh():
    """Whether the current `keras.distribution` splits the batch over a mesh axis and has another axis of
    several devices, where the batch is not split (see `DepthwiseConv2D`)."""
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    if mesh is None:
        return False
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    batch = int(sizes.get(distribution.batch_dim_name, 1))
    return batch > 1 and math.prod(int(size) for size in sizes.values()) > batch


@keras.saving.register_keras_serializable(package=PACKAGE)
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """Keras' stride-1 "same" depthwise conv, with faster kernels where Keras' is slow.

    JAX on CPU, inference: XLA's CPU grouped convolution is a slow generic loop,
    while the sum of the kh*kw shifted products fuses into one vectorised loop (in
    training the sum's gradient compiles far slower, so it is not used). torch: calls
    `conv2d` on a channels-last view, with no layout copies. Weights and
    results are those of `keras.layers.DepthwiseConv2D`.

    JAX offers several formulations of the same conv (`JAX_FORMULATIONS`), because
    XLA picks its GPU kernel from the shape and layout it is given, and at stage 0
    (96 channels) it picked a slow one wrapped in layout transforms:
      - "xla": Keras' grouped `conv_general_dilated` (NHWC input, HWIO kernel, one
        group per channel);
      - "shifted": the sum of the kh*kw shifted products (no convolution op);
      - "nchw": the grouped convolution on a channels-first view with an OIHW kernel;
      - "pad": the grouped convolution with zero channels appended up to a multiple
        of `PAD_CHANNELS_TO`, then sliced off (the zero channels change no output).
    The default is "shifted" on CPU in inference and "xla" elsewhere. The
    `jax_depthwise` setting (`convnext_hub.config.set_jax_depthwise`) overrides it for
    A/B measurements (see `jax_formulation`); it is read when the call is traced.

    Under a `keras.distribution` whose mesh splits the batch over one axis and has
    devices on another (`ModelParallel` on a 2x4 mesh), every layer runs "shifted",
    whatever the setting: there XLA's SPMD partitioner returns the kernel gradient of
    a grouped convolution multiplied by the number of devices the batch is not split
    over (4 on a 2x4 mesh; measured with JAX 0.10.2, both of its partitioners, and
    caught by tests/test_distribution.py), and the shifted sum has no convolution.
    """

    JAX_FORMULATIONS = config.JAX_DEPTHWISE_FORMULATIONS
    PAD_CHANNELS_TO = 64

    @classmethod
    def jax_formulation(cls, channels, training, on_cpu, partial_batch_mesh=False):
        """The JAX formulation a plain layer with `channels` channels runs.

        The `jax_depthwise` setting holds `auto` (the per-device default), a name
        from `JAX_FORMULATIONS` (every plain layer uses it, training included), or
        `name:N` (layers of at most N channels use it, the others "xla"), so a
        benchmark can change stage 0 alone; `convnext_hub.config` validates it.

        Args:
            channels: input channels of the layer.
            training: the layer's `training` argument.
            on_cpu: whether JAX runs on its CPU platform.
            partial_batch_mesh: whether the distribution splits the batch over part of
                its mesh (`_splits_batch_over_part_of_mesh`): "shifted" then.

        Returns:
            A name from `JAX_FORMULATIONS`.
        """
        if partial_batch_mesh:
            return "shifted"
        spec = config.current().jax_depthwise
        if spec == "auto":
            return "shifted" if on_cpu and not training else "xla"
        name, _, limit = spec.partition(":")
        return "xla" if limit and channels > int(limit) else name

    def call(self, inputs, training=None):
        backend = keras.backend.backend()
        plain = (
            self.strides == (1, 1)
            and self.padding == "same"
            and self.depth_multiplier == 1
            and self.use_bias
            and self.dilation_rate == (1, 1)
            and self.data_format == "channels_last"
        )
        if not plain:
            return super().call(inputs)
        if backend == "torch":
            return self._torch_call(inputs)
        kh, kw = self.kernel_size
        if backend == "jax" and kh % 2 and kw % 2:  # the formulations pad (k - 1) / 2 on each side
            formulation = self.jax_formulation(
                self.kernel.shape[2], training, _jax_on_cpu(), _splits_batch_over_part_of_mesh()
            )
            if formulation == "shifted":
                return self._shifted_sum_call(inputs)
            if formulation == "nchw":
                return self._nchw_call(inputs)
            if formulation == "pad":
                return self._channel_pad_call(inputs)
        return super().call(inputs)

    def _torch_call(self, x):
        kernel = self.kernel.value  # (kh, kw, C, 1)
        kh, kw, channels = kernel.shape[:3]
        weight = kernel.permute(2, 3, 0, 1)  # (C, 1, kh, kw)
        return _torch_conv_channels_last(
            x, weight, self.bias.value, (1, 1), padding=(kh // 2, kw // 2), groups=channels
        )

    def _shifted_sum_call(self, x):
        kh, kw = self.kernel_size
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            height, width = ops.shape(x)[1], ops.shape(x)[2]
        padded = ops.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        kernel = self.kernel[:, :, :, 0]
        out = ops.broadcast_to(self.bias, ops.shape(x))
        for i in range(kh):
            for j in range(kw):
                out = out + padded[:, i : i + height, j : j + width, :] * kernel[i, j]
        return out

    def _nchw_call(self, x):
        from jax import lax

        kh, kw = self.kernel_size
        kernel = ops.transpose(ops.convert_to_tensor(self.kernel), (2, 3, 0, 1))  # (C, 1, kh, kw)
        y = lax.conv_general_dilated(
            ops.transpose(x, (0, 3, 1, 2)),
            kernel,
            (1, 1),
            ((kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=kernel.shape[0],
        )
        return ops.transpose(y, (0, 2, 3, 1)) + self.bias

    def _channel_pad_call(self, x):
        channels = self.kernel.shape[2]
        extra = -channels % self.PAD_CHANNELS_TO
        if not extra:
            return super().call(x)
        x = ops.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
        kernel = ops.pad(ops.convert_to_tensor(self.kernel), ((0, 0), (0, 0), (0, extra), (0, 0)))
        y = ops.depthwise_conv(x, kernel, strides=1, padding="same")
        return y[..., :channels] + self.bias


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dense(keras.layers.Dense):
    """Keras' Dense, in the op patterns each backend runs fastest; same weights and results.

    torch: one `linear` (matmul + bias), and outside autograd a GELU applied in
    place on its result, which nothing else holds. TensorFlow: a 2-D `matmul`,
    `bias_add` and the activation, the pattern oneDNN fuses into one kernel in a
    `tf.function` (Keras' batched matmul, add and GELU are three kernels). JAX: the
    matmul and `gelu`'s erf form. GELU is `gelu` on TensorFlow and JAX.
    """

    def call(self, inputs, training=None):
        if self.lora_enabled or self.quantization_mode:
            return super().call(inputs, training=training)
        backend = keras.backend.backend()
        if backend == "torch":
            return self._torch_call(inputs)
        if backend == "tensorflow" and self.use_bias:
            return self._tensorflow_call(inputs)
        if backend == "jax" and self.activation is keras.activations.gelu:
            return self._jax_gelu_call(inputs)
        return super().call(inputs, training=training)

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras' Dense quantization (`model.quantize("int8")`).

        Keras skips subclasses of Dense by default (`type_check`), with only a
        warning, because a subclass may own other weights; this one has exactly
        Dense's, and in quantized mode `call` hands over to Keras' quantized call.
        """
        super().quantize(mode, type_check=False, config=config)

    def _jax_gelu_call(self, inputs):
        y = ops.matmul(inputs, self.kernel)
        if self.use_bias:
            y = ops.add(y, self.bias)
        return gelu(y)

    def _torch_call(self, inputs):
        import torch
        import torch.nn.functional as F

        bias = self.bias.value if self.use_bias else None
        y = F.linear(inputs, self.kernel.value.T, bias)
        if self.activation is keras.activations.gelu and not torch.is_grad_enabled():
            return torch.ops.aten.gelu_(y)
        return self.activation(y)

    def _tensorflow_call(self, inputs):
        import tensorflow as tf

        # For ONNX a matmul at the input's rank (onnxruntime fuses bias and GELU into BiasGelu); else on
        # 2-D rows, the pattern oneDNN fuses.
        onnx = _onnx_patterns()
        y = tf.nn.bias_add(tf.matmul(inputs if onnx else _tf_rows(inputs), self.kernel.value), self.bias.value)
        y = gelu(y) if self.activation is keras.activations.gelu else self.activation(y)
        return y if onnx else _tf_unrows(y, inputs)
