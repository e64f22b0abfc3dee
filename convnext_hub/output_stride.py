"""`output_stride`: the later stages dilated instead of strided, as timm's ConvNeXt does it.

A stage whose downsample would take the feature map below `1 / output_stride`
of the input keeps its resolution: its downsample conv gets stride 1 and its
depthwise convs get a dilation that grows by the stride given up, so each
kernel still covers the same part of the image (what DeepLab-style
segmentation heads need). The weights keep their shapes, so a checkpoint
trained at stride 32 loads unchanged at 16 or 8.
"""

import collections

import numpy as np

OUTPUT_STRIDES = (8, 16, 32)
STEM_STRIDE = 4

StagePlan = collections.namedtuple("StagePlan", "stride first_dilation dilation reduction")
StagePlan.__doc__ = """One stage's geometry.

Attributes:
    stride: stride of the stage's downsample conv (1 or 2; stage 0 has no downsample).
    first_dilation: dilation of the downsample conv.
    dilation: dilation of every depthwise conv in the stage's blocks.
    reduction: the stage's output stride (input size / feature map size).
"""


def check_output_stride(output_stride):
    """Raises ValueError unless `output_stride` is one of `OUTPUT_STRIDES`."""
    if isinstance(output_stride, bool) or not isinstance(output_stride, (int, np.integer)):
        valid = False
    else:
        valid = int(output_stride) in OUTPUT_STRIDES
    if not valid:
        raise ValueError(f"`output_stride` must be one of {OUTPUT_STRIDES}. Received: output_stride={output_stride!r}")
    return int(output_stride)


def stage_plans(output_stride=32, num_stages=4):
    """The geometry of each stage for `output_stride`, following timm's `ConvNeXt.__init__`.

    timm starts from the stem's stride 4; each later stage halves the resolution
    until the running stride reaches `output_stride`; from then on a stage's
    stride 2 becomes dilation 2 (multiplying the dilation of the stages after
    it). The downsample conv of a dilated stage uses the previous stage's
    dilation (1 stays 1, 2 for dilation 4 and up), which is timm's `first_dilation`.

    Returns:
        A list of `StagePlan`, one per stage.
    """
    output_stride = check_output_stride(output_stride)
    plans = []
    current, dilation = STEM_STRIDE, 1
    for i in range(num_stages):
        stride = 2 if i > 0 else 1
        if current >= output_stride and stride > 1:
            dilation *= stride
            stride = 1
        current *= stride
        first_dilation = 1 if dilation in (1, 2) else 2
        plans.append(StagePlan(stride, first_dilation, dilation, current))
    return plans
