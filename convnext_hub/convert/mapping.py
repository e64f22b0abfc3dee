"""The one table from timm state-dict keys to Keras weights, both ways.

A Keras layer name is its timm module path with `.` written as `_`; the few
timm names that contain `_` themselves are listed in `_UNDERSCORED`. Each
Keras layer type then says which timm tensor feeds each of its variables and
how the layout changes (torch convs are `(out, in, kh, kw)`, Keras
`(kh, kw, in, out)`; Linear `(out, in)`, Dense `(in, out)`).
"""

import keras
import numpy as np

from convnext_hub.layers import GlobalResponseNorm, LayerScale, RMSNorm

_UNDERSCORED = ("conv_dw", "pre_logits", "norm_pre")


def timm_module_path(layer_name):
    """`stages_2_blocks_5_mlp_fc1` -> `stages.2.blocks.5.mlp.fc1`."""
    path = layer_name.replace("_", ".")
    for name in _UNDERSCORED:
        path = path.replace(name.replace("_", "."), name)
    return path


# Keras layer type -> [(Keras variable attribute, timm key suffix, axes)]. The suffix is
# appended to the layer's timm module path ("" means the path itself); `axes` permutes the
# timm tensor into the Keras layout (None: same layout).
_CONV = (2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
_DEPTHWISE = (2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
_LINEAR = (1, 0)  # (out, in) -> (in, out); a 1x1 conv (out, in, 1, 1) is read as (out, in)
_TABLE = (
    (keras.layers.DepthwiseConv2D, [("kernel", ".weight", _DEPTHWISE), ("bias", ".bias", None)]),
    (keras.layers.Conv2D, [("kernel", ".weight", _CONV), ("bias", ".bias", None)]),
    (keras.layers.Dense, [("kernel", ".weight", _LINEAR), ("bias", ".bias", None)]),
    (keras.layers.LayerNormalization, [("gamma", ".weight", None), ("beta", ".bias", None)]),
    (GlobalResponseNorm, [("gamma", ".weight", None), ("beta", ".bias", None)]),
    (RMSNorm, [("gamma", ".weight", None)]),  # SimpleNorm too (a subclass)
    (LayerScale, [("gamma", "", None)]),
)


class WeightSlot:
    """One Keras variable and the timm tensor that belongs in it."""

    def __init__(self, layer, variable, timm_key, axes):
        self.layer = layer
        self.variable = variable
        self.timm_key = timm_key
        self.axes = axes

    def to_keras(self, value, scratch=None):
        """timm layout -> Keras layout, as a C-contiguous array (from `scratch(shape, dtype)` if given)."""
        if self.axes is None:
            return value
        if self.axes == _LINEAR:
            value = value.reshape(value.shape[:2])
        return _transposed(value, self.axes, scratch)

    def to_timm_array(self, value, conv_mlp):
        """Keras layout (numpy) -> timm layout; block MLPs are 1x1 convs in `conv_mlp` models."""
        if self.axes is None:
            return value
        value = value.transpose(np.argsort(self.axes))
        if self.axes == _LINEAR and conv_mlp and ".mlp.fc" in self.timm_key:
            value = value[:, :, None, None]
        return value

    def timm_shape(self, conv_mlp):
        """The shape timm stores this tensor in."""
        return self.to_timm_array(np.empty(self.variable.shape, np.float32), conv_mlp).shape


def _transposed(value, axes, scratch=None, rows=64):
    """`np.ascontiguousarray(value.transpose(axes))`, copied 64 source rows at a time:
    each block of rows stays in the CPU cache, which numpy's one-pass strided copy of a big kernel does not."""
    shape = [value.shape[i] for i in axes]
    out = scratch(shape, value.dtype) if scratch else np.empty(shape, value.dtype)
    source_order = out.transpose(np.argsort(axes))  # a view of `out` indexed like `value`
    for start in range(0, value.shape[0], rows):
        source_order[start : start + rows] = value[start : start + rows]
    return out


def weight_slots(model):
    """Every Keras variable of `model` with its timm key, in layer order."""
    slots = []
    for layer in model.layers:
        if not layer.weights:
            continue
        entry = next((e for cls, e in _TABLE if isinstance(layer, cls)), None)
        if entry is None:
            raise TypeError(f"No timm mapping for layer {layer.name!r} of type {type(layer).__name__}")
        path = timm_module_path(layer.name)
        for attr, suffix, axes in entry:
            slots.append(WeightSlot(layer, getattr(layer, attr), path + suffix, axes))
    if len(slots) != len(model.weights):
        raise AssertionError("weight_slots missed some variables of the model")
    return slots
