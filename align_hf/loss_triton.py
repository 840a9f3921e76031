"""Triton kernels for the softmax contrastive head: each logit tile is computed and reduced in one
kernel, so S = scale * x y^T never reaches global memory in the forward pass.

The torch path of :mod:`.loss_tiles` runs about ten elementwise kernels per ``tile x tile``
block (scale, two maxima, two ``exp`` passes, sums, the gradient assembly), each one reading and
writing the whole fp32 tile. Here:

* forward (:func:`softmax_stats`): one launch per ``rows_per_launch`` rows; each program owns
  ``BLOCK_M`` rows, walks every column block and runs the block GEMM (fp32 accumulation, fp64 for
  fp64 inputs) followed by the online row log-sum-exp, the label logit and the block's column
  (max, sum of exp) pair. Column pairs of one launch are merged in torch, so the extra memory is
  O(N d + (rows_per_launch / BLOCK_M) * N) instead of any N x N buffer;
* backward (:func:`softmax_grad_tile`): one kernel per ``tile x tile`` block writes
  ``G = g_row * softmax_row + g_col * softmax_col`` in the GEMM operand dtype; the two gradient
  GEMMs ``G y`` and ``G^T x`` stay in cuBLAS (:mod:`.loss_tiles`).

Backend choice (:func:`resolve_backend`, made inside the custom ops at run time, so
``torch.compile`` traces none of it): ``"auto"`` takes Triton for the softmax loss on CUDA tensors
in fp32/bf16/fp16 on compute capability >= 8.0 when ``triton`` imports, the torch tile loop
otherwise. The environment variable ``ALIGN_HF_LOSS_BACKEND`` (``auto``/``torch``/``triton``)
overrides ``"auto"``. With ``TRITON_INTERPRET=1`` set before this module is imported, a forced
``"triton"`` also runs on CPU tensors (slowly, in Triton's interpreter), which is how the test
suite checks the kernels against the float64 reference.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

try:  # triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the torch path still works
    triton = None
    tl = None

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "check_backend",
    "resolve_backend",
    "softmax_grad_tile",
    "softmax_stats",
    "triton_available",
    "triton_interpreting",
]

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "ALIGN_HF_LOSS_BACKEND"
# Tile shapes (BLOCK_M, BLOCK_N, BLOCK_K) per operand dtype; tests shrink them to cover several
# blocks with small N. 128 x 128 x 64 with 8 warps is Triton's usual bf16 GEMM tile on A100/H100.
BLOCKS = {
    torch.float64: (64, 64, 16),
    torch.float32: (128, 128, 32),
    torch.bfloat16: (128, 128, 64),
    torch.float16: (128, 128, 64),
}
NUM_WARPS, NUM_STAGES = 8, 3
# A tuning knob for benchmarks/gpu_check.sh: "BLOCK_M,BLOCK_N,BLOCK_K,WARPS,STAGES" for bf16/fp16.
TUNE_VAR = "ALIGN_HF_TRITON_TILE"
if os.environ.get(TUNE_VAR):
    _bm, _bn, _bk, NUM_WARPS, NUM_STAGES = (int(v) for v in os.environ[TUNE_VAR].split(","))
    BLOCKS[torch.bfloat16] = BLOCKS[torch.float16] = (_bm, _bn, _bk)


def triton_available() -> bool:
    """Whether ``triton`` imported (it does not say whether a GPU is present)."""
    return triton is not None


def triton_interpreting() -> bool:
    """Whether the kernels were built by Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _INTERPRETING


def check_backend(backend: Optional[str]) -> None:
    """Raise a ``ValueError`` unless ``backend`` is ``None`` or one of :data:`BACKENDS`."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


_CAPABLE: dict[int, bool] = {}


def _recent_gpu(device: torch.device) -> bool:
    # bf16 tensor-core GEMMs (and Triton's best code paths) need Ampere or newer.
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _CAPABLE[index]


def resolve_backend(backend: Optional[str], x: Tensor, sigmoid: bool = False) -> str:
    """The tile backend for embeddings ``x``: ``"torch"`` or ``"triton"``.

    ``backend`` is ``"auto"`` (or ``None``), ``"torch"`` or ``"triton"``; ``"auto"`` first looks at
    ``$ALIGN_HF_LOSS_BACKEND``. Forcing ``"triton"`` where it cannot run raises a ``ValueError``
    that says why; ``"auto"`` never does.
    """
    check_backend(backend)
    choice = "auto" if backend is None else backend
    if choice == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"${ENV_VAR} must be one of {BACKENDS}, got {env!r}")
        choice = env
    if choice == "torch":
        return "torch"
    usable = (
        triton is not None
        and not sigmoid
        and (x.device.type == "cuda" or triton_interpreting())
    )
    if choice == "auto":
        # fp64 stays on torch: GPUs run it slowly and the torch path is the exactness reference.
        # CPU tensors too: the interpreter is for tests, which force "triton".
        fast = x.device.type == "cuda" and x.dtype != torch.float64
        return "triton" if usable and fast and _recent_gpu(x.device) else "torch"
    if triton is None:
        raise ValueError("backend='triton' needs the `triton` package (pip install triton)")
    if sigmoid:
        raise ValueError("backend='triton' implements the softmax loss only; use 'torch' or 'auto'")
    if not usable:
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {x.device}); on CPU set "
            "TRITON_INTERPRET=1 before importing align_hf to run the kernels in Triton's interpreter"
        )
    return "triton"


def _precision(dtype: torch.dtype) -> str:
    # fp32 GEMMs follow torch's own setting (TF32 only when torch allows it for matmul); other
    # dtypes ignore the setting and get Triton's default.
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


if triton is not None:

    @triton.jit
    def _logit_block(
        x_ptr, y_ptr, rows, cols, row_ok, col_ok, d, stride_x, stride_y, scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """scale * x[rows] . y[cols]^T as a (BLOCK_M, BLOCK_N) block; -inf outside the matrix."""
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=scale.dtype)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < d
            a = tl.load(
                x_ptr + rows[:, None] * stride_x + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :], other=0.0,
            )
            b = tl.load(
                y_ptr + cols[None, :] * stride_y + ks[:, None],
                mask=k_ok[:, None] & col_ok[None, :], other=0.0,
            )
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
        # The scale multiplies the accumulated block: one rounding, as in the torch path.
        return tl.where(row_ok[:, None] & col_ok[None, :], acc * scale, float("-inf"))

    @triton.jit
    def _softmax_stats_kernel(
        x_ptr, y_ptr, scale_ptr,
        row_lse_ptr, row_max_ptr, label_ptr, col_max_ptr, col_sum_ptr,
        n, m, d, stride_x, stride_y, label_offset,
        COLUMNS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Rows [pid * BLOCK_M, +BLOCK_M) against all m columns: row log-sum-exp, row max, label
        logit (column label_offset + row), and with COLUMNS this block's column (max, sum exp)."""
        pid = tl.program_id(0).to(tl.int64)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n
        scale = tl.load(scale_ptr)
        r_max = tl.full((BLOCK_M,), float("-inf"), scale.dtype)
        r_sum = tl.zeros((BLOCK_M,), scale.dtype)
        label = tl.zeros((BLOCK_M,), scale.dtype)
        for j0 in range(0, m, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = cols < m
            s = _logit_block(
                x_ptr, y_ptr, rows, cols, row_ok, col_ok, d, stride_x, stride_y, scale,
                BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
            )
            # The label logit is read from the same block values the maxima see (accuracy ties);
            # only blocks that cross this row block's label columns pay for the pass.
            first_label = pid * BLOCK_M + label_offset
            if (j0 < first_label + BLOCK_M) & (j0 + BLOCK_N > first_label):
                hit = rows[:, None] + label_offset == cols[None, :]
                label += tl.sum(tl.where(hit, s, 0.0), axis=1)
            new = tl.maximum(r_max, tl.max(s, axis=1))
            ref = tl.where(new == float("-inf"), 0.0, new)  # rows past n: avoid inf - inf
            r_sum = r_sum * tl.exp(r_max - ref) + tl.sum(tl.exp(s - ref[:, None]), axis=1)
            r_max = new
            if COLUMNS:
                c_max = tl.max(s, axis=0)
                c_ref = tl.where(c_max == float("-inf"), 0.0, c_max)
                c_sum = tl.sum(tl.exp(s - c_ref[None, :]), axis=0)
                tl.store(col_max_ptr + pid * m + cols, c_max, mask=col_ok)
                tl.store(col_sum_ptr + pid * m + cols, c_sum, mask=col_ok)
        tl.store(row_lse_ptr + rows, r_max + tl.log(tl.where(row_ok, r_sum, 1.0)), mask=row_ok)
        tl.store(row_max_ptr + rows, r_max, mask=row_ok)
        tl.store(label_ptr + rows, label, mask=row_ok)

    @triton.jit
    def _softmax_grad_kernel(
        x_ptr, y_ptr, scale_ptr, row_lse_ptr, col_lse_ptr, g_row_ptr, g_col_ptr, out_ptr,
        n, m, d, stride_x, stride_y, stride_out,
        COLUMNS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """out = g_row * exp(S - row_lse) (+ g_col * exp(S - col_lse)) for one output block."""
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n
        col_ok = cols < m
        scale = tl.load(scale_ptr)
        s = _logit_block(
            x_ptr, y_ptr, rows, cols, row_ok, col_ok, d, stride_x, stride_y, scale,
            BLOCK_M, BLOCK_N, BLOCK_K, PRECISION,
        )
        lse = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0)
        g = tl.load(g_row_ptr + rows, mask=row_ok, other=0.0)
        grad = g[:, None] * tl.exp(s - lse[:, None])
        if COLUMNS:
            c_lse = tl.load(col_lse_ptr + cols, mask=col_ok, other=0.0)
            c_g = tl.load(g_col_ptr + cols, mask=col_ok, other=0.0)
            grad += c_g[None, :] * tl.exp(s - c_lse[None, :])
        ptrs = out_ptr + rows[:, None] * stride_out + cols[None, :]
        tl.store(ptrs, grad.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _interpreted() -> bool:
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_softmax_stats_kernel, InterpretedFunction)


# Fixed when the kernels are defined (as Triton does), and a plain constant for torch.compile.
_INTERPRETING = _interpreted()


def _blocks(dtype: torch.dtype) -> tuple[int, int, int]:
    return BLOCKS.get(dtype, BLOCKS[torch.float32])


def softmax_stats(
    x: Tensor, y: Tensor, scale: Tensor, columns: bool, label_offset: int, rows_per_launch: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Softmax statistics of S = scale * x y^T, by the Triton kernel.

    Args:
        x: (n, d) contiguous operand; y: (m, d), same dtype; scale: 0-dim tensor in the
            accumulation dtype (fp32, or fp64 for fp64 operands).
        columns: also return the column statistics; label_offset: row i's label is column
            ``label_offset + i``; rows_per_launch: rows per kernel launch (bounds the
            ``(rows_per_launch / BLOCK_M, m)`` scratch of column partials).

    Returns:
        ``(row_lse (n,), row_max (n,), label_logits (n,), col_max (m,|0), col_sum (m,|0))`` in
        the accumulation dtype, with ``col_lse = col_max + log(col_sum)``.
    """
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    acc = scale.dtype
    opts = dict(dtype=acc, device=x.device)
    row_lse, row_max, labels = (torch.empty(n, **opts) for _ in range(3))
    n_cols = m if columns else 0
    col_max = torch.full((n_cols,), float("-inf"), **opts)
    col_sum = torch.zeros(n_cols, **opts)
    bm, bn, bk = _blocks(x.dtype)
    rows_per_launch = max(bm, -(-rows_per_launch // bm) * bm)
    for r0 in range(0, n, rows_per_launch):
        r1 = min(n, r0 + rows_per_launch)
        blocks = -(-(r1 - r0) // bm)
        part_max = torch.empty((blocks, n_cols), **opts)
        part_sum = torch.empty((blocks, n_cols), **opts)
        _softmax_stats_kernel[(blocks,)](
            x[r0:r1], y, scale, row_lse[r0:r1], row_max[r0:r1], labels[r0:r1],
            part_max, part_sum, r1 - r0, m, d, x.stride(0), y.stride(0), label_offset + r0,
            COLUMNS=columns, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION=_precision(x.dtype),
            num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
        if columns:
            # Merge the launch's per-block column pairs into the running (max, sum) pairs.
            new = torch.maximum(col_max, part_max.amax(dim=0))
            part = part_max.sub_(new).exp_().mul_(part_sum).sum(dim=0)  # in place: no copies
            col_sum = col_sum * torch.exp(col_max - new) + part
            col_max = new
    return row_lse, row_max, labels, col_max, col_sum


def softmax_grad_tile(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    row_lse: Tensor,
    g_row: Tensor,
    col_lse: Optional[Tensor] = None,
    g_col: Optional[Tensor] = None,
) -> Tensor:
    """``G = g_row[:, None] * exp(S - row_lse[:, None])`` (``+ g_col[None] * exp(S - col_lse[None])``
    when the column terms are given) for S = scale * x y^T, by the Triton kernel.

    x: (n, d), y: (m, d) operand slices with unit column stride; the vectors are in the
    accumulation dtype. Returns G as an (n, m) tensor in the operand dtype, ready for the
    gradient GEMMs.
    """
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    out = torch.empty((n, m), dtype=x.dtype, device=x.device)
    columns = col_lse is not None
    bm, bn, bk = _blocks(x.dtype)
    _softmax_grad_kernel[(-(-n // bm), -(-m // bn))](
        x, y, scale, row_lse, col_lse if columns else row_lse, g_row,
        g_col if columns else g_row, out, n, m, d, x.stride(0), y.stride(0), out.stride(0),
        COLUMNS=columns, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION=_precision(x.dtype),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out
