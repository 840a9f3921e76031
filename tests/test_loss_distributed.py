"""Two CPU processes (gloo) must reproduce one process holding the whole batch."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from align_hf.loss import AlignContrastiveHead

WORLD = 2
D_IN, D = 6, 5
TOL = 1e-9

# name -> (loss_type, label_smoothing, local batch sizes per rank, sync_batch_sizes)
SCENARIOS = {
    "softmax_equal": ("softmax", 0.1, [4, 4], True),
    "softmax_uneven": ("softmax", 0.0, [5, 3], True),
    "softmax_no_sync": ("softmax", 0.1, [3, 3], False),
    "sigmoid_uneven": ("sigmoid", 0.0, [3, 5], True),
}


def global_batch(name):
    """Seeded features and embeddings of the whole batch, identical in every process."""
    sizes = SCENARIOS[name][2]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    n = sum(sizes)
    feats = torch.randn(2, n, D_IN, generator=gen, dtype=torch.float64)
    emb = torch.randn(2, n, D, generator=gen, dtype=torch.float64)
    emb[1] += emb[0]  # make pairs related so accuracies are not trivially 0
    return feats[0], feats[1], F.normalize(emb[0], dim=-1), F.normalize(emb[1], dim=-1)


class TinyDualEncoder(nn.Module):
    """Two linear towers and the head: enough to check what DDP does with the gradients."""

    def __init__(self, loss_type, eps, sync):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.image = nn.Linear(D_IN, D).double()
        self.text = nn.Linear(D_IN, D).double()
        with torch.no_grad():
            for p in list(self.image.parameters()) + list(self.text.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        self.head = AlignContrastiveHead(
            loss_type, temperature_init=0.1, label_smoothing=eps, chunk_size=3,
            sync_batch_sizes=sync,
        ).double()

    def embed(self, img, txt):
        return F.normalize(self.image(img), dim=-1), F.normalize(self.text(txt), dim=-1)

    def forward(self, img, txt):
        return self.head(*self.embed(img, txt)).loss


def naive_loss(x, y, t, eps, bias=None):
    logits = x @ y.T / t
    if bias is not None:
        signs = 2 * torch.eye(x.shape[0], dtype=x.dtype) - 1
        return -F.logsigmoid(signs * (logits + bias)).sum(dim=-1).mean()
    labels = torch.arange(x.shape[0])
    return (
        F.cross_entropy(logits, labels, label_smoothing=eps)
        + F.cross_entropy(logits.T, labels, label_smoothing=eps)
    ) / 2


def _worker(rank, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    results = {}
    try:
        for name, (loss_type, eps, sizes, sync) in SCENARIOS.items():
            img, txt, xs, ys = global_batch(name)
            lo = sum(sizes[:rank])
            hi = lo + sizes[rank]
            # Embedding level: this rank's loss value and raw gradients.
            head = AlignContrastiveHead(
                loss_type, temperature_init=0.05, label_smoothing=eps, chunk_size=2,
                sync_batch_sizes=sync,
            ).double()
            x = xs[lo:hi].clone().requires_grad_(True)
            y = ys[lo:hi].clone().requires_grad_(True)
            out = head(x, y)
            out.loss.backward()
            results[name] = {
                "loss": out.loss.detach(),
                "i2t": out.i2t_accuracy,
                "t2i": out.t2i_accuracy,
                "gx": x.grad,
                "gy": y.grad,
                "gt": head.temperature.grad,
                "gb": None if head.bias is None else head.bias.grad,
            }
            # Model level: DDP averages the gradients of every parameter.
            model = nn.parallel.DistributedDataParallel(TinyDualEncoder(loss_type, eps, sync))
            model(img[lo:hi], txt[lo:hi]).backward()
            results[name + "/ddp"] = {k: p.grad.clone() for k, p in model.module.named_parameters()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("loss_dist")
    ctx = mp.start_processes(
        _worker, args=(str(out_dir / "store"), str(out_dir)), nprocs=WORLD, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed workers did not finish within 240 s")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_embedding_gradients_match_whole_batch(rank_results, name):
    loss_type, eps, sizes, _ = SCENARIOS[name]
    _, _, xs, ys = global_batch(name)
    x, y = xs.clone().requires_grad_(True), ys.clone().requires_grad_(True)
    # The head stores its initial temperature as a float32 tensor before .double().
    t = torch.tensor(0.05).double().requires_grad_(True)
    b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    loss = naive_loss(x, y, t, eps, b if loss_type == "sigmoid" else None)
    loss.backward()
    logits = xs @ ys.T
    labels = torch.arange(sum(sizes))
    i2t = (logits.argmax(1) == labels).double().mean()
    t2i = (logits.argmax(0) == labels).double().mean()
    assert 0 < float(i2t) and 0 < float(t2i)
    for rank, res in enumerate(rank_results):
        r = res[name]
        lo = sum(sizes[:rank])
        hi = lo + sizes[rank]
        # Every rank reports the global-batch loss and accuracies.
        assert abs(float(r["loss"] - loss.detach())) <= TOL
        assert float(r["i2t"]) == pytest.approx(float(i2t))
        assert float(r["t2i"]) == pytest.approx(float(t2i))
        # The gathered copies send their gradients home: world x d(global loss)/d(own rows),
        # which DDP's 1/world averaging turns into the global gradient.
        assert float((r["gx"] / WORLD - x.grad[lo:hi]).abs().max()) <= TOL
        assert float((r["gy"] / WORLD - y.grad[lo:hi]).abs().max()) <= TOL
    mean_gt = sum(res[name]["gt"] for res in rank_results) / WORLD
    assert abs(float(mean_gt - t.grad)) <= TOL
    if loss_type == "sigmoid":
        mean_gb = sum(res[name]["gb"] for res in rank_results) / WORLD
        assert abs(float(mean_gb - b.grad)) <= TOL


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_parameter_gradients_match_whole_batch(rank_results, name):
    loss_type, eps, _, sync = SCENARIOS[name]
    img, txt, _, _ = global_batch(name)
    model = TinyDualEncoder(loss_type, eps, sync)
    x, y = model.embed(img, txt)
    head = model.head
    loss = naive_loss(x, y, head.temperature, eps, head.bias)
    loss.backward()
    expected = {k: p.grad for k, p in model.named_parameters()}
    assert "head.temperature" in expected
    for res in rank_results:
        got = res[name + "/ddp"]
        assert got.keys() == expected.keys()
        for k in expected:
            assert float((got[k] - expected[k]).abs().max()) <= TOL, k
