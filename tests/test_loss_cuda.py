"""The contrastive head on a GPU: exactness, low precision, no host syncs, torch.compile, the model;
each for the torch tile loop and the Triton kernels (``backend="auto"`` picks Triton on CUDA).

Skipped where CUDA is absent (CI); run on a GPU machine with
``python -m pytest tests/test_loss_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from align_hf.loss import AlignContrastiveHead, contrastive_loss, sigmoid_loss
from align_hf.loss_triton import resolve_backend, triton_available
from test_loss import naive_sigmoid_loss, naive_softmax_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no triton")),
]


def pair(n, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5 * x
    return F.normalize(x, dim=-1).cuda().to(dtype), F.normalize(y, dim=-1).cuda().to(dtype)


def value_and_grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    loss = fn(*leaves)
    return (loss, *torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("loss_type,backend", [("softmax", b) for b in BACKENDS] + [("sigmoid", "torch")])
@pytest.mark.parametrize("n,d,chunk", [(1, 8, None), (97, 33, 16), (300, 64, 128), (1031, 40, 256)])
def test_float64_on_cuda_matches_naive(loss_type, backend, n, d, chunk):
    x, y = pair(n, d, torch.float64, seed=n)
    t = torch.tensor(0.05, dtype=torch.float64, device="cuda")
    if loss_type == "softmax":
        ours = value_and_grads(lambda a, b, s: contrastive_loss(a, b, s, label_smoothing=0.1, chunk_size=chunk, backend=backend), x, y, t)
        ref = value_and_grads(lambda a, b, s: naive_softmax_loss(a, b, s, 0.1), x, y, t)
    else:
        bias = torch.tensor(-3.0, dtype=torch.float64, device="cuda")
        ours = value_and_grads(lambda a, b, s, c: sigmoid_loss(a, b, s, c, chunk_size=chunk), x, y, t, bias)
        ref = value_and_grads(naive_sigmoid_loss, x, y, t, bias)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max().item() <= 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_low_precision_close_to_fp32(dtype, tol, backend):
    x, y = pair(2048, 128, torch.float32, seed=3)
    t = torch.tensor(0.02, device="cuda")
    full = value_and_grads(lambda a, b, s: contrastive_loss(a, b, s, chunk_size=512, backend="torch"), x, y, t)
    low = value_and_grads(lambda a, b, s: contrastive_loss(a, b, s, chunk_size=512, backend=backend), x.to(dtype), y.to(dtype), t)
    assert low[0].dtype == torch.float32  # accumulated in fp32
    assert abs(low[0].item() - full[0].item()) <= tol * abs(full[0].item())
    for a, b in zip(low[1:], full[1:]):
        rel = (a.float() - b).norm() / b.norm()
        assert rel.item() <= 5 * tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_synchronisation_in_forward_and_backward(backend):
    head = AlignContrastiveHead(learnable_temperature=True, backend=backend).cuda()
    x, y = pair(4096, 64, torch.float32, seed=5)
    x.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = head(x, y)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item() and x.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_matches_eager(backend):
    x, y = pair(1500, 64, torch.float32, seed=7)
    t = torch.tensor(0.03, device="cuda")

    def fn(a, b, s):
        return contrastive_loss(a, b, s, chunk_size=512, backend=backend)

    eager = value_and_grads(fn, x, y, t)
    compiled = value_and_grads(torch.compile(fn, fullgraph=True), x, y, t)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_autocast_bf16_model_step():
    from align_hf.testing import tiny_model

    model = tiny_model(seed=0).cuda().train()
    pixel_values = torch.randn(8, 3, 64, 64, device="cuda")
    input_ids = torch.randint(5, 1000, (8, 12), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    out.loss.backward()
    assert torch.isfinite(out.loss).item()
    assert model.contrastive_head.temperature.grad is not None


@pytest.mark.skipif(not triton_available(), reason="no triton")
def test_auto_picks_triton_for_the_softmax_loss_on_cuda(monkeypatch):
    monkeypatch.delenv("ALIGN_HF_LOSS_BACKEND", raising=False)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert resolve_backend("auto", torch.zeros(2, 2, device="cuda", dtype=dtype)) == "triton"
    assert resolve_backend("auto", torch.zeros(2, 2, device="cuda", dtype=torch.float64)) == "torch"
    assert resolve_backend("auto", torch.zeros(2, 2, device="cuda"), sigmoid=True) == "torch"


@pytest.mark.skipif(not triton_available(), reason="no triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_torch_path_at_production_tiles(dtype):
    # Several launches and column blocks at the default block sizes, with a partial last block.
    x, y = pair(9000, 640, dtype, seed=11)
    t = torch.tensor(1 / 64, device="cuda")
    ref = value_and_grads(lambda a, b, s: contrastive_loss(a, b, s, chunk_size=2048, backend="torch"), x, y, t)
    tri = value_and_grads(lambda a, b, s: contrastive_loss(a, b, s, chunk_size=2048, backend="triton"), x, y, t)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(tri, ref):
        rel = (a.float() - b.float()).abs().max() / b.float().abs().max()
        assert rel.item() <= tol
