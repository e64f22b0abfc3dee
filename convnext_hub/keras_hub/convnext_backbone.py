"""`ConvNeXtBackbone`: the ConvNeXt stem and stages as a keras-hub `FeaturePyramidBackbone`."""

import keras
import numpy as np
from keras_hub.models import FeaturePyramidBackbone

from .. import data_format as formats
from ..arguments import check_keywords
from ..layers import ExportsFusablePatterns
from ..model import STAGE_STRIDES, Builder, check_input_shape
from ..output_stride import check_output_stride, stage_plans

NUM_STAGES = len(STAGE_STRIDES)
KERAS_HUB_MODEL_ARGUMENTS = ("name", "trainable")  # what keras-hub's `get_config` adds to ours


def _check_stage_widths(argument, values):
    ok = len(values) == NUM_STAGES and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
    )
    if not ok:
        raise ValueError(
            f"`{argument}` must be {NUM_STAGES} positive ints, one per stage. Received: {argument}={values!r}"
        )


def _check(depths, dims, kernel_size, drop_path_rate):
    _check_stage_widths("depths", depths)
    _check_stage_widths("dims", dims)
    # timm pads the depthwise conv by kernel_size // 2 on each side: "same" only for odd sizes.
    if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be a positive odd int. Received: kernel_size={kernel_size!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate!r}")


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXtBackbone(ExportsFusablePatterns, FeaturePyramidBackbone):
    """ConvNeXt V1 / V2 feature extractor, with timm's layers and weights.

    The layers are those of `convnext_hub.ConvNeXt` up to its last stage, built
    by the same `Builder` under the same names, so one key mapping
    (`convnext_hub.convert.mapping`) and one set of weights serve both models. The output
    is the last stage's feature map (stride 32); the head (pooling, norm,
    classifier) belongs to `ConvNeXtImageClassifier`, as keras-hub separates them.

    Args:
        depths: blocks per stage (4 ints).
        dims: channels per stage (4 ints).
        use_grn: Global Response Normalization in each block's MLP (V2).
        layer_scale_init_value: initial layer scale, or None for none (V2).
        stem_type: "patch", "overlap", "overlap_tiered" or "overlap_act".
        norm: "layernorm", "rmsnorm2d" or "simplenorm".
        norm_eps: epsilon of every norm.
        conv_mlp: timm stores the block MLP as 1x1 convs; changes only the checkpoint
            layout, kept so that weights export back to timm's keys.
        kernel_size: depthwise kernel size (odd).
        drop_path_rate: stochastic depth rate of the last block.
        image_shape: (height, width, 3), or (3, height, width) for channels-first; height and
            width may be None. Default: any size, in `data_format`'s order.
        output_stride: 32, 16 or 8: the later stages dilated instead of strided, as timm's
            `output_stride` (16 is what DeepLabV3 takes). Weight shapes do not change.
        data_format: "channels_last" or "channels_first"; default Keras' global
            `image_data_format()`. The layers compute in channels-last either way (one
            transpose at the input, one per returned map), which keeps the weights, and
            so presets, the same in both formats.
        architecture: timm architecture name, or None for a custom geometry.
        pretrained_cfg: the checkpoint's configuration (preprocessing, license,
            source), kept through presets and `.keras` files.
        dtype: dtype policy of every layer.

    Attributes:
        pyramid_outputs: `{"P2": ..., "P5": ...}`, the last feature map of each stage
            (strides 4, 8, 16, 32): what keras-hub's detection and segmentation
            models take from a `FeaturePyramidBackbone`.
        feature_info: timm's description of those maps (`num_chs`, `reduction`, `module`).
    """

    def __init__(
        self,
        depths,
        dims,
        use_grn=False,
        layer_scale_init_value=1e-6,
        stem_type="patch",
        norm="layernorm",
        norm_eps=1e-6,
        conv_mlp=False,
        kernel_size=7,
        drop_path_rate=0.0,
        image_shape=None,
        output_stride=32,
        data_format=None,
        architecture=None,
        pretrained_cfg=None,
        dtype=None,
        **kwargs,
    ):
        check_keywords(type(self).__name__, kwargs, type(self).__init__, KERAS_HUB_MODEL_ARGUMENTS)
        data_format = formats.resolve(data_format)
        if image_shape is None:
            image_shape = formats.default_image_shape(data_format)
        depths, dims, image_shape = tuple(depths), tuple(dims), tuple(image_shape)
        _check(depths, dims, kernel_size, drop_path_rate)
        check_input_shape(image_shape, data_format)
        output_stride = check_output_stride(output_stride)
        builder = Builder(norm, norm_eps, dtype)

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        stage_outputs = builder.stages(
            formats.to_channels_last(inputs, data_format, builder.dtype),
            depths,
            dims,
            stem_type,
            kernel_size,
            use_grn,
            layer_scale_init_value,
            drop_path_rate,
            output_stride,
        )
        maps = [
            formats.to_data_format(out, data_format, f"stages_{i}_to_channels_first", builder.dtype)
            for i, out in enumerate(stage_outputs)
        ]
        kwargs.setdefault("name", "convnext_backbone")
        super().__init__(inputs=inputs, outputs=maps[-1], dtype=dtype, **kwargs)

        # === Config ===
        self.depths = depths
        self.dims = dims
        self.use_grn = use_grn
        self.layer_scale_init_value = layer_scale_init_value
        self.stem_type = stem_type
        self.norm = norm
        self.norm_eps = norm_eps
        self.conv_mlp = conv_mlp
        self.kernel_size = kernel_size
        self.drop_path_rate = drop_path_rate
        self.image_shape = image_shape
        self.output_stride = output_stride
        self.data_format = data_format
        self.architecture = architecture
        self.pretrained_cfg = pretrained_cfg
        self.pyramid_outputs = {f"P{i + 2}": out for i, out in enumerate(maps)}
        self.feature_info = [
            {"num_chs": dim, "reduction": plan.reduction, "module": f"stages.{i}"}
            for i, (dim, plan) in enumerate(zip(dims, stage_plans(output_stride)))
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depths": list(self.depths),
                "dims": list(self.dims),
                "use_grn": self.use_grn,
                "layer_scale_init_value": self.layer_scale_init_value,
                "stem_type": self.stem_type,
                "norm": self.norm,
                "norm_eps": self.norm_eps,
                "conv_mlp": self.conv_mlp,
                "kernel_size": self.kernel_size,
                "drop_path_rate": self.drop_path_rate,
                "image_shape": list(self.image_shape),
                "output_stride": self.output_stride,
                "data_format": self.data_format,
                "architecture": self.architecture,
                "pretrained_cfg": self.pretrained_cfg,
            }
        )
        return config
