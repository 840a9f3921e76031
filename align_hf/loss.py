"""The ALIGN contrastive head: exact softmax / sigmoid losses that never build the N x N logits.

ALIGN trains with a global batch of 16384 pairs. The textbook loss materialises the (N, N) logit
matrix several times over (logits, softmax, gradient), which costs O(N^2) memory. Here the logits
are visited in ``tile x tile`` blocks instead:

* forward keeps only per-row and per-column running (max, sum) pairs, i.e. an online
  log-sum-exp, so it stores O(N) numbers;
* backward recomputes each block from the embeddings and accumulates the embedding gradients.

Peak memory is O(N d + tile^2) and the result equals the textbook loss up to floating point
rounding (tests check 1e-9 in float64). Tile loops live inside ``torch.library`` custom ops, so
``torch.compile`` sees one opaque op (no unrolled loops) and autocast does not touch them.

Softmax loss, for L2-normalised image embeddings X and text embeddings Y (N, d) and temperature
t (logits S = X Y^T / t), with label smoothing eps::

    L = (CE(S) + CE(S^T)) / 2
      = (1/2N) sum_i (LSE_row_i + LSE_col_i) - ((1 - eps)/N) sum_i S_ii
        - (eps / N^2) * sum_ij S_ij

which is PyTorch's ``cross_entropy(..., label_smoothing=eps)`` in both directions (the formula of
transformers' ``align_loss``). The sigmoid (SigLIP) loss with bias b is
``L = (1/N) sum_ij softplus(-z_ij (S_ij + b))`` with z = +1 on the diagonal and -1 elsewhere.

Under ``torch.distributed`` each rank gathers every rank's embeddings (autograd-aware), scores
its own rows against all columns, and weights its share so that DDP's gradient averaging yields
exactly the gradient of the global-batch loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "AlignContrastiveHead",
    "ContrastiveOutput",
    "contrastive_logits",
    "contrastive_loss",
    "sigmoid_loss",
    "auto_chunk_size",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def auto_chunk_size(num_rows: int, num_cols: int, device: torch.device | str = "cpu") -> int:
    """Tile edge used when ``chunk_size=None``.

    Larger tiles make faster GEMMs; each tile costs a few ``tile^2`` fp32 temporaries. On CPU
    1024 keeps the temporaries in the last-level cache range (measured fastest on 2 cores); GPUs
    want larger tiles to fill the SMs.
    """
    device = torch.device(device)
    tile = 4096 if device.type == "cuda" else 1024
    return max(1, min(tile, max(num_rows, num_cols)))


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare_operands(x: Tensor, y: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Tile operands ``(rows, cols, tile_scale)``; every tile is ``rows_i @ cols_j.T * tile_scale``.

    In fp32/fp64 the scale is folded into the rows once (O(N d)), saving a pass per tile, and
    ``tile_scale`` is None. CUDA multiplies bf16/fp16 tiles as they are with an fp32 result
    (``torch.mm(out_dtype=...)``); folding the scale into them would round it to 8 bits, so the
    fp32 tile is scaled instead. Other devices upcast low-precision inputs once.
    """
    acc = _accumulation_dtype(x.dtype)
    s = scale.to(acc)
    if x.dtype in _LOW_PRECISION and x.device.type == "cuda":
        return x.contiguous(), y.contiguous(), s
    return (x.to(acc) * s).contiguous(), y.to(acc).contiguous(), None


def _scores(xi: Tensor, yj: Tensor, tile_scale: Tensor | None, acc: torch.dtype) -> Tensor:
    scores = _mm(xi, yj.T, acc)
    return scores if tile_scale is None else scores.mul_(tile_scale)


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


def _tile_ranges(n: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, n)) for start in range(0, n, tile)]


def _copy_label_logits(
    scores: Tensor, diag: Tensor, i0: int, i1: int, j0: int, j1: int, label_offset: int
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
    diag[lo - label_offset : hi - label_offset] = torch.diagonal(scores[r0 : r0 + k, c0 : c0 + k])


@torch.library.custom_op("align_hf::tiled_scores_forward", mutates_args=())
def _tiled_forward(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Optional[Tensor],
    sigmoid: bool,
    columns: bool,
    label_offset: int,
    tile: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One pass over the tiles of S = scale * x y^T (+ bias).

    Returns ``(row_stat (n,), col_stat (m,) or (0,), row_max (n,), col_max (m,) or (0,),
    label_logits (n,))``. Softmax: row/col stats are log-sum-exp. Sigmoid: row_stat is
    sum_j softplus(S_ij + b) and col_stat is empty. ``columns`` turns column statistics on.
    """
    # Autocast stays active inside custom ops; it would run the tile GEMMs in bf16.
    with torch.autocast(x.device.type, enabled=False):
        return _forward_tiles(x, y, scale, bias, sigmoid, columns, label_offset, tile)


def _forward_tiles(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Optional[Tensor],
    sigmoid: bool,
    columns: bool,
    label_offset: int,
    tile: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Body of :func:`_tiled_forward` (the tile loop)."""
    n, m = x.shape[0], y.shape[0]
    acc = _accumulation_dtype(x.dtype)
    xc, yc, tile_scale = _prepare_operands(x, y, scale)
    b = bias.to(acc) if bias is not None else None
    opts = dict(dtype=acc, device=x.device)
    row_stat = torch.zeros(n, **opts)
    row_max = torch.full((n,), -math.inf, **opts)
    label_logits = torch.zeros(n, **opts)
    col_count = m if columns else 0
    col_max = torch.full((col_count,), -math.inf, **opts)
    col_stat = torch.zeros(0 if sigmoid else col_count, **opts)
    col_sum = torch.zeros(col_count, **opts)
    for i0, i1 in _tile_ranges(n, tile):
        xi = xc[i0:i1]
        r_max = torch.full((i1 - i0,), -math.inf, **opts)
        r_sum = torch.zeros(i1 - i0, **opts)
        for j0, j1 in _tile_ranges(m, tile):
            scores = _scores(xi, yc[j0:j1], tile_scale, acc)
            _copy_label_logits(scores, label_logits, i0, i1, j0, j1, label_offset)
            tile_row_max = scores.amax(dim=1)
            if columns:
                old = col_max[j0:j1]
                new = torch.maximum(old, scores.amax(dim=0))
                if not sigmoid:
                    # Rescale the running column sums to the new maximum, then add this tile.
                    col_sum[j0:j1] = col_sum[j0:j1] * torch.exp(old - new) + torch.exp(
                        scores - new
                    ).sum(dim=0)
                col_max[j0:j1] = new
            if sigmoid:
                # softplus(u) = -logsigmoid(-u): stable for any |u|, unlike log1p(exp(u)).
                r_sum += torch.nn.functional.logsigmoid(scores.add_(b).neg_()).sum(dim=1).neg_()
                r_max = torch.maximum(r_max, tile_row_max)
            else:
                new = torch.maximum(r_max, tile_row_max)
                r_sum = r_sum * torch.exp(r_max - new) + scores.sub_(new[:, None]).exp_().sum(dim=1)
                r_max = new
        row_max[i0:i1] = r_max
        row_stat[i0:i1] = r_sum if sigmoid else r_max + r_sum.log()
    if columns and not sigmoid:
        col_stat = col_max + col_sum.log()
    return row_stat, col_stat, row_max, col_max, label_logits


@_tiled_forward.register_fake
def _(x, y, scale, bias, sigmoid, columns, label_offset, tile):
    n, m = x.shape[0], y.shape[0]
    acc = _accumulation_dtype(x.dtype)
    col_count = m if columns else 0
    new = lambda k: x.new_empty((k,), dtype=acc)  # noqa: E731
    return new(n), new(0 if sigmoid else col_count), new(n), new(col_count), new(n)


@torch.library.custom_op("align_hf::tiled_scores_backward", mutates_args=())
def _tiled_backward(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Optional[Tensor],
    row_stat: Tensor,
    col_stat: Tensor,
    grad_row: Tensor,
    grad_col: Tensor,
    sigmoid: bool,
    columns: bool,
    tile: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the forward's row/col statistics, recomputing S tile by tile.

    With G = dLoss/dS (softmax: g_r * softmax_row + g_c * softmax_col; sigmoid: g_r * sigmoid),
    dx = scale * G y, dy = scale * G^T x, dscale = sum(G * x y^T) = sum(x * (G y)) and
    dbias = sum(G). Returns ``(dx, dy, dscale, dbias)`` with dx, dy, dbias in fp32 (fp64 for
    fp64 inputs); dbias is 0 for softmax.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _backward_tiles(
            x, y, scale, bias, row_stat, col_stat, grad_row, grad_col, sigmoid, columns, tile
        )


def _backward_tiles(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Optional[Tensor],
    row_stat: Tensor,
    col_stat: Tensor,
    grad_row: Tensor,
    grad_col: Tensor,
    sigmoid: bool,
    columns: bool,
    tile: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Body of :func:`_tiled_backward` (the tile loop)."""
    n, m = x.shape[0], y.shape[0]
    acc = _accumulation_dtype(x.dtype)
    xc, yc, tile_scale = _prepare_operands(x, y, scale)
    b = bias.to(acc) if bias is not None else None
    g_row = grad_row.to(acc)
    g_col = grad_col.to(acc)
    # gx accumulates G @ y (scale applied at the end); gy accumulates G^T @ rows, and the rows
    # already carry the scale unless tile_scale is set.
    gx = torch.zeros(n, x.shape[1], dtype=acc, device=x.device)
    gy = torch.zeros(m, y.shape[1], dtype=acc, device=x.device)
    gbias = torch.zeros((), dtype=acc, device=x.device)
    for i0, i1 in _tile_ranges(n, tile):
        xi = xc[i0:i1]
        gx_i = gx[i0:i1]
        for j0, j1 in _tile_ranges(m, tile):
            yj = yc[j0:j1]
            scores = _scores(xi, yj, tile_scale, acc)
            if sigmoid:
                grad = scores.add_(b).sigmoid_().mul_(g_row[i0:i1, None])
                gbias = gbias + grad.sum()
            else:
                grad = (scores - row_stat[i0:i1, None]).exp_().mul_(g_row[i0:i1, None])
                if columns:
                    grad += scores.sub_(col_stat[None, j0:j1]).exp_().mul_(g_col[None, j0:j1])
            # Low-precision operands: the gradient tile joins them in that dtype (fp32 sums).
            grad = grad.to(xi.dtype)
            _addmm_(gx_i, grad, yj)
            _addmm_(gy[j0:j1], grad.T, xi)
    s = scale.to(acc)
    # dscale = sum(G * x y^T) = sum(x * (G y)); x is the unscaled input.
    gscale = (gx * x.to(acc)).sum()
    gx.mul_(s)
    if tile_scale is not None:
        gy.mul_(s)
    return gx, gy, gscale.to(scale.dtype), gbias


@_tiled_backward.register_fake
def _(x, y, scale, bias, row_stat, col_stat, grad_row, grad_col, sigmoid, columns, tile):
    acc = _accumulation_dtype(x.dtype)
    return (
        x.new_empty(x.shape, dtype=acc),
        y.new_empty(y.shape, dtype=acc),
        torch.empty_like(scale),
        x.new_empty((), dtype=acc),
    )


class TiledScores(torch.autograd.Function):
    """Row/column statistics of S = scale * x y^T (+ bias) without storing S.

    ``apply(x, y, x_op, y_op, scale, bias, sigmoid, columns, label_offset, tile)`` returns
    ``(row_stat, col_stat, row_max, col_max, label_logits)`` (see ``_tiled_forward``); the first
    two are differentiable w.r.t. x, y, scale and bias, the rest are not.

    ``x``/``y`` are the differentiable fp32 (or fp64) embeddings and get fp32 gradients, so
    that the caller sums every gradient term in fp32 and rounds to a low-precision input dtype
    once. ``x_op``/``y_op`` hold the same values as the tiles' GEMM operands: the original
    bf16/fp16 tensors on CUDA, ``x``/``y`` themselves elsewhere (see :func:`_operands`).
    """

    @staticmethod
    def forward(ctx, x, y, x_op, y_op, scale, bias, sigmoid, columns, label_offset, tile):
        outputs = torch.ops.align_hf.tiled_scores_forward(
            x_op, y_op, scale, bias, sigmoid, columns, label_offset, tile
        )
        row_stat, col_stat, row_max, col_max, label_logits = outputs
        ctx.save_for_backward(x_op, y_op, scale, bias, row_stat, col_stat)
        ctx.sigmoid, ctx.columns, ctx.tile = sigmoid, columns, tile
        ctx.mark_non_differentiable(row_max, col_max, label_logits)
        return outputs

    @staticmethod
    def backward(ctx, grad_row, grad_col, *_unused):
        x_op, y_op, scale, bias, row_stat, col_stat = ctx.saved_tensors
        gx, gy, gscale, gbias = torch.ops.align_hf.tiled_scores_backward(
            x_op, y_op, scale, bias, row_stat, col_stat, grad_row, grad_col,
            ctx.sigmoid, ctx.columns, ctx.tile,
        )
        gbias = gbias.to(bias.dtype) if bias is not None else None
        return gx, gy, None, None, gscale, gbias, None, None, None, None


def _operands(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(differentiable fp32/fp64 copy, detached GEMM operand)`` of an embedding matrix."""
    upcast = t.to(_accumulation_dtype(t.dtype))
    if t.dtype in _LOW_PRECISION and t.device.type == "cuda":
        return upcast, t.detach()
    return upcast, upcast.detach()


# ----------------------------------------------------------------------------------------------
# Input checks


def _check_pair(image_embeds: Tensor, text_embeds: Tensor) -> None:
    for name, t in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (N, d), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            "image_embeds and text_embeds must have the same shape (N, d) with row i of one "
            f"paired with row i of the other; got {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    if image_embeds.device != text_embeds.device:
        raise ValueError(
            f"embeddings are on different devices: {image_embeds.device} vs {text_embeds.device}"
        )
    if image_embeds.shape[1] == 0:
        raise ValueError("embeddings have zero features (d = 0)")


def _check_scalar(name: str, value: Tensor, device: torch.device) -> None:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(f"{name} must be a scalar tensor, got {value!r}")
    if value.device != device and value.device.type != "cpu":
        raise ValueError(f"{name} is on {value.device} but the embeddings are on {device}")


def _should_check_values(check_finite: Optional[bool], tensor: Tensor) -> bool:
    # Checking values needs the host to read a device flag; we only do it where that is free
    # (CPU, eager) unless asked. On CUDA a non-finite embedding simply yields a NaN loss.
    if check_finite is not None:
        return check_finite
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def _check_values(named: dict[str, Tensor], positive: dict[str, Tensor]) -> None:
    for name, t in named.items():
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    for name, t in positive.items():
        if not bool((t > 0).all()):
            raise ValueError(f"{name} must be > 0, got {float(t)}")


def _prepare_inputs(x, y, temperature, bias, check_finite):
    _check_pair(x, y)
    if x.shape[0] == 0:
        raise ValueError("empty batch: N = 0 pairs")
    _check_scalar("temperature", temperature, x.device)
    if bias is not None:
        _check_scalar("bias", bias, x.device)
    if x.dtype != y.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    temperature = temperature.reshape(()).to(x.device)
    if bias is not None:
        bias = bias.reshape(()).to(x.device)
    if _should_check_values(check_finite, x):
        named = {"image_embeds": x, "text_embeds": y, "temperature": temperature}
        if bias is not None:
            named["bias"] = bias
        _check_values(named, {"temperature": temperature})
    return x, y, temperature, bias


# ----------------------------------------------------------------------------------------------
# Loss assembly (shared by the single-process and the distributed paths)


@dataclass
class _Partial:
    """A rank's un-normalised loss sum and its accuracy hit counts."""

    loss_sum: Tensor  # sum over this rank's rows of the per-row loss (both directions / 2)
    i2t_hits: Tensor
    t2i_hits: Tensor


def _softmax_partial(
    x_loc: Tensor,
    y_loc: Tensor,
    x_all: Optional[Tensor],
    y_all: Optional[Tensor],
    scale: Tensor,
    label_smoothing: float,
    label_offset: int,
    tile: int,
) -> _Partial:
    """Sum over local rows of (CE_i2t + CE_t2i) / 2; ``x_all=None`` means single process."""
    acc = _accumulation_dtype(x_loc.dtype)
    xa, x_op = _operands(x_loc)
    ya, y_op = _operands(y_loc)
    if x_all is None:
        lse_i2t, lse_t2i, max_i2t, max_t2i, label_i2t = TiledScores.apply(
            xa, ya, x_op, y_op, scale, None, False, True, 0, tile
        )
        label_t2i = label_i2t
        xa_all, ya_all = xa, ya
    else:
        xa_all, x_op_all = _operands(x_all)
        ya_all, y_op_all = _operands(y_all)
        lse_i2t, _, max_i2t, _, label_i2t = TiledScores.apply(
            xa, ya_all, x_op, y_op_all, scale, None, False, False, label_offset, tile
        )
        lse_t2i, _, max_t2i, _, label_t2i = TiledScores.apply(
            ya, xa_all, y_op, x_op_all, scale, None, False, False, label_offset, tile
        )
    total = xa_all.shape[0]
    positives = (xa * ya).sum()
    # sum_j S_ij over all columns, summed over local rows: x_loc . sum(Y_all) and vice versa.
    i2t_all = (xa.sum(0) * ya_all.sum(0)).sum()
    t2i_all = (ya.sum(0) * xa_all.sum(0)).sum()
    s = scale.to(acc)
    eps = float(label_smoothing)
    linear = 2.0 * (1.0 - eps) * positives + (eps / total) * (i2t_all + t2i_all)
    loss_sum = 0.5 * (lse_i2t.sum() + lse_t2i.sum() - s * linear)
    return _Partial(
        loss_sum,
        (label_i2t >= max_i2t).sum().to(acc),
        (label_t2i >= max_t2i).sum().to(acc),
    )


def _sigmoid_partial(
    x_loc: Tensor,
    y_loc: Tensor,
    y_all: Optional[Tensor],
    scale: Tensor,
    bias: Tensor,
    label_offset: int,
    tile: int,
    group=None,
) -> _Partial:
    """Sum over local rows i of sum_j softplus(-z_ij u_ij); ``y_all=None`` means single process."""
    acc = _accumulation_dtype(x_loc.dtype)
    xa, x_op = _operands(x_loc)
    ya, y_op = _operands(y_loc)
    cols, cols_op = (ya, y_op) if y_all is None else _operands(y_all)
    row_sp, _, row_max, col_max, labels = TiledScores.apply(
        xa, cols, x_op, cols_op, scale, bias, True, True, label_offset, tile
    )
    if y_all is not None:
        # Text -> image accuracy needs each column's max over every rank's rows.
        col_max = col_max.clone()
        dist.all_reduce(col_max, op=dist.ReduceOp.MAX, group=group)
        col_max = col_max[label_offset : label_offset + x_loc.shape[0]]
    s = scale.to(acc)
    positives = (xa * ya).sum(-1)
    # softplus(-u) = softplus(u) - u on the diagonal, so subtract the positives' logits.
    loss_sum = row_sp.sum() - (s * positives + bias.to(acc)).sum()
    return _Partial(
        loss_sum,
        (labels >= row_max).sum().to(acc),
        (labels >= col_max).sum().to(acc),
    )


# ----------------------------------------------------------------------------------------------
# Public functional API


def contrastive_logits(image_embeds: Tensor, text_embeds: Tensor, temperature: Tensor | float) -> Tensor:
    """Full logits ``image_embeds @ text_embeds.T / temperature``, shape (N_img, N_txt).

    Materialises the whole matrix: use it for retrieval scores and small batches, and
    :func:`contrastive_loss` for training.
    """
    return image_embeds @ text_embeds.T / temperature


def contrastive_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    temperature: Tensor,
    *,
    label_smoothing: float = 0.1,
    chunk_size: Optional[int] = None,
    check_finite: Optional[bool] = None,
) -> Tensor:
    """ALIGN's symmetric softmax loss, computed in tiles (exact, O(N d + tile^2) memory).

    Args:
        image_embeds: (N, d) L2-normalised image embeddings; row i pairs with ``text_embeds[i]``.
        text_embeds: (N, d) L2-normalised text embeddings.
        temperature: scalar tensor t > 0; logits are ``image_embeds @ text_embeds.T / t``.
        label_smoothing: PyTorch ``cross_entropy`` label smoothing, in [0, 1].
        chunk_size: tile edge; ``None`` picks :func:`auto_chunk_size`.
        check_finite: raise on NaN/inf inputs or t <= 0. ``None``: only where the check needs no
            host synchronisation (CPU, not compiling).

    Returns:
        Scalar loss ``(CE(logits) + CE(logits.T)) / 2``: float64 for float64 inputs, float32
        otherwise (bf16/fp16 inputs are accumulated in fp32).
    """
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    x, y, t, _ = _prepare_inputs(image_embeds, text_embeds, temperature, None, check_finite)
    tile = _resolve_tile(chunk_size, x.shape[0], x.shape[0], x.device)
    part = _softmax_partial(x, y, None, None, 1.0 / t, label_smoothing, 0, tile)
    return part.loss_sum / x.shape[0]


def sigmoid_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    temperature: Tensor,
    bias: Tensor,
    *,
    chunk_size: Optional[int] = None,
    check_finite: Optional[bool] = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss, computed in tiles.

    ``L = (1/N) sum_ij softplus(-z_ij (x_i . y_j / t + bias))`` with z = +1 for i = j, else -1.
    Shapes and arguments as in :func:`contrastive_loss`; ``bias`` is a scalar tensor.
    """
    x, y, t, b = _prepare_inputs(image_embeds, text_embeds, temperature, bias, check_finite)
    tile = _resolve_tile(chunk_size, x.shape[0], x.shape[0], x.device)
    part = _sigmoid_partial(x, y, None, 1.0 / t, b, 0, tile)
    return part.loss_sum / x.shape[0]


def _resolve_tile(chunk_size: Optional[int], n: int, m: int, device: torch.device) -> int:
    if chunk_size is None:
        return auto_chunk_size(n, m, device)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


# ----------------------------------------------------------------------------------------------
# Distributed helpers


def _gather_rows(t: Tensor, sizes: list[int], group) -> Tensor:
    """Concatenate every rank's rows (autograd-aware); ranks may hold different row counts.

    The backward of the gather sums each rank's gradient for a block back onto its owner
    (reduce-scatter), so the owner sees the gradient of the sum of all ranks' losses.
    """
    from torch.distributed import _functional_collectives as funcol

    longest = max(sizes)
    padded = t
    if t.shape[0] < longest:
        padded = torch.cat([t, t.new_zeros(longest - t.shape[0], t.shape[1])])
    gathered = funcol.all_gather_tensor_autograd(
        padded.contiguous(), gather_dim=0, group=group if group is not None else dist.group.WORLD
    )
    if all(k == longest for k in sizes):
        return gathered
    return torch.cat([gathered[r * longest : r * longest + k] for r, k in enumerate(sizes)])


def _batch_sizes(n: int, device: torch.device, group, sync: bool) -> list[int]:
    world = dist.get_world_size(group)
    if not sync:
        return [n] * world
    local = torch.tensor([n], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    return [int(g) for g in torch.cat(gathered).tolist()]


# ----------------------------------------------------------------------------------------------
# The module


@dataclass
class ContrastiveOutput:
    """What :class:`AlignContrastiveHead` returns.

    Attributes:
        loss: scalar loss of the (global) batch; fp32, or fp64 for fp64 embeddings.
        temperature: the temperature used, after clamping (detached scalar).
        i2t_accuracy: share of images whose own text has the highest logit (ties count as hits).
        t2i_accuracy: share of texts whose own image has the highest logit.
        bias: the sigmoid loss bias (detached), ``None`` for the softmax loss.
    """

    loss: Tensor
    temperature: Tensor
    i2t_accuracy: Tensor
    t2i_accuracy: Tensor
    bias: Optional[Tensor] = None


class AlignContrastiveHead(nn.Module):
    """Learnable temperature plus the ALIGN (softmax) or SigLIP (sigmoid) loss.

    Args:
        loss_type: ``"softmax"`` (ALIGN: image->text and text->image cross entropy) or
            ``"sigmoid"`` (SigLIP: one binary term per pair, with a learnable bias).
        temperature_init: initial t; logits are cos / t. ``None``: 1.0 for softmax (the ALIGN
            paper's value; it converges near 1/64), 0.1 for sigmoid (SigLIP's logit scale 10).
        label_smoothing: softmax label smoothing (ALIGN uses 0.1); ignored by the sigmoid loss.
        learnable_temperature: whether ``temperature`` gets gradients.
        gather_distributed: with ``torch.distributed`` initialised and more than one rank, use
            every rank's pairs as negatives (the paper's global batch). The returned loss and
            accuracies are those of the global batch on every rank; the gradients are each rank's
            share, so DDP's averaging gives exactly the global-batch gradient.
        chunk_size: tile edge; ``None`` picks :func:`auto_chunk_size`.
        sigmoid_bias_init: initial bias of the sigmoid loss (SigLIP: -10).
        min_temperature: t is clamped to at least this in forward (0.01, i.e. CLIP's cap of 100
            on the logit scale). While clamped, t gets no gradient; keep it out of weight decay.
        sync_batch_sizes: exchange local batch sizes each step (one tiny collective and a host
            sync) so ranks may hold different batch sizes, e.g. a short last batch. ``False``
            skips that sync; every rank must then always pass the same N (``drop_last=True``).
        check_finite: see :func:`contrastive_loss`.

    Parameters: ``temperature`` (scalar, logits = cos / temperature) and, for the sigmoid loss,
    ``bias`` (scalar).
    """

    def __init__(
        self,
        loss_type: str = "softmax",
        temperature_init: Optional[float] = None,
        label_smoothing: float = 0.1,
        learnable_temperature: bool = True,
        gather_distributed: bool = True,
        chunk_size: Optional[int] = None,
        sigmoid_bias_init: float = -10.0,
        min_temperature: float = 1e-2,
        sync_batch_sizes: bool = True,
        check_finite: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if loss_type not in ("softmax", "sigmoid"):
            raise ValueError(f"loss_type must be 'softmax' or 'sigmoid', got {loss_type!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if temperature_init is None:
            temperature_init = 1.0 if loss_type == "softmax" else 0.1
        if not temperature_init > 0 or not min_temperature > 0:
            raise ValueError("temperature_init and min_temperature must be > 0")
        _resolve_tile(chunk_size, 1, 1, torch.device("cpu"))  # validates chunk_size early
        self.loss_type = loss_type
        self.temperature_init = float(temperature_init)
        self.label_smoothing = float(label_smoothing)
        self.gather_distributed = gather_distributed
        self.chunk_size = chunk_size
        self.sigmoid_bias_init = float(sigmoid_bias_init)
        self.min_temperature = float(min_temperature)
        self.sync_batch_sizes = sync_batch_sizes
        self.check_finite = check_finite
        self.temperature = nn.Parameter(
            torch.tensor(self.temperature_init), requires_grad=learnable_temperature
        )
        if loss_type == "sigmoid":
            self.bias = nn.Parameter(torch.tensor(self.sigmoid_bias_init))
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """Set temperature (and bias) back to their initial values (for ``_init_weights``)."""
        with torch.no_grad():
            self.temperature.fill_(self.temperature_init)
            if self.bias is not None:
                self.bias.fill_(self.sigmoid_bias_init)

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type!r}, label_smoothing={self.label_smoothing}, "
            f"min_temperature={self.min_temperature}, gather_distributed={self.gather_distributed}"
        )

    def get_temperature(self) -> Tensor:
        """The temperature used in forward: ``temperature`` clamped to ``min_temperature``."""
        return self.temperature.clamp(min=self.min_temperature)

    def logits(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """Full (N_img, N_txt) logits with the head's temperature (plus bias for sigmoid)."""
        logits = contrastive_logits(image_embeds, text_embeds, self.get_temperature())
        return logits + self.bias if self.bias is not None else logits

    def _distributed(self) -> bool:
        return (
            self.gather_distributed
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )

    def forward(self, image_embeds: Tensor, text_embeds: Tensor) -> ContrastiveOutput:
        """Loss of the pairs (image_embeds[i], text_embeds[i]).

        Args:
            image_embeds: (N, d) L2-normalised image embeddings of this rank.
            text_embeds: (N, d) L2-normalised text embeddings of this rank.
        """
        t = self.get_temperature()
        distributed = self._distributed()
        if distributed:
            _check_pair(image_embeds, text_embeds)  # N = 0 is allowed on one rank
            x, y = image_embeds, text_embeds
            if x.dtype != y.dtype:
                common = torch.promote_types(x.dtype, y.dtype)
                x, y = x.to(common), y.to(common)
            if _should_check_values(self.check_finite, x):
                _check_values({"image_embeds": x, "text_embeds": y}, {})
        else:
            x, y, t, _ = _prepare_inputs(
                image_embeds, text_embeds, t, self.bias, self.check_finite
            )
        scale = (1.0 / t).to(x.device)
        bias = self.bias
        n = x.shape[0]
        if not distributed:
            tile = _resolve_tile(self.chunk_size, n, n, x.device)
            if self.loss_type == "softmax":
                part = _softmax_partial(x, y, None, None, scale, self.label_smoothing, 0, tile)
            else:
                part = _sigmoid_partial(x, y, None, scale, bias.to(x.device), 0, tile)
            loss = part.loss_sum / n
            i2t, t2i = part.i2t_hits / n, part.t2i_hits / n
        else:
            loss, i2t, t2i = self._forward_distributed(x, y, scale)
        return ContrastiveOutput(
            loss=loss,
            temperature=t.detach(),
            i2t_accuracy=i2t,
            t2i_accuracy=t2i,
            bias=None if bias is None else bias.detach(),
        )

    def _forward_distributed(self, x: Tensor, y: Tensor, scale: Tensor):
        group = None
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = _batch_sizes(x.shape[0], x.device, group, self.sync_batch_sizes)
        total = sum(sizes)
        if total == 0:
            raise ValueError("empty global batch: every rank passed N = 0 pairs")
        offset = sum(sizes[:rank])
        x_all = _gather_rows(x, sizes, group)
        y_all = _gather_rows(y, sizes, group)
        tile = _resolve_tile(self.chunk_size, max(x.shape[0], 1), total, x.device)
        if self.loss_type == "softmax":
            part = _softmax_partial(
                x, y, x_all, y_all, scale, self.label_smoothing, offset, tile
            )
        else:
            part = _sigmoid_partial(x, y, y_all, scale, self.bias.to(x.device), offset, tile, group)
        # DDP averages gradients over ranks, so each rank's share is weighted by world / N.
        local = part.loss_sum * (world / total)
        stats = torch.stack([local.detach(), part.i2t_hits, part.t2i_hits])
        dist.all_reduce(stats, group=group)
        global_loss = stats[0] / world
        # Report the global-batch value on every rank while keeping this rank's gradient.
        loss = local + (global_loss - local).detach()
        return loss, stats[1] / total, stats[2] / total
