"""Atomic checkpoints: a checkpoint is written into a hidden staging folder, flushed to disk and
renamed into place once complete.

A kill at any moment leaves either the previous complete checkpoints or the new complete one;
``transformers.trainer_utils.get_last_checkpoint`` only matches ``checkpoint-N`` names, so a
half-written staging folder is never resumed from.
"""

from __future__ import annotations

import os
import shutil

STAGING_PREFIX = ".staging-"


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


__all__ = ["STAGING_PREFIX", "discard", "fsync_dir", "fsync_tree", "publish", "staging_folder"]
