"""``align-hf train`` (pretraining / fine-tuning) and ``align-hf quickstart``.

``align-hf train`` takes transformers' ``HfArgumentParser`` flags (``--output_dir``, ``--max_steps``,
``--per_device_train_batch_size``, ...) plus the fields of
:class:`~align_hf.training.arguments.ModelArguments` and
:class:`~align_hf.training.arguments.DataArguments`, or a YAML/JSON file with the same keys as its
first argument (flags after it override the file)::

    align-hf train --model tiny --train_data corpus/ --output_dir runs/tiny --max_steps 500
    align-hf train config.yaml --learning_rate 5e-4
    torchrun --nproc_per_node 8 -m align_hf.cli train config.yaml

The run itself is :func:`align_hf.training.pretrain.run_training` (or
:func:`align_hf.training.classification.run_classification` for ``--task classification``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Sequence


def parse_train_args(argv: Sequence[str]):
    """``(ModelArguments, DataArguments, AlignTrainingArguments)`` from flags and an optional YAML/JSON file."""
    from transformers import HfArgumentParser

    from align_hf.training.arguments import AlignTrainingArguments, DataArguments, ModelArguments

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
        known = {f.name for kind in (ModelArguments, DataArguments, AlignTrainingArguments) for f in dataclasses.fields(kind) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        # File values become defaults, so flags given after the file override them.
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def run_train(argv: Sequence[str]) -> int:
    """``align-hf train ARGV``: parse, set up logging, run the task."""
    model_args, data_args, training_args = parse_train_args(argv)
    if not training_args.should_log:  # ranks other than the main one only report problems
        logging.getLogger().setLevel(logging.WARNING)
    if not data_args.train_data:
        raise SystemExit("align-hf train: --train_data is required")
    if data_args.task == "classification":
        from align_hf.training.classification import run_classification

        return run_classification(model_args, data_args, training_args)
    from align_hf.training.pretrain import run_training

    run_training(model_args, data_args, training_args)
    return 0


def _run_train_command(args: argparse.Namespace) -> int:
    if any(a in ("-h", "--help") for a in args.rest):
        parse_train_args(["--help"])
    return run_train(args.rest)


def _run_quickstart_command(args: argparse.Namespace) -> int:
    from align_hf.training.quickstart import run_quickstart

    return run_quickstart(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``quickstart`` to the ``align-hf`` command line."""
    # HfArgumentParser owns the train flags: everything after "train" is handed to it.
    train = subparsers.add_parser(
        "train", help="pretrain or fine-tune (transformers-style flags or a YAML/JSON config; see 'align-hf train --help')",
        add_help=False, prefix_chars="+",
    )
    train.add_argument("rest", nargs=argparse.REMAINDER)
    train.set_defaults(func=_run_train_command, default_log_level=logging.INFO)

    from align_hf.training.quickstart import add_quickstart_arguments

    quick = subparsers.add_parser(
        "quickstart",
        help="offline demo: synthetic noisy corpus -> pretrain the tiny preset -> zero-shot and retrieval table",
    )
    add_quickstart_arguments(quick)
    quick.set_defaults(func=_run_quickstart_command)


__all__ = ["parse_train_args", "register", "run_train"]
