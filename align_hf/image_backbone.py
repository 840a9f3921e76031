"""The image tower's backbone: a timm EfficientNet set up the way ALIGN's checkpoints expect it
(padding mode, BatchNorm settings, no head conv)."""

from __future__ import annotations

import re

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .configuration_align import AlignVisionConfig
from .fast_blocks import accelerate_backbone


class KerasPadConv2d(nn.Conv2d):
    """A 'valid' convolution after a fixed zero padding ``(left, right, top, bottom)``.

    Keras' ``correct_pad`` pads stride-2 convolutions by ``(k//2 - 1, k//2)`` whatever the input
    size, which differs from TF 'SAME' on odd sizes (289 px). Keeping it a ``Conv2d`` subclass
    leaves the state-dict keys of the timm module it replaces unchanged.
    """

    def __init__(self, *args, fixed_padding: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_padding = tuple(int(p) for p in fixed_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.fixed_padding))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fixed_padding={self.fixed_padding}"


def _keras_padded(conv: nn.Conv2d, symmetric: bool) -> KerasPadConv2d:
    kh, kw = conv.kernel_size
    if symmetric:
        pad = (kw // 2, kw // 2, kh // 2, kh // 2)
    else:
        pad = (kw // 2 - 1, kw // 2, kh // 2 - 1, kh // 2)
    new = KerasPadConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=0,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        fixed_padding=pad,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    new.load_state_dict(conv.state_dict())
    return new


def _apply_keras_padding(backbone: nn.Module, symmetric_blocks: set[int]) -> None:
    """Swap every stride-2 conv of the stem and the blocks for a :class:`KerasPadConv2d`."""
    if isinstance(getattr(backbone, "conv_stem", None), nn.Conv2d) and backbone.conv_stem.stride != (1, 1):
        backbone.conv_stem = _keras_padded(backbone.conv_stem, symmetric=False)
    flat_index = 0
    for stage in backbone.blocks:
        for block in stage:
            for name, child in list(block.named_children()):
                if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                    setattr(block, name, _keras_padded(child, symmetric=flat_index in symmetric_blocks))
            flat_index += 1


# timm's B0 entry points fix the width/depth scaling; these timm_kwargs rescale them to any
# (width, depth), transformers' width_coefficient/depth_coefficient (see _create_timm_model).
SCALE_KWARGS = ("channel_multiplier", "depth_multiplier")
_SCALABLE = re.compile(r"(tf_)?efficientnet_b0")


def _create_timm_model(model_name: str, **kwargs) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)``, plus EfficientNet-B0 scaled by the
    ``channel_multiplier``/``depth_multiplier`` kwargs.

    timm's ``tf_efficientnet_b0`` entry point passes its own multipliers (1.0, 1.0) to timm's
    EfficientNet generator, so they cannot come through ``create_model``; the generator the named
    variants B0-B8/L2 call is called directly instead, with the entry point's TF defaults, so
    ``channel_multiplier=2.0, depth_multiplier=3.1`` builds exactly ``tf_efficientnet_b7``.
    """
    scale = {key: float(kwargs.pop(key)) for key in SCALE_KWARGS if key in kwargs}
    if not scale:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if not _SCALABLE.fullmatch(model_name):
        raise ValueError(
            f"timm_kwargs {sorted(scale)} scale EfficientNet-B0 only (model_name 'tf_efficientnet_b0' or "
            f"'efficientnet_b0'), got {model_name!r}"
        )
    from timm.models import efficientnet

    generator = getattr(efficientnet, "_gen_efficientnet", None)
    if generator is None:  # pragma: no cover - guards a timm refactor
        raise ValueError(f"this timm ({timm.__version__}) has no EfficientNet generator for scaled B0 towers")
    if model_name.startswith("tf_"):
        kwargs.setdefault("bn_eps", efficientnet.BN_EPS_TF_DEFAULT)
        kwargs.setdefault("pad_type", "same")
    return generator(model_name, pretrained=False, **scale, **kwargs)


def build_image_backbone(config: AlignVisionConfig) -> tuple[nn.Module, int]:
    """Create the timm backbone for ``config``; returns it with its pooled feature width."""
    timm_pad = {"keras": "", "same": "same", "symmetric": ""}[config.padding]
    kwargs = dict(config.timm_kwargs)
    kwargs.setdefault("pad_type", timm_pad)
    if config.drop_path_rate:
        kwargs.setdefault("drop_path_rate", config.drop_path_rate)
    kwargs.update(num_classes=0, global_pool="", in_chans=config.num_channels)
    try:
        backbone = _create_timm_model(config.model_name, **kwargs)
    except TypeError:
        # Not every timm family takes pad_type; only "keras" mode needs our own padding anyway.
        kwargs.pop("pad_type", None)
        backbone = _create_timm_model(config.model_name, **kwargs)
    if config.padding == "keras":
        if not hasattr(backbone, "blocks"):
            raise ValueError(f"padding='keras' needs an EfficientNet-style timm model, got {config.model_name!r}")
        _apply_keras_padding(backbone, set(config.symmetric_padding_blocks))
    if not config.keep_head and hasattr(backbone, "conv_head"):
        # ALIGN pools the last block directly: the 1x1 head conv and its BN are not used.
        backbone.conv_head = nn.Identity()
        backbone.bn2 = nn.Identity()
        width = backbone.feature_info[-1]["num_chs"]
    else:
        width = backbone.num_features
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = config.batch_norm_eps
            module.momentum = config.batch_norm_momentum
    accelerate_backbone(backbone)
    return backbone, width
