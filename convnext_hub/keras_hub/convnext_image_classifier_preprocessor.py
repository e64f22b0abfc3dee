"""`ConvNeXtImageClassifierPreprocessor`: keras-hub's classifier preprocessor with ConvNeXt's converter."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from .convnext_backbone import ConvNeXtBackbone
from .convnext_image_converter import ConvNeXtImageConverter


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXtImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Raw images (and optional labels) to `ConvNeXtImageClassifier` inputs.

    Args:
        image_converter: a `ConvNeXtImageConverter` (timm's eval transform of the
            checkpoint), or None to pass images through unchanged.
    """

    backbone_cls = ConvNeXtBackbone
    image_converter_cls = ConvNeXtImageConverter
