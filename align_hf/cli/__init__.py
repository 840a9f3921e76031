"""The ``align-hf`` command line.

Each command group lives next to the code it drives and exposes ``register(subparsers)``;
this module only assembles them, importing lazily so ``align-hf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Modules that each define `register(subparsers)` for one command group.
COMMAND_MODULES: list[str] = [
    "align_hf.cli.data",
    "align_hf.cli.eval",
    "align_hf.cli.search",
    "align_hf.cli.demo",
    "align_hf.cli.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align-hf",
        description="ALIGN dual encoder: data, training, evaluation, search and demo tools.",
    )
    from align_hf import __version__

    parser.add_argument("--version", action="version", version=f"align_hf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)

