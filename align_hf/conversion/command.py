"""What the converters' command lines share: the parser's naming and the error-to-exit-code rule.

Each converter module has ``main(argv=None, prog=None)``; it runs as ``python -m
align_hf.conversion.<module>`` or as ``align-hf convert <kind>`` (which passes its own ``prog``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def conversion_parser(module: str, doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first line of the module's docstring ``doc``; ``prog`` defaults
    to ``python -m <module>``."""
    return argparse.ArgumentParser(prog=prog or f"python -m {module}", description=doc.strip().split("\n")[0])


def run_conversion(work: Callable[[], Sequence[str]], errors: tuple[type[BaseException], ...]) -> int:
    """Run ``work`` and print the report lines it returns (exit code 0). An exception of ``errors``
    means the input does not fit: its message goes to stderr and the exit code is 1; any other
    exception propagates."""
    try:
        lines = work()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
