"""Training curves (loss, temperature, eval recall / accuracy) from a Trainer's ``log_history`` as a PNG."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

logger = logging.getLogger(__name__)


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for entry in history:
        if key in entry and "step" in entry:
            steps.append(entry["step"])
            values.append(float(entry[key]))
    return steps, values


def _eval_keys(history: Sequence[dict[str, Any]]) -> list[str]:
    """Headline eval metrics: recall@1 both ways and top-1 accuracies."""
    keys: list[str] = []
    for entry in history:
        for key in entry:
            if key.startswith("eval_") and (key.endswith("_R@1") or key.endswith("top1")) and key not in keys:
                keys.append(key)
    return keys


def plot_training_curves(
    history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None
) -> str | None:
    """Write a PNG with three panels: training loss, temperature, eval metrics. Returns the path.

    ``history``: ``trainer.state.log_history`` (a list of dicts with ``step`` and logged values).
    Without matplotlib (the ``[plot]`` extra) nothing is written and ``None`` is returned: a finished
    training run must not fail over its picture.
    """
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'align_hf[plot]'): no training curves at %s", path)
        return None

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps, loss = _series(history, "loss")
    axes[0].plot(steps, loss, color="tab:blue")
    axes[0].set_title("training loss")
    steps, temperature = _series(history, "temperature")
    axes[1].plot(steps, temperature, color="tab:orange")
    axes[1].set_title("temperature")
    if temperature:
        axes[1].set_yscale("log")
    for key in _eval_keys(history):
        steps, values = _series(history, key)
        axes[2].plot(steps, values, marker="o", label=key[len("eval_"):])
    axes[2].set_title("evaluation")
    axes[2].set_ylim(0, 1)
    if axes[2].lines:
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["plot_training_curves"]
