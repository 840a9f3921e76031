"""Every benchmark script starts: its imports resolve and its command line parses (``--help``).

The benchmarks themselves are too slow for the suite; this catches a script broken by a refactor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_script_shows_help(script):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


@pytest.mark.slow
def test_noise_robustness_runs_end_to_end_on_a_tiny_budget(tmp_path):
    script = next(p for p in BENCHMARKS if p.stem == "noise_robustness")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, str(script), "--noise", "0.2", "--filters", "none", "small", "--steps", "2",
               "--num-train", "200", "--workers", "1", "--output-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| noisy captions | ALIGN filter |" in result.stdout
    assert (tmp_path / "results.json").is_file()
