"""`data_format`: channels-first inputs and outputs around a channels-last model.

The model computes in channels-last (NHWC) whatever the data format: a
channels-first model transposes its input to NHWC once and its feature maps
back to NCHW at the outputs. Keeping one internal layout is what keeps the
weights identical in both formats (a Dense on the channel axis, LayerNorm over
the last axis, `(kh, kw, in, out)` kernels), so one weights file loads in
either; it also keeps TensorFlow's CPU, which has no channels-first
convolution kernels, able to run a channels-first model. The two transposes
cost one copy of the input and of each returned map.
"""

import keras

from .layers import Transpose

DATA_FORMATS = ("channels_last", "channels_first")
# The layout every layer of the model computes in, whatever `data_format` says.
INTERNAL = "channels_last"


def resolve(data_format):
    """`data_format`, or Keras' global `image_data_format()` when None; ValueError for anything else."""
    if data_format is None:
        data_format = keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(f"`data_format` must be one of {DATA_FORMATS}. Received: data_format={data_format!r}")
    return data_format


def default_image_shape(data_format):
    """Any height and width, 3 channels, in `data_format`'s order."""
    return (3, None, None) if data_format == "channels_first" else (None, None, 3)


def channels_last_shape(image_shape, data_format):
    """`image_shape` given in `data_format`, as (height, width, channels)."""
    image_shape = tuple(image_shape)
    if data_format == "channels_first" and len(image_shape) == 3:
        return image_shape[1:] + image_shape[:1]
    return image_shape


def to_channels_last(x, data_format, dtype=None):
    """The model's input as NHWC: a transpose layer for channels-first, else `x` itself."""
    if data_format != "channels_first":
        return x
    return Transpose((2, 3, 1), name="images_to_channels_last", dtype=dtype)(x)


def to_data_format(x, data_format, name, dtype=None):
    """An NHWC feature map `x` in `data_format`: a transpose layer named `name` for channels-first."""
    if data_format != "channels_first":
        return x
    return Transpose((3, 1, 2), name=name, dtype=dtype)(x)
