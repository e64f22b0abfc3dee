"""Native Keras 3 ConvNeXt V1 / V2 models and timm's pretrained weights."""

from checkpoints import list_pretrained

from .families import ConvNeXtV1, ConvNeXtV2, create_convnext_v1, create_convnext_v2, create_model
from .labels import decode_predictions
from .layers import GlobalResponseNorm, LayerScale, RMSNorm, SimpleNorm, StochasticDepth
from .model import ConvNeXt
from .preprocessing import Preprocessor, preprocess_batch, preprocess_image, preprocess_input
from .variants import ARCHITECTURES, list_models
from .version import __version__


def __getattr__(name):
    # `load_pretrained` belongs to the hub layer (huggingface_hub, the conversion library): the facade
    # loads it on first use (PEP 562), so that `import convnext_hub` stays the model core alone.
    if name == "load_pretrained":
        from .hub import load_pretrained

        return load_pretrained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
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
    "preprocess_batch",
    "preprocess_image",
    "preprocess_input",
]
