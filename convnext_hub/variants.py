"""Every timm ConvNeXt architecture, as data.

Each entry holds exactly the structural arguments of `convnext_hub.ConvNeXt`.
Values follow timm's `convnext.py` model functions; `tests/test_models.py`
checks parameter counts and weight shapes against timm for every entry.
"""

import difflib
import fnmatch

from .errors import ArchitectureError

_V1 = dict(use_grn=False, layer_scale_init_value=1e-6)
_V2 = dict(use_grn=True, layer_scale_init_value=None)

# depths and dims of each size; the same size names serve V1 and V2.
_SIZES = {
    "zepto": ((2, 2, 4, 2), (32, 64, 128, 256)),
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

DEFAULTS = dict(
    stem_type="patch",
    norm="layernorm",
    norm_eps=1e-6,
    conv_mlp=False,
    head_norm_first=False,
    head_hidden_size=None,
    kernel_size=7,
)


def _arch(size, family, **overrides):
    depths, dims = _SIZES[size]
    return {**DEFAULTS, "depths": depths, "dims": dims, **family, **overrides}


_SMALL = dict(conv_mlp=True)  # atto ... nano: timm stores the MLP as 1x1 convs

ARCHITECTURES = {
    "convnext_zepto_rms": _arch("zepto", _V1, norm="simplenorm", **_SMALL),
    "convnext_zepto_rms_ols": _arch("zepto", _V1, norm="simplenorm", stem_type="overlap_act", **_SMALL),
    "convnext_atto": _arch("atto", _V1, **_SMALL),
    "convnext_atto_ols": _arch("atto", _V1, stem_type="overlap_tiered", **_SMALL),
    "convnext_atto_rms": _arch("atto", _V1, norm="rmsnorm2d", **_SMALL),
    "convnext_femto": _arch("femto", _V1, **_SMALL),
    "convnext_femto_ols": _arch("femto", _V1, stem_type="overlap_tiered", **_SMALL),
    "convnext_pico": _arch("pico", _V1, **_SMALL),
    "convnext_pico_ols": _arch("pico", _V1, stem_type="overlap_tiered", **_SMALL),
    "convnext_nano": _arch("nano", _V1, **_SMALL),
    "convnext_nano_ols": _arch("nano", _V1, stem_type="overlap", **_SMALL),
    "convnext_tiny_hnf": _arch("tiny", _V1, head_norm_first=True, **_SMALL),
    "convnext_tiny": _arch("tiny", _V1),
    "convnext_small": _arch("small", _V1),
    "convnext_base": _arch("base", _V1),
    "convnext_large": _arch("large", _V1),
    "convnext_large_mlp": _arch("large", _V1, head_hidden_size=1536),
    "convnext_xlarge": _arch("xlarge", _V1),
    "convnext_xxlarge": _arch("xxlarge", _V1, norm_eps=1e-5),
    "convnextv2_atto": _arch("atto", _V2, **_SMALL),
    "convnextv2_femto": _arch("femto", _V2, **_SMALL),
    "convnextv2_pico": _arch("pico", _V2, **_SMALL),
    "convnextv2_nano": _arch("nano", _V2, **_SMALL),
    "convnextv2_tiny": _arch("tiny", _V2),
    "convnextv2_small": _arch("small", _V2),
    "convnextv2_base": _arch("base", _V2),
    "convnextv2_large": _arch("large", _V2),
    "convnextv2_huge": _arch("huge", _V2),
}


STRUCTURAL_KEYS = tuple(DEFAULTS) + ("depths", "dims") + tuple(_V1)
assert all(set(config) == set(STRUCTURAL_KEYS) for config in ARCHITECTURES.values())


def structure_mismatches(stored, expected):
    """`(key, stored value, expected value)` for each structural argument `stored` sets otherwise.

    Keys absent from `stored` are not compared; tuples and lists compare equal.
    """

    def plain(value):
        return list(value) if isinstance(value, (tuple, list)) else value

    return [
        (key, stored[key], expected[key])
        for key in STRUCTURAL_KEYS
        if key in stored and plain(stored[key]) != plain(expected[key])
    ]


def check_structure(stored, expected, source, expected_name):
    """Raises `ArchitectureError` when the stored model config `stored` sets a structural argument otherwise
    than `expected` (the structure of `expected_name`: an architecture, or the model being loaded into).

    The one structure check of the package: saved folders, `.keras` files and
    weights loaded into a model all go through it.
    """
    for key, stored_value, value in structure_mismatches(stored, expected):
        raise ArchitectureError(
            f"{source}: {key}={stored_value!r} does not match {expected_name}, which has {key}={value!r}"
        )


def structure_of(config):
    """The structural arguments in a model config (or a `ConvNeXt`), lists as tuples."""

    def get(key):
        value = config[key] if isinstance(config, dict) else getattr(config, key)
        return tuple(value) if isinstance(value, list) else value

    return {key: get(key) for key in STRUCTURAL_KEYS}


def _family(prefix, sizes):
    """A family's variants by size, as `ConvNeXtV1.from_variant("tiny")` names them: size -> architecture."""
    return {size: {"architecture": f"{prefix}{size}", **ARCHITECTURES[f"{prefix}{size}"]} for size in sizes}


V1_VARIANTS = _family(
    "convnext_", ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge", "xxlarge")
)
V2_VARIANTS = _family("convnextv2_", ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "huge"))


def list_models(pattern=None):
    """Sorted architecture names, optionally filtered by an fnmatch `pattern`."""
    names = sorted(ARCHITECTURES)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def architecture(name):
    """A copy of the structural arguments of architecture `name`."""
    if name not in ARCHITECTURES:
        close = difflib.get_close_matches(name, ARCHITECTURES, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Unknown architecture. Received: model_name={name!r}.{hint} Accepted: {list_models()}")
    return dict(ARCHITECTURES[name])
