"""``align-hf eval`` commands: ``zero-shot`` classification and image-text ``retrieval``.

Datasets are opened with :func:`align_hf.data.sources.load_pairs` (webdataset shards, image
folders with captions, parquet, saved datasets, Hub names); a folder with one sub-folder of
images per class is read as a labelled dataset directly, and a folder in CLIP_benchmark's
webdataset layout (``<split>/nshards.txt``) with its class names, templates and captions (see
:mod:`align_hf.evaluation.clip_benchmark`). ``--format clip_benchmark`` writes CLIP_benchmark's
result JSON instead of align_hf's flat metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from align_hf.cli.common import (
    add_command_group,
    add_model_args,
    add_source_args,
    load_model,
    open_records,
    print_metrics,
    write_json,
)

FORMATS = ("align_hf", "clip_benchmark")


def find_manifest(source: str) -> dict[str, Any] | None:
    """A synthetic-corpus ``manifest.json`` in ``source`` or its parent (class names, templates)."""
    from align_hf.data import find_manifest as find_corpus_manifest

    path = Path(source)
    found = find_corpus_manifest(*((path, path.parent) if path.is_dir() else (path.parent, path.parent.parent)))
    return found[0] if found else None


def class_folder_rows(root: str) -> tuple[list[dict], list[str]] | None:
    """Rows ``{"image": path, "label": i}`` and class names for a folder holding one sub-folder of images per class.

    ``None`` when ``root`` is not laid out that way (images directly in it, or no class folder
    with images). Class names are the folder names with ``_`` read as a space.
    """
    from align_hf.image_io import list_images

    base = Path(root)
    if not base.is_dir() or list_images(base, recursive=False):
        return None
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = [{"image": path, "label": i} for i, name in enumerate(classes) for path in list_images(base / name)]
    if not rows:
        return None
    return rows, [c.replace("_", " ") for c in classes]


def clip_benchmark_layout(args: argparse.Namespace) -> Any:
    """The :class:`~align_hf.evaluation.clip_benchmark.ClipBenchmarkDataset` at ``--dataset``/``--split``, or None."""
    from align_hf.evaluation.clip_benchmark import is_clip_benchmark_dataset, open_clip_benchmark_dataset

    if not is_clip_benchmark_dataset(args.dataset, args.split):
        return None
    return open_clip_benchmark_dataset(args.dataset, args.split)


def clip_benchmark_rows(layout: Any, args: argparse.Namespace) -> Any:
    """The layout's rows, reading the image from ``--image-column`` (extension) when given."""
    return layout.rows(image_extensions=(args.image_column,)) if args.image_column else layout.rows()


def report(args: argparse.Namespace, task: str, dataset: str, metrics: dict[str, Any], extra: dict[str, Any]) -> None:
    """Print the metrics and write ``--output`` in ``--format`` (align_hf's flat keys or CLIP_benchmark's JSON)."""
    if args.format == "clip_benchmark":
        from align_hf.evaluation.clip_benchmark import clip_benchmark_result

        result = clip_benchmark_result(metrics, task, dataset=dataset, model=args.model)
        print_metrics({"dataset": dataset, "model": args.model, **result["metrics"]})
        if args.output:
            write_json(result, args.output)
        return
    print_metrics({"dataset": args.dataset, "model": args.model, **extra, **metrics}, args.output)


def run_zero_shot(args: argparse.Namespace) -> int:
    from align_hf.evaluation import evaluate_zero_shot
    from align_hf.evaluation.zero_shot import load_class_names

    layout = clip_benchmark_layout(args)
    dataset_name = layout.name if layout is not None else args.dataset
    manifest = find_manifest(args.dataset) if layout is None else None
    by_folder = class_folder_rows(args.dataset) if args.label_column is None and layout is None else None
    if layout is not None:
        if layout.dataset_type != "classification":
            print(f"error: {args.dataset} is a CLIP_benchmark {layout.dataset_type} set; use `align-hf eval retrieval`",
                  file=sys.stderr)
            return 2
        rows, folder_classes = clip_benchmark_rows(layout, args), layout.classes
        image_field, label_field = "image", "label"
    elif by_folder is not None:
        rows, folder_classes = by_folder
        image_field, label_field = "image", "label"
    else:
        folder_classes = None
        label_column = args.label_column or ("meta.label_index" if manifest else "label")
        rows, label_field = open_records(args.dataset, args.image_column, label_column, args.split)
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
    layout_templates = layout.templates if layout is not None else None
    templates = args.templates or layout_templates or (manifest.get("zeroshot_templates") if manifest else None) or "imagenet"

    model, processor = load_model(args)
    metrics = evaluate_zero_shot(
        model, processor, rows, class_names, templates,
        image_column=image_field, label_column=label_field, batch_size=args.batch_size,
        limit=args.limit, cache_dir=args.cache_dir, progress=not args.no_progress,
    )
    report(args, "zero_shot", dataset_name, metrics, {"classes": len(class_names)})
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    from align_hf.evaluation import evaluate_retrieval

    layout = clip_benchmark_layout(args)
    if layout is None:
        rows, caption_field = open_records(args.dataset, args.image_column, args.caption_column, args.split)
    elif layout.dataset_type != "retrieval":
        print(f"error: {args.dataset} is a CLIP_benchmark {layout.dataset_type} set (dataset_type.txt is not "
              "'retrieval'); use `align-hf eval zero-shot`", file=sys.stderr)
        return 2
    else:
        rows, caption_field = clip_benchmark_rows(layout, args), "captions"
    model, processor = load_model(args)
    metrics = evaluate_retrieval(
        model, processor, rows, image_column="image", caption_column=caption_field,
        batch_size=args.batch_size, ks=tuple(args.ks), limit=args.limit, progress=not args.no_progress,
    )
    report(args, "retrieval", layout.name if layout is not None else args.dataset, metrics, {})
    return 0


def _add_eval_args(parser: argparse.ArgumentParser, dataset_help: str) -> None:
    """The model, dataset and output flags both evaluations take."""
    add_model_args(parser)
    parser.add_argument("--dataset", required=True, help=dataset_help)
    add_source_args(parser, split="test")
    parser.add_argument("--limit", type=int, help="evaluate at most this many images")
    parser.add_argument("--output", help="also write the metrics as JSON here")
    parser.add_argument("--format", choices=FORMATS, default="align_hf",
                        help="--output layout: align_hf's flat metrics (default), or CLIP_benchmark's result JSON "
                        "({dataset, model, pretrained, task, metrics: acc1/acc5/mean_per_class_recall or "
                        "image_retrieval_recall@K/text_retrieval_recall@K})")


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = add_command_group(subparsers, "eval", help="zero-shot classification and retrieval evaluation")

    zs = commands.add_parser(
        "zero-shot",
        help="zero-shot classification: top-1, top-5, mean per-class recall",
        description="Classify images from class names and prompt templates, without training.",
    )
    _add_eval_args(zs, "labelled images: class sub-folders, shards, a CLIP_benchmark webdataset folder "
                   "(classnames.txt and templates read from it), parquet, saved dataset or Hub name")
    zs.add_argument(
        "--label-column",
        help="label column, or a dotted path into the JSON sidecar, e.g. meta.label_index "
        "(default: label; meta.label_index for the synthetic corpus)",
    )
    zs.add_argument("--classes", help="class names: a file (one per line, or a JSON list) or a comma-separated list "
                    "(default: class folder names, the CLIP_benchmark classnames.txt or the corpus manifest)")
    zs.add_argument("--templates", help="prompt templates: imagenet (80), short (8) or a file with one '{}' template per line "
                    "(default: the CLIP_benchmark or corpus manifest templates, else imagenet)")
    zs.add_argument("--cache-dir", help="cache class embeddings here")
    zs.set_defaults(func=run_zero_shot)

    rt = commands.add_parser(
        "retrieval",
        help="image<->text retrieval recall@K",
        description="Recall@K both ways; several captions per image are supported (Flickr30K / MSCOCO protocol).",
    )
    _add_eval_args(rt, "image-text pairs: shards, image folder with captions, a CLIP_benchmark webdataset folder "
                   "(dataset_type.txt 'retrieval', one caption a line), parquet, saved dataset, Hub name")
    rt.add_argument("--caption-column", help="caption column (a string or a list of captions per row), or a dotted "
                    "path such as meta.captions (default: auto-detect)")
    rt.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="K values (default: 1 5 10)")
    rt.set_defaults(func=run_retrieval)
