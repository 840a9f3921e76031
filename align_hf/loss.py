"""The ALIGN contrastive head: exact softmax / sigmoid losses that never build the N x N logits.

ALIGN trains with a global batch of 16384 pairs. The textbook loss materialises the (N, N) logit
matrix several times over (logits, softmax, gradient), which costs O(N^2) memory. Here the logits
are visited in ``tile x tile`` blocks instead.

The kernels (forward keeps O(N) running log-sum-exp statistics, backward recomputes each block)
live in :mod:`.loss_tiles`, with the formulas of both losses. Peak memory is O(N d + tile^2) and
the result equals the textbook loss up to floating point rounding (tests check 1e-9 in float64).

Under ``torch.distributed`` each rank gathers every rank's embeddings (autograd-aware), scores
its own rows against all columns, and weights its share so that DDP's gradient averaging yields
exactly the gradient of the global-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .loss_tiles import TiledCrossEntropy, accumulation_dtype
from .loss_triton import check_backend

__all__ = [
    "AlignContrastiveHead",
    "ContrastiveOutput",
    "contrastive_logits",
    "contrastive_loss",
    "sigmoid_loss",
    "auto_chunk_size",
]


def auto_chunk_size(num_rows: int, num_cols: int, device: torch.device | str = "cpu") -> int:
    """Tile edge used when ``chunk_size=None``.

    Each tile costs a few ``tile^2`` fp32 temporaries (16 MiB each at 2048) and about twenty
    tensor ops, so larger tiles mean fewer ops and fewer thread synchronisations; on CPU, 2048 is
    where larger tiles stopped paying (``benchmarks/bench_loss.py --chunk-size`` measures it).
    GPUs want larger tiles to fill the SMs and amortise kernel launches (8192 there is an untuned
    guess).
    """
    device = torch.device(device)
    tile = 8192 if device.type == "cuda" else 2048
    return max(1, min(tile, max(num_rows, num_cols)))


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
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise ValueError(f"{name} must be a float or a one-element floating tensor, got {value!r}")
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
    acc = accumulation_dtype(x.dtype)
    if isinstance(temperature, (int, float)):
        temperature = torch.tensor(float(temperature), dtype=acc, device=x.device)
    if isinstance(bias, (int, float)):
        bias = torch.tensor(float(bias), dtype=acc, device=x.device)
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

    loss_sum: Tensor  # sum over this rank's pairs of the per-pair loss
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
    backend: Optional[str] = "auto",
) -> _Partial:
    """Sum over local pairs of (CE_i2t + CE_t2i) / 2; ``x_all=None`` means single process."""
    eps = float(label_smoothing)
    check_backend(backend)  # resolved inside the tile ops, at run time
    backend = backend or "auto"  # the ops' schema takes a string; None means "auto" as documented
    if x_all is None:
        # One pass: rows give image->text, columns text->image.
        ce_i2t, ce_t2i, max_i2t, max_t2i, label_i2t = TiledCrossEntropy.apply(
            x_loc, y_loc, scale, None, eps, False, True, 0, tile, backend
        )
        label_t2i = label_i2t
    else:
        # Local rows against every rank's columns, once per direction.
        ce_i2t, _, max_i2t, _, label_i2t = TiledCrossEntropy.apply(
            x_loc, y_all, scale, None, eps, False, False, label_offset, tile, backend
        )
        ce_t2i, _, max_t2i, _, label_t2i = TiledCrossEntropy.apply(
            y_loc, x_all, scale, None, eps, False, False, label_offset, tile, backend
        )
    return _Partial(
        0.5 * (ce_i2t.sum() + ce_t2i.sum()),
        (label_i2t >= max_i2t).sum().to(ce_i2t.dtype),
        (label_t2i >= max_t2i).sum().to(ce_i2t.dtype),
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
    cols = y_loc if y_all is None else y_all
    row_loss, _, row_max, col_max, labels = TiledCrossEntropy.apply(
        x_loc, cols, scale, bias, 0.0, True, True, label_offset, tile
    )
    if y_all is not None:
        # Text -> image accuracy needs each column's max over every rank's rows.
        col_max = _funcol().all_reduce(col_max, "max", _group(group))
        col_max = col_max[label_offset : label_offset + x_loc.shape[0]]
    return _Partial(
        row_loss.sum(),
        (labels >= row_max).sum().to(row_loss.dtype),
        (labels >= col_max).sum().to(row_loss.dtype),
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
    temperature: Tensor | float,
    *,
    label_smoothing: float = 0.1,
    chunk_size: Optional[int] = None,
    check_finite: Optional[bool] = None,
    backend: Optional[str] = "auto",
) -> Tensor:
    """ALIGN's symmetric softmax loss, computed in tiles (exact, O(N d + tile^2) memory).

    Args:
        image_embeds: (N, d) L2-normalised image embeddings; row i pairs with ``text_embeds[i]``.
        text_embeds: (N, d) L2-normalised text embeddings.
        temperature: t > 0, a scalar tensor (gets a gradient) or a float; logits are
            ``image_embeds @ text_embeds.T / t``.
        label_smoothing: PyTorch ``cross_entropy`` label smoothing, in [0, 1].
        chunk_size: tile edge; ``None`` picks :func:`auto_chunk_size`.
        check_finite: raise on NaN/inf inputs or t <= 0. ``None``: only where the check needs no
            host synchronisation (CPU, not compiling).
        backend: ``"auto"`` (Triton kernels on CUDA when ``triton`` imports, else torch),
            ``"torch"`` or ``"triton"``; see :func:`align_hf.loss_triton.resolve_backend`.

    Returns:
        Scalar loss ``(CE(logits) + CE(logits.T)) / 2``: float64 for float64 inputs, float32
        otherwise (bf16/fp16 inputs are accumulated in fp32).
    """
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    x, y, t, _ = _prepare_inputs(image_embeds, text_embeds, temperature, None, check_finite)
    tile = _resolve_tile(chunk_size, x.shape[0], x.shape[0], x.device)
    part = _softmax_partial(x, y, None, None, 1.0 / t, label_smoothing, 0, tile, backend)
    return part.loss_sum / x.shape[0]


def sigmoid_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    temperature: Tensor | float,
    bias: Tensor | float,
    *,
    chunk_size: Optional[int] = None,
    check_finite: Optional[bool] = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss, computed in tiles.

    ``L = (1/N) sum_ij softplus(-z_ij (x_i . y_j / t + bias))`` with z = +1 for i = j, else -1.
    Shapes and arguments as in :func:`contrastive_loss`; ``bias`` is a scalar tensor or float.
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
    longest = max(sizes)
    padded = t
    if t.shape[0] < longest:
        padded = torch.cat([t, t.new_zeros(longest - t.shape[0], t.shape[1])])
    gathered = _funcol().all_gather_tensor_autograd(
        padded.contiguous(), gather_dim=0, group=_group(group)
    )
    if all(k == longest for k in sizes):
        return gathered
    return torch.cat([gathered[r * longest : r * longest + k] for r, k in enumerate(sizes)])


def _batch_sizes(n: int, device: torch.device, group, sync: bool) -> list[int]:
    world = dist.get_world_size(group)
    if not sync:
        return [n] * world
    local = torch.tensor([n], dtype=torch.int64, device=device)
    return [int(k) for k in _funcol().all_gather_tensor(local, 0, _group(group)).tolist()]


def _funcol():
    # Functional collectives: traceable by torch.compile, and autograd-aware where needed.
    from torch.distributed import _functional_collectives

    return _functional_collectives


def _group(group):
    return group if group is not None else dist.group.WORLD


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
        backend: tile kernels of the softmax loss, see :func:`contrastive_loss`.

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
        backend: Optional[str] = "auto",
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
        check_backend(backend)
        self.loss_type = loss_type
        self.temperature_init = float(temperature_init)
        self.label_smoothing = float(label_smoothing)
        self.gather_distributed = gather_distributed
        self.chunk_size = chunk_size
        self.sigmoid_bias_init = float(sigmoid_bias_init)
        self.min_temperature = float(min_temperature)
        self.sync_batch_sizes = sync_batch_sizes
        self.check_finite = check_finite
        self.backend = backend
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
                part = _softmax_partial(
                    x, y, None, None, scale, self.label_smoothing, 0, tile, self.backend
                )
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
                x, y, x_all, y_all, scale, self.label_smoothing, offset, tile, self.backend
            )
        else:
            part = _sigmoid_partial(x, y, y_all, scale, self.bias.to(x.device), offset, tile, group)
        # DDP averages gradients over ranks, so each rank's share is weighted by world / N.
        local = part.loss_sum * (world / total)
        stats = torch.stack([local.detach(), part.i2t_hits, part.t2i_hits])
        stats = _funcol().all_reduce(stats, "sum", _group(group))
        global_loss = stats[0] / world
        # Report the global-batch value on every rank while keeping this rank's gradient.
        loss = local + (global_loss - local).detach()
        return loss, stats[1] / total, stats[2] / total
