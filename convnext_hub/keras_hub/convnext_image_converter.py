"""`ConvNeXtImageConverter`: keras-hub's image converter with timm's eval resize and crop."""

import keras
import numpy as np
from keras_hub.layers import ImageConverter

from ..preprocessing import CROP_MODES, Preprocessor, eval_transform_params
from .convnext_backbone import ConvNeXtBackbone

# Keras' resize names -> the PIL names timm's configs (and `Preprocessor`) use.
_TIMM_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "lanczos3": "lanczos"}


def _per_channel(argument, value, default):
    """`value` (None, a float or 3 floats) as 3 float64 values."""
    values = np.broadcast_to(np.asarray(default if value is None else value, np.float64), (3,))
    if argument == "scale" and not np.all(values != 0):
        raise ValueError(f"`scale` must be non-zero. Received: scale={value!r}")
    return values


@keras.saving.register_keras_serializable(package="convnext_hub")
class ConvNeXtImageConverter(ImageConverter):
    """Raw images to ConvNeXt inputs, with timm's evaluation transform when `crop_pct` is set.

    keras-hub's `ImageConverter` resizes straight to `image_size`. timm evaluates
    a checkpoint differently: it resizes to `image_size / crop_pct` (the shorter
    side in "center" mode, both sides in "squash" mode) and center-crops
    `image_size`. With `crop_pct` set, this converter does exactly that, with the
    geometry of `convnext_hub.preprocessing.Preprocessor.keras_layer` (Keras'
    antialiased resize, torchvision's crop offsets); the values then differ from
    timm's PIL pipeline only by PIL's 8-bit rounding between its resize passes.
    With `crop_pct=None` it is keras-hub's plain converter.

    Each call's images must share one height and width known when traced (batch
    dimensions may be unknown), since the resize size depends on them.

    Args:
        image_size: (height, width) of the model input (timm's `input_size[1:]`).
        scale: per-channel (or global) scale applied to 0..255 pixels: timm's
            `1 / (255 * std)`.
        offset: per-channel (or global) offset added after `scale`: `-mean / std`.
        crop_pct: timm's center-crop fraction, or None for a plain resize.
        crop_mode: "center" (shorter side to `image_size / crop_pct`) or "squash"
            (both sides); timm's "border" mode pads, which Keras' layers do not.
        interpolation: "bicubic", "bilinear", "nearest" or "lanczos3".
        antialias: antialiased resize (as PIL's); only used with `crop_pct=None`,
            the timm transform always antialiases.
        **kwargs: other `keras_hub.layers.ImageConverter` arguments.
    """

    backbone_cls = ConvNeXtBackbone

    def __init__(
        self,
        image_size=None,
        scale=None,
        offset=None,
        crop_pct=None,
        crop_mode="center",
        interpolation="bicubic",
        antialias=True,
        **kwargs,
    ):
        if crop_pct is not None:
            if image_size is None:
                raise ValueError(f"`crop_pct` needs an `image_size`. Received: crop_pct={crop_pct!r}, image_size=None")
            if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or crop_pct <= 0:
                raise ValueError(f"`crop_pct` must be a number > 0 or None. Received: crop_pct={crop_pct!r}")
        if crop_mode not in CROP_MODES[:2]:
            raise ValueError(f"`crop_mode` must be one of {CROP_MODES[:2]}. Received: crop_mode={crop_mode!r}")
        if interpolation not in _TIMM_INTERPOLATION:
            raise ValueError(
                f"`interpolation` must be one of {tuple(_TIMM_INTERPOLATION)}. "
                f"Received: interpolation={interpolation!r}"
            )
        _per_channel("scale", scale, 1.0)
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            antialias=antialias,
            **kwargs,
        )
        self.crop_pct = crop_pct
        self.crop_mode = crop_mode

    @classmethod
    def from_pretrained_cfg(cls, cfg, input_size=None, **kwargs):
        """The converter of a timm `pretrained_cfg` (mean, std, input size, crop, interpolation).

        Missing fields take timm's defaults (`timm.data.resolve_data_config`);
        `input_size` (int, (H, W) or (C, H, W)) overrides the cfg's.
        """
        params = eval_transform_params(cfg or {}, input_size)
        std, mean = np.asarray(params["std"]), np.asarray(params["mean"])
        keras_names = {timm: name for name, timm in _TIMM_INTERPOLATION.items()}
        return cls(
            image_size=params["crop_size"],
            scale=(1.0 / (255.0 * std)).tolist(),
            offset=(-mean / std).tolist(),
            crop_pct=params["crop_pct"],
            crop_mode=params["crop_mode"],
            interpolation=keras_names.get(params["interpolation"], params["interpolation"]),
            **kwargs,
        )

    def eval_transform(self, image_hw):
        """timm's transform for `image_hw` (height, width) images, as a Keras layer (0..255 in)."""
        scale = _per_channel("scale", self.scale, 1.0)
        offset = _per_channel("offset", self.offset, 0.0)
        std = 1.0 / (255.0 * scale)  # x * scale + offset == (x / 255 - mean) / std
        cfg = {
            "input_size": list(self.image_size),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "interpolation": _TIMM_INTERPOLATION[self.interpolation],
            "mean": (-offset * std).tolist(),
            "std": std.tolist(),
        }
        # Resized as float32 whatever the input dtype: Keras rounds integer images after
        # resizing eagerly but not in `tf.data`, where its layers cast them to float first.
        return keras.layers.Pipeline([keras.layers.Rescaling(1.0), Preprocessor(cfg).keras_layer(image_hw)])

    def call(self, inputs):
        if self.crop_pct is None:
            return super().call(inputs)
        if isinstance(inputs, dict):
            raise ValueError("Bounding boxes are not supported with `crop_pct`; set crop_pct=None to resize them.")
        if isinstance(inputs, (list, tuple)):
            inputs = np.stack([np.asarray(image) for image in inputs])
        shape = tuple(inputs.shape)
        if len(shape) not in (3, 4) or shape[-3] is None or shape[-2] is None:
            raise ValueError(
                "timm's transform needs images of a known height and width, (H, W, C) or (N, H, W, C). "
                f"Received: inputs of shape {shape}"
            )
        return self.eval_transform((int(shape[-3]), int(shape[-2])))(inputs)

    def get_config(self):
        config = super().get_config()
        config.update({"crop_pct": self.crop_pct, "crop_mode": self.crop_mode})
        return config
