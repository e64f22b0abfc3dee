"""`ConvNeXtBackbone`: the ConvNeXt stem and stages as a keras-hub `FeaturePyramidBackbone`."""

import keras
from keras_hub.models import FeaturePyramidBackbone

from ..arguments import check_keywords
from ..layers import ExportsFusablePatterns
from ..model import Stages, stage_config

KERAS_HUB_MODEL_ARGUMENTS = ("name", "trainable")  # what keras-hub's `get_config` adds to ours


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
        stage_maps: the last feature map of each stage, in order.
        pyramid_outputs: `{"P2": ..., "P5": ...}`, the maps at strides 4, 8, 16, 32
            (`P{n}` at stride 2**n): what keras-hub's detection and segmentation models
            take from a `FeaturePyramidBackbone`. Under `output_stride=16`, `P2`..`P4`
            with `P4` the last stage's map (DeepLabV3's `spatial_pyramid_pooling_key`).
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
        stages = Stages(
            image_shape,
            depths,
            dims,
            use_grn,
            layer_scale_init_value,
            stem_type,
            norm,
            norm_eps,
            conv_mlp,
            kernel_size,
            drop_path_rate,
            output_stride,
            data_format,
            architecture,
            pretrained_cfg,
            dtype,
        )
        kwargs.setdefault("name", "convnext_backbone")
        super().__init__(inputs=stages.inputs, outputs=stages.maps[-1], dtype=dtype, **kwargs)
        stages.describe(self)
        self.image_shape = stages.input_shape

    def get_config(self):
        config = super().get_config()
        config.update(stage_config(self), image_shape=list(self.image_shape))
        return config
