"""Arguments and helpers shared by the ``align-hf`` subcommands.

Nothing here imports torch, transformers or datasets at module level: every subcommand module
imports this one while the parser is built, and ``align-hf --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from align_hf.loading import DTYPES

logger = logging.getLogger(__name__)


def add_command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command (``align-hf NAME``) holding subcommands; without one it prints its help and exits 2."""
    group = subparsers.add_parser(name, help=help)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def add_model_args(parser: argparse.ArgumentParser, required: bool = True, batched: bool = True) -> None:
    """``--model``, ``--device``, ``--dtype`` and, for batched work, ``--batch-size`` and ``--no-progress``."""
    parser.add_argument("--model", required=required, help="align_hf / transformers ALIGN folder or Hub id")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")
    if batched:
        parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
        add_progress_arg(parser)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bars (logs and CI)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_source_args(parser: argparse.ArgumentParser, split: str) -> None:
    """``--split`` and ``--image-column``, read by :func:`align_hf.data.sources.load_pairs`."""
    parser.add_argument("--split", default=split, help=f"split for Hub or saved datasets (default: {split})")
    parser.add_argument("--image-column", help="image column / webdataset extension (default: auto-detect)")


def load_model(args: argparse.Namespace, name: str | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` in eval mode from the ``--model/--device/--dtype`` flags (or ``name``)."""
    from align_hf.loading import load_model_and_processor

    return load_model_and_processor(name or args.model, args.device, args.dtype)


def readable_records(pairs: Iterable[dict]) -> Iterator[dict]:
    """The records of a :func:`~align_hf.data.sources.load_pairs` dataset that could be read.

    Records with an ``error`` (a truncated shard, a stream cut short) are logged and skipped.
    """
    from align_hf.data.sources import iter_records

    for record in iter_records(pairs):
        if record.get("error"):
            logger.warning("skipping unreadable record: %s", record["error"])
            continue
        yield record


def open_records(source: str, image_column: str | None, column: str | None, split: str) -> tuple[Iterator[dict], str]:
    """Readable records of ``source`` and the field holding ``column`` in them.

    A plain column name becomes load_pairs' text column (read back as ``"text"``); a dotted path
    (``meta.label_index``) or ``None`` leaves the text column to auto-detection, and the records
    are looked up with that path (``"text"`` for ``None``).
    """
    from align_hf.data.sources import load_pairs

    if column is None or "." in column:
        pairs = load_pairs(source, image_column=image_column, split=split)
        field = column or "text"
    else:
        pairs = load_pairs(source, image_column=image_column, text_column=column, split=split)
        field = "text"
    return readable_records(pairs), field


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON to ``path`` (parents created) and say so on stdout."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    print(f"wrote {path}")


def print_metrics(metrics: dict[str, Any], output: str | os.PathLike | None = None) -> None:
    """Print ``metrics`` one per line (floats as percentages), and write them as JSON to ``output``."""
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{100 * value:6.2f}%" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if output:
        write_json(metrics, output)
