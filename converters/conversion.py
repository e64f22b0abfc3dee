"""timm state dict <-> Keras model, strict, through `mapping.weight_slots`."""
import logging

import keras
import numpy as np

from .errors import ArchitectureError, KeyMismatchError, ShapeMismatchError, check_finite
from . import layouts
from .mapping import weight_slots

logger = logging.getLogger("converters")

CLASSIFIER_KEYS = ("head.fc.weight", "head.fc.bias")
HEAD_PREFIXES = ("head.", "norm_pre.")
MAX_CLASSES = 1_000_000  # ImageNet-22k has 21,841; more is a corrupt or hostile header


def checkpoint_num_classes(state_dict):
    """Classifier outputs of a timm state dict (0 when it has none)."""
    weight = state_dict.get("head.fc.weight")
    return 0 if weight is None else int(weight.shape[0])


def convert(state_dict, arch=None, *, source="<state dict>", progress=False, **model_kwargs):
    """Builds the Keras model for a timm / official / HF state dict and loads its weights.

    Args:
        state_dict: `{key: ndarray}` in any supported layout.
        arch: timm architecture; inferred from the tensors when None, else checked.
        source: file name used in messages.
        progress: show a progress bar while weights are set (large models).
        **model_kwargs: `convnext_hub.create_model` arguments (`num_classes`, `input_shape`,
            `include_top`, `features_only`, ...). `num_classes` defaults to the checkpoint's.
    """
    from convnext_hub.model import create_model, zeros_initialized

    state_dict = layouts.to_timm_keys(state_dict, source=source)
    if arch is None:
        info = layouts.infer_architecture(state_dict, source=source)
        arch = info["arch"]
        if arch is None:
            raise ArchitectureError(
                f"{source}: the tensors match no timm ConvNeXt architecture "
                f"(depths={info['depths']}, dims={info['dims']}); pass arch= to say which."
            )
    else:
        layouts.check_architecture(state_dict, arch, source=source)
    model_kwargs.setdefault("num_classes", checkpoint_num_classes(state_dict))
    if model_kwargs["num_classes"] > MAX_CLASSES:  # refuse before allocating a giant head
        raise ShapeMismatchError(
            f"{source}: 'head.fc.weight' declares {model_kwargs['num_classes']} classes (at most {MAX_CLASSES})"
        )
    with zeros_initialized():  # every weight is set below, or re-initialised if left fresh
        model = create_model(arch, **model_kwargs)
    return load_timm_state_dict(model, state_dict, source=source, progress=progress)


def _droppable(state_dict, model):
    """Source keys the model may leave unused, and Keras slots it may leave fresh."""
    has_head = any(k.startswith(HEAD_PREFIXES) for k in state_dict)
    same_classes = checkpoint_num_classes(state_dict) == model.num_classes and model.include_top
    unused = set()
    for key in state_dict:
        if key in CLASSIFIER_KEYS and not same_classes:
            unused.add(key)
        elif key.startswith(HEAD_PREFIXES) and (not model.include_top or model.features_only):
            unused.add(key)
    return unused, has_head


def load_timm_state_dict(model, state_dict, source="<state dict>", progress=False):
    """Sets every Keras weight of `model` from a timm-keyed state dict, strictly.

    Every Keras weight is set exactly once; every source key is used, except the
    classifier when the model's number of classes differs (or it has no head),
    which is logged. Head weights absent from the checkpoint get timm's
    initialisation (the classifier when `num_classes` differs; the head of a
    headless checkpoint).
    """
    droppable, has_head = _droppable(state_dict, model)
    used = set()
    fresh = []
    slots = weight_slots(model)
    if progress:
        from tqdm.auto import tqdm

        slots = tqdm(slots, desc="weights", unit="tensor", leave=False)
    for slot in slots:
        key = slot.timm_key
        if key not in state_dict or key in droppable:
            if slot.layer.name.startswith(("head_", "norm_pre")) and (key in droppable or not has_head):
                _initialise(slot.variable)
                fresh.append(slot.variable.path)
                continue
            raise KeyMismatchError(
                f"{source}: missing key {key!r} (shape {slot.timm_shape(model.conv_mlp)}) "
                f"needed for Keras weight {slot.variable.path!r}"
            )
        _check_shape(slot, state_dict[key], source, model.conv_mlp)
        value = np.asarray(state_dict[key])  # reads a lazy tensor now, one at a time
        check_finite({key: value}, source, target_dtype=slot.variable.dtype)
        slot.variable.assign(keras.ops.cast(slot.to_keras(value), slot.variable.dtype))
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
            source, skipped or "none", fresh or "none",
        )
    return model


def _initialise(variable):
    """timm's initialisation: kernels truncated normal(0.02), norm scales 1, the rest 0."""
    from convnext_hub.model import kernel_initializer

    name = variable.path.rsplit("/", 1)[-1]
    init = kernel_initializer() if name == "kernel" else ("ones" if name == "gamma" else "zeros")
    variable.assign(keras.initializers.get(init)(variable.shape, dtype=variable.dtype))


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
