"""Checkpoint converters: read timm / official / Hugging Face / open_clip ConvNeXt weights."""
from .errors import (
    ArchitectureError,
    BadValueError,
    CheckpointFormatError,
    ConversionError,
    KeyMismatchError,
    ShapeMismatchError,
    check_finite,
)
from .layouts import check_architecture, detect_layout, infer_architecture, to_timm_keys
from .readers import load_checkpoint
from .version import CONVERTER_VERSION

# These import keras; loaded on first use so `import converters` stays light.
_KERAS_SIDE = {name: "conversion" for name in (
    "convert", "convert_to_weights_file", "export_timm_state_dict", "load_timm_state_dict",
)}


def __getattr__(name):
    if name in _KERAS_SIDE:
        import importlib

        return getattr(importlib.import_module(f".{_KERAS_SIDE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CONVERTER_VERSION",
    "ArchitectureError",
    "BadValueError",
    "CheckpointFormatError",
    "ConversionError",
    "KeyMismatchError",
    "ShapeMismatchError",
    "check_architecture",
    "check_finite",
    "convert",
    "convert_to_weights_file",
    "export_timm_state_dict",
    "load_timm_state_dict",
    "detect_layout",
    "infer_architecture",
    "load_checkpoint",
    "to_timm_keys",
]
