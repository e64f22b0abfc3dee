"""The seed API: `ConvNeXtV1` / `ConvNeXtV2` with `MODEL_VARIANTS`, and `create_convnext_v1/v2`."""
import keras

from . import variants
from .model import ConvNeXt


class _Family(ConvNeXt):
    """A ConvNeXt family whose variants are named by size ("tiny", "base", ...)."""

    MODEL_VARIANTS = {}

    @classmethod
    def from_variant(cls, variant, num_classes=1000, input_shape=(None, None, 3), pretrained=None, **kwargs):
        """Builds the `variant` of this family (a key of `MODEL_VARIANTS`).

        `pretrained`: optional local `.keras` / `.weights.h5` file; the classifier is
        skipped (with a warning) when its number of classes differs.
        """
        if variant not in cls.MODEL_VARIANTS:
            raise ValueError(
                f"Unknown {cls.__name__} variant. Received: variant={variant!r}; "
                f"accepted: {list(cls.MODEL_VARIANTS)}"
            )
        from .model import create_model

        return create_model(
            cls.MODEL_VARIANTS[variant]["architecture"],
            num_classes=num_classes,
            input_shape=input_shape,
            pretrained=pretrained,
            **kwargs,
        )


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXtV1(_Family):
    """ConvNeXt V1: layer scale, no GRN. `MODEL_VARIANTS`: size -> {architecture, depths, dims, ...}."""

    MODEL_VARIANTS = variants.V1_VARIANTS


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXtV2(_Family):
    """ConvNeXt V2: GRN in every block's MLP, no layer scale."""

    MODEL_VARIANTS = variants.V2_VARIANTS


def create_convnext_v1(variant="tiny", num_classes=1000, input_shape=(None, None, 3), pretrained=None, **kwargs):
    """Builds a ConvNeXt V1 `variant` ("atto" ... "xxlarge"); see `ConvNeXt` for the arguments."""
    return ConvNeXtV1.from_variant(variant, num_classes, input_shape, pretrained, **kwargs)


def create_convnext_v2(variant="tiny", num_classes=1000, input_shape=(None, None, 3), pretrained=None, **kwargs):
    """Builds a ConvNeXt V2 `variant` ("atto" ... "huge"); see `ConvNeXt` for the arguments."""
    return ConvNeXtV2.from_variant(variant, num_classes, input_shape, pretrained, **kwargs)
