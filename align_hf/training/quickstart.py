"""``align-hf quickstart``: ALIGN in miniature, offline, on two CPU cores.

1. writes the synthetic noisy alt-text corpus (20% noisy captions by default), mostly single
   objects whose captions often leave out position and background (see ``QuickstartRecipe.corpus``);
2. reads its training split once through the data pipeline (ALIGN's frequency filter with thresholds
   sized for the corpus, decoding) into memory (:mod:`align_hf.data.decoded`), then pretrains the
   ``tiny`` preset from scratch for a fixed number of steps with
   :class:`~align_hf.training.trainer.AlignTrainer` (AdamW with linear warm-up and decay, label
   smoothing 0.1, a learnable temperature) on one torch thread;
3. evaluates on held-out splits: zero-shot classification of single-object images into all
   colour x shape classes with prompt templates unlike any training caption (also on the
   combinations never seen in training), and text<->image retrieval with captions that give every
   object's size, colour, shape and position;
4. prints a table and writes ``metrics.json``, a Hub-ready ``model/`` and ``training_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartRecipe:
    """Everything the quickstart trains with; the defaults are the tuned recipe."""

    image_size: int = 64
    # The corpus is rendered at image_size. False: images go in whole (the processor resizes to
    # image_size, so its crop takes nothing). True: the preset's resize to 346/289 of image_size and
    # a crop back, which cuts into objects near the border. See AlignImageProcessor.for_image_size.
    crop: bool = False
    num_train: int = 20000
    # A fixed number of steps, whatever the machine's speed (no clock cuts training short). Measured
    # at the default seed: 1000 steps 85.6% zero-shot top-1, 900 steps 79.0% (below the 80% target).
    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup: float = 0.1
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    temperature_init: float = 0.07
    label_smoothing: float = 0.1
    text_layers: int = 2
    text_init_range: float = 0.02
    # Dropout of the text tower. BERT's 0.1 costs 15% of a step here (the mask draws) and a short
    # run from scratch on a clean-vocabulary corpus has nothing to regularise away.
    text_dropout: float = 0.0
    learnable_temperature: bool = True
    # Extra timm arguments of the image tower (e.g. channel_multiplier), as a JSON object.
    vision_timm_kwargs: str = "{}"
    filter: str = "small"
    seed: int = 0
    # Decode the training JPEGs once into memory (align_hf.data.decoded) instead of on every read.
    decode_once: bool = True
    # Off (0) by default: every run trains all `steps`, so quality does not depend on the machine's
    # speed. A positive value stops training after that many seconds, with the learning rate decayed
    # on the clock (AlignTrainingArguments.max_train_seconds): a shorter run, and a worse model.
    max_train_seconds: float = 0.0
    # SyntheticConfig fields that differ from the data module's defaults (as a JSON object). Mostly
    # single objects, and most of their captions without position or background: a batch then holds
    # many captions that differ only in shape, so the loss cannot be lowered without learning shape.
    # With the data module's defaults colour, position and background tell almost every pair in a
    # batch apart, and zero-shot top-1 stalls near 27% (colour right, shape near chance).
    corpus: str = json.dumps({"scene_weights": {"single": 0.8, "pair": 0.1, "group": 0.1},
                              "position_in_caption": 0.4, "background_in_caption": 0.2})


def _usable_cpus() -> int:
    """CPUs this process may run on (``taskset`` limits included), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    recipe = QuickstartRecipe()
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where everything goes (default: outputs/quickstart)")
    parser.add_argument("--noise", type=float, default=0.2, help="share of noisy training captions (default: 0.2)")
    parser.add_argument("--filter", choices=("small", "paper", "none"), default=recipe.filter,
                        help="ALIGN frequency filter thresholds: small (sized for this corpus), paper, or none (default: small)")
    parser.add_argument("--steps", type=int, default=recipe.steps, help=f"training steps (default: {recipe.steps})")
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size, help=f"pairs per step (default: {recipe.batch_size})")
    parser.add_argument("--num-train", type=int, default=recipe.num_train, help=f"training pairs to generate (default: {recipe.num_train})")
    parser.add_argument("--seed", type=int, default=recipe.seed)
    parser.add_argument("--workers", type=int, default=min(2, _usable_cpus()), help="processes writing the corpus")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (default: only at the end)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training (default: 1, the same speed on an idle and a busy machine; "
                             "0: torch's choice; see the README's quickstart section)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the recipe (QuickstartRecipe), e.g. --set learning_rate=1e-3")


def corpus_config(recipe: QuickstartRecipe, noise: float):
    from align_hf.data import SyntheticConfig

    values = dict(image_size=recipe.image_size, num_train=recipe.num_train, noise=noise, seed=recipe.seed, shard_size=1000,
                  zeroshot_per_class=10, num_retrieval=1000)
    values.update(json.loads(recipe.corpus))
    return SyntheticConfig.from_dict(values)


def apply_overrides(recipe: QuickstartRecipe, assignments: list[str]) -> QuickstartRecipe:
    """``["learning_rate=1e-3", ...]`` applied to ``recipe`` (values parsed as the field's type)."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(recipe)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or name not in types:
            raise SystemExit(f"--set {assignment!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = types[name]
        if kind in ("bool", bool):
            changes[name] = value.lower() in ("1", "true", "yes")
        elif kind in ("int", int):
            changes[name] = int(value)
        elif kind in ("float", float):
            changes[name] = float(value)
        else:
            changes[name] = value
    return dataclasses.replace(recipe, **changes)


def ensure_corpus(directory: str, config, workers: int, progress: bool) -> dict[str, Any]:
    """Write the corpus unless ``directory`` already holds one made with the same config."""
    from align_hf.data import load_manifest, write_synthetic_corpus

    manifest_path = os.path.join(directory, "manifest.json")
    if os.path.isfile(manifest_path):
        manifest = load_manifest(directory)
        if manifest.get("config") == json.loads(json.dumps(config.to_dict())):
            logger.info("reusing the corpus in %s", directory)
            return manifest
    return write_synthetic_corpus(directory, config, num_workers=workers, progress=progress)


def train_on_corpus(
    corpus: str,
    output_dir: str,
    recipe: QuickstartRecipe,
    progress: bool = True,
    log_every: int = 50,
    eval_every: int = 0,
) -> tuple[Any, dict[str, float], float]:
    """Pretrain the tiny preset on a synthetic corpus and evaluate; returns ``(trainer, metrics, train_seconds)``."""
    from transformers import set_seed

    from align_hf.data import load_manifest
    from align_hf.data.pipeline import build_train_stream
    from align_hf.data.decoded import decode_once
    from align_hf.data.sources import load_pairs
    from align_hf.data.transforms import LEFT_RIGHT_SWAP, ImageTransform
    from align_hf.training.arguments import AlignTrainingArguments, DataArguments, ModelArguments
    from align_hf.training.factories import build_eval_sets, build_filter, build_model_and_processor
    from align_hf.training.reporting import final_metrics
    from align_hf.training.trainer import AlignTrainer

    set_seed(recipe.seed)
    manifest = load_manifest(corpus)
    overrides = {
        "label_smoothing": recipe.label_smoothing,
        "learnable_temperature": recipe.learnable_temperature,
        "text_config": {"num_hidden_layers": recipe.text_layers, "initializer_range": recipe.text_init_range,
                        "hidden_dropout_prob": recipe.text_dropout, "attention_probs_dropout_prob": recipe.text_dropout},
        "vision_config": {"timm_kwargs": json.loads(recipe.vision_timm_kwargs)},
    }
    model, processor = build_model_and_processor(
        ModelArguments(model="tiny", image_size=recipe.image_size, temperature_init=recipe.temperature_init,
                       config_overrides=json.dumps(overrides)),
        vocab_file=os.path.join(corpus, manifest.get("vocab_file", "vocab.txt")),
        crop=recipe.crop,
    )
    train_source = os.path.join(corpus, "train")
    align_filter = build_filter(recipe.filter, train_source, manifest["config"]["image_size"], progress)
    transform = ImageTransform.from_image_processor(processor.image_processor, train=True, seed=recipe.seed)
    if recipe.decode_once:
        # The corpus fits in memory: decode each JPEG once instead of once per epoch on the training thread.
        train_dataset = decode_once(load_pairs(train_source), transform, filter=align_filter, flip_swap=LEFT_RIGHT_SWAP,
                                    seed=recipe.seed, progress=progress)
    else:
        train_dataset = build_train_stream(train_source, seed=recipe.seed, filter=align_filter, flip_swap=LEFT_RIGHT_SWAP,
                                           transform=transform)
    eval_sets = build_eval_sets(DataArguments(), manifest, corpus)
    args = AlignTrainingArguments(
        output_dir=output_dir,
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup,
        weight_decay=recipe.weight_decay,
        optimizer=recipe.optimizer,
        logging_steps=log_every,
        save_strategy="no",
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every or None,
        eval_on_end=True,
        channels_last=True,
        max_train_seconds=recipe.max_train_seconds or None,
        seed=recipe.seed,
        use_cpu=True,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    trainer = AlignTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_sets,
                           processing_class=processor, flip_swap=LEFT_RIGHT_SWAP)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    return trainer, final_metrics(trainer), train_seconds


def headline(metrics: dict[str, float], train_seconds: float) -> dict[str, float]:
    """The quickstart's named metrics from the trainer's eval metrics."""
    return {
        "zero_shot_top1": metrics["zero_shot_top1"],
        "zero_shot_chance": metrics["zero_shot_chance"],
        "zero_shot_top1_unseen_combinations": metrics.get("zero_shot_unseen_combinations_top1", float("nan")),
        "text_to_image_recall@1": metrics["retrieval_text_to_image_R@1"],
        "text_to_image_recall@5": metrics["retrieval_text_to_image_R@5"],
        "image_to_text_recall@1": metrics["retrieval_image_to_text_R@1"],
        "image_to_text_recall@5": metrics["retrieval_image_to_text_R@5"],
        "train_seconds": train_seconds,
    }


def quickstart_table(result: dict[str, float], metrics: dict[str, float]) -> str:
    from align_hf.training.reporting import format_table

    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    rows = [
        (f"zero-shot top-1, held-out images ({metrics['zero_shot_num_samples']} images, "
         f"{round(1 / result['zero_shot_chance'])} classes)", pct(result["zero_shot_top1"])),
        ("  chance level", pct(result["zero_shot_chance"])),
        (f"zero-shot top-1, unseen colour x shape combinations ({metrics.get('zero_shot_unseen_combinations_num_samples', 0)} images)",
         pct(result["zero_shot_top1_unseen_combinations"])),
        (f"text->image recall@1 ({metrics['retrieval_num_texts']} captions, {metrics['retrieval_num_images']} images)",
         pct(result["text_to_image_recall@1"])),
        ("text->image recall@5", pct(result["text_to_image_recall@5"])),
        ("image->text recall@1", pct(result["image_to_text_recall@1"])),
        ("image->text recall@5", pct(result["image_to_text_recall@5"])),
    ]
    return format_table(rows, header=("held-out evaluation", "value"))


def run_quickstart(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from align_hf.training.plotting import plot_training_curves

    if args.threads:
        # One thread by default: measured side by side, two intra-op threads were up to 1.5x faster
        # on two idle cores but up to 10x slower once other processes wanted the cores (threads
        # spin and wait for each other at every op); one thread runs at the same speed in both states.
        torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()
    progress = not args.no_progress
    recipe = dataclasses.replace(QuickstartRecipe(), steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                 num_train=args.num_train, filter=args.filter)
    recipe = apply_overrides(recipe, args.set)
    out = args.output_dir
    corpus_dir = os.path.join(out, "corpus")
    print(f"[1/4] synthetic corpus ({recipe.num_train} training pairs, {args.noise:.0%} noisy captions) -> {corpus_dir}")
    manifest = ensure_corpus(corpus_dir, corpus_config(recipe, args.noise), args.workers, progress)
    print(f"      train captions: {manifest.get('train_caption_kinds')}")
    print(f"      {len(manifest['class_names'])} classes; never in training: {', '.join(manifest['unseen_class_names'])}")
    print(f"[2/4] pretraining the tiny preset: {recipe.steps} steps x {recipe.batch_size} pairs, "
          f"{recipe.image_size} px, {recipe.optimizer.upper()} lr {recipe.learning_rate:g}, filter={recipe.filter}")
    trainer, metrics, train_seconds = train_on_corpus(corpus_dir, os.path.join(out, "run"), recipe, progress,
                                                      eval_every=args.eval_every)
    print(f"[3/4] held-out evaluation done ({train_seconds:.0f} s of training)")
    result = headline(metrics, train_seconds)
    stats = (trainer.data_stats() or trainer.train_dataset.stats).as_dict()
    print("[4/4] saving")
    model_dir = trainer.save_hub_folder(os.path.join(out, "model"),
                                        metrics={"synthetic-heldout": {k: v for k, v in result.items() if k != "train_seconds"}},
                                        tags=["synthetic"])
    curves = plot_training_curves(trainer.state.log_history, os.path.join(out, "training_curves.png"),
                                  title="align-hf quickstart")
    result_file = {**result, "wall_seconds": time.perf_counter() - wall_start, "recipe": dataclasses.asdict(recipe),
                   "noise": args.noise, "data": stats, "eval": metrics}
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(result_file, handle, indent=2)
    print()
    print(quickstart_table(result, metrics))
    print(f"\nwall time {result_file['wall_seconds']:.0f} s (training {train_seconds:.0f} s); data: {stats['kept']} of "
          f"{stats['total']} pairs read were kept, filtered {stats['filtered']}")
    print(f"wrote {', '.join(str(p) for p in (os.path.join(out, 'metrics.json'), f'{model_dir}/', curves) if p)}")
    return 0


__all__ = ["QuickstartRecipe", "run_quickstart", "train_on_corpus", "ensure_corpus", "corpus_config", "headline"]
