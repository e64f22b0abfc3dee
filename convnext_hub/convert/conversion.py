"""timm state dict <-> Keras model, strict, through `mapping.weight_slots`."""

import concurrent.futures
import functools
import logging
import math

import keras
import numpy as np
from tqdm.auto import tqdm

from convnext_hub.arguments import check_keywords
from convnext_hub.families import create_from_structure, create_model, model_arguments
from convnext_hub.heads import Head
from convnext_hub.keras_compat import forget_deferred_variables, saving_through
from convnext_hub.model import CLASSIFIER_LAYER, HEAD_LAYERS, kernel_initializer, zeros_initialized

from ..errors import KeyMismatchError, ShapeMismatchError, check_finite
from ..stored_arrays import DATA_ALIGNMENT
from . import layouts
from .mapping import timm_module_path, weight_slots
from .writers import write_safetensors

logger = logging.getLogger("converters")

# The head as the model declares it, in timm's key names.
CLASSIFIER_KEYS = tuple(f"{timm_module_path(CLASSIFIER_LAYER)}.{leaf}" for leaf in ("weight", "bias"))
HEAD_PREFIXES = tuple(sorted({f"{timm_module_path(name).split('.')[0]}." for name in HEAD_LAYERS}))
MAX_CLASSES = 1_000_000  # ImageNet-22k has 21,841; more is a corrupt or hostile header


def checkpoint_num_classes(state_dict):
    """Classifier outputs of a timm state dict (0 when it has none)."""
    weight = state_dict.get("head.fc.weight")
    return 0 if weight is None else int(weight.shape[0])


def convert(state_dict, arch=None, *, source=None, progress=False, **model_kwargs):
    """Builds the Keras model for a timm / official / HF state dict and loads its weights.

    Args:
        state_dict: `{key: ndarray}` in any supported layout.
        arch: timm architecture; inferred from the tensors when None, else checked.
            Tensors of no named architecture give a model of their own geometry.
        source: file name used in messages; default the file `load_checkpoint` read.
        progress: show a progress bar while weights are set (large models).
        **model_kwargs: `convnext_hub.create_model` arguments (`num_classes`, `input_shape`,
            `include_top`, `features_only`, ...). `num_classes` defaults to the checkpoint's.
            For a custom geometry also `norm_eps` and, where norms have no bias, `norm`.
    """
    check_keywords("convert", model_kwargs, *model_arguments())
    source = _source_name(state_dict, source)
    with zeros_initialized():  # every weight is set below, or re-initialised if left fresh
        model, state_dict = _model_for(state_dict, arch, source, model_kwargs)
    return load_timm_state_dict(model, state_dict, source=source, progress=progress)


def convert_to_weights_file(state_dict, path, arch=None, *, source=None, progress=False, digest=None, **model_kwargs):
    """Writes the weights of `convert(...)` to `path` without ever holding them in memory.

    `path` ending in `.safetensors`: a safetensors file keyed by Keras variable
    path (what `weights_io.fill_shell` reads); else a Keras `.weights.h5`,
    written by Keras' own saver, which asks each layer for its values.
    The model is built as a shell (variables declared, never allocated) and the
    values are read from the checkpoint as they are written (the next tensor
    while this one is written). Same checks and errors as `convert`; returns the
    shell model (architecture and config, no weights). `digest` (safetensors
    only) is given every byte written (see `writers.write_safetensors`).
    """
    safetensors = str(path).endswith(".safetensors")
    if digest is not None and not safetensors:
        raise ValueError(f"{path}: a digest is computed for .safetensors files only")
    source = _source_name(state_dict, source)
    with keras.StatelessScope(initialize_variables=False):
        model, state_dict = _model_for(state_dict, arch, source, model_kwargs)
    plan = plan_weights(model, state_dict, source=source)
    if safetensors:
        plan = _aligned_first(plan)
    values = _read_ahead(plan)
    bar = _progress_bar(plan) if progress else None

    def written(variable, value):
        """Called with each value as it is written: counts it."""
        if bar is not None:
            bar.update()
        return value

    try:
        if safetensors:
            specs = [(variable.path, tuple(variable.shape), variable.dtype) for variable, _ in plan]
            write_safetensors(path, specs, (written(variable, np.asarray(value)) for variable, value in values), digest)
        else:
            with saving_through(model, lambda layer: _streaming_saver(layer, values, written)):
                model.save_weights(path)
    finally:
        values.close()
        if bar is not None:
            bar.close()
        forget_deferred_variables(model)  # else the next model build would allocate and initialise the shell
    return model


def _aligned_first(plan):
    """`plan` with the values whose size is a multiple of `DATA_ALIGNMENT` bytes first, in their order:
    each of those then starts on that boundary in a safetensors file (whose data does), so every
    backend can keep its mapped pages as they are; the few others (small vectors) follow."""

    def odd_size(step):
        variable = step[0]
        return math.prod(variable.shape) * np.dtype(variable.dtype).itemsize % DATA_ALIGNMENT != 0

    return sorted(plan, key=odd_size)


def _read_ahead(plan):
    """Yields `(variable, value)` in plan order, reading the next tensor in a thread meanwhile.

    Values live in two sets of reused arrays, taking turns: the caller must be
    done with a value when it asks for the next one. Reusing them spares faulting
    in fresh memory for every big tensor (seconds for a 2.6 GB model).
    """
    scratches = (_Scratch(), _Scratch())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = None
        for index, (variable, read) in enumerate(plan):
            future = pool.submit(read, scratches[index % 2])
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = variable, future
        if pending is not None:
            yield pending[0], pending[1].result()


class _Scratch:
    """Named arrays reused from one tensor to the next, grown when a bigger one comes."""

    def __init__(self):
        self._buffers = {}

    def array(self, name):
        """`scratch(shape, dtype)`: an uninitialised array of that shape in the buffer `name`."""

        def scratch(shape, dtype):
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            buffer = self._buffers.get(name)
            if buffer is None or buffer.size < nbytes:
                buffer = self._buffers[name] = np.empty(nbytes, np.uint8)
            return buffer[:nbytes].view(dtype).reshape(shape)

        return scratch


def _streaming_saver(layer, values, written):
    """`layer.save_own_variables` writing the checkpoint's values, which come in Keras' saving order
    (layers in model order, each layer's variables in creation order, as `weight_slots`)."""

    def save_own_variables(store):
        for i, variable in enumerate(layer.trainable_variables + layer.non_trainable_variables):
            planned, value = next(values)
            if planned is not variable:
                raise RuntimeError(f"Keras saves {variable.path} where {planned.path} was expected")
            store[str(i)] = written(variable, value)

    return save_own_variables


def _progress_bar(plan):
    """A progress bar over the tensors of `plan` (iterate it, or call `update()` per tensor)."""
    # disable=None: no bar when stderr is not a terminal (a redirected bar runs into the next log line)
    return tqdm(plan, total=len(plan), desc="weights", unit="tensor", leave=False, disable=None)


def _source_name(state_dict, source):
    return source or getattr(state_dict, "source", None) or "<state dict>"


def _model_for(state_dict, arch, source, model_kwargs):
    """The Keras model (built in the caller's scope) for a state dict, and the dict in timm keys."""
    state_dict = layouts.to_timm_keys(state_dict, source=source)
    model_kwargs = {"num_classes": checkpoint_num_classes(state_dict), **model_kwargs}
    if model_kwargs["num_classes"] > MAX_CLASSES:  # refuse before allocating a giant head
        raise ShapeMismatchError(
            f"{source}: 'head.fc.weight' declares {model_kwargs['num_classes']} classes (at most {MAX_CLASSES})"
        )
    if arch is not None:
        layouts.check_architecture(state_dict, arch, source=source)
        return create_model(arch, **model_kwargs), state_dict
    hints = {key: model_kwargs.pop(key) for key in ("norm", "norm_eps") if key in model_kwargs}
    architecture, structure = layouts.architecture_of(state_dict, source, **hints)
    if architecture is not None:
        return create_model(architecture, **model_kwargs, **hints), state_dict
    logger.info(
        "%s: a custom ConvNeXt geometry (depths=%s, dims=%s): no timm architecture name",
        source,
        list(structure["depths"]),
        list(structure["dims"]),
    )
    return create_from_structure(structure, **model_kwargs), state_dict


def _droppable(state_dict, model):
    """Source keys the model may leave unused (`heads.Head` decides), and whether the source has a head."""
    head = Head.of(model)
    takes_classifier = head.takes_classifier(checkpoint_num_classes(state_dict))
    kept = set() if head.has_top else {slot.timm_key for slot in weight_slots(model)}  # e.g. norm_pre of hnf
    unused = {
        key
        for key in state_dict
        if (key in CLASSIFIER_KEYS and not takes_classifier)
        or (key.startswith(HEAD_PREFIXES) and not head.has_top and key not in kept)
    }
    return unused, any(k.startswith(HEAD_PREFIXES) for k in state_dict)


def load_timm_state_dict(model, state_dict, source="<state dict>", progress=False):
    """Sets every Keras weight of `model` from a timm-keyed state dict, strictly (see `plan_weights`)."""
    plan = plan_weights(model, state_dict, source=source)
    for variable, read in _progress_bar(plan) if progress else plan:
        variable.assign(read())
    return model


def plan_weights(model, state_dict, source="<state dict>"):
    """`[(keras variable, read)]`: `read()` returns the variable's value, read from the checkpoint then.

    Every key and shape is checked before any tensor is read: every Keras weight
    has exactly one source; every source key is used, except the classifier when
    the model's number of classes differs (or it has no head), which is logged.
    Head weights absent from the checkpoint get timm's initialisation (the
    classifier when `num_classes` differs; the head of a headless checkpoint).
    NaN / Inf are refused when a tensor is read.
    """
    droppable, has_head = _droppable(state_dict, model)
    used = set()
    fresh = []
    plan = []
    for slot in weight_slots(model):
        key = slot.timm_key
        if key not in state_dict or key in droppable:
            if slot.layer.name in HEAD_LAYERS and (key in droppable or not has_head):
                plan.append((slot.variable, functools.partial(_initial_value, slot.variable)))
                fresh.append(slot.variable.path)
                continue
            raise KeyMismatchError(
                f"{source}: missing key {key!r} (shape {slot.timm_shape(model.conv_mlp)}) "
                f"needed for Keras weight {slot.variable.path!r}"
            )
        _check_shape(slot, state_dict[key], source, model.conv_mlp)
        plan.append((slot.variable, functools.partial(_read, slot, state_dict[key], source)))
        used.add(key)
    unexpected = sorted(set(state_dict) - used - droppable)
    if unexpected:
        raise KeyMismatchError(
            f"{source}: {len(unexpected)} unexpected key(s) for {model.architecture or model.name}: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    skipped = sorted(droppable)
    if skipped or fresh:
        logger.warning(
            "%s: checkpoint keys dropped: %s; Keras weights left freshly initialised: %s",
            source,
            skipped or "none",
            fresh or "none",
        )
    return plan


def _read(slot, tensor, source, scratch=None):
    """The Keras value of `tensor` (a lazy one is read now), in arrays from `scratch` if given."""
    if scratch and hasattr(tensor, "read"):  # streaming: the raw bytes are used before the next read
        raw = tensor.read(scratch.array("raw"), mapped=True)
    else:
        raw = np.asarray(tensor)
    check_finite({slot.timm_key: raw}, source, target_dtype=slot.variable.dtype)
    value = slot.to_keras(raw, scratch.array("keras") if scratch else None)
    if keras.backend.standardize_dtype(value.dtype) == slot.variable.dtype:
        return value
    return keras.ops.cast(value, slot.variable.dtype)


def _initial_value(variable, scratch=None):
    """timm's initialisation: kernels truncated normal(0.02), norm scales 1, the rest 0."""
    name = variable.path.rsplit("/", 1)[-1]
    init = kernel_initializer() if name == "kernel" else ("ones" if name == "gamma" else "zeros")
    return keras.initializers.get(init)(variable.shape, dtype=variable.dtype)


def _check_shape(slot, value, source, conv_mlp):
    expected = slot.timm_shape(conv_mlp)
    allowed = {tuple(expected)}
    if ".mlp.fc" in slot.timm_key or "pre_logits" in slot.timm_key or "head.fc" in slot.timm_key:
        allowed |= {tuple(expected[:2]), tuple(expected[:2]) + (1, 1)}  # Linear or 1x1 conv
    if tuple(value.shape) not in allowed:
        raise ShapeMismatchError(
            f"{source}: key {slot.timm_key!r} has shape {tuple(value.shape)}, "
            f"expected {tuple(expected)} for Keras weight {slot.variable.path!r} "
            f"{tuple(slot.variable.shape)}"
        )


def export_timm_state_dict(model):
    """The timm state dict of a Keras ConvNeXt: `timm.create_model(arch).load_state_dict(sd)` loads it."""
    return {
        slot.timm_key: np.ascontiguousarray(
            slot.to_timm_array(np.asarray(slot.variable.numpy(), np.float32), model.conv_mlp)
        )
        for slot in weight_slots(model)
    }
