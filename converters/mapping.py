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


# Layout changes: numpy arrays in, numpy arrays out.
def _conv_to_keras(w):
    return w.transpose(2, 3, 1, 0)


def _conv_to_timm(w):
    return w.transpose(3, 2, 0, 1)


def _swap_depthwise(w):
    """(C, 1, kh, kw) <-> (kh, kw, C, 1): the same permutation both ways."""
    return w.transpose(2, 3, 0, 1)


def _linear_to_keras(w):
    return w.reshape(w.shape[0], w.shape[1]).T  # accepts 1x1-conv (out, in, 1, 1) too


def _same(w):
    return w


# Keras layer type -> [(Keras variable attribute, timm key suffix, to_keras, to_timm)].
# The suffix is appended to the layer's timm module path; "" means the path itself.
_TABLE = (
    (keras.layers.DepthwiseConv2D, [("kernel", ".weight", _swap_depthwise, _swap_depthwise),
                                    ("bias", ".bias", _same, _same)]),
    (keras.layers.Conv2D, [("kernel", ".weight", _conv_to_keras, _conv_to_timm),
                           ("bias", ".bias", _same, _same)]),
    (keras.layers.Dense, [("kernel", ".weight", _linear_to_keras, None),
                          ("bias", ".bias", _same, _same)]),
    (keras.layers.LayerNormalization, [("gamma", ".weight", _same, _same),
                                       ("beta", ".bias", _same, _same)]),
    (GlobalResponseNorm, [("gamma", ".weight", _same, _same),
                          ("beta", ".bias", _same, _same)]),
    (RMSNorm, [("gamma", ".weight", _same, _same)]),  # SimpleNorm too (a subclass)
    (LayerScale, [("gamma", "", _same, _same)]),
)


class WeightSlot:
    """One Keras variable and the timm tensor that belongs in it."""

    def __init__(self, layer, variable, timm_key, to_keras, to_timm):
        self.layer = layer
        self.variable = variable
        self.timm_key = timm_key
        self.to_keras = to_keras
        self.to_timm = to_timm

    def timm_shape(self, conv_mlp):
        """The shape timm stores this tensor in."""
        return self.to_timm_array(np.empty(self.variable.shape, np.float32), conv_mlp).shape

    def to_timm_array(self, value, conv_mlp):
        if self.to_timm is not None:
            return self.to_timm(value)
        linear = value.T
        is_block_mlp = ".mlp.fc" in self.timm_key
        return linear[:, :, None, None] if conv_mlp and is_block_mlp else linear


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
        for attr, suffix, to_keras, to_timm in entry:
            slots.append(WeightSlot(layer, getattr(layer, attr), path + suffix, to_keras, to_timm))
    if len(slots) != len(model.weights):
        raise AssertionError("weight_slots missed some variables of the model")
    return slots
