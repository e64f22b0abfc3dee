"""timm's `forward_intermediates` and `prune_intermediate_layers` on the functional `ConvNeXt`.

Both cut the model's channels-last graph at the points its `Builder` recorded
(`model.graph_points`) and run a functional sub-model over the model's own
layers, so the weights are shared and nothing is rebuilt. Sub-models are made
once per request and kept beside the model (not as its attributes, so Keras
does not count their layers twice).

A functional Keras model cannot drop layers in place, so pruning keeps every
layer and weight and makes the model run the pruned graph instead; the pruning
is a constructor argument (`intermediate_pruning`) so that `get_config()` and a
saved `.keras` file keep it.
"""

import numbers
import weakref

import keras

from .layers import Transpose

NUM_STAGES = 4
OUTPUT_FORMATS = ("NHWC", "NCHW")
_SUBMODELS = weakref.WeakKeyDictionary()


def feature_take_indices(num_features, indices=None):
    """timm's `feature_take_indices`: absolute indices to take, and the largest.

    Args:
        num_features: how many there are to take from.
        indices: None for all, an int n for the last n, a sequence for those
            (negative ones count from the end).

    Returns:
        `(list of indices, max index)`.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
        if not 0 < indices <= num_features:
            raise ValueError(
                f"`indices` as an int takes the last n stages, 1 <= n <= {num_features}. Received: indices={indices!r}"
            )
        take = [int(num_features - indices + i) for i in range(int(indices))]
    else:
        take = []
        for i in indices:
            index = num_features + i if i < 0 else i
            if not 0 <= index < num_features:
                raise ValueError(
                    f"`indices` must lie in [-{num_features}, {num_features - 1}]. Received: indices={indices!r}"
                )
            take.append(int(index))
        if not take:
            raise ValueError(f"`indices` must name at least one stage. Received: indices={indices!r}")
    return take, max(take)


def _state(model):
    """`(stages run, norm_pre run, head run)` of `model` as pruned so far."""
    pruning = model.intermediate_pruning
    if model.features_only:
        # The stages after the last one returned are not part of the model (nor are their weights).
        return max(model.out_indices) + 1, True, False
    if pruning is None:
        return NUM_STAGES, True, True
    return pruning["num_stages"], pruning["norm"], pruning["head"]


def check_pruning(model, pruning):
    """`intermediate_pruning` as `ConvNeXt` keeps it: None, or a plain dict of `num_stages`, `norm`, `head`."""
    if pruning is None:
        return None
    keys = {"num_stages", "norm", "head"}
    if not isinstance(pruning, dict) or set(pruning) != keys or pruning["num_stages"] not in range(1, NUM_STAGES + 1):
        raise ValueError(
            "`intermediate_pruning` must be None or a dict with `num_stages` (1 to 4), `norm` and `head` "
            f"(what `prune_intermediate_layers` sets). Received: intermediate_pruning={pruning!r}"
        )
    if model.features_only:
        raise ValueError("A `features_only` model has no head or norm to prune: choose its stages with `out_indices`.")
    return {"num_stages": int(pruning["num_stages"]), "norm": bool(pruning["norm"]), "head": bool(pruning["head"])}


def prune_intermediate_layers(model, indices=1, prune_norm=False, prune_head=True):
    """See `ConvNeXt.prune_intermediate_layers`."""
    if model.features_only:
        raise ValueError("A `features_only` model has no head or norm to prune: choose its stages with `out_indices`.")
    num_stages, norm, head = _state(model)
    take, max_index = feature_take_indices(num_stages, indices)
    prune_end = max_index < num_stages - 1
    pruning = {
        "num_stages": max_index + 1,
        "norm": norm and not (prune_norm or prune_end),
        "head": head and not (prune_head or prune_end),
    }
    # Nothing cut (and no `norm_pre` to cut) leaves the model as it was.
    unchanged = pruning["num_stages"] == NUM_STAGES and pruning["head"]
    unchanged = unchanged and (pruning["norm"] or model.graph_points.norm_pre is None)
    model.intermediate_pruning = None if unchanged else pruning
    _SUBMODELS.pop(model, None)
    return take


def _submodel(model, key, build):
    cache = _SUBMODELS.setdefault(model, {})
    if key not in cache:
        cache[key] = _untraced(build)()
    return cache[key]


def _untraced(build):
    """`build` run outside `torch.compile`'s tracer, which cannot trace the making of a Keras model
    (only the calls of the one made); JAX and TensorFlow trace it as plain Python."""
    if keras.backend.backend() != "torch":
        return build
    import torch

    return torch.compiler.disable(build)


def _norm_pre(model, x, norm):
    """`x` (the last stage's map) through `norm_pre` where the model has one and it is kept."""
    kept = _state(model)[1]
    points = model.graph_points
    return points.norm_pre if norm and kept and points.norm_pre is not None else x


def pruned_model(model):
    """The functional model a pruned `model` runs: its input to the last kept stage's map (through
    `norm_pre` and the head where those are kept), maps in the model's `data_format`."""

    def build():
        num_stages, _, head = _state(model)
        x = model.graph_points.stages[num_stages - 1]
        if num_stages == NUM_STAGES:
            x = _norm_pre(model, x, True)
        if head:  # every stage kept, `norm_pre` not: the head's other layers, in graph order
            for layer in model.head_layers():
                if layer.name != "norm_pre":
                    x = layer(x)
        if len(x.shape) == 4 and model.data_format == "channels_first":
            x = Transpose((3, 1, 2), name="pruned_to_channels_first", dtype=model.layers_dtype_policy)(x)
        return keras.Model(model.inputs[0], x)

    return _submodel(model, "pruned", build)


def forward_intermediates(model, x, indices, norm, stop_early, output_fmt, intermediates_only, training):
    """See `ConvNeXt.forward_intermediates`."""
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"`output_fmt` must be one of {OUTPUT_FORMATS}. Received: output_fmt={output_fmt!r}")
    num_stages = _state(model)[0]
    take, max_index = feature_take_indices(num_stages, indices)
    last = num_stages - 1
    end = max_index if stop_early else last
    key = ("intermediates", tuple(take), bool(norm), end, bool(intermediates_only))

    def build():
        points = model.graph_points
        maps = [_norm_pre(model, points.stages[i], norm) if i == last else points.stages[i] for i in take]
        if not intermediates_only:
            final = points.stages[end]
            maps.append(_norm_pre(model, final, True) if end == last else final)
        return keras.Model(model.inputs[0], maps)

    outputs = _submodel(model, key, build)(x, training=training)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if output_fmt == "NCHW":
        outputs = [keras.ops.transpose(out, (0, 3, 1, 2)) for out in outputs]
    if intermediates_only:
        return outputs
    return outputs[-1], outputs[:-1]
