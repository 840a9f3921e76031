"""The ``align-hf`` command line (also ``python -m align_hf.cli``).

Each command group lives in a module of this package that exposes ``register(subparsers)``;
this module only assembles them. Registering must stay cheap (no torch, transformers or gradio
at module level or in ``register``) so ``align-hf --help`` answers at once: commands import
their heavy dependencies when they run.

Logging is set up here, once, for every command: warnings by default, ``-v`` for info, ``-vv``
for debug, ``-q`` for errors only. A command may raise its own default with
``parser.set_defaults(default_log_level=logging.INFO)``; ``-v``/``-q`` still win.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import Sequence

# Modules that each define `register(subparsers)` for one command group.
COMMAND_MODULES: list[str] = [
    "align_hf.cli.data",
    "align_hf.cli.eval",
    "align_hf.cli.search",
    "align_hf.cli.demo",
    "align_hf.cli.train",
    "align_hf.cli.convert",
    "align_hf.cli.export",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    from align_hf import __version__

    parser = argparse.ArgumentParser(
        prog="align-hf",
        description="ALIGN dual encoder: data, training, evaluation, search and demo tools.",
    )
    parser.add_argument("--version", action="version", version=f"align_hf {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0,
                          help="more log output: -v info, -vv debug (default: warnings and errors)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def log_level(args: argparse.Namespace) -> int:
    """The root log level the ``-v``/``-q`` flags ask for, else the command's default (warning)."""
    if args.quiet:
        return logging.ERROR
    if args.verbose >= 2:
        return logging.DEBUG
    if args.verbose == 1:
        return logging.INFO
    return getattr(args, "default_log_level", logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A no-op where the host process already configured logging (an embedding program, pytest).
    logging.basicConfig(level=log_level(args), format=LOG_FORMAT)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


def console_main(argv: Sequence[str] | None = None) -> int:
    """The ``align-hf`` program: :func:`main` in a process of its own, where glibc is first told to
    keep freed memory for reuse (training and embedding steps then stop paying for page faults;
    see :mod:`align_hf.training.allocator`, ``ALIGN_HF_KEEP_FREED_MEMORY=0`` turns it off). Code
    that calls :func:`main` inside a longer-lived process keeps that process's allocator as it is."""
    from align_hf.training.allocator import keep_freed_memory

    keep_freed_memory()
    return main(argv)


__all__ = ["COMMAND_MODULES", "build_parser", "console_main", "log_level", "main"]
