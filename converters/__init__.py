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

__all__ = [
    "ArchitectureError",
    "BadValueError",
    "CheckpointFormatError",
    "ConversionError",
    "KeyMismatchError",
    "ShapeMismatchError",
    "check_architecture",
    "check_finite",
    "detect_layout",
    "infer_architecture",
    "load_checkpoint",
    "to_timm_keys",
]
