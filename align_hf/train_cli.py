"""``align-hf train`` (pretraining / fine-tuning) and ``align-hf quickstart``.

``align-hf train`` takes transformers' ``HfArgumentParser`` flags (``--output_dir``, ``--max_steps``,
``--per_device_train_batch_size``, ...) plus the model and data flags below, or a YAML/JSON file
with the same keys as its first argument (flags after it override the file)::

    align-hf train --model tiny --train_data corpus/ --output_dir runs/tiny --max_steps 500
    align-hf train config.yaml --learning_rate 5e-4
    torchrun --nproc_per_node 8 -m align_hf.cli train config.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

logger = logging.getLogger(__name__)

TASKS = ("contrastive", "classification")
FILTERS = ("none", "paper", "small")


@dataclass
class ModelArguments:
    """Which model to train and how to build it."""

    model: str = field(
        default="tiny",
        metadata={"help": "A preset (tiny, align-base, align-l2) trained from scratch, or a checkpoint folder / Hub repo "
                  "(align_hf or transformers-format ALIGN) to fine-tune."},
    )
    processor: str | None = field(default=None, metadata={"help": "Processor folder/repo (default: the checkpoint's)."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder/repo for a preset model (e.g. bert-base-uncased)."}
    )
    vocab: str | None = field(
        default=None, metadata={"help": "vocab.txt for a preset model's WordPiece tokenizer (default: the synthetic corpus's)."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Image size of a preset model (crop size; resize is 346/289 of it)."})
    temperature_init: float | None = field(default=None, metadata={"help": "Initial temperature of a preset model (paper: 1.0)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON of AlignConfig.from_preset overrides, e.g. '{\"text_config\": {\"num_hidden_layers\": 1}}'."}
    )
    allow_pickle: bool = field(default=False, metadata={"help": "Allow loading pickle (.bin) checkpoints."})


@dataclass
class DataArguments:
    """Training and evaluation data."""

    task: str = field(
        default="contrastive",
        metadata={"help": "contrastive (image-caption pretraining / fine-tuning) or classification (labelled images: "
                  "linear probe with --freeze_vision_tower, else full fine-tune).", "choices": list(TASKS)},
    )
    train_data: str | None = field(
        default=None,
        metadata={"help": "Training pairs: anything the data entry point takes (webdataset shards/glob/brace pattern, image "
                  "folder, parquet, saved dataset, Hub name), or a synthetic corpus folder (align-hf data synth)."},
    )
    eval_data: str | None = field(default=None, metadata={"help": "Retrieval eval pairs (same formats)."})
    eval_image_column: str = field(default="image", metadata={"help": "Image field of eval rows."})
    eval_caption_column: str = field(default="text", metadata={"help": "Caption field(s) of eval rows, e.g. meta.captions."})
    zero_shot_data: str | None = field(default=None, metadata={"help": "Labelled images for zero-shot evaluation."})
    class_names: str | None = field(default=None, metadata={"help": "Class names: a text file (one per line) or JSON list."})
    templates: str = field(default="imagenet", metadata={"help": "Prompt templates: imagenet, short, or a file."})
    label_column: str = field(default="label", metadata={"help": "Label field (class index or name), e.g. meta.label_index."})
    image_column: str | None = field(default=None, metadata={"help": "Image column / webdataset extension of the training data."})
    text_column: str | None = field(default=None, metadata={"help": "Caption column / webdataset extension of the training data."})
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Shuffle buffer of the training stream."})
    filter: str = field(
        default="none",
        metadata={"help": "ALIGN frequency filter on the training data: none, paper thresholds, or small (small corpora).",
                  "choices": list(FILTERS)},
    )
    flip_swap_left_right: bool = field(
        default=False, metadata={"help": "Swap 'left'/'right' in captions of flipped images (on by default for the synthetic corpus)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows per set."})


# ----------------------------------------------------------------------------------------------
# building blocks shared with the quickstart


def synthetic_manifest(path: str | None) -> dict[str, Any] | None:
    """The manifest of a synthetic corpus folder, or None when ``path`` is something else."""
    if path and os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json")):
        from .data import load_manifest

        manifest = load_manifest(path)
        if str(manifest.get("format", "")).startswith("align_hf.synthetic"):
            return manifest
    return None


def preset_processor(image_size: int, tokenizer) -> Any:
    """The processor of a preset model: resize to 346/289 of ``image_size``, centre crop ``image_size``."""
    from .processing_align import AlignImageProcessor, AlignProcessor

    resize = int(round(image_size * 346 / 289))
    image_processor = AlignImageProcessor(
        size={"height": resize, "width": resize}, crop_size={"height": image_size, "width": image_size}
    )
    return AlignProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model_and_processor(model_args: ModelArguments, vocab_file: str | None = None):
    """``(model, processor)``: a preset from scratch (seeded by the caller) or a checkpoint to fine-tune."""
    from .configuration_align import PRESETS, AlignConfig
    from .modeling_align import AlignModel
    from .processing_align import AlignProcessor

    if model_args.model not in PRESETS:
        model = AlignModel.from_pretrained(model_args.model, allow_pickle=model_args.allow_pickle)
        processor = AlignProcessor.from_pretrained(model_args.processor or model_args.model)
        return model.train(), processor
    processor = None
    if model_args.processor:
        processor = AlignProcessor.from_pretrained(model_args.processor)
        tokenizer = processor.tokenizer
    elif model_args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer)
    else:
        vocab_path = model_args.vocab or vocab_file
        if vocab_path is None:
            raise ValueError(
                f"a preset model ({model_args.model}) needs a tokenizer: pass --tokenizer, --vocab or --processor, "
                "or train on a synthetic corpus folder (it carries vocab.txt)"
            )
        from .data.vocab import make_tokenizer

        with open(vocab_path, encoding="utf-8") as handle:
            vocab = [line.rstrip("\n") for line in handle if line.strip()]
        tokenizer = make_tokenizer(vocab, model_max_length=64)
    overrides: dict[str, Any] = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    text_overrides = overrides.setdefault("text_config", {})
    text_overrides.setdefault("vocab_size", len(tokenizer))
    if model_args.image_size:
        overrides.setdefault("vision_config", {})["image_size"] = model_args.image_size
    if model_args.temperature_init is not None:
        overrides["temperature_init_value"] = model_args.temperature_init
    config = AlignConfig.from_preset(model_args.model, **overrides)
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the text tower only {config.text_config.vocab_size}")
    if processor is None:
        processor = preset_processor(config.vision_config.image_size, tokenizer)
    return AlignModel(config).train(), processor


def build_filter(kind: str, source: Any, image_size: int, progress: bool):
    """The ALIGN filter with corpus counts from one pass over ``source`` (None for ``"none"``)."""
    if kind == "none":
        return None
    from .data.filtering import AlignFilter, FilterConfig, count_frequencies
    from .data.sources import load_pairs

    config = FilterConfig.paper() if kind == "paper" else FilterConfig.small_corpus(image_size)
    counts = None
    if config.needs_counts:
        counts = count_frequencies(load_pairs(source), count_images=config.max_texts_per_image is not None, progress=progress)
    return AlignFilter(config, counts)


def _limit(rows: Any, limit: int | None) -> Any:
    if limit is None:
        return rows
    import itertools

    return list(itertools.islice(rows, limit))


def build_eval_sets(data_args: DataArguments, manifest: dict[str, Any] | None, corpus: str | None) -> list[Any]:
    """Eval sets from the flags, or the held-out splits of a synthetic corpus."""
    from .data.sources import load_pairs
    from .train_data import RetrievalEvalSet, ZeroShotEvalSet
    from .zero_shot import load_class_names

    sets: list[Any] = []
    limit = data_args.max_eval_samples
    if data_args.eval_data:
        sets.append(RetrievalEvalSet(_limit(load_pairs(data_args.eval_data), limit), image_column=data_args.eval_image_column,
                                     caption_column=data_args.eval_caption_column))
    elif manifest is not None and "retrieval" in manifest["splits"]:
        sets.append(RetrievalEvalSet(_limit(load_pairs(os.path.join(corpus, "retrieval")), limit), caption_column="meta.captions"))
    if data_args.zero_shot_data:
        if not data_args.class_names:
            raise ValueError("--zero_shot_data needs --class_names")
        sets.append(ZeroShotEvalSet(_limit(load_pairs(data_args.zero_shot_data), limit), load_class_names(data_args.class_names),
                                    templates=data_args.templates, label_column=data_args.label_column,
                                    image_column=data_args.eval_image_column))
    elif manifest is not None and "zeroshot" in manifest["splits"]:
        sets.append(ZeroShotEvalSet(
            _limit(load_pairs(os.path.join(corpus, "zeroshot")), limit),
            manifest["class_names"],
            templates=manifest["zeroshot_templates"],
            label_column="meta.label_index",
            subsets={"unseen_combinations": manifest["unseen_class_names"]},
        ))
    return sets


def final_metrics(trainer) -> dict[str, float]:
    """The last evaluation's metrics (without the ``eval_`` prefix)."""
    for entry in reversed(trainer.state.log_history):
        if any(k.startswith("eval_") for k in entry):
            return {k[len("eval_"):]: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def format_table(rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("metric", "value")) -> str:
    width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    vwidth = max(len(header[1]), *(len(r[1]) for r in rows)) if rows else len(header[1])
    lines = [f"| {header[0]:<{width}} | {header[1]:>{vwidth}} |", f"|{'-' * (width + 2)}|{'-' * (vwidth + 1)}:|"]
    lines += [f"| {name:<{width}} | {value:>{vwidth}} |" for name, value in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# align-hf train


def parse_train_args(argv: Sequence[str]):
    """``(ModelArguments, DataArguments, AlignTrainingArguments)`` from flags and an optional YAML/JSON file."""
    from transformers import HfArgumentParser

    from .training_args import AlignTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, AlignTrainingArguments), prog="align-hf train")
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        path, argv = argv[0], argv[1:]
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".json"):
                values = json.load(handle)
            else:
                import yaml

                values = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        # File values become defaults, so flags given after the file override them.
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)


def run_train(argv: Sequence[str]) -> int:
    from .plotting import plot_training_curves

    model_args, data_args, training_args = parse_train_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not data_args.train_data:
        raise SystemExit("align-hf train: --train_data is required")
    if data_args.task == "classification":
        from .classification import run_classification

        return run_classification(model_args, data_args, training_args)
    from transformers import set_seed

    from .data.pipeline import ImageTextPairs
    from .data.sources import load_pairs
    from .data.transforms import LEFT_RIGHT_SWAP, ImageTransform
    from .trainer import AlignTrainer

    set_seed(training_args.seed)
    manifest = synthetic_manifest(data_args.train_data)
    corpus = data_args.train_data if manifest is not None else None
    train_source = os.path.join(corpus, "train") if corpus else data_args.train_data
    vocab_file = os.path.join(corpus, manifest.get("vocab_file", "vocab.txt")) if corpus else None
    model, processor = build_model_and_processor(model_args, vocab_file)
    progress = not training_args.disable_tqdm and training_args.process_index == 0
    image_size = model.config.vision_config.image_size
    align_filter = build_filter(data_args.filter, train_source, image_size, progress)
    flip_swap = LEFT_RIGHT_SWAP if (data_args.flip_swap_left_right or manifest is not None) else None
    transform = ImageTransform.from_image_processor(processor.image_processor, train=True, seed=training_args.seed)
    train_dataset = ImageTextPairs(
        load_pairs(train_source, data_args.image_column, data_args.text_column),
        transform,
        filter=align_filter,
        shuffle_buffer=data_args.shuffle_buffer,
        seed=training_args.seed,
        flip_swap=flip_swap,
    )
    eval_sets = build_eval_sets(data_args, manifest, corpus)
    if training_args.eval_strategy != "no" and not eval_sets:
        raise SystemExit("align-hf train: evaluation was requested but there is no --eval_data / --zero_shot_data")
    trainer = AlignTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_sets or None,
                           processing_class=processor, flip_swap=flip_swap)
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last", "latest"):
        resume = True  # the newest complete checkpoint in --output_dir
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - start
    metrics = final_metrics(trainer)
    summary = {"train_seconds": train_seconds, "global_step": trainer.state.global_step, **metrics}
    if trainer._stream is not None:
        summary["data"] = trainer._global_data_stats().as_dict()
    out = training_args.output_dir
    card_metrics = {"eval": {k: float(v) for k, v in metrics.items() if isinstance(v, float)}} if metrics else None
    trainer.save_hub_folder(os.path.join(out, "model"), metrics=card_metrics)
    if trainer.is_world_process_zero():
        plot_training_curves(trainer.state.log_history, os.path.join(out, "training_curves.png"),
                             title=f"align-hf train: {model_args.model}")
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items() if not k.endswith("runtime")]
        print(f"\ntrained {trainer.state.global_step} steps in {train_seconds:.0f} s")
        if rows:
            print(format_table(rows))
        print(f"model: {os.path.join(out, 'model')}\ncurves: {os.path.join(out, 'training_curves.png')}\n"
              f"metrics: {os.path.join(out, 'metrics.json')}")
    return 0


# ----------------------------------------------------------------------------------------------
# registration with the align-hf command line


def _run_train_command(args: argparse.Namespace) -> int:
    if any(a in ("-h", "--help") for a in args.rest):
        parse_train_args(["--help"])
    return run_train(args.rest)


def _run_quickstart_command(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    return run_quickstart(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    # HfArgumentParser owns the train flags: everything after "train" is handed to it.
    train = subparsers.add_parser(
        "train", help="pretrain or fine-tune (transformers-style flags or a YAML/JSON config; see 'align-hf train --help')",
        add_help=False, prefix_chars="+",
    )
    train.add_argument("rest", nargs=argparse.REMAINDER)
    train.set_defaults(func=_run_train_command)

    from .quickstart import add_quickstart_arguments

    quick = subparsers.add_parser(
        "quickstart",
        help="offline demo: synthetic noisy corpus -> pretrain the tiny preset -> zero-shot and retrieval table",
    )
    add_quickstart_arguments(quick)
    quick.set_defaults(func=_run_quickstart_command)


def main(argv: Sequence[str] | None = None) -> int:
    return run_train(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ModelArguments", "DataArguments", "parse_train_args", "run_train", "register", "build_model_and_processor"]
