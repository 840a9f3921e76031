"""Optional dependencies: FAISS ([search]) and matplotlib ([plot]) are extras, and their absence is explained."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A None entry in sys.modules is how Python spells "not installed" to both `import` (ImportError) and
# importlib.util.find_spec (None), which libraries such as datasets use to probe for faiss.
BLOCKER = "import sys\nsys.modules[{name!r}] = None\n"


def _run_without(package: str, code: str) -> subprocess.CompletedProcess:
    script = BLOCKER.format(name=package) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_search_without_faiss_names_the_extra():
    result = _run_without("faiss", """
        try:
            import align_hf.search
        except ImportError as err:
            print("ERROR:", err)
        else:
            print("imported")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ERROR:" in result.stdout and "align_hf[search]" in result.stdout and "faiss-gpu" in result.stdout


def test_the_rest_of_the_package_works_without_faiss():
    result = _run_without("faiss", """
        import align_hf.cli, align_hf.evaluation, align_hf.training.trainer
        from align_hf import AlignModel
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_training_curves_are_skipped_with_a_warning_without_matplotlib(tmp_path):
    target = tmp_path / "curves.png"
    result = _run_without("matplotlib", f"""
        import logging
        logging.basicConfig(level=logging.WARNING)
        from align_hf.training.plotting import plot_training_curves
        print("RESULT:", plot_training_curves([{{"step": 1, "loss": 1.0}}], {str(target)!r}))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RESULT: None" in result.stdout
    assert "align_hf[plot]" in result.stderr
    assert not target.exists()


def test_training_curves_are_drawn_with_matplotlib(tmp_path):
    from align_hf.training.plotting import plot_training_curves

    history = [{"step": 1, "loss": 2.0, "temperature": 0.07}, {"step": 2, "loss": 1.0, "eval_zero_shot_top1": 0.5}]
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path is not None and (tmp_path / "curves.png").stat().st_size > 1000
