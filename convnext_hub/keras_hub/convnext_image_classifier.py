"""`ConvNeXtImageClassifier`: a keras-hub `ImageClassifier` with ConvNeXt's own head."""

import keras
import numpy as np
from keras_hub.models import ImageClassifier, Task

from ..arguments import check_keywords
from ..layers import Transpose, tracing_for_export
from ..model import Builder
from .convnext_backbone import KERAS_HUB_MODEL_ARGUMENTS, ConvNeXtBackbone
from .convnext_image_classifier_preprocessor import ConvNeXtImageClassifierPreprocessor

POOLINGS = ("avg", "max")


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXtImageClassifier(ImageClassifier):
    """Image classification with a `ConvNeXtBackbone` and timm's ConvNeXt head.

    keras-hub's default head is pool -> dropout -> Dense; ConvNeXt's is pool ->
    norm -> [pre-logits Dense + GELU when `head_hidden_size`] -> dropout -> Dense,
    or, with `head_norm_first`, norm on the feature map -> pool -> dropout -> Dense.
    The head's layers are built by `convnext_hub.model.Builder` under the names
    `convnext_hub.ConvNeXt` gives them, so a ConvNeXt's head weights load as they are.

    `from_preset(..., num_classes=N)` follows keras-hub: no task weights are
    loaded, so the whole head (norm and pre-logits included) starts fresh; to keep
    the pretrained norm and pre-logits, use `convnext_hub.keras_hub.from_timm(name,
    num_classes=N)`, which replaces only the classifier (as timm's `reset_classifier`).

    Args:
        backbone: a `ConvNeXtBackbone`.
        num_classes: number of classes (>= 1).
        preprocessor: a `ConvNeXtImageClassifierPreprocessor`, or None for inputs
            already preprocessed.
        head_norm_first: norm the feature map before pooling (`convnext_tiny_hnf`).
        head_hidden_size: width of the pre-logits Dense + GELU (`convnext_large_mlp`), or None.
        pooling: "avg" (timm) or "max".
        activation: activation of the classifier; None returns logits.
        dropout: dropout rate before the classifier.
        head_dtype: dtype policy of the head; defaults to the backbone's.
        **kwargs: `keras_hub.models.Task` arguments (`name`, `compile`, ...).
    """

    backbone_cls = ConvNeXtBackbone
    preprocessor_cls = ConvNeXtImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        head_norm_first=False,
        head_hidden_size=None,
        pooling="avg",
        activation=None,
        dropout=0.0,
        head_dtype=None,
        **kwargs,
    ):
        check_keywords(type(self).__name__, kwargs, type(self).__init__, Task.__init__, KERAS_HUB_MODEL_ARGUMENTS)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an int >= 1. Received: num_classes={num_classes!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        if activation is not None:
            activation = keras.activations.serialize(keras.activations.get(activation))
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        builder = Builder(backbone.norm, backbone.norm_eps, head_dtype or backbone.dtype_policy)

        # === Functional Model ===
        inputs = self.backbone.input
        features = self.backbone(inputs)
        if getattr(backbone, "data_format", "channels_last") == "channels_first":
            # The head computes in channels-last, as the backbone's layers do (same weights either way).
            features = Transpose((2, 3, 1), name="head_to_channels_last", dtype=builder.dtype)(features)
        outputs = builder.head(features, head_norm_first, head_hidden_size, dropout, num_classes, activation, pooling)
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.head_norm_first = head_norm_first
        self.head_hidden_size = head_hidden_size
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout
        self.head_dtype = head_dtype

    def get_config(self):
        config = Task.get_config(self)
        head_dtype = self.head_dtype
        config.update(
            {
                "num_classes": self.num_classes,
                "head_norm_first": self.head_norm_first,
                "head_hidden_size": self.head_hidden_size,
                "pooling": self.pooling,
                "activation": self.activation,
                "dropout": self.dropout,
                "head_dtype": None
                if head_dtype is None
                else keras.dtype_policies.serialize(keras.dtype_policies.get(head_dtype)),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("head_dtype"), dict):
            config["head_dtype"] = keras.dtype_policies.deserialize(config["head_dtype"])
        return super().from_config(config)

    def export(self, filepath, format="tf_saved_model", **kwargs):
        """Keras' `export`, the layers traced in the patterns `format`'s runtime fuses (`tracing_for_export`).

        Written out rather than inherited from `layers.ExportsFusablePatterns`: keras-hub names a task
        preset's task by the class's first base, which must stay `ImageClassifier`.
        """
        with tracing_for_export(format):
            return super().export(filepath, format=format, **kwargs)
