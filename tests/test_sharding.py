"""align_hf.training.sharding: FSDP2 (``fully_shard``, transformers' default FSDP) with AlignModel.

Two CPU processes (gloo) shard a tiny AlignModel the way Accelerate's FSDP2 preparation does, with
the 0-d temperature left out by :func:`replicate_scalars`. One backward over each rank's half of a
batch, then :func:`average_gradients`, must give the gradients and the gradient norm of one
process holding the whole batch (the contrastive loss is over the global batch). (The Trainer
itself turns FSDP on only on accelerators, so its wiring is not run here.)
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.multiprocessing as mp

from align_hf.testing import tiny_model
from align_hf.training.sharding import average_gradients, replicate_scalars, scalar_parameters

WORLD = 2


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (4, 7), generator=g)
    return ids, torch.ones_like(ids), torch.randn(4, 3, 32, 32, generator=g)


def _model():
    return tiny_model(seed=0).eval()  # eval: no dropout, BatchNorm statistics fixed (as --freeze_batch_norm)


def _grads(model) -> dict[str, torch.Tensor]:
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731
    return {n: full(p.grad).detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from align_hf.training.sharding import unsharded_fsdp2

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=WORLD)
    result = {}
    try:
        fully_shard(_model())
    except ValueError as err:  # why replicate_scalars exists
        result["plain_error"] = str(err)
    model = _model()
    ids, mask, pixels = _batch(rank)
    with torch.no_grad():
        before = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    plugin = types.SimpleNamespace(fsdp_version=2, ignored_modules=None)
    replicated = replicate_scalars(plugin, model)
    ignored = {p for m in plugin.ignored_modules for p in m.parameters()}  # what Accelerate hands fully_shard
    for module in model.modules():
        if module is not model and type(module).__name__.endswith("Layer"):
            fully_shard(module, ignored_params=ignored)
    fully_shard(model, ignored_params=ignored)
    with torch.no_grad(), unsharded_fsdp2(model):  # evaluation under FSDP2: full parameters
        result["text_features_error"] = float((model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output - before).abs().max())
    model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss.backward()
    result["local_temperature_grad"] = float(replicated[0].grad)
    average_gradients(replicated)
    result["norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    result["grads"] = _grads(model)
    torch.save(result, f"{path}.{rank}")
    dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_fsdp2_with_the_temperature_replicated_equals_one_process(tmp_path):
    path = str(tmp_path / "rendezvous")
    mp.start_processes(_worker, args=(path,), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(f"{path}.{r}") for r in range(WORLD)]

    reference = _model()
    ids, mask, pixels = (torch.cat(parts) for parts in zip(*(_batch(r) for r in range(WORLD))))
    reference(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss.backward()
    expected = _grads(reference)
    expected_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9))

    assert "scalar" in ranks[0]["plain_error"]  # fully_shard refuses the 0-d temperature
    temperature = "contrastive_head.temperature"
    local = [r["local_temperature_grad"] for r in ranks]
    assert local[0] != pytest.approx(local[1], rel=1e-3)  # each rank's share differs: averaging is needed
    for result in ranks:
        assert result["text_features_error"] < 1e-6
        assert result["norm"] == pytest.approx(expected_norm, rel=1e-5)
        assert result["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=2e-6, rtol=1e-4, msg=name)
        assert result["grads"][temperature].item() == pytest.approx(expected[temperature].item(), rel=1e-5)


def test_replicate_scalars_only_touches_fsdp2_and_keeps_user_choices():
    model = _model()
    assert [p.shape for p in scalar_parameters(model)] == [torch.Size([])]
    fsdp1 = types.SimpleNamespace(fsdp_version=1, ignored_modules=None)
    assert replicate_scalars(fsdp1, model) == [] and fsdp1.ignored_modules is None
    assert replicate_scalars(None, model) == []
    by_name = types.SimpleNamespace(fsdp_version=2, ignored_modules="text_projection")
    params = replicate_scalars(by_name, model)
    assert params == [model.contrastive_head.temperature]
    assert by_name.ignored_modules == [model.text_projection, model.contrastive_head]
    again = replicate_scalars(by_name, model)  # idempotent
    assert again == params and by_name.ignored_modules == [model.text_projection, model.contrastive_head]
    average_gradients(params)  # outside torch.distributed: nothing to do, no error
