"""Evaluation preprocessing that reproduces timm's eval transform without torch.

timm's eval pipeline (`timm.data.transforms_imagenet_eval`) on a PIL image:
resize with PIL (`crop_mode` decides the size), center crop (padding with
zeros, or with the mean colour in "border" mode, when the image is smaller than
the crop), `ToTensor` (divide by 255) and `Normalize(mean, std)`.  The
functions here do the same steps with PIL and numpy and return channels-last
float32 arrays; `Preprocessor.keras_layer` builds a Keras pipeline for
batches of same-size images that works in a model and in `tf.data`.
"""

import math

import numpy as np
from PIL import Image

from . import keras_compat

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
CROP_MODES = ("center", "squash", "border")

_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
# PIL's lanczos is the 3-lobe kernel; PIL's box and hamming have no Keras twin.
_KERAS_INTERPOLATION = {
    "nearest": "nearest",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "lanczos": "lanczos3",
}


def eval_transform_params(cfg, input_size=None, crop_pct=None):
    """Resolve timm's eval-transform settings from a pretrained cfg dict.

    Defaults and precedence follow `timm.data.resolve_data_config`;
    `input_size` (int, (H, W) or (C, H, W)) and `crop_pct` override the
    cfg. `resize_size` is timm's `scale_size`: floor(crop / crop_pct).
    `cfg=None` (a model built without a checkpoint) gives timm's defaults.
    """
    cfg = cfg or {}
    crop_size = _size_hw(input_size or cfg.get("input_size") or 224)
    crop_pct = crop_pct or cfg.get("crop_pct") or DEFAULT_CROP_PCT
    crop_mode = cfg.get("crop_mode") or "center"
    interpolation = cfg.get("interpolation") or "bicubic"
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
    if interpolation not in _PIL_RESAMPLE:
        raise ValueError(f"Unsupported interpolation {interpolation!r}")
    return {
        "crop_size": crop_size,
        "resize_size": tuple(math.floor(s / crop_pct) for s in crop_size),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "interpolation": interpolation,
        "mean": tuple(cfg.get("mean") or IMAGENET_DEFAULT_MEAN),
        "std": tuple(cfg.get("std") or IMAGENET_DEFAULT_STD),
    }


def resized_shape(params, height, width):
    """(H, W) timm resizes a `height` x `width` image to before cropping."""
    target_h, target_w = params["resize_size"]
    if params["crop_mode"] == "squash":
        return target_h, target_w
    if params["crop_mode"] == "center" and target_h == target_w:
        return _shorter_side_shape(height, width, target_h)
    # timm's ResizeKeepRatio: longest=1 in "border" mode, 0 in "center" mode.
    ratios = (height / target_h, width / target_w)
    ratio = max(ratios) if params["crop_mode"] == "border" else min(ratios)
    return round(height / ratio), round(width / ratio)


def preprocess_image(image, cfg, input_size=None):
    """One image (PIL, or HWC/HW array 0..255) to a (H, W, 3) float32 array."""
    return _preprocess(image, eval_transform_params(cfg, input_size))


def preprocess_batch(images, cfg, input_size=None):
    """A sequence of images (or an NHWC array) to an (N, H, W, 3) float32 array."""
    return _preprocess_batch(images, eval_transform_params(cfg, input_size))


def preprocess_input(x, cfg=None):
    """Scale 0..255 inputs already at model size to 0..1 and normalize.

    numpy arrays stay numpy; anything else goes through `keras.ops`.
    Channels-last; mean/std come from `cfg` (ImageNet's by default).
    """
    cfg = cfg or {}
    mean = np.asarray(cfg.get("mean") or IMAGENET_DEFAULT_MEAN, np.float32)
    std = np.asarray(cfg.get("std") or IMAGENET_DEFAULT_STD, np.float32)
    if isinstance(x, np.ndarray):
        return _normalize(x, mean, std)
    import keras

    x = keras.ops.divide(keras.ops.cast(x, "float32"), 255.0)
    return keras.ops.divide(keras.ops.subtract(x, mean), std)


class Preprocessor:
    """timm's eval transform for one checkpoint cfg, as a callable."""

    def __init__(self, cfg, input_size=None, crop_pct=None):
        self.params = eval_transform_params(cfg, input_size, crop_pct)

    def __call__(self, image_or_batch):
        """An image gives (H, W, 3); a list/tuple or NHWC array gives (N, H, W, 3)."""
        batch = isinstance(image_or_batch, (list, tuple)) or (
            isinstance(image_or_batch, np.ndarray) and image_or_batch.ndim == 4
        )
        if batch:
            return _preprocess_batch(image_or_batch, self.params)
        return _preprocess(image_or_batch, self.params)

    def keras_layer(self, image_size):
        """Keras pipeline for batches of decoded `image_size` (H, W) images.

        Maps (N, H, W, 3) or (H, W, 3) tensors in 0..255 (any dtype) to model
        inputs, in a model or in `tf.data.Dataset.map` on any backend. The
        resize and crop geometry are timm's exactly; the resampling is Keras'
        antialiased resize instead of PIL's 8-bit one, so values differ
        slightly (see tests/test_preprocessing.py for measured bounds).
        The crop is the registered `FixedCrop` layer: to load a saved model
        holding it in a new process, touch `preprocessing.FixedCrop` first.
        """
        import keras

        interpolation = _KERAS_INTERPOLATION.get(self.params["interpolation"])
        if interpolation is None:
            raise ValueError(f"No Keras resize matches {self.params['interpolation']!r}; use preprocess_image instead.")
        resize_h, resize_w = resized_shape(self.params, *image_size[:2])
        crop_h, crop_w = self.params["crop_size"]
        if resize_h < crop_h or resize_w < crop_w:
            raise ValueError(
                "This geometry pads the resized image, which the Keras layer does not do; use preprocess_image instead."
            )
        mean = np.asarray(self.params["mean"], np.float32)
        std = np.asarray(self.params["std"], np.float32)
        return keras.layers.Pipeline(
            [
                keras.layers.Resizing(resize_h, resize_w, interpolation=interpolation, antialias=True),
                _fixed_crop_class()(
                    _crop_offset(resize_h, crop_h),
                    _crop_offset(resize_w, crop_w),
                    crop_h,
                    crop_w,
                ),
                # (x / 255 - mean) / std in one step; Normalization would build
                # its constants inside the Pipeline's trace and leak them.
                keras.layers.Rescaling(scale=1.0 / (255.0 * std), offset=-mean / std),
            ],
            name="timm_eval_preprocessing",
        )


def _size_hw(size):
    """An int, (H, W) or (C, H, W) size as an (H, W) tuple of ints."""
    if np.ndim(size) == 0:
        return int(size), int(size)
    return tuple(int(s) for s in size[-2:])


def _shorter_side_shape(height, width, size):
    """torchvision `Resize(int)`: shorter side to `size`, longer truncated."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _crop_offset(length, crop):
    """torchvision's center-crop offset (Python's round half to even)."""
    return int(round((length - crop) / 2.0))


def _preprocess_batch(images, params):
    """`_preprocess` over a sequence of images, stacked."""
    return np.stack([_preprocess(image, params) for image in images])


def _preprocess(image, params):
    """timm's eval transform of one image with resolved `params`."""
    planes = _to_pil_planes(image)
    width, height = planes[0].size
    size_hw = resized_shape(params, height, width)
    resample = _PIL_RESAMPLE[params["interpolation"]]
    x = np.dstack([np.asarray(p.resize(size_hw[::-1], resample)) for p in planes])
    x = _center_crop_or_pad(x, params["crop_size"], _pad_fill(params))
    mean, std = (np.asarray(params[k], np.float32) for k in ("mean", "std"))
    return _normalize(x, mean, std)


def _to_pil_planes(image):
    """An RGB PIL image for PIL/uint8 input, else three float 'F' PIL planes.

    Like timm's datasets, non-RGB PIL images go through `.convert("RGB")`
    (grey is replicated, alpha dropped). Float arrays are resampled per
    channel in PIL's 32-bit float mode, so they are not rounded to 8 bits.
    """
    if isinstance(image, Image.Image):
        return [image.convert("RGB")]
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.dtype == np.uint8:
        return [Image.fromarray(x).convert("RGB")]
    x = x.astype(np.float32)
    channels = [x] * 3 if x.ndim == 2 else [x[..., c] for c in range(3)]
    return [Image.fromarray(np.ascontiguousarray(c)) for c in channels]


def _pad_fill(params):
    """Pad colour (0..255): the mean colour in "border" mode, else black."""
    if params["crop_mode"] == "border":
        return [round(255 * v) for v in params["mean"]]
    return 0


def _center_crop_or_pad(x, crop_size, fill):
    """torchvision/timm center crop of an HWC array, padding first if needed."""
    crop_h, crop_w = crop_size
    height, width = x.shape[:2]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        padded = np.empty((height + pad_h, width + pad_w, x.shape[2]), x.dtype)
        padded[...] = fill
        padded[pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width] = x
        x, height, width = padded, height + pad_h, width + pad_w
    top, left = _crop_offset(height, crop_h), _crop_offset(width, crop_w)
    return x[top : top + crop_h, left : left + crop_w]


def _normalize(x, mean, std):
    """ToTensor + Normalize in float32, in the same order as torchvision."""
    x = np.asarray(x).astype(np.float32) / np.float32(255)
    return (x - mean) / std


def __getattr__(name):
    """Module attribute hook: `FixedCrop` is defined on first access."""
    if name == "FixedCrop":
        return _fixed_crop_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fixed_crop_class():
    """Define (once) and register the `FixedCrop` layer; keras loads lazily."""
    global FixedCrop
    if "FixedCrop" not in globals():
        FixedCrop = _define_fixed_crop()
    return FixedCrop


def _define_fixed_crop():
    import keras

    @keras.saving.register_keras_serializable(package="convnext_hub")
    class FixedCrop(keras.layers.Layer):
        """Crops a fixed (top, left, height, width) window from HWC/NHWC images.

        `keras.layers.CenterCrop` floors the offset where torchvision rounds
        half to even. Plain slicing, with input conversion switched off, also
        runs on `tf.data` tensors whatever the Keras backend.
        """

        def __init__(self, top, left, height, width, **kwargs):
            super().__init__(**kwargs)
            self.top, self.left, self.height, self.width = top, left, height, width
            keras_compat.accept_any_input(self)

        def call(self, inputs):
            rows = slice(self.top, self.top + self.height)
            cols = slice(self.left, self.left + self.width)
            return inputs[..., rows, cols, :]

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-3], self.height, self.width, input_shape[-1])

        def get_config(self):
            return {
                **super().get_config(),
                "top": self.top,
                "left": self.left,
                "height": self.height,
                "width": self.width,
            }

    return FixedCrop
