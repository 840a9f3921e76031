"""align_hf.training.allocator: glibc keeps freed blocks, so re-allocating a large tensor stops
faulting in fresh pages. Each case runs in a subprocess: the setting lasts for the process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

CHILD = r"""
import json, resource, sys
import torch
from align_hf.training.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm up: the heap grows to its working size once
    torch.ones(16 * 2**20).sum()
counts = []
for _ in range(21):
    before = faults()
    torch.ones(16 * 2**20).sum()  # 64 MiB, written in full each time
    counts.append(faults() - before)
# The median: a few late heap growths (small blocks split off a freed one) are not the steady state.
print(json.dumps({"kept": kept, "faults_per_alloc": sorted(counts)[len(counts) // 2]}))
"""

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)


def _run(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True,
                         env={**os.environ, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc
def test_kept_memory_stops_page_faults_on_reallocation():
    default = _run("default")
    kept = _run("keep")
    assert kept["kept"] is True
    pages = 64 * 2**20 / 4096
    # Default glibc: a 64 MiB block is mmapped and unmapped each time, every page faults again.
    assert default["faults_per_alloc"] > 0.5 * pages
    assert kept["faults_per_alloc"] < 0.1 * pages  # the typical re-allocation reuses the kept block


@glibc
def test_opt_out_environment_variable():
    assert _run("keep", ALIGN_HF_KEEP_FREED_MEMORY="0")["kept"] is False


def test_console_entry_point_is_console_main():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "align-hf"]
    assert script.value == "align_hf.cli:console_main"
