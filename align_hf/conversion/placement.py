"""Device placement of a model converted in memory (a transformers-format ALIGN checkpoint).

``PreTrainedModel.from_pretrained`` places a model while it loads its weights; a converted
checkpoint is built and filled by align_hf instead, so its ``device_map`` / ``max_memory`` /
``offload_folder`` options are applied afterwards with accelerate's public big-model helpers,
the same ones transformers uses (``_no_split_modules`` kept whole).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# from_pretrained options that place a loaded model (transformers' big-model loading).
PLACEMENT_OPTIONS = ("device_map", "max_memory", "offload_folder", "offload_buffers")
_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_device_map(model: nn.Module, device_map: Any, max_memory: dict | None = None) -> dict[str, Any]:
    """``device_map`` as ``{module name: device}``: a device (``"cpu"``, ``0``, ``torch.device``)
    maps everything there; a strategy name is computed from ``max_memory`` (default: what the
    machine has) keeping the model's ``_no_split_modules`` whole; a dict is returned as is."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    if isinstance(device_map, dict):
        return device_map
    if isinstance(device_map, str) and device_map in _STRATEGIES:
        no_split = sorted(getattr(model, "_no_split_modules", None) or [])
        if device_map == "sequential":
            max_memory = get_max_memory(max_memory)
        else:
            max_memory = get_balanced_memory(
                model, max_memory, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0"
            )
        return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    if isinstance(device_map, (str, int, torch.device)):
        return {"": device_map}
    raise ValueError(f"device_map must be a device, a dict or one of {_STRATEGIES}, got {device_map!r}")


def dispatch_loaded(
    model: nn.Module,
    device_map: Any = None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
    offload_buffers: bool = False,
) -> nn.Module:
    """``model`` placed by ``device_map`` (unchanged when it is None); modules mapped to ``"disk"``
    are written to ``offload_folder`` and loaded on demand. Sets ``model.hf_device_map``."""
    if device_map is None:
        return model
    from accelerate import dispatch_model

    device_map = resolve_device_map(model, device_map, max_memory)
    model = dispatch_model(model, device_map=device_map, offload_dir=offload_folder, offload_buffers=offload_buffers)
    model.hf_device_map = device_map
    return model


__all__ = ["PLACEMENT_OPTIONS", "dispatch_loaded", "resolve_device_map"]
