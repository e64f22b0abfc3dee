"""Native Keras 3 ConvNeXt V1 / V2 models and timm's pretrained weights."""
from .faces import ConvNeXtV1, ConvNeXtV2, create_convnext_v1, create_convnext_v2
from .hub import load_pretrained
from .labels import decode_predictions
from .layers import GlobalResponseNorm, LayerScale, RMSNorm, SimpleNorm, StochasticDepth
from .model import ConvNeXt, create_model
from .preprocessing import Preprocessor, preprocess_input
from .variants import ARCHITECTURES, list_models

from checkpoints import list_pretrained  # noqa: E402  (data only)

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ConvNeXt",
    "ConvNeXtV1",
    "ConvNeXtV2",
    "GlobalResponseNorm",
    "LayerScale",
    "RMSNorm",
    "SimpleNorm",
    "StochasticDepth",
    "create_convnext_v1",
    "create_convnext_v2",
    "Preprocessor",
    "create_model",
    "decode_predictions",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "preprocess_input",
]
