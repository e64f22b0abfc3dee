"""The conversion library: timm / official / Hugging Face / open_clip ConvNeXt checkpoints to Keras and back.

Readers turn a checkpoint file into `{key: ndarray}` (safetensors directly;
PyTorch pickles through torch with `weights_only=True`), `layouts` brings any
key layout to timm's keys, `mapping` is the one timm-key -> Keras-weight table,
`conversion` builds the model and sets every weight exactly once (or writes a
weights file without holding the model's values), `verification` compares with
timm. `converters` (the command-line tools) re-exports this API.
"""

from ..errors import (
    ArchitectureError,
    BadValueError,
    CheckpointFormatError,
    ConversionError,
    KeyMismatchError,
    ShapeMismatchError,
    check_finite,
)
from .conversion import convert, convert_to_weights_file, export_timm_state_dict, load_timm_state_dict
from .layouts import check_architecture, detect_layout, infer_architecture, to_timm_keys
from .readers import load_checkpoint
from .version import CONVERTER_VERSION

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
