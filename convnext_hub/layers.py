"""Keras layers that ConvNeXt needs beyond Keras' own.

Every layer is registered for `.keras` serialization. The norms and GRN compute
their statistics in float32 whatever the dtype policy, so mixed precision
cannot overflow them (see DESIGN.md §2).
"""
import keras
from keras import ops

PACKAGE = "convnext_hub"


def _check_rate(name, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(keras.layers.Layer):
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalResponseNorm(keras.layers.Layer):
    """Global Response Normalization (ConvNeXt V2), channels-last.

    `Gx = ||x||_2 over H, W`; `Nx = Gx / (mean_c Gx + epsilon)`;
    `out = gamma * (x * Nx) + beta + x`. Statistics in float32.

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
        gx = ops.sqrt(ops.sum(ops.square(x32), axis=(1, 2), keepdims=True))
        nx = gx / (ops.mean(gx, axis=-1, keepdims=True) + self.epsilon)
        out = x32 + ops.cast(self.beta, "float32") + ops.cast(self.gamma, "float32") * (x32 * nx)
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RMSNorm(keras.layers.Layer):
    """`x * rsqrt(mean_c(x^2) + epsilon) * gamma` over channels; no bias (timm RmsNorm2d)."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")

    def _inverse_scale(self, x32):
        return ops.rsqrt(ops.mean(ops.square(x32), axis=-1, keepdims=True) + self.epsilon)

    def call(self, x):
        x32 = ops.cast(x, "float32")
        out = x32 * self._inverse_scale(x32) * ops.cast(self.gamma, "float32")
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimpleNorm(RMSNorm):
    """`x * rsqrt(var_c(x) + epsilon) * gamma`, unbiased variance, x not centred (timm SimpleNorm2d)."""

    def _inverse_scale(self, x32):
        channels = ops.shape(x32)[-1]
        centred = x32 - ops.mean(x32, axis=-1, keepdims=True)
        variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / (channels - 1)
        return ops.rsqrt(variance + self.epsilon)


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(keras.layers.Layer):
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
    "layernorm": keras.layers.LayerNormalization,
    "rmsnorm2d": RMSNorm,
    "simplenorm": SimpleNorm,
}


def make_norm(kind, epsilon, name, dtype):
    """A channels-last norm layer of the kind timm calls `kind`."""
    if kind not in NORM_LAYERS:
        raise ValueError(f"Unknown norm. Received: norm={kind!r}; accepted: {sorted(NORM_LAYERS)}")
    return NORM_LAYERS[kind](epsilon=epsilon, name=name, dtype=dtype)
