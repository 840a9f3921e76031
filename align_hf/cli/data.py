"""``align-hf data`` commands: ``synth`` (write the synthetic corpus), ``check`` (scan a dataset), ``count``
(corpus-wide counts for ALIGN's frequency filter: a parquet store on Ray Data or in one process, or small JSON)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from align_hf.cli.common import (
    add_command_group,
    add_progress_arg,
    add_source_args,
    write_json,
)


def _filter_from_args(args: argparse.Namespace):
    from align_hf.data.filtering import FilterConfig

    if args.filter == "none":
        return None
    base = FilterConfig.paper() if args.filter == "paper" else FilterConfig.small_corpus(args.image_size)
    overrides = {
        name: getattr(args, name)
        for name in ("min_image_side", "max_aspect_ratio", "max_images_per_text", "min_words", "max_words", "min_token_count")
        if getattr(args, name) is not None
    }
    return dataclasses.replace(base, **overrides)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="webdataset .tar/glob/brace pattern, image folder, parquet, saved dataset, or Hub name")
    add_source_args(parser, split="train")
    parser.add_argument("--text-column", help="caption column / webdataset extension (default: auto-detect)")
    parser.add_argument("--limit", type=int, help="stop after this many pairs")
    add_progress_arg(parser)


def run_synth(args: argparse.Namespace) -> int:
    from align_hf.data.synthetic import SPLITS, SyntheticConfig
    from align_hf.data.synthetic_files import write_synthetic_corpus

    values = dict(
        image_size=args.image_size,
        num_train=args.num_train,
        zeroshot_per_class=args.zeroshot_per_class,
        num_retrieval=args.num_retrieval,
        noise=args.noise,
        seed=args.seed,
        shard_size=args.shard_size,
    )
    try:
        extra = json.loads(args.config) if args.config else {}
        if not isinstance(extra, dict):
            raise ValueError("expected a JSON object")
        values.update(extra)
        config = SyntheticConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"--config {args.config!r}: {err}") from None
    manifest = write_synthetic_corpus(args.output, config, num_workers=args.workers, progress=not args.no_progress, splits=args.splits or SPLITS)
    for split, info in manifest["splits"].items():
        print(f"{split:<10} {info['num_samples']:>7} pairs in {len(info['shards'])} shards")
    print(f"train captions: {manifest['train_caption_kinds']}")
    print(f"{len(manifest['class_names'])} classes, unseen in training: {', '.join(manifest['unseen_class_names'])}")
    print(f"wrote {os.path.join(args.output, 'manifest.json')}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from align_hf.data.check import check_pairs, format_report
    from align_hf.data.count_store import load_counts
    from align_hf.data.decoding import DecodeLimits
    from align_hf.data.filtering import AlignFilter, count_frequencies
    from align_hf.data.sources import load_pairs

    def open_pairs():
        return load_pairs(args.path, image_column=args.image_column, text_column=args.text_column, split=args.split)

    config = _filter_from_args(args)
    align_filter = None
    if config is not None:
        if args.counts and args.save_counts:
            raise SystemExit("--save-counts saves the counting pass; with --counts there is none")
        if args.counts:
            counts = load_counts(args.counts)
        elif config.needs_counts:
            counts = count_frequencies(open_pairs(), count_images=config.max_texts_per_image is not None, limit=args.limit,
                                       progress=not args.no_progress, max_ngram=config.rare_ngrams)
        else:
            counts = None
        if counts is not None and args.save_counts:
            counts.save(args.save_counts)
        align_filter = AlignFilter(config, counts)
    limits = DecodeLimits(max_pixels=args.max_pixels, max_aspect_ratio=args.max_aspect)
    report = check_pairs(open_pairs(), align_filter, limits, limit=args.limit, progress=not args.no_progress)
    report["source"] = args.path
    print(format_report(report))
    write_json(report, args.json)
    return 0


def run_count(args: argparse.Namespace) -> int:
    if args.output.endswith(".json"):
        return _count_to_json(args)
    from align_hf.data.counting import count_corpus
    from align_hf.data.filtering import AlignFilter

    if args.limit is not None:
        raise SystemExit("--limit applies to the in-memory JSON counts only (an --output ending in .json)")
    store = count_corpus(
        args.path, args.output, engine=args.engine, image_column=args.image_column, text_column=args.text_column,
        split=args.split, count_images=args.count_images, max_ngram=1 if args.unigrams_only else 2,
        partitions=args.partitions, shards_per_task=args.shards_per_task, spill_rows=args.spill_rows,
        ray_address=args.ray_address, num_cpus=args.num_cpus, progress=not args.no_progress,
    )
    meta = store.meta
    print(store.summary())
    rate = meta["num_records"] / max(meta["seconds"], 1e-9)
    print(f"{meta['engine']} engine, {meta['num_shards']} shards in {meta['map_tasks']} map tasks: "
          f"{meta['seconds']:.1f} s ({rate:,.0f} pairs/s)")
    if args.filter != "none":
        # Build (and cache in the store) the lookup arrays the trainer's filter will memory-map.
        index = AlignFilter(_filter_from_args(args), store).index
        print(f"filter index ({args.filter}): " + ", ".join(f"{k}={v}" for k, v in index.sizes().items()))
    print(f"wrote {args.output}")
    return 0


def _count_to_json(args: argparse.Namespace) -> int:
    """The in-memory path for small corpora: one process, Python counters, one JSON file."""
    from align_hf.data.filtering import count_frequencies
    from align_hf.data.sources import load_pairs

    pairs = load_pairs(args.path, image_column=args.image_column, text_column=args.text_column, split=args.split)
    counts = count_frequencies(pairs, count_images=args.count_images, limit=args.limit, progress=not args.no_progress,
                               max_ngram=1 if args.unigrams_only else 2)
    counts.save(args.output)
    shared = sum(1 for v in counts.text_counts.values() if v > 1)
    distinct = sum(1 for token in counts.token_counts if " " not in token)
    print(f"{counts.num_texts} texts, {distinct} distinct unigrams, {shared} texts shared by 2+ images")
    print(f"wrote {args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = add_command_group(subparsers, "data", help="write the synthetic corpus, scan and count datasets")

    synth = commands.add_parser("synth", help="write the synthetic noisy alt-text corpus as webdataset shards")
    synth.add_argument("--output", required=True, help="output directory")
    synth.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    synth.add_argument("--num-train", type=int, default=20000, help="training pairs (default: 20000)")
    synth.add_argument("--zeroshot-per-class", type=int, default=10, help="zero-shot images per class (default: 10)")
    synth.add_argument("--num-retrieval", type=int, default=1000, help="retrieval pairs (default: 1000)")
    synth.add_argument("--noise", type=float, default=0.2, help="share of noisy training captions (default: 0.2)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--shard-size", type=int, default=1000, help="pairs per shard (default: 1000)")
    synth.add_argument("--splits", nargs="+", choices=("train", "zeroshot", "retrieval"), help="splits to write (default: all)")
    synth.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes")
    synth.add_argument("--config", metavar="JSON",
                       help='other SyntheticConfig fields as a JSON object, e.g. \'{"position_in_caption": 0.3}\' '
                            "(the quickstart's corpus: see QuickstartRecipe.corpus)")
    add_progress_arg(synth)
    synth.set_defaults(func=run_synth)

    check = commands.add_parser("check", help="scan a dataset: decodable pairs, skip reasons, ALIGN filter outcomes")
    _add_source_args(check)
    check.add_argument("--json", default="data_check.json", help="where to write the report (default: data_check.json)")
    check.add_argument("--filter", choices=("paper", "small", "none"), default="paper",
                       help="filter thresholds: the paper's, 'small' for small corpora, or none (default: paper)")
    check.add_argument("--image-size", type=int, default=64, help="image size the 'small' preset is sized for")
    check.add_argument("--min-image-side", type=int)
    check.add_argument("--max-aspect-ratio", type=float)
    check.add_argument("--max-images-per-text", type=int)
    check.add_argument("--min-words", type=int)
    check.add_argument("--max-words", type=int)
    check.add_argument("--min-token-count", type=int)
    check.add_argument("--counts", help="counts from 'align-hf data count' (store folder or JSON; skips the counting pass)")
    check.add_argument("--save-counts", help="also save the counts of the counting pass here")
    check.add_argument("--max-pixels", type=int, default=89_478_485, help="decompression-bomb cap")
    check.add_argument("--max-aspect", type=float, default=20.0, help="skip images more elongated than this")
    check.set_defaults(func=run_check)

    count = commands.add_parser(
        "count", help="count alt-texts, unigrams, bigrams (and images) for ALIGN's frequency rules",
        description="Counts for ALIGN's frequency filter. An --output folder gets a parquet count store (64-bit hashed "
                    "keys, hash-partitioned, merged with bounded memory) counted on Ray Data or in this process; an "
                    "--output ending in .json gets the small in-memory counts. Both feed 'data check --counts' and "
                    "'align-hf train --filter-counts'.")
    _add_source_args(count)
    count.add_argument("--output", required=True, help="count store folder (or a .json file for the in-memory counts)")
    count.add_argument("--count-images", action="store_true", help="also hash image bytes (for the texts-per-image rule)")
    count.add_argument("--unigrams-only", action="store_true", help="count unigrams, not bigrams (the rare-token rule then checks unigrams)")
    count.add_argument("--engine", choices=("ray", "local"), default="ray",
                       help="ray: Ray Data map-reduce (local Ray with this machine's CPUs unless --ray-address); "
                            "local: the same map and reduce in this process (default: ray)")
    count.add_argument("--ray-address", help="Ray cluster to join (e.g. 'auto' or ray://head:10001); --output must be on storage every node sees")
    count.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    count.add_argument("--partitions", type=int, default=32,
                       help="hash partitions per table, a power of two; one reduce task holds one (default: 32; 1024 at 10^9 pairs)")
    count.add_argument("--shards-per-task", type=int, help="input shards per map task (default: about 4 tasks per CPU)")
    count.add_argument("--spill-rows", type=int, default=4_000_000, help="keys a map task buffers before writing a sorted run")
    count.add_argument("--filter", choices=("paper", "small", "none"), default="paper",
                       help="prebuild the filter's lookup arrays for these thresholds in the store (default: paper)")
    count.add_argument("--image-size", type=int, default=64, help="image size the 'small' preset is sized for")
    count.set_defaults(func=run_count, min_image_side=None, max_aspect_ratio=None, max_images_per_text=None, min_words=None,
                       max_words=None, min_token_count=None)
