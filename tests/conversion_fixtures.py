"""Shared helpers of tests/test_conversion_*.py: the TensorFlow fixtures, unpacked once per session.

The checkpoints were written by real TensorFlow (tests/tools/make_tf_fixtures.py, `make tf-fixtures`);
tests only read them, so no TensorFlow is needed here.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "tf"


@functools.lru_cache(maxsize=None)
def unpacked() -> Path:
    """Directory holding align_b0/, efficientnet_tf1/, bert_tf1/, dtypes/, tf1_sharded/."""
    target = Path(tempfile.mkdtemp(prefix="align_hf_tf_fixtures_"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    with tarfile.open(FIXTURES / "checkpoints.tar.xz") as tar:
        tar.extractall(target, filter="data")
    return target


@functools.lru_cache(maxsize=None)
def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


@functools.lru_cache(maxsize=None)
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def prefix(name: str) -> Path:
    """Checkpoint prefix of fixture ``name`` inside the unpacked directory."""
    return unpacked() / manifest()["checkpoints"][name]["prefix"]


def copy_checkpoint(name: str, dest: Path) -> Path:
    """A private, writable copy of fixture ``name`` (to corrupt); returns its prefix."""
    src = prefix(name)
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.parent.iterdir():
        shutil.copy(path, dest / path.name)
    return dest / src.name


def images(size: int) -> np.ndarray:
    """The fixed test images, (N, size, size, 3) uint8 (288 px = top-left crop of the 289 px ones)."""
    return expected()["images_289"][:, :size, :size]
