"""Checkpoint converters: read timm / official / Hugging Face / open_clip ConvNeXt weights.

Every name is loaded on first use (PEP 562): `python -m converters.timm_to_keras`
imports this package before the command can import torch and timm, and on some
Linux machines TensorFlow imported before torchvision crashes the process.
"""

import importlib

_EXPORTS = {
    "errors": (
        "ArchitectureError",
        "BadValueError",
        "CheckpointFormatError",
        "ConversionError",
        "KeyMismatchError",
        "ShapeMismatchError",
        "check_finite",
    ),
    "layouts": ("check_architecture", "detect_layout", "infer_architecture", "to_timm_keys"),
    "readers": ("load_checkpoint",),
    "version": ("CONVERTER_VERSION",),
    "conversion": ("convert", "convert_to_weights_file", "export_timm_state_dict", "load_timm_state_dict"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MODULE_OF])


__all__ = sorted(_MODULE_OF)
