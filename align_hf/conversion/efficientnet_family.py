"""The EfficientNet family as its reference code defines it: B0's stages, each variant's
(width, depth) scaling and the channel rounding.

Shared by the TensorFlow converters (which infer the variant from a checkpoint's blocks) and the
transformers-format translation (whose config spells the stages out). The named variants are
timm's ``tf_efficientnet_<variant>`` models; any other (width, depth) is ``tf_efficientnet_b0``
rescaled through ``timm_kwargs`` (``channel_multiplier``, ``depth_multiplier``), which
``align_hf.image_backbone`` builds with the same rounding as :func:`variant_blocks`.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Stage(NamedTuple):
    """One stage of EfficientNet-B0 (before width/depth scaling)."""

    kernel: int
    repeats: int
    in_channels: int
    out_channels: int
    expand_ratio: int
    stride: int


B0_STAGES: tuple[Stage, ...] = (
    Stage(3, 1, 32, 16, 1, 1),
    Stage(3, 2, 16, 24, 6, 2),
    Stage(5, 2, 24, 40, 6, 2),
    Stage(3, 3, 40, 80, 6, 2),
    Stage(5, 3, 80, 112, 6, 1),
    Stage(5, 4, 112, 192, 6, 2),
    Stage(3, 1, 192, 320, 6, 1),
)

# (width_coefficient, depth_coefficient) of every variant, as in the TF reference code.
EFFICIENTNET_SCALES: dict[str, tuple[float, float]] = {
    "b0": (1.0, 1.0),
    "b1": (1.0, 1.1),
    "b2": (1.1, 1.2),
    "b3": (1.2, 1.4),
    "b4": (1.4, 1.8),
    "b5": (1.6, 2.2),
    "b6": (1.8, 2.6),
    "b7": (2.0, 3.1),
    "b8": (2.2, 3.6),
    "l2": (4.3, 5.3),
}


class Block(NamedTuple):
    """One block of a scaled variant, in flat order."""

    stage: int
    index: int  # position within its stage
    kernel: int
    mid_channels: int  # channels of the depthwise conv
    out_channels: int
    expanded: bool  # has a 1x1 expansion conv (InvertedResidual) or not (DepthwiseSeparableConv)


def round_filters(channels: float, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: ``channels * width`` to a multiple of ``divisor``, at most 10% down."""
    channels *= width
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new < 0.9 * channels:
        new += divisor
    return int(new)


def variant_blocks(width: float, depth: float) -> list[Block]:
    """Every block of the variant scaled by ``width`` and ``depth``, in flat order."""
    blocks = []
    for stage, spec in enumerate(B0_STAGES):
        c_in, c_out = round_filters(spec.in_channels, width), round_filters(spec.out_channels, width)
        for index in range(int(math.ceil(depth * spec.repeats))):
            block_in = c_in if index == 0 else c_out
            blocks.append(Block(stage, index, spec.kernel, block_in * spec.expand_ratio, c_out, spec.expand_ratio != 1))
    return blocks
