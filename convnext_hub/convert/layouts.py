"""State-dict key layouts: detect them, rename them to timm's, infer the architecture.

Layouts: "timm"; "official" (facebookresearch ConvNeXt / ConvNeXt-V2, also
DINOv3 and EUPE); "hf" (transformers `ConvNext*` / `ConvNextV2*`); "clip"
(open_clip `visual.trunk.` towers). The renaming follows timm's
`convnext.checkpoint_filter_fn`, except that pointwise (fc1 / fc2) tensors keep
the rank they come in (2-D Linear or 4-D 1x1 conv); GRN parameters always come
out as (C,).
"""

import logging
import re

import numpy as np

from convnext_hub.variants import ARCHITECTURES

from ..errors import ArchitectureError, KeyMismatchError, ShapeMismatchError

logger = logging.getLogger("converters")

LAYOUTS = {
    "timm": re.compile(r"^(stem|stages\.\d+\.(blocks|downsample)|head\.(norm|fc|pre_logits)|norm_pre)\."),
    "official": re.compile(r"^(downsample_layers\.|stages\.\d+\.\d+\.|(norm|projectors|norms)\.|head\.(weight|bias)$)"),
    "hf": re.compile(r"^(convnext|convnextv2|classifier|embeddings|encoder|layernorm|hidden_states_norms)\."),
    "clip": re.compile(r"^visual\.(trunk|head)\."),
}


def detect_layout(state_dict, source="state dict"):
    """ "timm", "official", "hf" or "clip"; KeyMismatchError when none or several match."""
    first = {}
    for key in state_dict:
        for layout, pattern in LAYOUTS.items():
            if layout not in first and pattern.match(key):
                first[layout] = key
    if not first:
        keys = list(state_dict)[:5]
        raise KeyMismatchError(
            f"{source}: no ConvNeXt keys in a known layout (timm, official, hf, clip); first keys: {keys}"
        )
    if len(first) > 1:
        found = ", ".join(f"{key!r} ({layout})" for layout, key in first.items())
        raise KeyMismatchError(f"{source}: keys from different layouts are mixed: {found}")
    return next(iter(first))


def to_timm_keys(state_dict, source="state dict"):
    """`state_dict` in any known layout -> the same tensors under timm keys.

    Keys that are no part of a timm ConvNeXt (EUPE projectors / norms, HF
    backbone norms, open_clip's text tower) are dropped and logged on the
    "converters" logger. Any other key is renamed by the layout's rules, or kept.
    """
    source = getattr(state_dict, "source", None) if source == "state dict" else source
    source = source or "state dict"
    layout = detect_layout(state_dict, source)
    rename = {"timm": _timm_key, "official": _official_key, "hf": _hf_key, "clip": _clip_key}[layout]
    out, origin, dropped = {}, {}, []
    for key, value in state_dict.items():
        name = rename(key)
        if name is None:
            dropped.append(key)
            continue
        if name in out:
            raise KeyMismatchError(f"{source}: keys {origin[name]!r} and {key!r} both map to {name!r}")
        if name.endswith((".grn.weight", ".grn.bias")):
            value = _grn_vector(value, key, source)
        out[name], origin[name] = value, key
    if layout == "clip":
        _add_clip_head_biases(out)
    if dropped:
        logger.info(
            "%s: dropped %d %s keys that are not part of a timm ConvNeXt: %s%s",
            source,
            len(dropped),
            layout,
            dropped[:8],
            " ..." if len(dropped) > 8 else "",
        )
    return out


def _grn_vector(value, key, source):
    shape = np.shape(value)
    if len(shape) == 0 or any(d != 1 for d in shape[:-1]):
        raise ShapeMismatchError(
            f"{source}: {key!r} has shape {tuple(shape)}; GRN parameters must be (C,) or (1, 1, 1, C)"
        )
    return np.reshape(value, shape[-1:])


def _timm_key(key):
    return key


def _official_key(key):
    if key.startswith(("projectors.", "norms.")):  # EUPE distillation heads and feature norms
        return None
    key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
    key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
    key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
    key = key.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
    key = key.replace(".grn.gamma", ".mlp.grn.weight").replace(".grn.beta", ".mlp.grn.bias")
    key = re.sub(r"^head\.", "head.fc.", key)
    return re.sub(r"^norm\.", "head.norm.", key)


_HF_BLOCK = {
    "dwconv": "conv_dw",
    "layernorm": "norm",
    "pwconv1": "mlp.fc1",
    "pwconv2": "mlp.fc2",
    "layer_scale_parameter": "gamma",
    "grn": "mlp.grn",
}


def _hf_key(key):
    key = re.sub(r"^convnext(v2)?\.", "", key)
    if key.startswith("hidden_states_norms."):  # ConvNextBackbone's per-stage output norms
        return None
    key = re.sub(r"^embeddings\.patch_embeddings\.", "stem.0.", key)
    key = re.sub(r"^embeddings\.layernorm\.", "stem.1.", key)
    key = re.sub(r"^encoder\.stages\.(\d+)\.downsampling_layer\.", r"stages.\1.downsample.", key)
    block = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.([a-z_0-9]+)(.*)$", key)
    if block:
        stage, index, part, rest = block.groups()
        return f"stages.{stage}.blocks.{index}.{_HF_BLOCK.get(part, part)}{rest}"
    key = re.sub(r"^layernorm\.", "head.norm.", key)
    return re.sub(r"^classifier\.", "head.fc.", key)


_CLIP_HEAD = {
    "visual.head.proj.weight": "head.fc.weight",
    "visual.head.proj.bias": "head.fc.bias",
    "visual.head.mlp.fc1.weight": "head.pre_logits.fc.weight",
    "visual.head.mlp.fc1.bias": "head.pre_logits.fc.bias",
    "visual.head.mlp.fc2.weight": "head.fc.weight",
    "visual.head.mlp.fc2.bias": "head.fc.bias",
}


def _clip_key(key):
    if key.startswith("visual.trunk."):
        return key[len("visual.trunk.") :]
    return _CLIP_HEAD.get(key)  # the text tower and other open_clip keys: dropped


def _add_clip_head_biases(out):
    """open_clip's projection has no bias by default; timm's head.fc has one: zeros, as timm does."""
    if "head.fc.weight" in out and "head.fc.bias" not in out:
        weight = np.asarray(out["head.fc.weight"])
        out["head.fc.bias"] = np.broadcast_to(np.zeros((), weight.dtype), weight.shape[:1])


# --- architecture ------------------------------------------------------------------------------

TIMM_PATCH_SIZE = 4
MATCHED_FIELDS = (
    "depths",
    "dims",
    "use_grn",
    "layer_scale",
    "stem_type",
    "norm",
    "head_norm_first",
    "head_hidden_size",
    "kernel_size",
    "patch_size",
)
NO_BIAS_NORMS = ("rmsnorm2d", "simplenorm")  # indistinguishable from their tensors


def _architectures():
    return ARCHITECTURES


def _expected(spec):
    """A variant-table entry in the terms of `infer_architecture`."""
    return {
        "depths": list(spec["depths"]),
        "dims": list(spec["dims"]),
        "use_grn": spec["use_grn"],
        "layer_scale": spec["layer_scale_init_value"] is not None,
        "stem_type": spec["stem_type"],
        "norm": spec["norm"],
        "head_norm_first": spec["head_norm_first"],
        "head_hidden_size": spec["head_hidden_size"],
        "kernel_size": spec["kernel_size"],
        "patch_size": TIMM_PATCH_SIZE if spec["stem_type"] == "patch" else None,
    }


def _mismatches(info, spec):
    """[(field, checkpoint value, expected value)] where `info` does not fit the table entry `spec`."""
    expected = _expected(spec)
    out = []
    for field in MATCHED_FIELDS:
        got, want = info[field], expected[field]
        if field == "norm" and got is None and want in NO_BIAS_NORMS:
            continue
        if got != want:
            out.append((field, got, want))
    return out


def _shape(state_dict, key, source):
    if key not in state_dict:
        raise ArchitectureError(f"{source}: cannot infer the architecture: no {key!r} (are the keys in timm layout?)")
    shape = tuple(np.shape(state_dict[key]))
    if not shape:
        raise ArchitectureError(f"{source}: cannot infer the architecture: {key!r} is 0-d")
    return shape


def _stem(state_dict, dims0, source):
    """(stem_type, patch_size, index of the stem norm)."""
    indices = sorted(int(m.group(1)) for k in state_dict if (m := re.match(r"^stem\.(\d+)\.weight$", k)))
    shapes = {i: _shape(state_dict, f"stem.{i}.weight", source) for i in indices}
    convs = [i for i in indices if len(shapes[i]) == 4]
    norms = [i for i in indices if len(shapes[i]) == 1]
    if convs == [0] and norms == [1]:
        return "patch", shapes[0][-1], 1
    if convs == [0, 1] and norms == [2]:
        return ("overlap" if shapes[0][0] == dims0 else "overlap_tiered"), None, 2
    if convs == [0, 2] and norms == [3]:
        return "overlap_act", None, 3
    layout = {f"stem.{i}.weight": shapes[i] for i in indices}
    raise ArchitectureError(f"{source}: cannot infer the architecture: unrecognised stem {layout}")


def infer_architecture(state_dict, source="state dict"):
    """The architecture of a timm-layout state dict, from tensor names and shapes.

    Returns {"arch", "depths", "dims", "use_grn", "layer_scale", "stem_type",
    "norm", "conv_mlp", "head_norm_first", "head_hidden_size", "num_classes",
    "kernel_size", "patch_size"}. "arch" is the one timm architecture that fits,
    or None. "norm" is "layernorm" when norms have a bias; bias-free norms
    (rmsnorm2d vs simplenorm) look alike, so their kind comes from the matched
    architecture, or is None without one. "conv_mlp" tells how fc1 / fc2 are
    stored (4-D), which is not part of an architecture's identity: official and
    HF checkpoints of timm's conv_mlp architectures store 2-D Linear weights.
    """
    depths = []
    for stage in range(4):
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^stages\.{stage}\.blocks\.(\d+)\.", k))}
        if not blocks or blocks != set(range(len(blocks))):
            raise ArchitectureError(
                f"{source}: cannot infer the architecture: stage {stage} has blocks {sorted(blocks)}, "
                "expected 0..n-1 in each of 4 stages"
            )
        depths.append(len(blocks))
    dims = [_shape(state_dict, f"stages.{s}.blocks.0.conv_dw.weight", source)[0] for s in range(4)]
    stem_type, patch_size, stem_norm = _stem(state_dict, dims[0], source)
    pre_logits = state_dict.get("head.pre_logits.fc.weight")
    info = {
        "arch": None,
        "depths": depths,
        "dims": dims,
        "use_grn": "stages.0.blocks.0.mlp.grn.weight" in state_dict,
        "layer_scale": "stages.0.blocks.0.gamma" in state_dict,
        "stem_type": stem_type,
        "norm": "layernorm" if f"stem.{stem_norm}.bias" in state_dict else None,
        "conv_mlp": len(_shape(state_dict, "stages.0.blocks.0.mlp.fc1.weight", source)) == 4,
        "head_norm_first": "norm_pre.weight" in state_dict,
        "head_hidden_size": None if pre_logits is None else _shape(state_dict, "head.pre_logits.fc.weight", source)[0],
        "num_classes": _shape(state_dict, "head.fc.weight", source)[0] if "head.fc.weight" in state_dict else 0,
        "kernel_size": _shape(state_dict, "stages.0.blocks.0.conv_dw.weight", source)[-1],
        "patch_size": patch_size,
    }
    fits = [name for name, spec in _architectures().items() if not _mismatches(info, spec)]
    if len(fits) > 1:
        raise ArchitectureError(f"{source}: the checkpoint fits several architectures: {fits}")
    if fits:
        info["arch"] = fits[0]
        info["norm"] = _architectures()[fits[0]]["norm"]
    return info


def check_architecture(state_dict, arch, source="state dict"):
    """`infer_architecture` of a timm-layout `state_dict`, checked against architecture `arch`.

    Raises ArchitectureError naming every field that differs, e.g.
    "depths: checkpoint has [2, 2, 6, 2], convnext_tiny expects [3, 3, 9, 3]".
    """
    table = _architectures()
    if arch not in table:
        raise ArchitectureError(f"{source}: unknown architecture {arch!r}; known: {sorted(table)}")
    info = infer_architecture(state_dict, source)
    problems = _mismatches(info, table[arch])
    if problems:
        details = "; ".join(
            f"{field}: checkpoint has {'a bias-free norm' if field == 'norm' and got is None else got}, "
            f"{arch} expects {want}"
            for field, got, want in problems
        )
        raise ArchitectureError(f"{source}: the checkpoint does not fit {arch}: {details}")
    return {**info, "arch": arch, "norm": table[arch]["norm"]}


def architecture_of(state_dict, source="state dict", **hints):
    """`(architecture, structure)` of a timm-layout state dict: the timm architecture its tensors fit, or
    None and the geometry they give (`hints`: `norm`, `norm_eps`, which the tensors cannot say).

    The one place a checkpoint's architecture is inferred (the conversion and
    the Hub loader's local files both ask here).
    """
    info = infer_architecture(state_dict, source)
    if info["arch"] is not None:
        return info["arch"], dict(ARCHITECTURES[info["arch"]])
    return None, inferred_structure(info, source, **hints)


def inferred_structure(info, source="state dict", norm=None, norm_eps=1e-6):
    """`ConvNeXt` structural arguments for a checkpoint of a geometry timm has no name for.

    `info` is `infer_architecture`'s result. Two things are not in the tensors:
    the norm epsilon (default timm's 1e-6) and, for bias-free norms, whether
    they are `rmsnorm2d` or `simplenorm` (`norm` must say).
    """
    norm = info["norm"] or norm
    if norm is None:
        raise ArchitectureError(
            f"{source}: the norms have no bias (rmsnorm2d or simplenorm look alike); pass norm='rmsnorm2d' or "
            "norm='simplenorm'"
        )
    if info["stem_type"] == "patch" and info["patch_size"] != TIMM_PATCH_SIZE:
        raise ArchitectureError(f"{source}: a {info['patch_size']}x{info['patch_size']} patch stem; ConvNeXt's is 4x4")
    return {
        "depths": tuple(info["depths"]),
        "dims": tuple(info["dims"]),
        "use_grn": info["use_grn"],
        "layer_scale_init_value": 1e-6 if info["layer_scale"] else None,
        "stem_type": info["stem_type"],
        "norm": norm,
        "norm_eps": norm_eps,
        "conv_mlp": info["conv_mlp"],
        "head_norm_first": info["head_norm_first"],
        "head_hidden_size": info["head_hidden_size"],
        "kernel_size": info["kernel_size"],
    }
