"""align_hf: the ALIGN image-text dual encoder (EfficientNet + BERT) as a Hugging Face-compatible package.

The package registers its classes with transformers' Auto classes under the model type
``"align_hf"`` (transformers' own ALIGN keeps ``"align"``), and marks them for remote code so
``save_pretrained`` writes the modules next to the weights.

Imports are lazy, so ``import align_hf`` (and the ``align-hf`` command line) does not load
torch, transformers or timm. Registration runs once, as soon as the model code is used:

- on the first access of an exported name (``from align_hf import AlignModel``), or
- when a model module is imported directly (``from align_hf.modeling_align import AlignModel``).

``import align_hf`` alone no longer registers: code that imports only the package and then goes
through transformers (``AutoModel.from_pretrained``, ``pipeline``) on an align_hf folder calls
``align_hf.register_auto_classes()`` first (or imports a class from align_hf).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# Exported name -> the module (relative to this package) that defines it.
_EXPORTS: dict[str, str] = {
    "AlignConfig": "configuration_align",
    "AlignTextConfig": "configuration_align",
    "AlignVisionConfig": "configuration_align",
    "AlignModel": "modeling_align",
    "AlignOutput": "modeling_align",
    "AlignTextModel": "modeling_align",
    "AlignVisionModel": "modeling_align",
    "AlignProcessor": "processing_align",
    "AlignImageProcessor": "processing_align",
    "AlignContrastiveHead": "loss",
    "contrastive_loss": "loss",
    "sigmoid_loss": "loss",
    "register_auto_classes": "registration",
}

__all__ = [
    "AlignConfig",
    "AlignTextConfig",
    "AlignVisionConfig",
    "AlignModel",
    "AlignOutput",
    "AlignTextModel",
    "AlignVisionModel",
    "AlignProcessor",
    "AlignImageProcessor",
    "AlignContrastiveHead",
    "contrastive_loss",
    "sigmoid_loss",
    "register_auto_classes",
]

# The modules registration imports; finishing the import of any of them triggers registration.
_REGISTRATION_MODULES = ("configuration_align", "modeling_align", "processing_align", "registration")
_registered = False


def _register_once() -> None:
    """Run ``register_auto_classes()`` the first time every module it needs can be imported."""
    global _registered
    if _registered:
        return
    package = sys.modules[__name__]
    # A module still executing (e.g. configuration_align finished while modeling_align, which
    # imports it, is half-way) cannot be imported again; the end of its own import retries.
    if any(f"{__name__}.{name}" in sys.modules and name not in vars(package) for name in _REGISTRATION_MODULES):
        return
    _registered = True
    from .registration import register_auto_classes

    register_auto_classes()


class _Package(types.ModuleType):
    """This package's module type: it sees the import system attach each finished submodule.

    Before imports were lazy, ``from align_hf.modeling_align import AlignModel`` registered (the
    package ``__init__`` did it eagerly); checkpoints saved that way (the trainer, the loader) rely
    on it for their remote code, so the end of such an import still registers.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _REGISTRATION_MODULES:
            _register_once()


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    _register_once()
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
