"""``align-hf index build`` and ``align-hf search``: cross-modal search from the command line.

``index build --from-embeddings EMB`` builds the on-disk sharded index of an embedding folder
(:mod:`align_hf.search.sharded`); ``index embed`` (:mod:`align_hf.cli.embed`) writes such folders.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

from align_hf.cli.common import add_command_group, add_model_args, add_source_args, load_model, readable_records


def _image_column(dataset: Any, wanted: str | None) -> str:
    """``wanted`` if the dataset has it, else its first ``Image`` column, else the first of the data
    pipeline's usual image column names (:data:`align_hf.data.sources.IMAGE_COLUMNS`) it has."""
    from align_hf.data.sources import IMAGE_COLUMNS

    features = getattr(dataset, "features", None) or {}
    if wanted:
        if features and wanted not in features:
            raise SystemExit(f"error: no column {wanted!r} in the dataset (columns: {', '.join(features)})")
        return wanted
    typed = [name for name, f in features.items() if type(f).__name__ == "Image"]
    found = typed or [c for c in IMAGE_COLUMNS if c in features]
    if not found:
        raise SystemExit(f"error: no image column found among {', '.join(features)}; pass --image-column")
    return found[0]


def open_images(source: str, image_column: str | None, split: str, work_dir: Path) -> tuple[Any, str | None, str]:
    """Resolve ``--images`` to what :meth:`~align_hf.search.CrossModalIndex.build` takes.

    Returns ``(images, image_column, default_caption_column)``: a list of paths for a folder or a
    file list, else a map-style ``datasets.Dataset`` (saved dataset, parquet, webdataset shards,
    Hub name).
    """
    import datasets

    from align_hf.image_io import list_images

    path = Path(source)
    if path.is_file() and path.suffix in (".txt", ".lst"):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [str(p if Path(p).is_absolute() else path.parent / p) for p in lines], None, ""
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return ds, _image_column(ds, image_column), ""
    files = sorted(glob.glob(str(path / "**" / "*"), recursive=True)) if path.is_dir() else sorted(glob.glob(source))
    if any(f.endswith(".tar") for f in files):
        from align_hf.data.sources import load_pairs

        shards = [f for f in files if f.endswith(".tar")]

        def rows():
            for row in readable_records(load_pairs(shards, image_column=image_column)):
                yield {"image": row["image"], "text": row["text"], "key": row["key"]}

        # Random access (for resuming) needs a map-style copy; it is written once under the index.
        ds = datasets.Dataset.from_generator(rows, cache_dir=str(work_dir / "rows"))
        return ds, "image", "text"
    if any(f.endswith(".parquet") for f in files):
        ds = datasets.load_dataset("parquet", data_files=[f for f in files if f.endswith(".parquet")], split="train")
        return ds, _image_column(ds, image_column), ""
    if path.is_dir():
        return list_images(path), None, ""
    if not path.exists():
        ds = datasets.load_dataset(source, split=split)  # a Hub dataset name
        return ds, _image_column(ds, image_column), ""
    raise SystemExit(f"error: cannot read images from {source}")


def run_build_sharded(args: argparse.Namespace) -> int:
    """``index build --from-embeddings EMB``: the on-disk sharded index of an embedding folder."""
    from align_hf.search.sharded import build_sharded

    if args.images or args.texts:
        print("error: --from-embeddings indexes an embedding folder; drop --images/--texts", file=sys.stderr)
        return 2
    try:
        built = build_sharded(
            args.from_embeddings, args.output, index_type=args.index_type,
            memory_budget=int(args.memory_budget * (1 << 30)) if args.memory_budget else None,
            nlist=args.nlist, pq_bytes=args.pq_bytes, workers=args.workers, ray_address=args.ray_address,
            use_ray=False if args.no_ray else None, keep_shards=args.keep_shards,
            target_recall=args.target_recall, progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for kind, info in built["collections"].items():
        stats = built["build"][kind]
        how = info.get("factory", info["index_type"])
        print(f"{kind}: {info['count']} indexed ({info['index_type']}: {how}) in {stats.get('build_seconds', 0):.1f}s")
        if "tuning" in stats:
            print(f"  nprobe={stats['tuning']['nprobe']}: recall@10={stats['tuning']['recall']:.3f} on sampled vectors")
    print(f"wrote {args.output}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from align_hf.search import CrossModalIndex

    if getattr(args, "from_embeddings", None):
        return run_build_sharded(args)
    if not args.model:
        print("error: --model is required (except with --from-embeddings)", file=sys.stderr)
        return 2
    if args.index_type in ("ivf_flat", "ivf_pq"):
        print(f"error: --index-type {args.index_type} needs --from-embeddings (use ivf here)", file=sys.stderr)
        return 2
    if not args.images and not args.texts:
        print("error: give --images, --texts or both", file=sys.stderr)
        return 2
    output = Path(args.output)
    images = image_column = None
    caption_column = args.caption_column
    if args.images:
        images, image_column, default_caption = open_images(args.images, args.image_column, args.split, output / "partial")
        caption_column = caption_column if caption_column is not None else (default_caption or None)
    texts = None
    if args.texts:
        texts = Path(args.texts).read_text(encoding="utf-8").splitlines()
    model, processor = load_model(args)
    index = CrossModalIndex.build(
        model, processor, output, images=images, texts=texts,
        image_column=image_column or "image", caption_column=caption_column, index_type=args.index_type,
        memory_budget=int(args.memory_budget * (1 << 30)) if args.memory_budget else None,
        batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.no_progress,
    )
    for kind, coll in index.collections.items():
        skipped = coll.info.get("skipped", [])
        print(f"{kind}: {len(coll)} indexed ({coll.info['index_type']}), {len(skipped)} skipped")
        for entry in skipped[:10]:
            print(f"  skipped {entry['item']}: {entry['reason']}")
        if len(skipped) > 10:
            print(f"  ... {len(skipped) - 10} more in {output / 'manifest.json'}")
    print(f"wrote {output}")
    return 0


def _describe(hit: Any) -> str:
    meta = hit.metadata
    main = meta.get("path") or meta.get("text") or meta.get("key") or f"row {meta.get('row', hit.id)}"
    return f"{main}  ({meta['caption']})" if meta.get("caption") else str(main)


def run_search(args: argparse.Namespace) -> int:
    from align_hf.search import CrossModalIndex, ModelMismatchError, Searcher

    if not args.text and not args.image and not args.minus:
        print("error: give --text, --image and/or --minus", file=sys.stderr)
        return 2
    blank = [f"--{name}" for name in ("text", "minus") if any(not t.strip() for t in getattr(args, name) or [])]
    if blank:  # checked before the model loads
        print(f"error: {' and '.join(blank)} is empty: give words to search for", file=sys.stderr)
        return 2
    if args.image and "://" not in args.image and not os.path.isfile(args.image):
        print(f"error: no image file {args.image!r}", file=sys.stderr)
        return 2
    index = CrossModalIndex.load(args.index)
    model_name = args.model or index.model_id
    if not model_name or not (os.path.isdir(model_name) or "/" in model_name):
        print(f"error: the index does not name a loadable model ({model_name!r}); pass --model", file=sys.stderr)
        return 2
    model, processor = load_model(args, model_name)
    try:
        searcher = Searcher(index, model, processor, check=not args.no_check)
    except ModelMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.nprobe is not None or args.rerank is not None:
        params = {k: v for k, v in (("nprobe", args.nprobe), ("rerank", args.rerank)) if v is not None}
        searcher.set_search_params(**params)
    try:
        hits = searcher.search(
            text=args.text, image=args.image, minus=args.minus, target=args.target, k=args.k,
            image_weight=args.image_weight, text_weight=args.text_weight,
        )
    except ValueError as err:  # an unreadable query image, a blank text
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=1, ensure_ascii=False))
    else:
        for hit in hits:
            print(f"{hit.rank + 1:>3}  {hit.score:+.4f}  {_describe(hit)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = add_command_group(subparsers, "index", help="build a cross-modal search index")

    build = commands.add_parser(
        "build",
        help="embed images and/or texts and write a FAISS index",
        description="Embed an image folder / file list / dataset and/or a text file, then build and save a FAISS "
        "index. Rerun the same command to resume an interrupted build.",
    )
    add_model_args(build, required=False)
    build.add_argument("--images", help="image folder, file list (.txt), saved dataset, parquet, webdataset shards or Hub dataset")
    build.add_argument("--texts", help="text file, one text per line, for image->text search")
    build.add_argument("--output", required=True, help="index directory to write")
    add_source_args(build, split="train")
    build.add_argument("--caption-column", help="column kept as each image's caption in the results (may be a dotted path)")
    build.add_argument("--index-type", choices=("auto", "flat", "hnsw", "ivf", "ivf_flat", "ivf_pq"), default="auto",
                       help="auto: exact up to 100k vectors, then HNSW if it fits --memory-budget, else IVF-PQ "
                       "(default: auto; ivf_flat/ivf_pq with --from-embeddings)")
    build.add_argument("--memory-budget", type=float, help="GiB the index may use (default: half the available memory)")
    build.add_argument("--chunk-size", type=int, default=2048, help="items per resumable chunk (default: 2048)")
    scale = build.add_argument_group("sharded on-disk index (from an embedding folder)")
    scale.add_argument("--from-embeddings", metavar="EMB",
                       help="build an on-disk sharded index from an embedding folder ('align-hf index embed' output) "
                       "instead of embedding --images/--texts; no model needed")
    scale.add_argument("--nlist", type=int, help="IVF lists (default: ~4 sqrt(N))")
    scale.add_argument("--pq-bytes", type=int, help="PQ code bytes per vector (default: largest <= dim/8 that fits)")
    scale.add_argument("--workers", type=int, help="parallel shard tasks (default: CPUs within the memory budget)")
    scale.add_argument("--ray-address", help="Ray cluster for the shard tasks (default: a local Ray, if installed)")
    scale.add_argument("--no-ray", action="store_true", help="add shards in threads, without Ray")
    scale.add_argument("--target-recall", type=float,
                       help="IVF: pick the smallest nprobe reaching this recall@10 against exact search (e.g. 0.9)")
    scale.add_argument("--keep-shards", action="store_true", help="keep the per-part shard files after the merge")
    build.set_defaults(func=run_build)
    from align_hf.cli.embed import register_embed

    register_embed(commands)

    query = subparsers.add_parser(
        "search",
        help="query an index with text, an image, or both",
        description="text->image, image->text, image->image and image+text search. "
        "Composed queries add weighted unit embeddings (image x1 + text x2 by default) and renormalise. "
        "--model defaults to the model recorded in the index.",
    )
    query.add_argument("--index", required=True, help="index directory from 'align-hf index build'")
    add_model_args(query, required=False, batched=False)
    query.add_argument("--text", action="append", help="text to add to the query (repeatable)")
    query.add_argument("--minus", action="append", help="text to subtract from the query (repeatable)")
    query.add_argument("--image", help="query image file")
    query.add_argument("--target", choices=("image", "text"), help="collection to search (default: images if indexed)")
    query.add_argument("-k", "--k", type=int, default=10, help="number of results (default: 10)")
    query.add_argument("--image-weight", type=float, default=1.0, help="weight of the image (default: 1)")
    query.add_argument("--text-weight", type=float, default=2.0, help="weight of each text (default: 2)")
    query.add_argument("--nprobe", type=int, help="IVF lists visited per query (default: the index's setting)")
    query.add_argument("--rerank", type=int,
                       help="sharded PQ index: candidates re-ranked exactly per hit (0: off; default: the index's)")
    query.add_argument("--json", action="store_true", help="print results as JSON")
    query.add_argument("--no-check", action="store_true", help="skip the check that --model is the index's model")
    query.set_defaults(func=run_search)

