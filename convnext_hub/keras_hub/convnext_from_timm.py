"""keras-hub models from `convnext_hub` models: any checkpoint `load_pretrained` reads, in one call.

The keras-hub classes build the layers of `convnext_hub.ConvNeXt` under the
same names, so converting a model is copying each layer's weights by name.
"""

from ..hub import load_pretrained
from ..model import zeros_initialized
from .convnext_backbone import ConvNeXtBackbone
from .convnext_image_classifier import ConvNeXtImageClassifier
from .convnext_image_classifier_preprocessor import ConvNeXtImageClassifierPreprocessor
from .convnext_image_converter import ConvNeXtImageConverter

TASKS = ("classifier", "backbone")
_BACKBONE_ARGS = (
    "depths",
    "dims",
    "use_grn",
    "layer_scale_init_value",
    "stem_type",
    "norm",
    "norm_eps",
    "conv_mlp",
    "kernel_size",
    "drop_path_rate",
    "output_stride",
    "data_format",
    "architecture",
    "pretrained_cfg",
)


def from_timm(name, task="classifier", **kwargs):
    """A keras-hub ConvNeXt task or backbone with pretrained weights.

    Goes through `convnext_hub.load_pretrained` (download, converted-weights
    cache, offline use, licenses), then copies the weights into keras-hub's classes.

    Args:
        name: anything `load_pretrained` takes: a timm tag
            (`"convnextv2_base.fcmae_ft_in22k_in1k"`), alias or architecture, a Keras
            conversion on the Hub (`"hf://org/repo"`) or a local checkpoint file / folder.
        task: "classifier" for a `ConvNeXtImageClassifier` with its preprocessor
            (timm's eval transform of the checkpoint), "backbone" for a `ConvNeXtBackbone`.
        **kwargs: `load_pretrained` arguments (`num_classes`, `input_shape`,
            `drop_path_rate`, `dropout_rate`, `classifier_activation`, `dtype`,
            `revision`, `cache_dir`, `local_files_only`, `token`). A different
            `num_classes` keeps the pretrained head norm and pre-logits and leaves
            only the classifier fresh.

    Returns:
        A `ConvNeXtImageClassifier` or `ConvNeXtBackbone`.
    """
    _check_task(task)
    return from_model(load_pretrained(name, **kwargs), task)


def from_model(model, task="classifier"):
    """The keras-hub task or backbone of a `convnext_hub.ConvNeXt`, holding copies of its weights.

    Args:
        model: a `convnext_hub.ConvNeXt` (`load_pretrained`, `create_model`,
            `converters.convert`); for "classifier" it must end in timm's head
            (`include_top=True`, `num_classes >= 1`, not `features_only`).
        task: "classifier" or "backbone".
    """
    _check_task(task)
    with zeros_initialized():  # every weight is copied next
        backbone = ConvNeXtBackbone(
            **{arg: getattr(model, arg) for arg in _BACKBONE_ARGS},
            image_shape=model.input_shape[1:],
            dtype=model.get_layer("stem_0").dtype_policy,  # every layer has the model's `dtype`
        )
    copy_weights(model, backbone.layers)
    if task == "backbone":
        return backbone
    if model.features_only or not model.include_top or model.num_classes == 0:
        raise ValueError(
            "task='classifier' needs a model with timm's head (include_top=True, num_classes >= 1, "
            f"features_only=False). Received: a model with include_top={model.include_top}, "
            f"num_classes={model.num_classes}, features_only={model.features_only}"
        )
    converter = ConvNeXtImageConverter.from_pretrained_cfg(model.pretrained_cfg)
    with zeros_initialized():
        classifier = ConvNeXtImageClassifier(
            backbone,
            model.num_classes,
            preprocessor=ConvNeXtImageClassifierPreprocessor(converter),
            head_norm_first=model.head_norm_first,
            head_hidden_size=model.head_hidden_size,
            activation=model.classifier_activation,
            dropout=model.dropout_rate,
        )
    copy_weights(model, [layer for layer in classifier.layers if layer is not backbone])
    return classifier


def copy_weights(source, layers):
    """Set the weights of each of `layers` from the layer of `source` with the same name.

    Variable to variable (`assign`), so the values stay on the backend's device; a
    shape that differs raises Keras' `ValueError`.
    """
    for layer in layers:
        for target, value in zip(layer.weights, source.get_layer(layer.name).weights, strict=True):
            target.assign(value)


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
