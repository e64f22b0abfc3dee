"""Inference fast paths: what `model(x)` runs instead of Keras' per-layer call, on torch and on JAX.

torch: each layer's `call` in graph order, each intermediate freed after its
last use (`keras_compat.run_layers_in_order`): the same ops and results as
Keras' graph runner, without its per-layer `Layer.__call__` and with less fresh
memory. Where this Keras lacks what that reads, models run through Keras' own
call (one logged notice).

JAX: outside a trace, Keras runs every op eagerly and JAX compiles each op
for its shapes on first use. Here `model(x)` runs one compiled program of
`model.stateless_call` instead (public Keras API; see `compiled_forward`, which
also keeps it between processes). Its result equals Keras' own call up to
float rounding (XLA fuses the whole forward).

`config.set_fast_path(False)` (or `CONVNEXT_HUB_FAST_PATH=0`) turns both fast paths off.
"""

import logging

import keras

from . import compiled_forward, config, keras_compat

logger = logging.getLogger("convnext_hub")


def enabled():
    """The `fast_path` setting (`convnext_hub.config`)."""
    return config.current().fast_path


# --------------------------------------------------------------------------- torch: layer calls in graph order


def applies(model, training, mask, kwargs):
    """True where the torch fast path gives exactly Keras' result: torch, inference, no autocast, no quantization."""
    if training or mask is not None or kwargs or keras.backend.backend() != "torch" or not enabled():
        return False
    plain = all(
        layer.dtype_policy.compute_dtype == layer.dtype_policy.variable_dtype
        and not layer.dtype_policy.quantization_mode
        for layer in model.layers
    )
    return plain and keras_compat.graph_internals_present(model)


# --------------------------------------------------------------------------- JAX: one compiled program


def compiles(model, inputs, training, mask, kwargs):
    """True where `model(inputs)` runs as one compiled program: JAX, inference, on concrete arrays.

    Inside a trace (`jax.jit`, `model.predict`, a transform of `stateless_call`)
    the caller compiles already, so Keras' own call is traced; such programs
    still go to the persistent compilation cache.
    """
    if keras.backend.backend() != "jax" or not enabled():
        return False
    compiled_forward.use_persistent_compilation_cache()
    if training or mask is not None or kwargs:
        return False
    import jax

    return not any(isinstance(x, (jax.core.Tracer, keras.KerasTensor)) for x in keras.tree.flatten(inputs))


def run(model, inputs):
    """`model(inputs)` in inference on torch: layer calls in graph order (see `keras_compat`)."""
    return keras_compat.run_layers_in_order(model, inputs)


def run_compiled(model, inputs):
    """`model(inputs)` in inference on JAX: one compiled program (see `compiled_forward`)."""
    return compiled_forward.run(model, inputs)
