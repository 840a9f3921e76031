"""``align-hf export onnx|torch-export``: the two towers as standalone graphs (:mod:`align_hf.export`).

``align-hf export onnx --model M --output DIR`` writes ``image_encoder.onnx`` and
``text_encoder.onnx`` for onnxruntime; ``align-hf export torch-export --model M --output DIR``
writes ``image_encoder.pt2`` and ``text_encoder.pt2`` for ``torch.export.load``. Both add the
processor files and ``export_config.json``. torch and onnx load only when a command runs.
"""

from __future__ import annotations

import argparse
import logging

from align_hf.cli.common import add_command_group


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="align_hf / transformers ALIGN folder or Hub id")
    parser.add_argument("--output", required=True, help="folder for the graphs, processor files and export_config.json")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the parity check of the exported graphs against PyTorch (default: run it and record it)",
    )


def _load(args: argparse.Namespace):
    from align_hf.loading import load_model_and_processor

    if getattr(args, "verbose", 0) < 2:
        # onnxscript's optimizer logs every rewrite and merged initializer at info level.
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)

    # Exported graphs are float32 CPU graphs; the runtime picks the device when it runs them.
    return load_model_and_processor(args.model, device="cpu", dtype="float32")


def _report(manifest: dict, output: str) -> int:
    print(f"wrote {manifest['image_encoder']['file']} and {manifest['text_encoder']['file']} to {output} "
          f"({manifest['exporter']}, {manifest['export_seconds']:.1f} s)")
    diffs = manifest.get("max_abs_diff")
    if diffs:
        print("max |exported - PyTorch|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return 0


def run_onnx(args: argparse.Namespace) -> int:
    from align_hf.export import save_onnx

    model, processor = _load(args)
    manifest = save_onnx(
        model,
        processor,
        args.output,
        opset=args.opset,
        verify=not args.no_verify,
        source=args.model,
    )
    return _report(manifest, args.output)


def run_torch_export(args: argparse.Namespace) -> int:
    from align_hf.export import save_torch_export

    model, processor = _load(args)
    manifest = save_torch_export(
        model,
        processor,
        args.output,
        verify=not args.no_verify,
        source=args.model,
    )
    return _report(manifest, args.output)


def register(subparsers: argparse._SubParsersAction) -> None:
    kinds = add_command_group(subparsers, "export", help="export the image and text towers (ONNX, torch.export)")
    onnx = kinds.add_parser(
        "onnx",
        help="image_encoder.onnx + text_encoder.onnx for onnxruntime",
        description="Export the two towers as ONNX models (dynamic batch, dynamic text length) with "
        "torch.onnx's dynamo exporter, and check them with onnxruntime.",
    )
    _add_common(onnx)
    onnx.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    onnx.set_defaults(func=run_onnx)
    programs = kinds.add_parser(
        "torch-export",
        help="image_encoder.pt2 + text_encoder.pt2 (torch.export programs)",
        description="Export the two towers as torch.export programs (dynamic batch, dynamic text "
        "length), saved with torch.export.save; load them with torch.export.load(path).module().",
    )
    _add_common(programs)
    programs.set_defaults(func=run_torch_export)
