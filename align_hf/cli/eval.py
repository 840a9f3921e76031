"""``align-hf eval`` commands: ``zero-shot`` classification and image-text ``retrieval``.

Datasets are opened with :func:`align_hf.data.sources.load_pairs` (webdataset shards, image
folders with captions, parquet, saved datasets, Hub names); a folder with one sub-folder of
images per class is read as a labelled dataset directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from align_hf.cli.common import add_model_args, load_model

logger = logging.getLogger(__name__)

def find_manifest(source: str) -> dict[str, Any] | None:
    """A synthetic-corpus ``manifest.json`` in ``source`` or its parent (class names, templates)."""
    from align_hf.data import find_manifest as find_corpus_manifest

    path = Path(source)
    found = find_corpus_manifest(*((path, path.parent) if path.is_dir() else (path.parent, path.parent.parent)))
    return found[0] if found else None


def class_folder_rows(root: str) -> tuple[list[dict], list[str]] | None:
    """Rows ``{"image": path, "label": i}`` for a folder holding one sub-folder of images per class."""
    from align_hf.image_io import IMAGE_EXTENSIONS

    base = Path(root)
    if not base.is_dir() or any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in base.iterdir()):
        return None
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = [
        {"image": str(f), "label": i}
        for i, name in enumerate(classes)
        for f in sorted((base / name).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not rows:
        return None
    return rows, [c.replace("_", " ") for c in classes]


def _pairs(source: str, image_column: str | None, column: str | None, split: str) -> tuple[Iterable[dict], str]:
    """Open ``source`` with the data entry point; returns rows and the field holding ``column``.

    A plain column name becomes load_pairs' text column (read back as ``"text"``); a dotted path
    (``meta.label_index``) is looked up in the rows as they come.
    """
    from align_hf.data.sources import iter_records, load_pairs

    if column is None or "." in column:
        rows = load_pairs(source, image_column=image_column, split=split)
        field = column or "text"
    else:
        rows = load_pairs(source, image_column=image_column, text_column=column, split=split)
        field = "text"
    return _without_errors(iter_records(rows)), field


def _without_errors(rows: Iterable[dict]) -> Iterable[dict]:
    for row in rows:
        if row.get("error"):
            logger.warning("skipping unreadable record: %s", row["error"])
            continue
        yield row


def _report(metrics: dict[str, Any], output: str | None) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{100 * value:6.2f}%" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(metrics, indent=2))
        print(f"wrote {output}")


def run_zero_shot(args: argparse.Namespace) -> int:
    from align_hf.evaluation import evaluate_zero_shot
    from align_hf.evaluation.zero_shot import load_class_names

    manifest = find_manifest(args.dataset)
    by_folder = class_folder_rows(args.dataset) if args.label_column is None else None
    if by_folder is not None:
        rows, folder_classes = by_folder
        image_field, label_field = "image", "label"
    else:
        folder_classes = None
        label_column = args.label_column or ("meta.label_index" if manifest else "label")
        rows, label_field = _pairs(args.dataset, args.image_column, label_column, args.split)
        image_field = "image"
    if args.classes:
        class_names = args.classes.split(",") if "," in args.classes and not os.path.exists(args.classes) else load_class_names(args.classes)
    elif folder_classes is not None:
        class_names = folder_classes
    elif manifest is not None:
        class_names = manifest["class_names"]
    else:
        print("error: pass --classes (a file with one class name per line, or a comma-separated list)", file=sys.stderr)
        return 2
    templates = args.templates or (manifest.get("zeroshot_templates") if manifest else None) or "imagenet"

    model, processor = load_model(args)
    metrics = evaluate_zero_shot(
        model, processor, rows, class_names, templates,
        image_column=image_field, label_column=label_field, batch_size=args.batch_size,
        limit=args.limit, cache_dir=args.cache_dir, progress=not args.no_progress,
    )
    _report({"dataset": args.dataset, "model": args.model, "classes": len(class_names), **metrics}, args.output)
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    from align_hf.evaluation import evaluate_retrieval

    rows, caption_field = _pairs(args.dataset, args.image_column, args.caption_column, args.split)
    model, processor = load_model(args)
    metrics = evaluate_retrieval(
        model, processor, rows, image_column="image", caption_column=caption_field,
        batch_size=args.batch_size, ks=tuple(args.ks), limit=args.limit, progress=not args.no_progress,
    )
    _report({"dataset": args.dataset, "model": args.model, **metrics}, args.output)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("eval", help="zero-shot classification and retrieval evaluation")
    commands = group.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])

    zs = commands.add_parser(
        "zero-shot",
        help="zero-shot classification: top-1, top-5, mean per-class recall",
        description="Classify images from class names and prompt templates, without training.",
    )
    add_model_args(zs)
    zs.add_argument("--dataset", required=True, help="labelled images: class sub-folders, shards, parquet, saved dataset or Hub name")
    zs.add_argument("--split", default="test", help="split for Hub or saved datasets (default: test)")
    zs.add_argument("--image-column", help="image column / webdataset extension (default: auto-detect)")
    zs.add_argument(
        "--label-column",
        help="label column, or a dotted path into the JSON sidecar, e.g. meta.label_index "
        "(default: label; meta.label_index for the synthetic corpus)",
    )
    zs.add_argument("--classes", help="class names: a file (one per line, or a JSON list) or a comma-separated list "
                    "(default: class folder names or the corpus manifest)")
    zs.add_argument("--templates", help="prompt templates: imagenet (80), short (8) or a file with one '{}' template per line "
                    "(default: the corpus manifest's, else imagenet)")
    zs.add_argument("--cache-dir", help="cache class embeddings here")
    zs.add_argument("--limit", type=int, help="evaluate at most this many images")
    zs.add_argument("--output", help="also write the metrics as JSON here")
    zs.set_defaults(func=run_zero_shot)

    rt = commands.add_parser(
        "retrieval",
        help="image<->text retrieval recall@K",
        description="Recall@K both ways; several captions per image are supported (Flickr30K / MSCOCO protocol).",
    )
    add_model_args(rt)
    rt.add_argument("--dataset", required=True, help="image-text pairs: shards, image folder with captions, parquet, saved dataset, Hub name")
    rt.add_argument("--split", default="test", help="split for Hub or saved datasets (default: test)")
    rt.add_argument("--image-column", help="image column / webdataset extension (default: auto-detect)")
    rt.add_argument("--caption-column", help="caption column (a string or a list of captions per row), or a dotted "
                    "path such as meta.captions (default: auto-detect)")
    rt.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="K values (default: 1 5 10)")
    rt.add_argument("--limit", type=int, help="evaluate at most this many images")
    rt.add_argument("--output", help="also write the metrics as JSON here")
    rt.set_defaults(func=run_retrieval)
