"""Arguments and helpers shared by the ``align-hf`` subcommands."""

from __future__ import annotations

import argparse

from align_hf.loading import DTYPES


def add_model_args(parser: argparse.ArgumentParser, required: bool = True, batched: bool = True) -> None:
    """``--model``, ``--device``, ``--dtype`` and, for batched work, ``--batch-size`` and ``--no-progress``."""
    parser.add_argument("--model", required=required, help="align_hf / transformers ALIGN folder or Hub id")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")
    if batched:
        parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_model(args: argparse.Namespace, name: str | None = None):
    """``(model, processor)`` in eval mode from the ``--model/--device/--dtype`` flags (or ``name``)."""
    from align_hf.loading import load_model_and_processor

    return load_model_and_processor(name or args.model, args.device, args.dtype)
