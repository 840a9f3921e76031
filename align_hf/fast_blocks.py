"""The image tower's fast path: faster forwards for timm's EfficientNet blocks with the same
modules, weights and state-dict keys, and the same results to float rounding.

It is off by default, so a model repeats transformers' AlignModel op for op (bitwise equal
features); ``AlignModel.set_fast_path()``, ``for_inference()`` and the package's embedding
functions turn it on. Where the time goes on CPU (eager PyTorch, fp32) and what it does:

- Always (exact): an in-place SiLU after BatchNorm makes autograd keep a copy of its input, so
  SiLU runs out of place (same values, one full-size copy less per activation in training).
- Training: oneDNN runs EfficientNet's convolutions, depthwise ones above all, several times
  faster on channels-last activations (the tower converts its input, see
  :class:`~align_hf.modeling_align.AlignVisionModel`); a symmetric Keras padding is done by the
  convolution instead of a padded copy.
- Inference (BatchNorm in eval mode): BatchNorm is folded into the convolution before it on the
  fly (cached while the weights and statistics are unchanged, and only when no gradient is
  needed), and on CPU the convolution, its activation and the residual add run as one oneDNN
  call (``torch.ops.mkldnn._convolution_pointwise``).

:func:`accelerate_backbone` switches a timm EfficientNet to these forwards in place; blocks of a
kind it does not know keep timm's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm_folding import folded_conv_bn

try:  # timm's block classes; the module moved between timm versions
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
    from timm.models.efficientnet import EfficientNet
except ImportError:  # pragma: no cover - guards a timm refactor
    DepthwiseSeparableConv = InvertedResidual = EfficientNet = SqueezeExcite = None

_BatchNorm = nn.modules.batchnorm._BatchNorm

# oneDNN post-op names of the activations that can ride along with a convolution.
_UNARY = {nn.Identity: "none", nn.SiLU: "swish", nn.ReLU: "relu"}


def _act_of(norm: nn.Module) -> nn.Module:
    """The activation a (timm) norm layer applies after normalising, or the module itself when
    BatchNorm was folded away and only the activation is left."""
    if isinstance(norm, _BatchNorm):
        return getattr(norm, "act", None) or nn.Identity()
    return norm


def _unary_name(act: nn.Module) -> str | None:
    return _UNARY.get(type(act))


def _conv_padding(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], bool] | None:
    """``(input, symmetric padding, shift)`` to run ``conv`` with ``F.conv2d``, or None for
    convolutions of another kind (timm's dynamic 'same' padding, non-zero padding modes).

    ``shift``: the kernel gets a leading zero row and column (see :func:`_shifted`). Keras pads a
    stride-2 convolution by ``(k//2 - 1, k//2)``; with symmetric padding ``k//2`` and that
    ``(k+1) x (k+1)`` kernel every window starts one row and column earlier on a zero tap, so the
    outputs are the same sums while no padded copy of ``x`` (and of its gradient) is made. Done for
    depthwise convolutions, where the extra taps cost less than the copies.
    """
    # image_backbone.KerasPadConv2d (recognised by its attribute: that module imports this one).
    fixed = getattr(conv, "fixed_padding", None)
    if isinstance(conv, nn.Conv2d) and fixed is not None and conv.padding == (0, 0):
        left, right, top, bottom = fixed
        if left == right and top == bottom:  # symmetric: the convolution pads, no copy of x
            return x, (top, left), False
        if (
            right == left + 1
            and bottom == top + 1
            and conv.groups == conv.in_channels
            and conv.dilation == (1, 1)
            and not _tracing()  # exported graphs keep the plain padded form
        ):
            return x, (bottom, right), True
        return F.pad(x, fixed), (0, 0), False
    if type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return x, tuple(conv.padding), False
    return None


def _shifted(weight: torch.Tensor) -> torch.Tensor:
    """``(O, I, k, k)`` -> ``(O, I, k+1, k+1)`` with a leading zero row and column."""
    return F.pad(weight, (1, 0, 1, 0))


def _run_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` through :func:`_conv_padding` (differentiable)."""
    prepared = _conv_padding(conv, x)
    if prepared is None:
        return conv(x)
    x, padding, shift = prepared
    weight = _shifted(conv.weight) if shift else conv.weight
    return _conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups, shifted=shift)


# Depthwise weight gradients as one depthwise forward: on CPU, oneDNN's fast depthwise kernels
# compute a channels-last weight gradient only for 3x3 kernels with padding <= 1; every other
# shape goes to a generic grouped kernel several times slower than the forward. The gradient of a
# k x k depthwise kernel is a correlation of each (image, channel) input map with its output
# gradient, i.e. the forward of a depthwise convolution over B*C channels whose "kernel" is the
# output gradient (dilated by the stride) and whose output is k x k; summed over the batch. Two
# copies into that layout cost less than the generic kernel up to 32 x 32 maps (measured on B0's
# shapes, batch 32: 1.2-5.5 ms against 4.0-7.9 ms per layer); larger maps keep oneDNN's gradient.
_DW_GRAD_MAX_POSITIONS = 32 * 32


def _slow_depthwise_grad(x: torch.Tensor, weight: torch.Tensor, padding) -> bool:
    """A depthwise gradient oneDNN leaves to its generic kernel, on a map small enough for
    :func:`depthwise_weight_grad` to win."""
    kh, kw = weight.shape[2:]
    return not (kh == kw == 3 and max(padding) <= 1) and x.shape[2] * x.shape[3] <= _DW_GRAD_MAX_POSITIONS


def _keras_3x3_stride2(x: torch.Tensor, weight: torch.Tensor, stride, padding, shifted: bool) -> bool:
    """A 3x3 stride-2 depthwise convolution with Keras' (0, 1) padding on an even map, run as the
    shifted 4x4 kernel (see :func:`_conv_padding`)."""
    return (
        shifted
        and tuple(weight.shape[2:]) == (4, 4)
        and tuple(stride) == (2, 2)
        and tuple(padding) == (1, 1)
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
    )


def _conv2d(x, weight, bias, stride, padding, dilation, groups, shifted: bool = False) -> torch.Tensor:
    """``F.conv2d``, with depthwise weight gradients by :class:`_DepthwiseConv` where that is
    faster. ``shifted``: ``weight`` is a :func:`_shifted` kernel (its first row and column are zero)."""
    if (
        weight.requires_grad
        and torch.is_grad_enabled()
        and groups == x.shape[1] == weight.shape[0]  # depthwise, one filter per channel
        and weight.shape[1] == 1
        and tuple(dilation) == (1, 1)
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")  # the forward would run in bf16, the gradients not
        and not _tracing()
    ):
        if _slow_depthwise_grad(x, weight, padding):
            return _DepthwiseConv.apply(x, weight, bias, tuple(stride), tuple(padding), False)
        if _keras_3x3_stride2(x, weight, stride, padding, shifted):
            return _DepthwiseConv.apply(x, weight, bias, tuple(stride), tuple(padding), True)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def keras_3x3_stride2_weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Weight gradient ``(C, 1, 3, 3)`` of a depthwise 3x3 stride-2 convolution with Keras' (0, 1)
    padding on an even ``(B, C, H, W)`` map (output ``(B, C, H/2, W/2)``), for large maps.

    Without the last output row and column it is a 3x3 convolution with padding 0, whose gradient
    oneDNN computes with its fast kernel; the last row and column (the only outputs that reach the
    padding) are added from thin slices by :func:`depthwise_weight_grad`.
    """
    b, c, h, w = x.shape
    ho, wo = grad_out.shape[2:]
    inner = grad_out[:, :, : ho - 1, : wo - 1].contiguous(memory_format=torch.channels_last)
    grad = torch.ops.aten.convolution_backward(
        inner, x, x.new_empty(c, 1, 3, 3), None, [2, 2], [0, 0], [1, 1], False, [0, 0], c, [False, True, False])[1]
    last_rows = F.pad(x[:, :, h - 2 :, :], (0, 1, 0, 1))  # input rows of the last output row, zero-padded
    grad += depthwise_weight_grad(last_rows, grad_out[:, :, ho - 1 :, :], (3, 3), (2, 2), (0, 0))
    last_cols = F.pad(x[:, :, : h - 1, w - 2 :], (0, 1))  # the last output column, above the last row
    grad += depthwise_weight_grad(last_cols, grad_out[:, :, : ho - 1, wo - 1 :], (3, 3), (2, 2), (0, 0))
    return grad


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: tuple[int, int], stride, padding) -> torch.Tensor:
    """Gradient ``(C, 1, kh, kw)`` of a depthwise convolution's weight, from its input ``x``
    ``(B, C, H, W)`` and output gradient ``grad_out`` ``(B, C, Ho, Wo)``, as one depthwise forward
    over ``B * C`` channels (see above)."""
    b, c, h, w = x.shape
    ho, wo = grad_out.shape[2:]
    # (B, C, H, W) -> one image of B*C channels, channels-last: memory (H, W, B, C).
    image = x.permute(2, 3, 0, 1).reshape(1, h, w, b * c).permute(0, 3, 1, 2)
    kernels = grad_out.reshape(b * c, 1, ho, wo)  # one "kernel" per (image, channel)
    out = F.conv2d(image, kernels, None, 1, padding, stride, b * c)  # the stride becomes a dilation
    kh, kw = kernel_size
    return out.view(b, c, out.shape[2], out.shape[3])[:, :, :kh, :kw].sum(0).unsqueeze(1)


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise ``F.conv2d`` whose weight gradient is :func:`depthwise_weight_grad`, or with
    ``keras_3x3`` (``weight`` a shifted 4x4 kernel) :func:`keras_3x3_stride2_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, keras_3x3):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, bias is not None, keras_3x3)
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias, keras_3x3 = ctx.conf
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if ctx.needs_input_grad[1] and keras_3x3:
            # The shifted kernel's zero first row and column are padding, not parameters.
            grad_w = _shifted(keras_3x3_stride2_weight_grad(x, grad_out))
        elif ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, weight.shape[2:], stride, padding)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def squeeze_excite(se: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``SqueezeExcite`` on ``x`` ``(B, C, H, W)``, the same sums in a faster form; other
    modules are called as they are.

    The squeeze is a sum divided by ``H * W`` rather than ``mean``: the gradient of ``mean`` comes
    back as a contiguous NCHW tensor, and adding it to the channels-last gradient of the gating
    product is a strided copy that cost as much as the rest of the block's excitation; the
    gradient of ``sum`` is a broadcast view that adds at full speed. The two 1x1 convolutions on
    a ``1 x 1`` map run as matrix products on ``(B, C)``.
    """
    if SqueezeExcite is None or type(se) is not SqueezeExcite or _tracing():
        return se(x)
    squeezed = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    reduce, expand = se.conv_reduce, se.conv_expand
    hidden = se.act1(F.linear(squeezed, reduce.weight.flatten(1), reduce.bias))
    gate = se.gate(F.linear(hidden, expand.weight.flatten(1), expand.bias))
    return x * gate[:, :, None, None]


def _fold_key(conv: nn.Conv2d, bn: _BatchNorm) -> tuple:
    tensors = [conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return tuple((t.data_ptr(), t._version, t.dtype) if t is not None else None for t in tensors) + (bn.eps,)


def _folded_weights(conv: nn.Conv2d, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(O, I, kh, kw)`` and bias ``(O,)`` of ``conv`` followed by eval-mode ``bn``, folded
    in fp32 and cast back; cached on ``conv`` while no gradient is recorded."""
    cache = not torch.is_grad_enabled() and not _tracing()
    if cache:
        try:
            key = _fold_key(conv, bn)
        except RuntimeError:  # inference tensors have no version counter: no caching
            key, cache = None, False
        hit = getattr(conv, "_align_folded", None)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
    folded_w, folded_b = folded_conv_bn(conv, bn)
    if cache:
        # A plain attribute, not a buffer: never saved, recomputed after any weight update.
        object.__setattr__(conv, "_align_folded", (key, folded_w, folded_b))
    return folded_w, folded_b


def _tracing() -> bool:
    """True under torch.compile, torch.jit tracing and ONNX/torch.export: plain ops only there."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return exporting or torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if _tracing() or x.device.type != "cpu" or not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the fused op has no backward
    if x.dtype == torch.bfloat16:
        return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return x.dtype == torch.float32 and weight.dtype == torch.float32


def conv_bn_act(
    conv: nn.Module,
    norm: nn.Module,
    x: torch.Tensor,
    residual: torch.Tensor | None = None,
    drop_path: nn.Module | None = None,
) -> torch.Tensor:
    """``norm(conv(x))`` (``norm`` a timm BatchNormAct2d, a BatchNorm, or the activation left by
    :func:`~align_hf.batchnorm_folding.fold_batchnorm`), plus ``drop_path(.) + residual`` when a
    residual is given. ``x``: ``(B, C, H, W)``, best channels-last."""
    is_bn = isinstance(norm, _BatchNorm)
    foldable = (not is_bn) or (
        not norm.training and norm.running_mean is not None and isinstance(getattr(norm, "drop", None), (nn.Identity, type(None)))
    )
    prepared = _conv_padding(conv, x) if foldable else None
    if prepared is None:  # training BatchNorm, or a convolution of another kind
        out = norm(_run_conv(conv, x))
        if residual is not None:
            out = (drop_path(out) if drop_path is not None else out) + residual
        return out
    inp, padding, shift = prepared
    if is_bn:
        weight, bias = _folded_weights(conv, norm)
    else:
        weight, bias = conv.weight, conv.bias
    if shift:
        weight = _shifted(weight)
    act = _act_of(norm)
    unary = _unary_name(act)
    if unary is not None and _onednn_ok(inp, weight):
        args = (list(padding), list(conv.stride), list(conv.dilation), conv.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(inp, weight, bias, *args, unary, [], "")
        if unary == "none" and residual.shape[1] == weight.shape[0]:
            residual = residual.contiguous(memory_format=torch.channels_last) if inp.is_contiguous(
                memory_format=torch.channels_last) else residual.contiguous()
            return torch.ops.mkldnn._convolution_pointwise.binary(
                inp, residual, weight, bias, *args, "add", None, None, [], None
            )
    out = act(_conv2d(inp, weight, bias, conv.stride, padding, conv.dilation, conv.groups, shifted=shift))
    if residual is not None:
        out = (drop_path(out) if drop_path is not None else out) + residual
    return out


if EfficientNet is not None:

    class FastDepthwiseSeparableConv(DepthwiseSeparableConv):
        """timm's block with :func:`conv_bn_act`; timm's own forward when ``align_fast_path`` is False."""

        align_fast_path = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.align_fast_path:
                return super().forward(x)
            shortcut = x
            x = conv_bn_act(self.conv_dw, self.bn1, x)
            x = squeeze_excite(self.se, self.aa(x))
            residual = shortcut if self.has_skip else None
            return conv_bn_act(self.conv_pw, self.bn2, x, residual=residual, drop_path=self.drop_path)

    class FastInvertedResidual(InvertedResidual):
        """timm's block with :func:`conv_bn_act`; timm's own forward when ``align_fast_path`` is False."""

        align_fast_path = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.align_fast_path:
                return super().forward(x)
            shortcut = x
            x = conv_bn_act(self.conv_pw, self.bn1, x)
            x = conv_bn_act(self.conv_dw, self.bn2, x)
            x = squeeze_excite(self.se, self.aa(x))
            residual = shortcut if self.has_skip else None
            return conv_bn_act(self.conv_pwl, self.bn3, x, residual=residual, drop_path=self.drop_path)

    class FastEfficientNet(EfficientNet):
        """timm's EfficientNet whose stem (and head conv, if kept) use :func:`conv_bn_act`."""

        align_fast_path = False

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            if not self.align_fast_path:
                return super().forward_features(x)
            from timm.models._manipulate import checkpoint_seq

            x = conv_bn_act(self.conv_stem, self.bn1, x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(self.blocks, x, flatten=True)
            else:
                x = self.blocks(x)
            if isinstance(self.conv_head, nn.Conv2d):
                return conv_bn_act(self.conv_head, self.bn2, x)
            return self.bn2(self.conv_head(x))


def set_fast_path(backbone: nn.Module, enabled: bool) -> None:
    """Turn the fast forwards of an accelerated backbone on or off (off: timm's forwards, which
    reproduce transformers' AlignModel op for op)."""
    for module in backbone.modules():
        if "align_fast_path" in type(module).__dict__:
            module.align_fast_path = bool(enabled)


def accelerate_backbone(backbone: nn.Module) -> int:
    """Switch a timm EfficientNet's stem and blocks to the fast forwards in place (modules,
    parameters and state-dict keys unchanged); returns how many modules were switched."""
    if EfficientNet is None:  # pragma: no cover
        return 0
    switched = 0
    for module in backbone.modules():
        if isinstance(module, _BatchNorm) and isinstance(getattr(module, "act", None), nn.SiLU):
            module.act.inplace = False  # see the module docstring: in-place SiLU costs a copy under autograd
        if getattr(module, "conv_s2d", None) is not None:
            continue  # space-to-depth stems are left to timm
        # Swapping the class keeps the instance (modules, parameters, hooks); only the forward changes.
        if type(module) is DepthwiseSeparableConv:
            module.__class__ = FastDepthwiseSeparableConv
            switched += 1
        elif type(module) is InvertedResidual:
            module.__class__ = FastInvertedResidual
            switched += 1
    if type(backbone) is EfficientNet:
        backbone.__class__ = FastEfficientNet
        switched += 1
    return switched


__all__ = ["accelerate_backbone", "set_fast_path", "conv_bn_act"]
