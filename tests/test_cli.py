"""The ``align-hf`` command line as a whole: import cost, logging flags, flag style, shared helpers,
and the lazy package that still registers its Auto classes."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import textwrap

import pytest

HEAVY_MODULES = ("torch", "transformers", "timm", "gradio", "faiss", "datasets")


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_building_the_parser_imports_no_heavy_module():
    # The speed of `align-hf --help`, measured by what it imports rather than by a clock.
    out = run_python(f"""
        import sys
        import align_hf.cli
        align_hf.cli.build_parser()
        print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_package_version_imports_no_heavy_module():
    out = run_python(f"""
        import sys
        import align_hf
        print(align_hf.__version__, sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))
    """)
    assert out.split(maxsplit=1)[1].strip() == "[]"


def test_python_dash_m_is_the_command_line():
    result = subprocess.run([sys.executable, "-m", "align_hf.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("align_hf ")


def test_importing_the_model_module_directly_still_registers(tmp_path):
    # Saving must write the remote code and auto_map, and AutoConfig must know "align_hf",
    # even when the package itself was never asked for a class.
    out = run_python(f"""
        import json, os
        from align_hf.configuration_align import AlignConfig
        from align_hf.modeling_align import AlignModel
        from transformers import AutoConfig

        AlignModel(AlignConfig.from_preset("tiny")).save_pretrained({str(tmp_path)!r})
        config = json.load(open(os.path.join({str(tmp_path)!r}, "config.json")))
        print(config["auto_map"]["AutoModel"], os.path.exists(os.path.join({str(tmp_path)!r}, "modeling_align.py")),
              type(AutoConfig.from_pretrained({str(tmp_path)!r})) is AlignConfig)
    """)
    assert out.split() == ["modeling_align.AlignModel", "True", "True"]


def test_exported_names_load_lazily():
    import align_hf

    assert set(align_hf.__all__) <= set(dir(align_hf))
    assert align_hf.AlignModel.__name__ == "AlignModel"
    with pytest.raises(AttributeError):
        align_hf.NoSuchName  # noqa: B018


@pytest.mark.parametrize(
    ("argv", "level"),
    [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG), (["--verbose", "-v", "-v"], logging.DEBUG),
     (["-q"], logging.ERROR)],
)
def test_log_level_from_flags(argv, level):
    from align_hf.cli import build_parser, log_level

    assert log_level(build_parser().parse_args([*argv, "data"])) == level


def test_a_command_may_raise_its_default_log_level():
    from align_hf.cli import log_level

    quiet = argparse.Namespace(verbose=0, quiet=True, default_log_level=logging.INFO)
    assert log_level(argparse.Namespace(verbose=0, quiet=False, default_log_level=logging.INFO)) == logging.INFO
    assert log_level(quiet) == logging.ERROR


def test_verbose_and_quiet_exclude_each_other(capsys):
    from align_hf.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["-v", "-q", "data"])


def test_main_configures_logging_once_before_the_command(monkeypatch, capsys):
    from align_hf.cli import main

    calls = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: calls.append(kwargs))
    assert main(["-vv", "data"]) == 2  # a group without its subcommand prints its help
    assert [c["level"] for c in calls] == [logging.DEBUG]
    assert "SUBCOMMAND" in capsys.readouterr().out


def _help(argv: list[str], capsys) -> str:
    from align_hf.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def _commands(help_text: str, metavar: str) -> list[str]:
    """The command names listed under ``metavar`` in an argparse help text."""
    listing = help_text.split(f"\n  {metavar}\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^    (\S+)", listing, re.M)


def test_every_flag_is_dash_style(capsys):
    # `align-hf train` hands its flags to HfArgumentParser, which takes --output-dir and --output_dir alike.
    pages = {"align-hf": _help([], capsys)}
    for command in _commands(pages["align-hf"], "COMMAND"):
        if command == "train":
            continue
        pages[command] = _help([command], capsys)
        if "SUBCOMMAND" in pages[command]:
            for sub in _commands(pages[command], "SUBCOMMAND"):
                pages[f"{command} {sub}"] = _help([command, sub], capsys)
    assert {"data synth", "eval zero-shot", "index build", "search", "demo", "quickstart"} <= set(pages)
    underscored = {name: flags for name, page in pages.items() if (flags := re.findall(r"--\w*_[\w-]*", page))}
    assert underscored == {}


def test_class_folder_rows(tmp_path):
    from PIL import Image

    from align_hf.cli.eval import class_folder_rows

    for name in ("red_circle", "blue_square"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    (tmp_path / "blue_square" / "notes.txt").write_text("not an image")
    rows, classes = class_folder_rows(str(tmp_path))
    assert classes == ["blue square", "red circle"]
    assert [(r["label"], r["image"].endswith("a.png")) for r in rows] == [(0, True), (1, True)]

    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")  # images beside the class folders: not that layout
    assert class_folder_rows(str(tmp_path)) is None
    assert class_folder_rows(str(tmp_path / "missing")) is None


def test_readable_records_skips_errors(caplog):
    from align_hf.cli.common import readable_records

    records = [{"key": "a", "error": None}, {"key": "b", "error": "truncated: shard 3"}, {"key": "c"}]
    with caplog.at_level(logging.WARNING):
        assert [r["key"] for r in readable_records(records)] == ["a", "c"]
    assert "truncated: shard 3" in caplog.text


def test_print_metrics_writes_json(tmp_path, capsys):
    from align_hf.cli.common import print_metrics

    output = tmp_path / "new" / "metrics.json"
    print_metrics({"dataset": "d", "top1": 0.5}, output)
    assert json.loads(output.read_text()) == {"dataset": "d", "top1": 0.5}
    shown = capsys.readouterr().out
    assert "50.00%" in shown and f"wrote {output}" in shown
