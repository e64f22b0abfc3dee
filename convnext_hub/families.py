"""The two ConvNeXt families as classes, and `create_model` by timm architecture name.

`ConvNeXtV1` / `ConvNeXtV2` name their sizes (`MODEL_VARIANTS`: "tiny" ->
architecture, depths, dims, ...), as keras.applications users expect;
`create_model` takes timm's architecture names. Both build the one `ConvNeXt`.
"""

import keras

from . import variants
from .arguments import check_keywords
from .model import KERAS_MODEL_ARGUMENTS, ConvNeXt
from .weights_io import load_weights_file


class _Family(ConvNeXt):
    """A ConvNeXt family whose variants are named by size ("tiny", "base", ...)."""

    MODEL_VARIANTS = {}

    @classmethod
    def from_variant(cls, variant, num_classes=1000, input_shape=None, pretrained=None, **kwargs):
        """Builds the `variant` of this family (a key of `MODEL_VARIANTS`).

        `pretrained`: optional local `.keras` / `.weights.h5` file or a converted
        folder; the classifier is skipped (with a warning) when its number of classes differs.
        """
        check_keywords(f"{cls.__name__}.from_variant", kwargs, *model_arguments())
        if variant not in cls.MODEL_VARIANTS:
            raise ValueError(
                f"Unknown {cls.__name__} variant. Received: variant={variant!r}; accepted: {list(cls.MODEL_VARIANTS)}"
            )
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


def model_arguments():
    """What `create_model` and the other factories accept as keyword arguments: `ConvNeXt`'s (to check
    them by name, with the close matches, before anything is built or downloaded)."""
    return ConvNeXt.__init__, KERAS_MODEL_ARGUMENTS


def model_class(use_grn):
    """The family class of a geometry: V2 has GRN."""
    return ConvNeXtV2 if use_grn else ConvNeXtV1


def create_model(model_name, pretrained=None, **kwargs):
    """Builds the timm architecture `model_name` (see `list_models()`), as `timm.create_model` does.

    Args:
        model_name: a timm ConvNeXt architecture, e.g. "convnext_tiny" or "convnextv2_atto".
        pretrained: optional local `.keras` / `.weights.h5` file, or a folder written by
            `converters.timm_to_keras` / `converters.publish`, to load weights from.
        **kwargs: any argument of `ConvNeXt` except the structural ones.
    """
    check_keywords("create_model", kwargs, *model_arguments())
    config = variants.architecture(model_name)
    clash = sorted(set(config) & set(kwargs))
    if clash:
        raise ValueError(f"Structural arguments are fixed by the architecture {model_name!r}. Received: {clash}")
    return create_from_structure(config, architecture=model_name, pretrained=pretrained, **kwargs)


def create_from_structure(structure, architecture=None, pretrained=None, **kwargs):
    """Builds a ConvNeXt of any geometry: `structure` holds `variants.STRUCTURAL_KEYS` (a timm
    architecture's entry, or the geometry of a custom checkpoint); `kwargs` the other arguments."""
    model = model_class(structure["use_grn"])(architecture=architecture, **structure, **kwargs)
    if pretrained:
        load_weights_file(model, pretrained)
    return model


def create_convnext_v1(variant="tiny", num_classes=1000, input_shape=None, pretrained=None, **kwargs):
    """Builds a ConvNeXt V1 `variant` ("atto" ... "xxlarge"); see `ConvNeXt` for the arguments."""
    check_keywords("create_convnext_v1", kwargs, *model_arguments())
    return ConvNeXtV1.from_variant(variant, num_classes, input_shape, pretrained, **kwargs)


def create_convnext_v2(variant="tiny", num_classes=1000, input_shape=None, pretrained=None, **kwargs):
    """Builds a ConvNeXt V2 `variant` ("atto" ... "huge"); see `ConvNeXt` for the arguments."""
    check_keywords("create_convnext_v2", kwargs, *model_arguments())
    return ConvNeXtV2.from_variant(variant, num_classes, input_shape, pretrained, **kwargs)
