"""AlignModel under parameter-sharding engines (DeepSpeed ZeRO-3, FSDP1, FSDP2).

* Evaluation inside a training run embeds with the unwrapped model; under ZeRO-3 or FSDP each rank
  holds only a shard of every parameter, so the forward passes run inside :func:`full_parameters`,
  which gathers them for the duration (every rank must enter it: gathering is collective).
* FSDP2 (``fully_shard``, transformers' default FSDP) refuses 0-d parameters, and ALIGN's learned
  temperature is one (a 0-d tensor in the transformers checkpoint layout too).
  :func:`replicate_scalars` leaves such parameters out of sharding (replicated on every rank,
  saved as they are) and :func:`average_gradients` averages their gradients over the ranks at each
  optimizer step, which FSDP does for the parameters it shards.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn


def _zero3(trainer: Any) -> bool:
    return bool(trainer.is_deepspeed_enabled and getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3)


def is_sharded(trainer: Any) -> bool:
    """Whether ``trainer`` (a ``transformers.Trainer``) shards parameters across ranks."""
    return bool(trainer.is_fsdp_enabled or _zero3(trainer))


def full_parameters(trainer: Any) -> ContextManager:
    """A context under which ``trainer.model`` holds its full parameters (read-only: changes made
    inside are not written back); a no-op for unsharded training."""
    if _zero3(trainer):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None)
    if trainer.is_fsdp_enabled:
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel

            if isinstance(trainer.model_wrapped, FullyShardedDataParallel):
                return FullyShardedDataParallel.summon_full_params(trainer.model_wrapped, writeback=False)
        except ImportError:  # pragma: no cover
            pass
        return unsharded_fsdp2(trainer.model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def unsharded_fsdp2(model: nn.Module) -> Iterator[None]:
    """Unshard every FSDP2 module of ``model`` for the duration (no-op for models without FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if isinstance(model, FSDPModule):
        # FSDP2 picks its root at the first forward it sees; evaluation calls the towers, not the
        # root, so before the first training step a tower layer would become a root of its own and
        # the next training forward would fail. Settle the root here (a no-op once it is set).
        lazy_init = getattr(model._get_fsdp_state(), "_lazy_init", None)
        if lazy_init is not None:
            lazy_init()
    for module in modules:
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()


def scalar_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The 0-d parameters of ``model`` (FSDP2 cannot shard them): ALIGN's temperature."""
    return [p for p in model.parameters() if p.ndim == 0]


def replicate_scalars(fsdp_plugin: Any, model: nn.Module) -> list[nn.Parameter]:
    """Add the modules holding ``model``'s 0-d parameters to an Accelerate FSDP2 plugin's
    ``ignored_modules`` (kept whole on every rank); returns those parameters, whose gradients
    :func:`average_gradients` must then average. Nothing changes for other plugins or models."""
    params = scalar_parameters(model)
    if not params or getattr(fsdp_plugin, "fsdp_version", 1) != 2:
        return []
    wanted = {id(p) for p in params}
    owners = [m for m in model.modules() if any(id(p) in wanted for p in m.parameters(recurse=False))]
    ignored = fsdp_plugin.ignored_modules
    if isinstance(ignored, str):  # a name pattern, as Accelerate reads it
        import re

        pattern = re.compile(ignored)
        ignored = [m for name, m in model.named_modules() if pattern.fullmatch(name)]
    ignored = list(ignored or [])
    fsdp_plugin.ignored_modules = ignored + [m for m in owners if all(m is not other for other in ignored)]
    return params


def average_gradients(params: list[torch.Tensor], group: Any = None) -> None:
    """Average ``params``' gradients over the ranks of ``group`` in place (parameters no engine
    reduces, see :func:`replicate_scalars`); a no-op outside ``torch.distributed``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    for grad in grads:
        dist.all_reduce(grad, group=group)
        grad.div_(world)


__all__ = ["average_gradients", "full_parameters", "is_sharded", "replicate_scalars", "scalar_parameters", "unsharded_fsdp2"]
