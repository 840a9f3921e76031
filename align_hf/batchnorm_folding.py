"""Inference-time folding of BatchNorm into the preceding convolution.

In eval mode a BatchNorm is a per-channel affine map, so it can be merged into the convolution
before it: EfficientNet then runs one pass less over every feature map per conv.
"""

from __future__ import annotations

import torch
from torch import nn


def folded_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(O, I, kh, kw)`` and bias ``(O,)`` of ``conv`` followed by eval-mode ``bn``.

    Computed in fp32 and cast back to the convolution's dtype: in bf16 or fp16 the rounding of the
    per-channel scale would otherwise land on every weight. Shared by :func:`fold_batchnorm` and
    the fast path's on-the-fly folding so that both give the same weights.
    """
    weight = conv.weight
    scale = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -bn.running_mean.float() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.float()
    if conv.bias is not None:
        shift = shift + conv.bias.float() * scale
    return (weight.float() * scale.reshape(-1, 1, 1, 1)).to(weight.dtype), shift.to(weight.dtype)


def _fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    weight, bias = folded_conv_bn(conv, bn)
    conv.weight.copy_(weight)
    conv.bias = nn.Parameter(bias)


def _activation_of(bn: nn.Module) -> nn.Module:
    # timm's BatchNormAct2d carries its activation (and a dropout that is a no-op in eval).
    return getattr(bn, "act", None) or nn.Identity()


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair of sibling modules in place; returns how many.

    A pair is a BatchNorm registered right after a convolution with as many channels, which is how
    timm's EfficientNet blocks are laid out. Only valid for inference: the folded module must not
    be trained or saved as a checkpoint of the original architecture.
    """
    folded = 0
    for parent in module.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                and bn.track_running_stats
                and bn.affine
                and bn.num_features == conv.out_channels
            ):
                _fold(conv, bn)
                setattr(parent, bn_name, _activation_of(bn))
                folded += 1
    return folded


def inference_model(model: nn.Module, channels_last: bool = True, copy: bool = True) -> nn.Module:
    """``AlignModel.for_inference``: a copy of ``model`` (or ``model`` itself with ``copy=False``)
    with the image tower's BatchNorm folded into the convolutions, both towers' fast paths on, channels-last
    (unless ``channels_last=False``) and in eval mode. Same outputs to float rounding; the result
    cannot be trained or saved."""
    import copy as copying

    model = (copying.deepcopy(model) if copy else model).eval()
    fold_batchnorm(model.vision_model.backbone)
    model.vision_model.set_fast_path(True)
    if hasattr(model.text_model, "set_fast_path"):
        model.text_model.set_fast_path(True)
    model.vision_model.channels_last = channels_last
    if channels_last:
        model.vision_model.to(memory_format=torch.channels_last)
    model._inference_only = True
    return model
