"""``--sync_batch_norm`` conversion in one process (the two-process equality with the doubled batch
is in tests/test_trainer_distributed.py): the converted image tower computes what it did before
(timm's fused activations kept), with the same parameter and buffer tensors."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d

from align_hf.testing import tiny_model
from align_hf.training.sync_batch_norm import (
    PortableSyncBatchNorm2d,
    PortableSyncBatchNormAct2d,
    convert_sync_batch_norm,
)


def _norms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_conversion_keeps_outputs_parameters_and_state_dict(device_type):
    model = tiny_model(seed=0).train()
    reference = tiny_model(seed=0).train()
    before = dict(model.vision_model.state_dict(keep_vars=True))
    count = convert_sync_batch_norm(model.vision_model, device_type)
    assert count == len(_norms(reference.vision_model)) > 10
    assert any(isinstance(m, BatchNormAct2d) for m in reference.vision_model.modules())
    after = model.vision_model.state_dict(keep_vars=True)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # same tensors
    norms = _norms(model.vision_model)
    if device_type == "cpu":
        assert all(type(m) in (PortableSyncBatchNorm2d, PortableSyncBatchNormAct2d) for m in norms)
    else:  # torch's SyncBatchNorm (timm's SyncBatchNormAct for the fused layers), used on GPUs
        assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for train in (True, False):  # no process group: batch statistics of this process, as before
        model.train(train), reference.train(train)
        torch.testing.assert_close(model.encode_image(pixels), reference.encode_image(pixels), rtol=0, atol=1e-6)
    # Running statistics moved identically (one train-mode forward each).
    for ours, theirs in zip(norms, _norms(reference.vision_model)):
        torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_torch_converter_alone_would_drop_timms_fused_activation():
    """Why the conversion goes through timm: torch's turns BatchNormAct2d into a plain SyncBatchNorm."""
    model = tiny_model(seed=0).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = model.encode_image(pixels)
    model.vision_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.vision_model)
    assert not torch.allclose(model.encode_image(pixels), expected, atol=1e-3)
