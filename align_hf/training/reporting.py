"""What a finished run reports: its last evaluation and a console table."""

from __future__ import annotations

from typing import Any, Sequence


def final_metrics(trainer: Any) -> dict[str, float]:
    """The last evaluation's metrics of a ``transformers.Trainer`` (without the ``eval_`` prefix)."""
    for entry in reversed(trainer.state.log_history):
        if any(k.startswith("eval_") for k in entry):
            return {k[len("eval_"):]: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def format_table(rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("metric", "value")) -> str:
    """A two-column Markdown table, values right-aligned."""
    width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    vwidth = max(len(header[1]), *(len(r[1]) for r in rows)) if rows else len(header[1])
    lines = [f"| {header[0]:<{width}} | {header[1]:>{vwidth}} |", f"|{'-' * (width + 2)}|{'-' * (vwidth + 1)}:|"]
    lines += [f"| {name:<{width}} | {value:>{vwidth}} |" for name, value in rows]
    return "\n".join(lines)


__all__ = ["final_metrics", "format_table"]
