"""The one model loader of the command line, the trainer factories and the demo.

``load_model_and_processor("kakaobrain/align-base")`` reads an align_hf folder or Hub repo, or a
transformers-format ALIGN one (converted on the fly), with its processor.
"""

from __future__ import annotations

import os
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")


class ModelLoadError(RuntimeError):
    """The model or its processor cannot be loaded; the message names the source and the cause."""


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_processor(
    name: str | os.PathLike,
    device: str | None = None,
    dtype: str = "float32",
    processor: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    train: bool = False,
) -> tuple[Any, Any]:
    """``(AlignModel, AlignProcessor)`` from a local folder or a Hub id.

    Args:
        name: align_hf or transformers-format ALIGN checkpoint (folder or Hub repo id).
        device: torch device; default: :func:`default_device`.
        dtype: one of :data:`DTYPES`.
        processor: where the processor lives, when not beside the weights.
        allow_pickle: trust ``pytorch_model.bin`` weights to be fully unpickled. Without it they
            load with ``torch.load(weights_only=True)`` as in transformers (plain state dicts
            load; pickles that would run code are refused); safetensors are preferred.
        train: leave the model in train mode (fine-tuning); else eval mode.

    Raises:
        ModelLoadError: the checkpoint or the processor cannot be read.
    """
    import torch

    from align_hf.modeling_align import AlignModel
    from align_hf.processing_align import AlignProcessor

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    try:
        model = AlignModel.from_pretrained(name, dtype=getattr(torch, dtype), allow_pickle=allow_pickle)
        loaded_processor = AlignProcessor.from_pretrained(processor or name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {str(name)!r}: {err}") from err
    if os.path.isdir(name):  # record where the model lives, not where the command ran
        model.config._name_or_path = os.path.abspath(name)
    model = model.to(device or default_device())
    return model.train(train), loaded_processor


__all__ = ["DTYPES", "ModelLoadError", "default_device", "load_model_and_processor"]
