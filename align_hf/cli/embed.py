"""``align-hf index embed``: embed a corpus into an embedding folder (clip-retrieval layout), on Ray or in one process."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from align_hf.cli.common import add_model_args, add_source_args

logger = logging.getLogger(__name__)


def run_embed(args: argparse.Namespace) -> int:
    from align_hf.cli.common import load_model

    use_ray = not args.no_ray
    if use_ray and importlib.util.find_spec("ray") is None:
        if args.ray_address:
            print("error: --ray-address needs Ray: pip install 'align_hf[scale]'", file=sys.stderr)
            return 2
        logger.warning("Ray is not installed (pip install 'align_hf[scale]'); embedding in this process")
        use_ray = False
    from align_hf.loading import ModelLoadError

    common = dict(
        batch_size=args.batch_size, fp16=args.fp16, text=not args.no_text, image_column=args.image_column,
        caption_column=args.caption_column, split=args.split, overwrite=args.overwrite, progress=not args.no_progress,
    )
    try:
        if use_ray:
            from align_hf.search.ray_embed import embed_with_ray

            # By name: each actor loads the model itself (on its node and GPU); the driver's CPU copy
            # only signs the output.
            manifest = embed_with_ray(
                args.model, None, args.images, args.output, ray_address=args.ray_address, num_cpus=args.num_cpus,
                actors=args.actors, num_gpus=args.num_gpus, cpus_per_actor=args.cpus_per_actor,
                threads=args.threads, **common,
            )
        else:
            from align_hf.search.embeddings import embed_to_folder

            model, processor = load_model(args)
            manifest = embed_to_folder(model, processor, args.images, args.output, device=args.device, **common)
    except (FileNotFoundError, ValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"embedded {manifest['rows']} images in {len(manifest['parts'])} parts "
          f"({', '.join(manifest['modalities'])}, {manifest['dim']}-d {manifest['dtype']}); "
          f"skipped {manifest['skipped']}" + (f" {manifest['skip_reasons']}" if manifest["skipped"] else ""))
    for example in manifest["skipped_examples"][:10]:
        print(f"  skipped {example['source']} {example['key']}: {example['reason']}")
    print(f"wrote {args.output}")
    return 0


def register_embed(commands: argparse._SubParsersAction) -> None:
    """Add ``embed`` to a command group (``align-hf index``)."""
    embed = commands.add_parser(
        "embed",
        help="embed images (and captions) into an embedding folder, on Ray or in one process",
        description="Embed webdataset shards, an image folder, parquet files or a dataset into EMB/img_emb/*.npy, "
        "EMB/text_emb/*.npy and EMB/metadata/*.parquet (clip-retrieval's layout, read by autofaiss) plus "
        "EMB/align_manifest.json. One part per input shard; rerun the same command to resume: finished shards "
        "are not embedded again. Runs on Ray Data (a local Ray by default, or --ray-address) when Ray is "
        "installed, else in this process.",
    )
    add_model_args(embed)  # --device/--dtype apply to --no-ray; Ray actors use bf16 on GPU, fp32 on CPU
    embed.add_argument("--images", required=True,
                       help="webdataset tars (path, glob, {000..099} pattern or folder), image folder, parquet files or saved dataset")
    embed.add_argument("--output", required=True, help="embedding folder to write (or resume)")
    add_source_args(embed, split="train")
    embed.add_argument("--caption-column", help="caption column / webdataset extension (default: auto-detect)")
    embed.add_argument("--no-text", action="store_true", help="do not embed the captions (no text_emb)")
    embed.add_argument("--fp16", action="store_true", help="store vectors as float16 (half the disk)")
    embed.add_argument("--overwrite", action="store_true", help="replace an output folder made from other inputs or another model")
    ray = embed.add_argument_group("Ray")
    ray.add_argument("--no-ray", action="store_true", help="embed in this process, without Ray")
    ray.add_argument("--ray-address", help="running Ray cluster ('auto', 'ray://head:10001'); default: start Ray on this machine")
    ray.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    ray.add_argument("--actors", type=int, help="embedding actors (default: one per GPU; CPUs only: enough for ~80%% of the CPUs)")
    ray.add_argument("--num-gpus", type=float, help="GPUs per actor (default: 1 when the cluster has GPUs)")
    ray.add_argument("--cpus-per-actor", type=float, help="CPUs reserved per actor (default: 1 with a GPU; CPUs only: its threads, less if reading would get no CPU)")
    ray.add_argument("--threads", type=int, help="torch threads per CPU actor (default: 1 up to 8 CPUs, 2 up to 16, then 4)")
    embed.set_defaults(func=run_embed)


__all__ = ["register_embed", "run_embed"]
