"""The ConvNeXt model: one functional Keras model for V1 and V2, as in timm.

Layer names mirror timm's module paths with `.` written as `_`
(`stages_2_blocks_5_mlp_fc1` is timm's `stages.2.blocks.5.mlp.fc1`), so the
mapping to timm keys is mechanical (see `convnext_hub.convert.mapping`).
"""

import contextlib
import contextvars
import inspect
import logging

import keras
import numpy as np

from . import data_format as formats
from . import fast_path, intermediates, keras_compat, remat
from .arguments import check_keywords
from .layers import (
    GELU,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    ExportsFusablePatterns,
    GlobalResponseNorm,
    HostTruncatedNormal,
    LayerScale,
    StochasticDepth,
    make_norm,
)
from .output_stride import check_output_stride, stage_plans

logger = logging.getLogger("convnext_hub")

MIN_INPUT_SIZE = 32
KERAS_MODEL_ARGUMENTS = ("trainable",)  # what `keras.Model.from_config` may pass beyond ours
POOLINGS = ("avg", "max", None)
STAGE_STRIDES = (4, 8, 16, 32)
# The head, declared once: the classifier a different `num_classes` replaces
# (timm's `pretrained_cfg["classifier"]` is "head.fc"), and every layer after the stages.
CLASSIFIER_LAYER = "head_fc"
HEAD_LAYERS = ("norm_pre", "head_global_pool", "head_norm", "head_pre_logits_fc", "head_drop", "head_fc", "predictions")


def _make_divisible(value, divisor=8):
    """timm's `make_divisible` with its defaults (round to nearest, at least 90% of `value`)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def check_input_shape(input_shape, data_format="channels_last"):
    """`input_shape` must be (height, width, 3) (channels-last) or (3, height, width) (channels-first),
    each side None or an int >= `MIN_INPUT_SIZE`."""
    first = data_format == "channels_first"
    layout = "(3, height, width)" if first else "(height, width, 3)"
    if len(input_shape) != 3 or input_shape[0 if first else -1] != 3:
        raise ValueError(
            f"`input_shape` must be {layout} for data_format={data_format!r}, with height and width an int "
            f">= {MIN_INPUT_SIZE} or None. Received: input_shape={input_shape!r}"
        )
    for side in input_shape[1:] if first else input_shape[:2]:
        if side is not None and (not isinstance(side, (int, np.integer)) or side < MIN_INPUT_SIZE):
            raise ValueError(
                f"`input_shape` height and width must be None or an int >= {MIN_INPUT_SIZE}. "
                f"Received: input_shape={input_shape!r}"
            )


def _check_stage_widths(argument, values):
    ok = len(values) == len(STAGE_STRIDES) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values
    )
    if not ok:
        raise ValueError(
            f"`{argument}` must be {len(STAGE_STRIDES)} positive ints, one per stage. Received: {argument}={values!r}"
        )


def _check_stages(depths, dims, kernel_size, drop_path_rate):
    _check_stage_widths("depths", depths)
    _check_stage_widths("dims", dims)
    # timm pads the depthwise conv by kernel_size // 2 on each side: "same" only for odd sizes.
    if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be a positive odd int. Received: kernel_size={kernel_size!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate!r}")


class Stages:
    """The stem and the four stages of a ConvNeXt as a functional graph, checked and described once.

    `ConvNeXt` puts timm's head on it; keras-hub's `ConvNeXtBackbone` returns its
    last map. Both build it here, so the two classes share one set of stage
    arguments (`STAGE_ARGUMENTS`, with the same checks), one layer naming (the
    same weights) and one description of the maps (`pyramid_outputs`, `feature_info`).
    """

    def __init__(
        self,
        input_shape,
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
    ):
        data_format = formats.resolve(data_format)
        self.input_shape = tuple(formats.default_image_shape(data_format) if input_shape is None else input_shape)
        _check_stages(tuple(depths), tuple(dims), kernel_size, drop_path_rate)
        check_input_shape(self.input_shape, data_format)
        output_stride = check_output_stride(output_stride)
        self.arguments = dict(
            depths=tuple(depths),
            dims=tuple(dims),
            use_grn=use_grn,
            layer_scale_init_value=layer_scale_init_value,
            stem_type=stem_type,
            norm=norm,
            norm_eps=norm_eps,
            conv_mlp=conv_mlp,
            kernel_size=kernel_size,
            drop_path_rate=drop_path_rate,
            output_stride=output_stride,
            data_format=data_format,
            architecture=architecture,
            pretrained_cfg=pretrained_cfg,
        )
        self.builder = Builder(norm, norm_eps, dtype)
        self.inputs = keras.Input(shape=self.input_shape, name="images")
        # The layers compute in channels-last; `maps` are their outputs in `data_format`.
        self.channels_last = self.builder.stages(
            formats.to_channels_last(self.inputs, data_format, self.builder.dtype),
            depths,
            dims,
            stem_type,
            kernel_size,
            use_grn,
            layer_scale_init_value,
            drop_path_rate,
            output_stride,
        )
        self.maps = [
            formats.to_data_format(out, data_format, f"stages_{i}_to_channels_first", self.builder.dtype)
            for i, out in enumerate(self.channels_last)
        ]

    def describe(self, model):
        """Gives `model` (built on these stages) the stage arguments, `pyramid_outputs` and `feature_info`."""
        for key, value in self.arguments.items():
            setattr(model, key, value)
        plans = stage_plans(self.arguments["output_stride"])
        model.stage_maps = list(self.maps)
        # keras-hub's key "P{n}" names the map at stride 2**n (its DeepLabV3 upsamples by that); where dilated
        # stages share a stride, the key holds the last (deepest) of them, as a feature pyramid takes it.
        model.pyramid_outputs = {f"P{plan.reduction.bit_length() - 1}": out for out, plan in zip(self.maps, plans)}
        model.feature_info = [
            {"num_chs": dim, "reduction": plan.reduction, "module": f"stages.{i}"}
            for i, (dim, plan) in enumerate(zip(self.arguments["dims"], plans))
        ]


STAGE_ARGUMENTS = tuple(inspect.signature(Stages).parameters)[1:-1]  # all but input_shape and dtype


def stage_config(model):
    """`model`'s stage arguments as `get_config` gives them (tuples as lists)."""
    values = {key: getattr(model, key) for key in STAGE_ARGUMENTS}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def _validate(pooling, out_indices, num_classes, features_only, dropout_rate):
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise ValueError(f"`num_classes` must be an int >= 0. Received: num_classes={num_classes!r}")
    if features_only:
        bad = [i for i in out_indices if i not in (0, 1, 2, 3)]
        if bad or not out_indices or len(set(out_indices)) != len(out_indices):
            raise ValueError(
                "`out_indices` must be distinct stage indices in (0, 1, 2, 3). "
                f"Received: out_indices={tuple(out_indices)!r}"
            )


def drop_path_rates(depths, drop_path_rate):
    """Per-block stochastic depth rates, rising linearly from 0 to `drop_path_rate`."""
    return np.linspace(0.0, drop_path_rate, sum(depths)).tolist()


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXt(ExportsFusablePatterns, keras.Model):
    """ConvNeXt V1 / V2 image model, mirroring timm's `ConvNeXt`.

    Args:
        depths: blocks per stage (4 ints).
        dims: channels per stage (4 ints).
        use_grn: Global Response Normalization in each block's MLP (V2).
        layer_scale_init_value: initial layer scale, or None for none (V2).
        stem_type: "patch", "overlap", "overlap_tiered" or "overlap_act".
        norm: "layernorm", "rmsnorm2d" or "simplenorm".
        norm_eps: epsilon of every norm.
        conv_mlp: timm stores the block MLP as 1x1 convs (changes only the checkpoint layout).
        head_norm_first: norm the feature map before pooling (`convnext_tiny_hnf`).
        head_hidden_size: width of the head's pre-logits Dense + GELU, or None.
        kernel_size: depthwise kernel size.
        num_classes: classifier outputs; 0 keeps timm's head without the classifier.
        include_top: build the head; if False the model returns the final feature map,
            pooled per `pooling`.
        input_shape: (height, width, 3), or (3, height, width) for channels-first; height and
            width may be None. Default: any size, in `data_format`'s order.
        pooling: "avg", "max" or None; used when `include_top=False`.
        drop_path_rate: stochastic depth rate of the last block.
        dropout_rate: dropout before the classifier.
        classifier_activation: activation of the classifier; None returns logits.
        features_only: return the feature maps of the stages in `out_indices`.
        out_indices: stages whose feature maps `features_only` returns (strides 4, 8, 16, 32).
        output_stride: 32, 16 or 8: the stride of the last feature map. As timm's `output_stride`,
            stages past it keep their resolution (stride-1 downsample, dilated depthwise convs),
            for segmentation heads; weight shapes do not change, so any checkpoint loads.
        data_format: "channels_last" or "channels_first" for the input and the returned maps;
            default Keras' global `image_data_format()`. The layers compute in channels-last
            either way (one transpose at the input and one per returned map): that keeps the
            weights, and so the weights files, identical in both formats, and runs on
            TensorFlow's CPU, which has no channels-first convolutions.
        remat: in training, rematerialise each block (gradient checkpointing, timm's
            `set_grad_checkpointing`): less memory for one more forward of each block.
        intermediate_pruning: set by `prune_intermediate_layers` (kept so that a saved pruned
            model loads pruned); None for the whole model.
        architecture: timm architecture name, or None for a custom geometry.
        pretrained_cfg: the checkpoint's configuration (input size, crop, interpolation,
            mean, std, license, label set, source), kept through saving and `get_config()`.
        name: model name; layer names do not depend on it.
        dtype: dtype policy for every layer.

    Attributes:
        stage_maps: the last feature map of each stage, in order.
        pyramid_outputs: `{"P2": ..., "P5": ...}`, the maps at strides 4, 8, 16, 32, as
            keras-hub's `FeaturePyramidBackbone` names them (`P{n}` at stride 2**n). Under
            `output_stride=16` the last two stages share stride 16 and `P4` is the last
            stage's map (`P2`..`P4`); under 8, `P2`, `P3`.
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
        head_norm_first=False,
        head_hidden_size=None,
        kernel_size=7,
        num_classes=1000,
        include_top=True,
        input_shape=None,
        pooling=None,
        drop_path_rate=0.0,
        dropout_rate=0.0,
        classifier_activation=None,
        features_only=False,
        out_indices=(0, 1, 2, 3),
        output_stride=32,
        data_format=None,
        remat=False,
        intermediate_pruning=None,
        architecture=None,
        pretrained_cfg=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        check_keywords(type(self).__name__, kwargs, type(self).__init__, KERAS_MODEL_ARGUMENTS)
        out_indices = tuple(out_indices)
        _validate(pooling, out_indices, num_classes, features_only, dropout_rate)
        stages = Stages(
            input_shape,
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
        builder, maps, x = stages.builder, stages.maps, stages.channels_last[-1]
        data_format = stages.arguments["data_format"]

        if features_only:
            outputs = [maps[i] for i in out_indices]
        elif include_top:
            outputs = builder.head(
                x, head_norm_first, head_hidden_size, dropout_rate, num_classes, classifier_activation
            )
        else:
            outputs = builder.backbone_output(x, head_norm_first, pooling)
            if not pooling:
                outputs = formats.to_data_format(outputs, data_format, "features_to_channels_first", builder.dtype)

        super().__init__(inputs=stages.inputs, outputs=outputs, name=name or architecture or "convnext", **kwargs)
        stages.describe(self)
        # What `forward_intermediates`, pruning and rematerialisation run: the channels-last graph.
        self.graph_points = builder.graph_points
        self.remat = bool(remat)
        self.head_norm_first = head_norm_first
        self.head_hidden_size = head_hidden_size
        self.num_classes = num_classes
        self.include_top = include_top
        self.pooling = pooling
        self.dropout_rate = dropout_rate
        self.classifier_activation = classifier_activation
        self.features_only = features_only
        self.out_indices = out_indices
        self.intermediate_pruning = intermediates.check_pruning(self, intermediate_pruning)
        # Functional models keep no dtype policy of their own; every layer got `dtype`.
        if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
            dtype = dtype.default_policy
        self.layers_dtype_policy = keras.dtype_policies.get(dtype)
        if self.layers_dtype_policy.quantization_mode is None:
            # The model's own policy is what `compile` reads to wrap the optimizer in a
            # LossScaleOptimizer for mixed_float16; Keras sets it from the global policy only.
            self.dtype_policy = self.layers_dtype_policy

    def _dtype_policies(self):
        """The constructor's dtype policy, or a `DTypePolicyMap` of it plus the layers changed since
        (`model.quantize("int8")`), so that a reloaded model is built as it was saved."""
        base = self.layers_dtype_policy
        changed = {
            layer.path: layer.dtype_policy
            for layer in self.layers
            if layer.dtype_policy.quantization_mode and layer.dtype_policy.name != base.name
        }
        if not changed:
            return base
        policies = keras.dtype_policies.DTypePolicyMap(default_policy=base)
        for path, policy in changed.items():
            policies[path] = policy
        return policies

    def head_layers(self):
        """The layers after the last stage (pooling, norm, pre-logits, dropout, classifier), in order."""
        return [layer for layer in self.layers if layer.name in HEAD_LAYERS]

    def classifier_layer(self):
        """The final Dense that maps features to classes, or None (`num_classes=0`, no top, features)."""
        return next((layer for layer in self.layers if layer.name == CLASSIFIER_LAYER), None)

    def stage_and_output_model(self):
        """A functional model returning each stage's last map, then this model's outputs."""
        outputs = self.outputs if isinstance(self.outputs, list) else [self.outputs]
        return keras.Model(self.inputs[0], [*self.stage_maps, *outputs])

    def forward_intermediates(
        self,
        x,
        indices=None,
        norm=False,
        stop_early=False,
        output_fmt="NHWC",
        intermediates_only=False,
        training=False,
    ):
        """timm's `forward_intermediates`: the stage feature maps on the way, and the final features.

        Args:
            x: images, in the model's `data_format`.
            indices: an int n takes the last n stages, a list those stages (negative from the end),
                None all of them.
            norm: apply `norm_pre` (`head_norm_first` models) to the last stage's map when taken.
            stop_early: run no stage after the last one taken.
            output_fmt: "NHWC" (Keras' channels-last) or "NCHW" (timm's layout) for every
                returned map.
            intermediates_only: return only the list of maps.
            training: Keras' training flag for the layers.

        Returns:
            The list of maps, or `(final features, maps)` where the final features are
            `forward_features` (the last stage's map, through `norm_pre` where the model has one)
            or, with `stop_early`, the last taken stage's map: timm's return structure.
        """
        return intermediates.forward_intermediates(
            self, x, indices, norm, stop_early, output_fmt, intermediates_only, training
        )

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """timm's `prune_intermediate_layers`: the model runs only the stages `indices` need.

        Stages after the last index, `norm_pre` (with `prune_norm`, or when stages are cut)
        and the head (with `prune_head`, or when stages are cut) stop being run: the model
        then returns the last kept stage's map. The layers and their weights stay, so a
        saved pruned model's weights still load into an unpruned one; the pruning is part
        of `get_config()` (`intermediate_pruning`).

        Returns:
            The absolute stage indices taken, as timm returns them.
        """
        return intermediates.prune_intermediate_layers(self, indices, prune_norm, prune_head)

    def call(self, inputs, training=None, mask=None, **kwargs):
        if self.intermediate_pruning is not None:
            return intermediates.pruned_model(self)(inputs, training=training)
        if self.remat and training:
            return remat.rematerialized_call(self, inputs, training)
        if fast_path.applies(self, training, mask, kwargs):
            return fast_path.run(self, inputs)
        if fast_path.compiles(self, inputs, training, mask, kwargs):
            return fast_path.run_compiled(self, inputs)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def get_config(self):
        with keras_compat.tensorflow_left_unimported():
            return self._config()

    def _config(self):
        # keras.Model's part: name, trainable and the dtype policy; then exactly the constructor's arguments.
        config = {key: value for key, value in keras.Model.get_config(self).items() if key in ("name", "trainable")}
        config["dtype"] = keras.dtype_policies.serialize(self._dtype_policies())
        return {
            **config,
            **stage_config(self),
            "head_norm_first": self.head_norm_first,
            "head_hidden_size": self.head_hidden_size,
            "num_classes": self.num_classes,
            "include_top": self.include_top,
            "input_shape": list(self.input_shape[1:]),
            "pooling": self.pooling,
            "dropout_rate": self.dropout_rate,
            "classifier_activation": keras.activations.serialize(keras.activations.get(self.classifier_activation))
            if self.classifier_activation is not None
            else None,
            "features_only": self.features_only,
            "out_indices": list(self.out_indices),
            "remat": self.remat,
            "intermediate_pruning": None if self.intermediate_pruning is None else dict(self.intermediate_pruning),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


_ZEROS_INIT = contextvars.ContextVar("convnext_hub_zeros_init", default=False)


@contextlib.contextmanager
def zeros_initialized():
    """Models built inside start with zero kernels: for weights about to be overwritten.

    Saves the random initialisation (seconds, and a transient copy, for the
    biggest models) when converting or loading checkpoints.
    """
    token = _ZEROS_INIT.set(True)
    try:
        yield
    finally:
        _ZEROS_INIT.reset(token)


def kernel_initializer():
    """timm's initialisation of conv and linear kernels: truncated normal(0.02) (biases: zeros)."""
    return "zeros" if _ZEROS_INIT.get() else HostTruncatedNormal(stddev=0.02)


def _weight_init():
    return dict(kernel_initializer=kernel_initializer(), bias_initializer="zeros")


class GraphPoints:
    """Symbolic tensors of a model's channels-last graph where `forward_intermediates`, pruning and
    rematerialisation cut it: the stem's output, each block's input and output per stage, each
    stage's output, and `norm_pre`'s output (None without one). A plain object, so that Keras
    does not track the tensors."""

    def __init__(self):
        self.stem = None
        self.blocks = []
        self.stages = []
        self.norm_pre = None


class Builder:
    """Creates the named layers of one model with a shared norm kind and dtype.

    Public so that other model classes (the keras-hub backbone and classifier)
    build the very same layers, with the same names and therefore the same weights.
    """

    def __init__(self, norm, norm_eps, dtype):
        self.norm_kind = norm
        self.norm_eps = norm_eps
        # A `DTypePolicyMap` (a saved `model.quantize("int8")`) names the Dense layers whose policy differs.
        self.policies = dtype if isinstance(dtype, keras.dtype_policies.DTypePolicyMap) else None
        self.dtype = self.policies.default_policy if self.policies is not None else dtype
        self.graph_points = GraphPoints()

    def dense(self, units, name, activation=None):
        dtype = self.policies[name] if self.policies is not None else self.dtype
        return Dense(units, activation=activation, name=name, dtype=dtype, **_weight_init())

    def norm(self, name):
        return make_norm(self.norm_kind, self.norm_eps, name, self.dtype)

    def conv(self, filters, kernel, stride, name, dilation=1, padding="valid"):
        return Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            dilation_rate=dilation,
            data_format=formats.INTERNAL,
            name=name,
            dtype=self.dtype,
            **_weight_init(),
        )

    def gelu(self, name):
        return GELU(name=name, dtype=self.dtype)

    def stem(self, x, stem_type, dim):
        if stem_type == "patch":
            x = self.conv(dim, 4, 4, "stem_0")(x)
            return self.norm("stem_1")(x)
        if stem_type not in ("overlap", "overlap_tiered", "overlap_act"):
            raise ValueError(
                "`stem_type` must be one of ('patch', 'overlap', 'overlap_tiered', 'overlap_act'). "
                f"Received: stem_type={stem_type!r}"
            )
        mid = _make_divisible(dim // 2) if stem_type == "overlap_tiered" else dim
        # PyTorch pads 1 on every side; Keras "same" would pad stride-2 convs asymmetrically.
        x = keras.layers.ZeroPadding2D(1, data_format=formats.INTERNAL, name="stem_0_pad", dtype=self.dtype)(x)
        x = self.conv(mid, 3, 2, "stem_0")(x)
        index = 1
        if stem_type == "overlap_act":
            x = self.gelu("stem_1")(x)
            index = 2
        x = keras.layers.ZeroPadding2D(1, data_format=formats.INTERNAL, name=f"stem_{index}_pad", dtype=self.dtype)(x)
        x = self.conv(dim, 3, 2, f"stem_{index}")(x)
        return self.norm(f"stem_{index + 1}")(x)

    def stages(
        self,
        inputs,
        depths,
        dims,
        stem_type,
        kernel_size,
        use_grn,
        layer_scale_init_value,
        drop_path_rate,
        output_stride=32,
    ):
        """The stem and the four stages on channels-last `inputs`: the last feature map of each stage
        (strides 4 ... 32, or dilated from `output_stride` on: see `output_stride.stage_plans`)."""
        points = self.graph_points
        x = points.stem = self.stem(inputs, stem_type, dims[0])
        rates = iter(drop_path_rates(depths, drop_path_rate))
        stage_outputs = []
        for i, (depth, dim, plan) in enumerate(zip(depths, dims, stage_plans(output_stride))):
            if i > 0:
                x = self.downsample(x, i, dim, plan)
            points.blocks.append([])
            for j in range(depth):
                block_input = x
                x = self.block(
                    x,
                    f"stages_{i}_blocks_{j}",
                    kernel_size,
                    use_grn,
                    layer_scale_init_value,
                    next(rates),
                    plan.dilation,
                )
                points.blocks[-1].append((block_input, x))
            stage_outputs.append(x)
        points.stages = list(stage_outputs)
        return stage_outputs

    def downsample(self, x, stage, dim, plan):
        x = self.norm(f"stages_{stage}_downsample_0")(x)
        # timm pads a dilated stage's 2x2 conv "same" (0 before, 1 after at dilation 1; 1 and 1 at
        # dilation 2), as Keras' "same" does, so that the map keeps its size.
        padding = "same" if plan.dilation > 1 else "valid"
        return self.conv(dim, 2, plan.stride, f"stages_{stage}_downsample_1", plan.first_dilation, padding)(x)

    def block(self, x, prefix, kernel_size, use_grn, layer_scale_init_value, drop_path, dilation=1):
        dim = x.shape[-1]
        shortcut = x
        x = DepthwiseConv2D(
            kernel_size,
            padding="same",
            dilation_rate=dilation,
            data_format=formats.INTERNAL,
            name=f"{prefix}_conv_dw",
            dtype=self.dtype,
            depthwise_initializer=kernel_initializer(),
        )(x)
        x = self.norm(f"{prefix}_norm")(x)
        # timm's mlp.act (GELU, no weights) is fc1's activation: one Keras layer fewer per block.
        x = self.dense(4 * dim, f"{prefix}_mlp_fc1", activation="gelu")(x)
        if use_grn:
            x = GlobalResponseNorm(name=f"{prefix}_mlp_grn", dtype=self.dtype)(x)
        x = self.dense(dim, f"{prefix}_mlp_fc2")(x)
        if layer_scale_init_value is not None:
            x = LayerScale(layer_scale_init_value, name=f"{prefix}_gamma", dtype=self.dtype)(x)
        if drop_path > 0:
            x = StochasticDepth(drop_path, name=f"{prefix}_drop_path", dtype=self.dtype)(x)
        return keras.layers.Add(name=f"{prefix}_add", dtype=self.dtype)([shortcut, x])

    def pool(self, x, kind="avg"):
        layer = keras.layers.GlobalAveragePooling2D if kind == "avg" else keras.layers.GlobalMaxPooling2D
        return layer(data_format=formats.INTERNAL, name="head_global_pool", dtype=self.dtype)(x)

    def head(self, x, head_norm_first, head_hidden_size, dropout_rate, num_classes, activation, pooling="avg"):
        if head_norm_first:
            x = self.graph_points.norm_pre = self.norm("norm_pre")(x)
            x = self.pool(x, pooling)
        else:
            x = self.pool(x, pooling)
            x = self.norm("head_norm")(x)
            if head_hidden_size:
                x = self.dense(head_hidden_size, "head_pre_logits_fc", activation="gelu")(x)
        if num_classes == 0:
            return x
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="head_drop", dtype=self.dtype)(x)
        x = self.dense(num_classes, "head_fc")(x)
        if activation is not None:
            x = keras.layers.Activation(activation, name="predictions", dtype=self.dtype)(x)
        return x

    def backbone_output(self, x, head_norm_first, pooling):
        if head_norm_first:
            x = self.graph_points.norm_pre = self.norm("norm_pre")(x)
        return self.pool(x, pooling) if pooling else x
