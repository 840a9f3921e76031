"""The image tower's depthwise weight gradient as a depthwise forward (align_hf.fast_blocks):
the same gradients as autograd through ``F.conv2d``, checked in float64 and on the float32 path
the fast forwards take in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from align_hf.fast_blocks import _conv2d, _DepthwiseConv, _shifted, depthwise_weight_grad, keras_3x3_stride2_weight_grad

# (channels, map size, kernel, stride, padding): B0's 5x5 layers, the (k+1)x(k+1) stride-2 kernels,
# a 3x3 with padding 2, a non-square kernel and an odd map.
SHAPES = [(8, 8, (5, 5), 1, (2, 2)), (8, 9, (6, 6), 2, (2, 2)), (6, 8, (4, 4), 2, (1, 1)),
          (4, 7, (3, 3), 1, (2, 2)), (5, 6, (3, 5), 1, (1, 2)), (3, 5, (5, 5), 2, (2, 2))]


def _inputs(channels, size, kernel, stride, padding, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, size, size, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, *kernel, generator=g, dtype=dtype)
    out = F.conv2d(x, w, None, stride, padding, 1, channels)
    grad = torch.randn(out.shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return x, w, grad


@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient_matches_autograd_in_float64(shape):
    channels, size, kernel, stride, padding = shape
    x, w, grad = _inputs(channels, size, kernel, stride, padding, torch.float64)
    w = w.requires_grad_()
    (expected,) = torch.autograd.grad(F.conv2d(x, w, None, stride, padding, 1, channels), w, grad)
    got = depthwise_weight_grad(x, grad, kernel, (stride, stride), padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_convolution_gives_autograds_gradients(shape):
    channels, size, kernel, stride, padding = shape
    x, w, grad = _inputs(channels, size, kernel, stride, padding, torch.float32, seed=1)
    bias = torch.randn(channels)
    # float64 autograd through F.conv2d is the reference
    ref = [t.double().requires_grad_() for t in (x, w, bias)]
    ref_out = F.conv2d(ref[0], ref[1], ref[2], stride, padding, 1, channels)
    expected = torch.autograd.grad(ref_out, ref, grad.double())
    ours = [t.clone().requires_grad_() for t in (x, w, bias)]
    out = _conv2d(ours[0], ours[1], ours[2], (stride, stride), padding, (1, 1), channels)
    assert out.grad_fn is not None and "DepthwiseConv" in type(out.grad_fn).__name__  # the path under test ran
    torch.testing.assert_close(out.double(), ref_out.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out, ours, grad), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_only_where_oneDNN_is_slow():
    """3x3 kernels with padding <= 1, large maps, float64, grouped-but-not-depthwise and inference
    keep F.conv2d."""
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    assert "DepthwiseConv" not in type(_conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 4).grad_fn).__name__
    big = torch.randn(1, 4, 40, 40).contiguous(memory_format=torch.channels_last)
    w5 = torch.randn(4, 1, 5, 5, requires_grad=True)
    assert "DepthwiseConv" not in type(_conv2d(big, w5, None, (1, 1), (2, 2), (1, 1), 4).grad_fn).__name__
    assert "DepthwiseConv" not in type(_conv2d(x.double(), w5.double(), None, (1, 1), (2, 2), (1, 1), 4).grad_fn).__name__
    grouped = torch.randn(4, 2, 5, 5, requires_grad=True)
    assert "DepthwiseConv" not in type(_conv2d(x, grouped, None, (1, 1), (2, 2), (1, 1), 2).grad_fn).__name__
    with torch.no_grad():
        assert _conv2d(x, w5, None, (1, 1), (2, 2), (1, 1), 4).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision keeps autograd's own path
        out = _conv2d(x, w5, None, (1, 1), (2, 2), (1, 1), 4)
    assert "DepthwiseConv" not in type(out.grad_fn).__name__
    out.float().sum().backward()
    assert w5.grad is not None and w5.grad.dtype == torch.float32
    w5.grad = None
    assert "DepthwiseConv" in type(_conv2d(x, w5, None, (1, 1), (2, 2), (1, 1), 4).grad_fn).__name__
    assert _DepthwiseConv is not None


@pytest.mark.parametrize("size", [(8, 10), (34, 36)])
def test_keras_stride2_3x3_gradient_on_large_maps(size):
    """Keras' (0, 1)-padded 3x3 stride-2 depthwise convolution, as the fast path runs it (a shifted
    4x4 kernel): the weight gradient from oneDNN's padding-0 3x3 gradient plus the last output row
    and column, against float64 autograd through the padded copy Keras' padding means."""
    h, w = size
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, h, w, generator=g)
    kernel = torch.randn(5, 1, 3, 3, generator=g)
    x64, k64 = x.double().requires_grad_(), kernel.double().requires_grad_()
    ref = F.conv2d(F.pad(x64, (0, 1, 0, 1)), k64, None, 2, 0, 1, 5)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(ref, (x64, k64), grad)
    direct = keras_3x3_stride2_weight_grad(x64.detach().contiguous(memory_format=torch.channels_last),
                                           grad.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(direct, expected[1], rtol=1e-12, atol=1e-12)

    xs = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    ks = kernel.clone().requires_grad_()
    out = _conv2d(xs, _shifted(ks), None, (2, 2), (1, 1), (1, 1), 5, shifted=True)
    assert "DepthwiseConv" in type(out.grad_fn).__name__
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out, (xs, ks), grad.float()), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
