"""Inference fast paths: what `model(x)` runs instead of Keras' per-layer call, on torch and on JAX.

torch: Keras' graph runner calls `Layer.__call__` for every layer (argument
standardisation, masks, autocast, name scopes) and keeps every intermediate
alive to the end of the forward, so each new activation lands in fresh,
page-faulting memory. Calling each layer's `call` in graph order and freeing
each intermediate after its last use gives the same ops and the same results.
It reads three private attributes of Keras' `Functional` (`_nodes_by_depth`,
`Node.arguments.fill_in`, `_standardize_inputs`), checked against the Keras
versions in `CHECKED_KERAS_VERSIONS`. Where they are missing, models run
through Keras' own call (one logged notice).

JAX: outside a trace, Keras runs every op eagerly and JAX compiles each op
for its shapes on first use. Here `model(x)` runs one compiled program of
`model.stateless_call` instead (public Keras API; see `compiled_forward`, which
also keeps it between processes). Its result equals Keras' own call up to
float rounding (XLA fuses the whole forward).

`CONVNEXT_HUB_FAST_PATH=0` turns both fast paths off.

`forget_deferred_variables` keeps a throwaway model built without its weights
(the streaming converter's shell) from being initialised later;
`initialize_deferred` gives a shell's variable its value instead (a first load, a
cached load); where a Keras release lacks what it reads (`shells_supported`),
models are built with values and loaded with `load_weights`.
"""

import logging
import os

import keras
import numpy as np

from . import compiled_forward

logger = logging.getLogger("convnext_hub")

CHECKED_KERAS_VERSIONS = ("3.15",)
MODEL_INTERNALS = ("_nodes_by_depth", "_standardize_inputs")  # and each node's `arguments.fill_in`
ENV_SWITCH = "CONVNEXT_HUB_FAST_PATH"
ADOPTED_ALIGNMENT = 64  # bytes: what JAX and TensorFlow need to keep an array rather than copy it
_notice_given = False


def enabled():
    """False when `CONVNEXT_HUB_FAST_PATH` is 0 / false / off / no."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


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
    return plain and _internals_present(model)


def _internals_present(model):
    global _notice_given
    present = all(hasattr(model, name) for name in MODEL_INTERNALS) and all(
        hasattr(node, "arguments") and hasattr(node.arguments, "fill_in")
        for nodes in model._nodes_by_depth.values()
        for node in nodes
    )
    if not present and not _notice_given:
        _notice_given = True
        logger.info(
            "convnext_hub: Keras %s lacks the internals of the torch inference fast path (checked with %s); "
            "using Keras' own call.",
            keras.__version__,
            ", ".join(CHECKED_KERAS_VERSIONS),
        )
    return present


def run(model, inputs):
    """`model(inputs)` in inference: each layer's `call` in graph order, intermediates freed after last use."""
    inputs = model._standardize_inputs(inputs)
    steps = [
        node
        for depth in sorted(model._nodes_by_depth, reverse=True)
        for node in model._nodes_by_depth[depth]
        if not node.is_input
    ]
    last_use = {id(t): i for i, node in enumerate(steps) for t in node.input_tensors}
    for t in model.outputs:
        last_use[id(t)] = len(steps)
    values = {id(t): x for t, x in zip(model.inputs, inputs)}
    for i, node in enumerate(steps):
        args, kwargs = node.arguments.fill_in(values)
        outputs = node.operation.call(*args, **kwargs)
        for t, y in zip(node.outputs, keras.tree.flatten(outputs)):
            values[id(t)] = y
        for t in node.input_tensors:
            if last_use[id(t)] == i:
                values.pop(id(t), None)
    outputs = [values[id(t)] for t in model.outputs]
    return outputs[0] if len(outputs) == 1 else outputs


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


def run_compiled(model, inputs):
    """`model(inputs)` in inference on JAX: one compiled program (see `compiled_forward`)."""
    return compiled_forward.run(model, inputs)


# --------------------------------------------------------------------------- throwaway shells


def forget_deferred_variables(model):
    """Drop `model`'s never-initialised variables from Keras' list of variables to initialise later.

    A model built under `keras.StatelessScope(initialize_variables=False)` (the
    streaming converter's shell) leaves its variables in a global list, and the
    next stateless scope to close (the build of any model) would allocate and
    randomly initialise them all: the full weights, for a shell meant to hold
    none. Reads Keras' private `global_state` attribute `uninitialized_variables`
    (checked with `CHECKED_KERAS_VERSIONS`); does nothing where it is missing.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return
    pending = global_state.get_global_attribute("uninitialized_variables")
    if isinstance(pending, list):
        shell = {id(v) for v in model.variables}
        pending[:] = [v for v in pending if id(v) not in shell]


def shells_supported():
    """True when this Keras has the variable internals `initialize_deferred` and `is_shell` read."""
    return all(hasattr(keras.Variable, name) for name in ("_initialize_with_initializer", "_deferred_initialize"))


def initialize_deferred(variable, value):
    """Give a shell's never-initialised variable the array `value`, which it keeps where it can (no copy).

    Each backend is handed the array in the form it adopts as it is: torch a
    tensor sharing its memory, TensorFlow a DLPack view of it, JAX a transfer
    (which, on the CPU, keeps an array that starts on a 64-byte boundary).
    Reads Keras' private `_initialize_with_initializer`, the step `_deferred_initialize`
    runs with the variable's initializer (`shells_supported` says whether this Keras has it).
    """

    def stored(shape, dtype):
        if keras.backend.standardize_dtype(value.dtype) != dtype:
            return keras.ops.cast(value, dtype)
        return _adopted(value)

    variable._initialize_with_initializer(stored)
    variable._initializer = None


def _adopted(value):
    """`value` as this backend's tensor, sharing its memory where the backend can; else `value`."""
    if not isinstance(value, np.ndarray):
        return value
    backend = keras.backend.backend()
    if backend == "jax":
        import jax  # a plain transfer: `jnp.asarray` stages a copy, compiled once per shape

        return jax.device_put(value)
    if not (value.flags.c_contiguous and value.flags.writeable):
        return value  # Keras copies it
    if backend == "torch":
        import torch  # Keras would copy it twice

        return torch.from_numpy(value)
    if backend == "tensorflow" and value.ctypes.data % ADOPTED_ALIGNMENT == 0:
        import tensorflow as tf  # Keras would copy it twice; TensorFlow's kernels expect this alignment

        return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
    return value


def is_shell(model):
    """True when `model`'s weights were declared but never given values (built as a shell)."""
    return any(getattr(variable, "_value", 0) is None for variable in model.weights)


def initialize_deferred_variables(model):
    """Initialise, with their own initializers, the variables of a shell still without a value."""
    for variable in model.variables:  # weights and the state of random seed generators
        if getattr(variable, "_value", 0) is None:
            variable._deferred_initialize()
