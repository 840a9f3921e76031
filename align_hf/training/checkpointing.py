"""Atomic checkpoints: a checkpoint is written into a hidden staging folder, flushed to disk and
renamed into place once complete.

A kill at any moment leaves either the previous complete checkpoints or the new complete one;
``transformers.trainer_utils.get_last_checkpoint`` only matches ``checkpoint-N`` names, so a
half-written staging folder is never resumed from.

Each rank also writes its own training-stream state into the checkpoint (``data_state/rank-R.pt``:
the stream position of every DataLoader worker, the data counts, the time budget spent), so a
resumed run continues the stream exactly instead of replaying it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Iterable

import torch

STAGING_PREFIX = ".staging-"
DATA_STATE_FOLDER = "data_state"


def rank_state_path(checkpoint: str, rank: int) -> str:
    """Where rank ``rank`` keeps its stream state in ``checkpoint``."""
    return os.path.join(checkpoint, DATA_STATE_FOLDER, f"rank-{rank:05d}.pt")


def save_rank_state(checkpoint: str, rank: int, stream: Any, callbacks: Iterable[Any]) -> None:
    """Write this rank's ``{"stream": stream.state_dict() or None, "budget_seconds": float or None}``.

    ``stream``: the :class:`~align_hf.training.stream.StreamingTrainLoader` (None for map-style
    data); the budget is read from a :class:`~align_hf.training.budget.TimeBudgetCallback` among
    ``callbacks``.
    """
    from align_hf.training.budget import TimeBudgetCallback

    clock = next((c.clock for c in callbacks if isinstance(c, TimeBudgetCallback)), None)
    state = {
        "stream": stream.state_dict() if stream is not None else None,
        "budget_seconds": clock.elapsed() if clock is not None else None,
    }
    path = rank_state_path(checkpoint, rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)


def load_rank_state(checkpoint: str, rank: int) -> dict[str, Any] | None:
    """What :func:`save_rank_state` wrote for ``rank``; None for checkpoints saved without it."""
    path = rank_state_path(checkpoint, rank)
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def staging_folder(run_dir: str, name: str) -> str:
    """The hidden folder under ``run_dir`` in which checkpoint ``name`` is written before the rename."""
    return os.path.join(run_dir, STAGING_PREFIX + name)


def discard(folder: str) -> None:
    """Remove ``folder`` if it exists (a staging folder left over from a run killed while saving)."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)


def publish(staged: str, final: str) -> None:
    """Flush ``staged`` to disk and rename it to ``final`` (atomic on POSIX).

    An existing ``final`` (the same step saved twice, e.g. by a final save) is swapped out first and
    then deleted, so ``final`` is never missing while a complete copy exists.
    """
    run_dir = os.path.dirname(final)
    fsync_tree(staged)
    if os.path.isdir(final):
        old = staging_folder(run_dir, os.path.basename(final) + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(run_dir)


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Flush every file and folder under ``root`` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(folder)


__all__ = ["DATA_STATE_FOLDER", "STAGING_PREFIX", "discard", "load_rank_state", "rank_state_path", "save_rank_state", "fsync_dir", "fsync_tree", "publish", "staging_folder"]
