"""ConvNeXt in keras-hub's API (optional: `pip install "convnext_hub[keras-hub]"`).

Importing this package registers the classes with Keras, which keras-hub's
`from_preset` needs to find them:

    import keras_hub
    import convnext_hub.keras_hub

    classifier = convnext_hub.keras_hub.from_timm("convnext_tiny.in12k_ft_in1k")
    convnext_hub.keras_hub.write_preset(classifier, "convnext_tiny_preset")
    classifier = keras_hub.models.ImageClassifier.from_preset("convnext_tiny_preset")

keras-hub imports TensorFlow: in a process that also uses torch or timm,
import them first (the other order crashes some Linux machines).

Modules, one role each as in keras-hub: `convnext_backbone`,
`convnext_image_classifier`, `convnext_image_classifier_preprocessor`,
`convnext_image_converter`; `convnext_from_timm` (from `load_pretrained`'s
models) and `presets` (writing and uploading preset folders).
"""

from .convnext_backbone import ConvNeXtBackbone
from .convnext_from_timm import copy_weights, from_model, from_timm
from .convnext_image_classifier import ConvNeXtImageClassifier
from .convnext_image_classifier_preprocessor import ConvNeXtImageClassifierPreprocessor
from .convnext_image_converter import ConvNeXtImageConverter
from .presets import model_card, upload_preset, write_preset

__all__ = [
    "ConvNeXtBackbone",
    "ConvNeXtImageClassifier",
    "ConvNeXtImageClassifierPreprocessor",
    "ConvNeXtImageConverter",
    "copy_weights",
    "from_model",
    "from_timm",
    "model_card",
    "upload_preset",
    "write_preset",
]
