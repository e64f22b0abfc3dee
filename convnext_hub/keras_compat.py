"""Every use of private Keras API in convnext_hub: the one module that may name one.

Each use below reads or sets something that is not Keras' public API (a name
under `keras.src`, an underscore attribute, a method replaced on one instance).
Each was checked against the Keras versions in `CHECKED_KERAS_VERSIONS` (and CI
runs their tests against `keras-nightly`), says what it buys, and has a
public-API fallback that runs where the private name is missing; the tests run
every fallback.

Uses, the private names each reads, what it buys, and the fallback. The figures are
`benchmarks/private_keras.py`'s (`benchmarks/results/private_keras.json`: 2-core VM, 2026-12-04,
Keras 3.15.1, with other test processes beside it), each use against its fallback, taking turns:

- `run_layers_in_order` (torch inference): `Functional._nodes_by_depth`,
  `_standardize_inputs`, `Node.arguments.fill_in`. Each intermediate is freed
  after its last use and no `Layer.__call__` runs per layer. Buys memory, not
  time: convnext_tiny, batch 8 at 224x224, `predict_on_batch` takes 0 MB of
  fresh memory against 131 MB, `model(x)` 356 MB against 393 MB (10 %); the
  seconds are equal within the noise (2.71 s against 2.51 s, 2.81 s against
  2.82 s). Fallback: Keras' own call (`graph_internals_present` is False).
- deferred variables (loading): `Variable._initialize_with_initializer`,
  `_deferred_initialize`, `_value`, `global_state`. Each weight is allocated
  once, from the file, and a cache entry's mapped pages are kept as they are.
  Buys load time and memory: convnext_tiny from a cache entry in 0.32 / 0.14 /
  0.49 s on TensorFlow / JAX / torch against 0.91 / 2.25 / 1.46 s (2.9x / 15.9x
  / 3.0x), peak 116 / 115 / 111 MB against 167 / 217 / 132 MB.
  Fallback: models built with values, then assigned (`shells_supported` is False).
- `tensorflow_left_unimported`: `keras.src.utils.module_utils.tensorflow._available`.
  `get_config` on JAX and torch without importing TensorFlow: 0.2 ms against
  2.5 s on either backend. Fallback: Keras' serializer as it is (it imports TensorFlow).
- `accept_any_input`: `Layer._convert_input_args`, `_allow_non_tensor_positional_args`.
  A crop layer that runs inside `tf.data` whatever the backend: a capability,
  no speed. Fallback: inputs converted as by any layer (eager use works; in
  `tf.data` on JAX and torch the fallback fails, NotImplementedError).
- `saving_through` (conversion to `.weights.h5`): `save_own_variables` replaced
  on each layer instance, so Keras' own saver writes values streamed from the
  checkpoint into a shell's file. Buys a Keras `.weights.h5` without building
  the model: convnext_large (0.79 GB) in 5.1 s and 148 MB of peak against
  8.6 s and 1,029 MB for `convert` then `save_weights` (1.7x, 7.0x). Fallback:
  the safetensors output, which the project writes itself (3.2 s, 126 MB:
  faster and smaller than the `.weights.h5`, but not a Keras file).
"""

import contextlib
import logging
import sys

import keras

logger = logging.getLogger("convnext_hub")

CHECKED_KERAS_VERSIONS = ("3.15",)
MODEL_INTERNALS = ("_nodes_by_depth", "_standardize_inputs")  # and each node's `arguments.fill_in`
VARIABLE_INTERNALS = ("_initialize_with_initializer", "_deferred_initialize")
_notice_given = False


# --------------------------------------------------------------------------- torch inference: layers in graph order


def graph_internals_present(model):
    """True when `model` (a functional Keras model) has what `run_layers_in_order` reads; else one notice."""
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


def run_layers_in_order(model, inputs):
    """`model(inputs)` in inference: each layer's `call` in graph order, intermediates freed after last use.

    Keras' graph runner calls `Layer.__call__` for every layer and keeps every
    intermediate alive to the end of the forward, so each new activation lands in
    fresh, page-faulting memory; this gives the same ops and the same results.
    """
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


# --------------------------------------------------------------------------- deferred variables (loading)


def shells_supported():
    """True when this Keras has the variable internals that giving a shell its values reads."""
    return all(hasattr(keras.Variable, name) for name in VARIABLE_INTERNALS)


def initialize_deferred(variable, value):
    """Gives a never-initialised variable `value` (a backend tensor or array, kept as it is where it can)."""
    variable._initialize_with_initializer(lambda shape, dtype: value)
    variable._initializer = None


def has_no_value(variable):
    """True for a variable declared in a shell and not yet given a value."""
    return getattr(variable, "_value", 0) is None


def initialize_with_own_initializer(variable):
    """Initialises a shell's variable still without a value with its own initializer."""
    variable._deferred_initialize()


def forget_deferred_variables(model):
    """Drops `model`'s never-initialised variables from Keras' list of variables to initialise later.

    A model built under `keras.StatelessScope(initialize_variables=False)` (a
    shell) leaves its variables in a global list, and the next stateless scope to
    close (the build of any model) would allocate and randomly initialise them
    all: the full weights, for a shell meant to hold none. Does nothing where
    Keras keeps no such list.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return
    pending = global_state.get_global_attribute("uninitialized_variables")
    if isinstance(pending, list):
        shell = {id(v) for v in model.variables}
        pending[:] = [v for v in pending if id(v) not in shell]


# --------------------------------------------------------------------------- serialization without TensorFlow


@contextlib.contextmanager
def tensorflow_left_unimported():
    """Inside, Keras' serializer does not import TensorFlow (seconds, on JAX or torch) where nothing has.

    It imports it only to ask whether a value is a `tf.TensorShape`, and no value
    can be one while TensorFlow was never imported. Sets Keras' private record of
    whether TensorFlow is available, restored on the way out; where that record
    is missing, nothing is changed (TensorFlow is imported as Keras does).
    """
    try:
        from keras.src.utils.module_utils import tensorflow as lazy_tensorflow
    except ImportError:
        lazy_tensorflow = None
    if "tensorflow" in sys.modules or getattr(lazy_tensorflow, "_available", True) is not None:
        yield
        return
    lazy_tensorflow._available = False
    try:
        yield
    finally:
        lazy_tensorflow._available = None


# --------------------------------------------------------------------------- layers inside tf.data


def accept_any_input(layer):
    """Lets `layer` take its inputs as they come (tf.data tensors on any backend, plain arrays).

    Keras converts a layer's positional inputs to the backend's tensors, which
    inside a `tf.data` pipeline on JAX or torch cannot work. Where Keras lacks
    these switches, setting them changes nothing and inputs are converted.
    """
    layer._convert_input_args = False
    layer._allow_non_tensor_positional_args = True


# --------------------------------------------------------------------------- Keras' saver, fed from elsewhere


@contextlib.contextmanager
def saving_through(model, saver_of):
    """Inside, each weighted layer's `save_own_variables` (Keras' per-layer saving hook) is
    `saver_of(layer)`, so `model.save_weights` writes values that the model never holds."""
    for layer in model.layers:
        if layer.weights:
            layer.save_own_variables = saver_of(layer)
    try:
        yield
    finally:
        for layer in model.layers:
            layer.__dict__.pop("save_own_variables", None)
