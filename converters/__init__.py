"""The command-line tools (`python -m converters.timm_to_keras`, `python -m converters.publish`) and the
documented conversion API, re-exported from `convnext_hub.convert` where it lives.

Every name is loaded on first use (PEP 562): `python -m converters.timm_to_keras`
imports this package before the command can import torch and timm, and on some
Linux machines TensorFlow imported before torchvision crashes the process. The
names are listed here, not read from `convnext_hub.convert`, for the same reason
(`from . import cli` asks this package for `cli` first); a test checks that the
two lists agree.
"""

import importlib

_LIBRARY = "convnext_hub.convert"
_SUBMODULES = ("conversion", "errors", "layouts", "readers", "verification", "version")

__all__ = [
    "ArchitectureError",
    "BadValueError",
    "CONVERTER_VERSION",
    "CheckpointFormatError",
    "ConversionError",
    "KeyMismatchError",
    "ShapeMismatchError",
    "check_architecture",
    "check_finite",
    "convert",
    "convert_to_weights_file",
    "detect_layout",
    "export_timm_state_dict",
    "infer_architecture",
    "load_checkpoint",
    "load_timm_state_dict",
    "to_timm_keys",
]


def __getattr__(name):
    if name == "errors":  # the error types belong to the model core, which raises some of them too
        return importlib.import_module("convnext_hub.errors")
    if name in _SUBMODULES:
        return importlib.import_module(f"{_LIBRARY}.{name}")
    if name in __all__:
        return getattr(importlib.import_module(_LIBRARY), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES, *__all__])
