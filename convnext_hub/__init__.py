"""Native Keras 3 ConvNeXt V1 / V2 models and timm's pretrained weights."""
from .faces import ConvNeXtV1, ConvNeXtV2, create_convnext_v1, create_convnext_v2
from .layers import GlobalResponseNorm, LayerScale, RMSNorm, SimpleNorm, StochasticDepth
from .model import ConvNeXt, create_model
from .variants import ARCHITECTURES, list_models

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
    "create_model",
    "list_models",
]
