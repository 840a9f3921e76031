"""The tile kernels of the contrastive losses: exact softmax / sigmoid losses of S = scale * x y^T
computed ``tile x tile`` blocks at a time, never holding the (N, M) logits.

* forward keeps only per-row and per-column running (max, sum) pairs, i.e. an online
  log-sum-exp, so it stores O(N) numbers;
* backward recomputes each block from the embeddings and accumulates the embedding gradients.

Peak memory is O(N d + tile^2). With ``backend="triton"`` (softmax loss) the per-tile work runs
in the fused kernels of :mod:`.loss_triton`; the assembly around them is shared. The tile loops are ``torch.library`` custom ops, so
``torch.compile`` sees one opaque op (no unrolled loops) and autocast does not touch them;
:class:`TiledCrossEntropy` is the autograd function over the two ops.

Softmax loss, for L2-normalised image embeddings X and text embeddings Y (N, d) and temperature
t (logits S = X Y^T / t), with label smoothing eps::

    L = (CE(S) + CE(S^T)) / 2
      = (1/2N) sum_i (LSE_row_i + LSE_col_i) - ((1 - eps)/N) sum_i S_ii
        - (eps / N^2) * sum_ij S_ij

which is PyTorch's ``cross_entropy(..., label_smoothing=eps)`` in both directions (the formula of
transformers' ``align_loss``). The sigmoid (SigLIP) loss with bias b is
``L = (1/N) sum_ij softplus(-z_ij (S_ij + b))`` with z = +1 on the diagonal and -1 elsewhere.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import loss_triton

__all__ = ["TiledCrossEntropy", "accumulation_dtype"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)




def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype tiles are summed in: fp64 for fp64 inputs, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# torch.mm(..., out_dtype=) (bf16/fp16 operands, fp32 result) exists on CUDA in recent torch.
_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")


def _operand(t: Tensor) -> Tensor:
    """A tile GEMM operand: CUDA multiplies bf16/fp16 as they are with an fp32 result
    (``torch.mm(out_dtype=...)``); elsewhere low-precision GEMMs are slow or lack that
    overload, so the input is upcast once (O(N d))."""
    if t.dtype in _LOW_PRECISION and t.device.type == "cuda" and _MM_OUT_DTYPE:
        return t.contiguous()
    return t.to(accumulation_dtype(t.dtype)).contiguous()


def _mm(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """``a @ b`` with the result in ``acc`` precision (fp32 accumulation for bf16 inputs)."""
    if a.dtype == acc:
        return a @ b
    return torch.mm(a, b, out_dtype=acc)


def _addmm_(out: Tensor, a: Tensor, b: Tensor) -> None:
    """``out += a @ b`` without a temporary where the dtypes allow."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out += _mm(a, b, out.dtype)


def _scaled_rows(xc: Tensor, s: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """``(x * s, None)`` when x is already in the accumulation dtype: the scale then rides in the
    tile GEMM instead of costing a pass over every tile. Low-precision operands stay unscaled (a
    rounding of ``x * s`` would add error), and the tiles are scaled after the GEMM instead."""
    if xc.dtype == s.dtype:
        return xc * s, None
    return xc, s


def _scaled(scores: Tensor, scale: Optional[Tensor]) -> Tensor:
    return scores if scale is None else scores.mul_(scale)


def _tile_ranges(n: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, n)) for start in range(0, n, tile)]


def _copy_label_logits(
    scores: Tensor, labels: Tensor, i0: int, i1: int, j0: int, j1: int, label_offset: int
) -> None:
    """Store the logits of (row i, column label_offset + i) that fall inside this tile.

    Accuracy compares them with the row/column maxima taken over the very same tile values, so
    a correct prediction is never lost to two different roundings of one dot product.
    """
    lo = max(i0 + label_offset, j0)
    hi = min(i1 + label_offset, j1)
    if lo >= hi:
        return
    r0 = lo - label_offset - i0
    c0 = lo - j0
    k = hi - lo
    labels[lo - label_offset : hi - label_offset] = torch.diagonal(
        scores[r0 : r0 + k, c0 : c0 + k]
    )


# The tile loops are custom ops: torch.compile sees one opaque node instead of unrolling them,
# and the fake (meta) versions below give it the output shapes.


@torch.library.custom_op("align_hf::tiled_cross_entropy_forward", mutates_args=())
def _tiled_forward(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Optional[Tensor],
    label_smoothing: float,
    sigmoid: bool,
    columns: bool,
    label_offset: int,
    tile: int,
    backend: str = "torch",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-row (and per-column) losses of S = scale * x y^T, row i labelled label_offset + i.

    Softmax: ``row_loss_i`` is PyTorch's label-smoothed cross entropy of row i of S;
    with ``columns`` (square S, offset 0) ``col_loss_j`` is that of column j. Sigmoid:
    ``row_loss_i = sum_j softplus(-z_ij (S_ij + bias))``; ``columns`` only adds ``col_max``.
    ``backend``: ``"auto"``, ``"torch"`` (tile loop) or ``"triton"`` (softmax only), resolved
    here at run time by :func:`.loss_triton.resolve_backend`.

    Returns ``(row_loss (n,), col_loss (m,|0), row_lse (n,|0), col_lse (m,|0), row_max (n,),
    col_max (m,|0), label_logits (n,))`` in fp32 (fp64 for fp64 inputs).
    """
    # Autocast stays active inside custom ops; it would run the tile GEMMs in bf16.
    with torch.autocast(x.device.type, enabled=False):
        return _forward_tiles(
            x, y, scale, bias, label_smoothing, sigmoid, columns, label_offset, tile, backend
        )


def _forward_tiles(
    x, y, scale, bias, label_smoothing, sigmoid, columns, label_offset, tile, backend="torch"
):
    xc, yc = _operand(x), _operand(y)
    s = scale.to(accumulation_dtype(x.dtype))
    if loss_triton.resolve_backend(backend, x, sigmoid) == "triton":
        # A launch covers 4 * tile rows (32768 with CUDA's 8192 tiles: 256 blocks of 128 rows,
        # about two waves on an H100) and keeps a (4 * tile / 128, m) scratch of column partials.
        row_stat, row_max, label_logits, col_max, col_sum = loss_triton.softmax_stats(
            xc, yc, s, columns, label_offset, 4 * tile
        )
    else:
        row_stat, row_max, label_logits, col_max, col_sum = _torch_stats(
            xc, yc, s, bias, sigmoid, columns, label_offset, tile
        )
    return _assemble(
        xc, yc, s, bias, row_stat, row_max, label_logits, col_max, col_sum,
        label_smoothing, sigmoid, columns,
    )


def _torch_stats(xc, yc, s, bias, sigmoid, columns, label_offset, tile):
    """The tile loop of the forward: ``(row_stat, row_max, label_logits, col_max, col_sum)``."""
    n, m = xc.shape[0], yc.shape[0]
    acc = s.dtype
    xs, tile_scale = _scaled_rows(xc, s)
    opts = dict(dtype=acc, device=xc.device)
    row_stat = torch.zeros(n, **opts)  # softmax: log-sum-exp; sigmoid: sum of softplus
    row_max = torch.full((n,), -math.inf, **opts)
    label_logits = torch.zeros(n, **opts)
    n_cols = m if columns else 0
    col_max = torch.full((n_cols,), -math.inf, **opts)
    col_sum = torch.zeros(0 if sigmoid else n_cols, **opts)
    for i0, i1 in _tile_ranges(n, tile):
        r_max = torch.full((i1 - i0,), -math.inf, **opts)
        r_sum = torch.zeros(i1 - i0, **opts)
        for j0, j1 in _tile_ranges(m, tile):
            scores = _scaled(_mm(xs[i0:i1], yc[j0:j1].T, acc), tile_scale)
            _copy_label_logits(scores, label_logits, i0, i1, j0, j1, label_offset)
            tile_max = scores.amax(dim=1)
            if columns:
                old = col_max[j0:j1]
                new = torch.maximum(old, scores.amax(dim=0))
                if not sigmoid:
                    # Online log-sum-exp: rescale the running sums to the new max, add the tile.
                    col_sum[j0:j1] = col_sum[j0:j1] * torch.exp(old - new) + torch.exp(
                        scores - new
                    ).sum(dim=0)
                col_max[j0:j1] = new
            if sigmoid:
                # softplus(u) = -logsigmoid(-u): stable for any |u|, unlike log1p(exp(u)).
                u = scores.add_(bias.to(acc)).neg_()
                r_sum -= torch.nn.functional.logsigmoid(u).sum(dim=1)
                r_max = torch.maximum(r_max, tile_max)
            else:
                new = torch.maximum(r_max, tile_max)
                r_sum = r_sum * torch.exp(r_max - new) + scores.sub_(new[:, None]).exp_().sum(1)
                r_max = new
        row_max[i0:i1] = r_max
        row_stat[i0:i1] = r_sum if sigmoid else r_max + r_sum.log()
    return row_stat, row_max, label_logits, col_max, col_sum


def _assemble(
    xc, yc, s, bias, row_stat, row_max, label_logits, col_max, col_sum,
    label_smoothing, sigmoid, columns,
):
    """The forward's outputs from the tile statistics (O(N d) work)."""
    n, m = xc.shape[0], yc.shape[0]
    acc = s.dtype
    opts = dict(dtype=acc, device=xc.device)
    empty = lambda: torch.zeros(0, **opts)  # noqa: E731  (outputs must not alias each other)
    if sigmoid:
        # The positive pair's term is softplus(-u) = softplus(u) - u.
        row_loss = row_stat - (label_logits + bias.to(acc))
        return row_loss, empty(), empty(), empty(), row_max, col_max, label_logits
    eps = label_smoothing
    # Label smoothing spreads eps over all m columns: sum_j S_ij = scale * x_i . sum_j y_j.
    row_mean = (xc.to(acc) @ yc.to(acc).sum(0)).mul_(s / m)
    row_loss = row_stat - (1 - eps) * label_logits - eps * row_mean
    if not columns:
        return row_loss, empty(), row_stat, empty(), row_max, col_max, label_logits
    col_lse = col_max + col_sum.log()
    col_mean = (yc.to(acc) @ xc.to(acc).sum(0)).mul_(s / n)
    col_loss = col_lse - (1 - eps) * label_logits - eps * col_mean
    return row_loss, col_loss, row_stat, col_lse, row_max, col_max, label_logits


@_tiled_forward.register_fake
def _(x, y, scale, bias, label_smoothing, sigmoid, columns, label_offset, tile, backend="torch"):
    n, m = x.shape[0], y.shape[0]
    new = lambda k: x.new_empty((k,), dtype=accumulation_dtype(x.dtype))  # noqa: E731
    n_cols = m if columns else 0
    if sigmoid:
        return new(n), new(0), new(0), new(0), new(n), new(n_cols), new(n)
    return new(n), new(n_cols), new(n), new(n_cols), new(n), new(n_cols), new(n)


@torch.library.custom_op("align_hf::tiled_cross_entropy_backward", mutates_args=())
def _tiled_backward(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Optional[Tensor],
    row_lse: Tensor,
    col_lse: Tensor,
    grad_row: Tensor,
    grad_col: Tensor,
    label_smoothing: float,
    sigmoid: bool,
    columns: bool,
    label_offset: int,
    tile: int,
    backend: str = "torch",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the forward's row/column losses, recomputing S tile by tile.

    With G = dLoss/dS (softmax: g_r * (softmax_row - targets) + g_c * (softmax_col - targets);
    sigmoid: g_r * (sigmoid(S + b) - 1[label])): dx = scale * G y, dy = scale * G^T x,
    dscale = sum(G * x y^T) = sum(x * (G y)), dbias = sum(G). The soft targets are rank-one
    plus a diagonal, so they are applied after the loop in O(N d).
    Returns ``(dx, dy, dscale, dbias)``; dbias is 0 for softmax.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _backward_tiles(
            x, y, scale, bias, row_lse, col_lse, grad_row, grad_col,
            label_smoothing, sigmoid, columns, label_offset, tile, backend,
        )


def _backward_tiles(
    x, y, scale, bias, row_lse, col_lse, grad_row, grad_col,
    label_smoothing, sigmoid, columns, label_offset, tile, backend="torch",
):
    n, m = x.shape[0], y.shape[0]
    acc = accumulation_dtype(x.dtype)
    xc, yc = _operand(x), _operand(y)
    s = scale.to(acc)
    fused = loss_triton.resolve_backend(backend, x, sigmoid) == "triton"
    # The kernel scales inside; the torch tiles want the scale folded into the rows once.
    xs, tile_scale = (xc, None) if fused else _scaled_rows(xc, s)
    g_row = grad_row.to(acc)
    g_col = grad_col.to(acc)
    # gx = G @ y and gy = G^T @ x, both without the scale (applied once at the end).
    gx = torch.zeros(n, x.shape[1], dtype=acc, device=x.device)
    gy = torch.zeros(m, y.shape[1], dtype=acc, device=x.device)
    gbias = torch.zeros((), dtype=acc, device=x.device)
    if fused:
        # The kernel reads these as unit-stride vectors; autograd hands in expanded ones.
        g_row, g_col = g_row.contiguous(), g_col.contiguous()
    for i0, i1 in _tile_ranges(n, tile):
        xi, xsi = xc[i0:i1], xs[i0:i1]
        for j0, j1 in _tile_ranges(m, tile):
            yj = yc[j0:j1]
            if fused:
                # One kernel: the tile GEMM and the softmax terms, G written in the operand dtype.
                grad = loss_triton.softmax_grad_tile(
                    xi, yj, s, row_lse[i0:i1], g_row[i0:i1],
                    col_lse[j0:j1] if columns else None, g_col[j0:j1] if columns else None,
                )
            else:
                scores = _scaled(_mm(xsi, yj.T, acc), tile_scale)
                if sigmoid:
                    grad = scores.add_(bias.to(acc)).sigmoid_().mul_(g_row[i0:i1, None])
                    gbias += grad.sum()
                else:
                    grad = (scores - row_lse[i0:i1, None]).exp_().mul_(g_row[i0:i1, None])
                    if columns:
                        grad += scores.sub_(col_lse[None, j0:j1]).exp_().mul_(g_col[None, j0:j1])
                # Low-precision operands: the gradient tile joins them in that dtype (fp32 sums).
                grad = grad.to(xi.dtype)
            _addmm_(gx[i0:i1], grad, yj)
            _addmm_(gy[j0:j1], grad.T, xi)
    xa, ya = xc.to(acc), yc.to(acc)
    labelled = slice(label_offset, label_offset + n)  # the columns that are row labels
    hit = 1.0 if sigmoid else 1.0 - label_smoothing
    gx.addcmul_(ya[labelled], g_row[:, None], value=-hit)
    gy[labelled].addcmul_(xa, g_row[:, None], value=-hit)
    if sigmoid:
        gbias -= g_row.sum()
    elif label_smoothing:
        spread = label_smoothing / m
        gx.addr_(g_row, ya.sum(0), alpha=-spread)
        gy.sub_((g_row @ xa).mul_(spread))
    if columns and not sigmoid:
        # Column losses of a square S with labels on the diagonal.
        gy.addcmul_(xa, g_col[:, None], value=-hit)
        gx.addcmul_(ya, g_col[:, None], value=-hit)
        if label_smoothing:
            spread = label_smoothing / n
            gy.addr_(g_col, xa.sum(0), alpha=-spread)
            gx.sub_((g_col @ ya).mul_(spread))
    gscale = (gx * xa).sum()
    gx.mul_(s)
    gy.mul_(s)
    return gx.to(x.dtype), gy.to(y.dtype), gscale.to(scale.dtype), gbias


@_tiled_backward.register_fake
def _(x, y, scale, bias, row_lse, col_lse, grad_row, grad_col, label_smoothing, sigmoid,
      columns, label_offset, tile, backend="torch"):
    acc = accumulation_dtype(x.dtype)
    return torch.empty_like(x), torch.empty_like(y), torch.empty_like(scale), x.new_empty((), dtype=acc)


class TiledCrossEntropy(torch.autograd.Function):
    """Per-row/column contrastive losses of S = scale * x y^T without storing S.

    ``apply(x, y, scale, bias, label_smoothing, sigmoid, columns, label_offset, tile, backend)``
    returns
    ``(row_loss, col_loss, row_max, col_max, label_logits)`` as described in
    :func:`_tiled_forward`; the losses are differentiable w.r.t. x, y, scale and bias (sigmoid),
    the rest are not. Gradients come back in the inputs' dtypes, summed in fp32 (fp64).
    """

    @staticmethod
    def forward(
        ctx, x, y, scale, bias, label_smoothing, sigmoid, columns, label_offset, tile,
        backend="torch",
    ):
        row_loss, col_loss, row_lse, col_lse, row_max, col_max, labels = (
            torch.ops.align_hf.tiled_cross_entropy_forward(
                x, y, scale, bias, label_smoothing, sigmoid, columns, label_offset, tile, backend
            )
        )
        ctx.save_for_backward(x, y, scale, bias, row_lse, col_lse)
        ctx.config = (label_smoothing, sigmoid, columns, label_offset, tile, backend)
        ctx.mark_non_differentiable(row_max, col_max, labels)
        return row_loss, col_loss, row_max, col_max, labels

    @staticmethod
    def backward(ctx, grad_row, grad_col, *_unused):
        x, y, scale, bias, row_lse, col_lse = ctx.saved_tensors
        gx, gy, gscale, gbias = torch.ops.align_hf.tiled_cross_entropy_backward(
            x, y, scale, bias, row_lse, col_lse, grad_row, grad_col, *ctx.config
        )
        gbias = gbias.to(bias.dtype) if bias is not None else None
        return gx, gy, gscale, gbias, None, None, None, None, None, None
