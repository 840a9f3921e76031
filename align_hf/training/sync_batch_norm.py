"""``--sync_batch_norm``: BatchNorm over the global batch instead of each rank's share.

Under DDP every rank normalises with the statistics of its own N samples, so W ranks train a
different objective from one process holding the W x N batch (and DDP's buffer broadcast keeps
rank 0's running statistics). Synchronised BatchNorm computes each layer's mean and variance over
all ranks' samples, in forward and in backward.

:func:`convert_sync_batch_norm` converts the image tower's BatchNorms, timm's ``BatchNormAct2d``
included:

* on CUDA / XPU / HPU, with timm's ``convert_sync_batchnorm`` into ``torch.nn.SyncBatchNorm`` (and
  timm's ``SyncBatchNormAct``). ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` alone is not
  enough: it turns a ``BatchNormAct2d`` into a plain ``SyncBatchNorm`` whose forward skips the
  fused activation;
* elsewhere (CPU processes with gloo), torch refuses: ``SyncBatchNorm`` raises on CPU tensors and
  DDP refuses to wrap a CPU module holding one. There :class:`PortableSyncBatchNorm2d` /
  :class:`PortableSyncBatchNormAct2d` (plain ``BatchNorm2d`` / ``BatchNormAct2d`` subclasses) compute
  the same statistics from each rank's mean, M2 and count, gathered with an autograd-aware
  all-gather whose backward sums every rank's contribution (as torch's all-reduce of the gradient
  statistics does).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d, convert_sync_batchnorm
from torch import Tensor, nn

__all__ = [
    "PortableSyncBatchNorm2d",
    "PortableSyncBatchNormAct2d",
    "convert_sync_batch_norm",
    "native_sync_devices",
    "sync_image_tower",
]


logger = logging.getLogger(__name__)


def native_sync_devices() -> tuple[str, ...]:
    """Device types ``torch.nn.SyncBatchNorm`` accepts in a synchronised forward."""
    return ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


def _sync_needed(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    if not norm.training or not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(norm.process_group or dist.group.WORLD) > 1


def _synchronised(norm: nn.modules.batchnorm._BatchNorm, input: Tensor) -> Tensor:
    """BatchNorm of ``input`` (B, C, H, W) in train mode with the statistics of every rank's batch."""
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # cumulative moving average
            factor = 1.0 / float(norm.num_batches_tracked)
    mean, var, count = _global_moments(input, norm.process_group or dist.group.WORLD)
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {count} over all ranks")
    shape = (1, -1) + (1,) * (input.ndim - 2)
    out = (input.to(mean.dtype) - mean.reshape(shape)) * torch.rsqrt(var + norm.eps).reshape(shape)
    if norm.affine:
        out = out * norm.weight.reshape(shape) + norm.bias.reshape(shape)
    if norm.track_running_stats:
        with torch.no_grad():
            # The running variance is the unbiased estimate, as in torch's BatchNorm.
            norm.running_mean.lerp_(mean.detach().to(norm.running_mean.dtype), factor)
            unbiased = var.detach() * (count / (count - 1))
            norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), factor)
    return out.to(input.dtype)


class PortableSyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` synchronised over the ranks of ``process_group`` (default: all) in train mode,
    on any device. Same parameters, buffers and state-dict keys as ``BatchNorm2d``."""

    process_group = None

    def forward(self, input: Tensor) -> Tensor:
        if not _sync_needed(self):
            return super().forward(input)
        self._check_input_dim(input)
        return _synchronised(self, input)


def _global_moments(x: Tensor, group) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``x`` (B, C, ...) over every rank's samples.

    Each rank contributes (count, mean, M2) of its own samples; Chan's pairwise formula combines
    them without the cancellation of a sum-of-squares. Returns ``(mean (C,), var (C,), count)``.
    """
    from torch.distributed import _functional_collectives as funcol

    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf = x.to(dtype)
    channels = x.shape[1]
    dims = [0, *range(2, x.ndim)]
    local_count = x.numel() // channels
    local_mean = xf.mean(dims)
    local_m2 = (xf - local_mean.reshape((1, -1) + (1,) * (x.ndim - 2))).square().sum(dims)
    packed = torch.cat([local_mean, local_m2, local_mean.new_full((1,), float(local_count))])
    rows = funcol.all_gather_tensor_autograd(packed.unsqueeze(0), gather_dim=0, group=group)
    means, m2s, counts = rows[:, :channels], rows[:, channels : 2 * channels], rows[:, 2 * channels :]
    counts = counts.detach()  # sample counts carry no gradient
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    m2 = (m2s + counts * (means - mean).square()).sum(0)
    return mean, m2 / total, int(total.item())


class PortableSyncBatchNormAct2d(BatchNormAct2d):
    """timm's ``BatchNormAct2d`` (normalise, dropout, activation) with synchronised statistics."""

    process_group = None

    def forward(self, input: Tensor) -> Tensor:
        if not _sync_needed(self):
            return super().forward(input)
        self._check_input_dim(input)
        return self.act(self.drop(_synchronised(self, input)))


# Exact classes only: a subclass may compute something else in forward.
_PORTABLE = {nn.BatchNorm2d: PortableSyncBatchNorm2d, BatchNormAct2d: PortableSyncBatchNormAct2d}


def convert_sync_batch_norm(module: nn.Module, device_type: str, process_group=None) -> int:
    """Synchronise every BatchNorm under ``module`` (not ``module`` itself) over the ranks, in place.

    ``device_type`` is where the model will train: torch's ``SyncBatchNorm`` (via timm's converter,
    which keeps ``BatchNormAct2d``'s activation) on the devices it supports, the portable modules
    elsewhere. Parameters and running statistics stay the same tensors (optimiser groups and
    state-dict keys are unchanged). Returns how many layers were converted.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if device_type in native_sync_devices():
        for name, child in list(module.named_children()):
            setattr(module, name, convert_sync_batchnorm(child, process_group))
        return len(norms)
    for norm in norms:
        if type(norm) not in _PORTABLE:
            raise TypeError(f"no portable synchronised form of {type(norm).__name__}")
    for norm in norms:
        # The portable classes add no state, only a forward: the module keeps its parameters,
        # buffers, activation and hooks, and just changes class.
        norm.__class__ = _PORTABLE[type(norm)]
        norm.process_group = process_group
    return len(norms)


def sync_image_tower(model: nn.Module, world_size: int, device_type: str) -> int:
    """``--sync_batch_norm``: synchronise the BatchNorms of ``model.vision_model`` when training on
    more than one process (a single process already sees its whole batch). Returns how many."""
    if world_size <= 1:
        logger.info("sync_batch_norm has no effect in a single process")
        return 0
    count = convert_sync_batch_norm(model.vision_model, device_type)
    logger.info("synchronised %d BatchNorm layers of the image tower", count)
    return count
