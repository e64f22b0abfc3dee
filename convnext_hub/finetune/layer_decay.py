"""Layer-wise learning-rate decay: timm's parameter groups for ConvNeXt, on Keras variables.

timm's `param_groups_layer_decay` sorts a model's parameters into layers with the
model's `group_matcher(coarse=False)` and scales each layer's learning rate by
`layer_decay ** (num_layers - 1 - layer)`, so that the stem moves least and the
head most. ConvNeXt's matcher gives:

- `stem.*` -> layer 0;
- `stages.i.downsample.*` and `stages.i.blocks.0.*` -> one layer (both sort as
  `(1, i, 0)`), then one layer per further block, in order;
- `norm_pre.*` -> the layer of the last block (its matcher entry continues the
  previous group);
- everything else (the head) -> the last layer.

The rule works on timm parameter names, and every Keras variable of a ConvNeXt has
one (`convert.mapping.weight_slots`, the table the converters use), so the grouping
here is timm's by construction, checked against timm itself by the tests.
"""

import math
import re

from ..convert.mapping import weight_slots

__all__ = ["layer_ids", "layer_scales"]

# timm's ConvNeXt `group_matcher(coarse=False)`: (pattern, ordinal prefix, suffix); the
# suffix `_CONTINUE` puts a match in the group of the one sorted before it.
_CONTINUE = 99999
_MATCHERS = (
    (re.compile(r"^stem"), (0,), ()),
    (re.compile(r"^stages\.(\d+)\.downsample"), (1,), (0,)),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)"), (1,), ()),
    (re.compile(r"^norm_pre"), (1,), (_CONTINUE,)),
)


def _ordinal(name):
    """The sort key timm gives a parameter name: its matcher's prefix, captured numbers and suffix."""
    for pattern, prefix, suffix in _MATCHERS:
        match = pattern.match(name)
        if match:
            return tuple(float(x) for x in (*prefix, *match.groups(), *suffix))
    return (math.inf,)  # the head: after every matched group


def layer_ids(names):
    """`{timm parameter name: layer}` for all the parameters of one model, layers numbered from 0.

    Args:
        names: every parameter name of the model (the grouping depends on which exist).
    """
    ordinals = {name: _ordinal(name) for name in names}
    layer, ids = -1, {}
    for ordinal in sorted(set(ordinals.values())):
        if layer < 0 or ordinal[-1] != _CONTINUE:
            layer += 1
        ids[ordinal] = layer
    return {name: ids[ordinal] for name, ordinal in ordinals.items()}


def layer_scales(model, layer_decay):
    """`{variable.path: learning-rate multiplier}` for every trainable variable of a ConvNeXt.

    Args:
        model: a `ConvNeXt` (its layers follow timm's module names).
        layer_decay: the decay per layer, in (0, 1]; 1 gives every variable 1.0.

    Raises:
        ValueError: `layer_decay` outside (0, 1].
        TypeError: a layer with no timm counterpart (not a ConvNeXt).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1]. Received: {layer_decay=}")
    slots = weight_slots(model)
    ids = layer_ids([slot.timm_key for slot in slots])
    last = max(ids.values())
    by_variable = {id(slot.variable): ids[slot.timm_key] for slot in slots}
    return {v.path: float(layer_decay ** (last - by_variable[id(v)])) for v in model.trainable_variables}
