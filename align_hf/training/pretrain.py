"""Contrastive pretraining or fine-tuning from :mod:`align_hf.training.arguments`: what
``align-hf train`` runs.

:func:`run_training` builds the model and processor (a preset from scratch or a checkpoint), the
training stream (a synthetic corpus folder brings its vocabulary, held-out eval splits and
left/right caption swaps), trains an :class:`~align_hf.training.trainer.AlignTrainer` and writes
``model/`` (Hub-ready, with a model card), ``metrics.json`` and ``training_curves.png`` under
``output_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from align_hf.training.arguments import AlignTrainingArguments, DataArguments, ModelArguments
from align_hf.training.factories import build_eval_sets, build_filter, build_model_and_processor, synthetic_manifest
from align_hf.training.reporting import final_metrics, format_table

logger = logging.getLogger(__name__)


def _resume_target(resume: Any) -> Any:
    if isinstance(resume, str) and resume.lower() in ("true", "last", "latest"):
        return True  # the newest complete checkpoint in output_dir
    return resume


def run_training(model_args: ModelArguments, data_args: DataArguments, training_args: AlignTrainingArguments) -> dict[str, Any]:
    """Train, evaluate and save; returns the summary written to ``metrics.json``.

    The summary holds ``train_seconds``, ``global_step``, the last evaluation's metrics and, for
    streamed data, ``data`` (read / kept / skipped / filtered counts over all ranks).
    """
    from transformers import set_seed

    from align_hf.data.pipeline import build_train_stream
    from align_hf.data.transforms import LEFT_RIGHT_SWAP
    from align_hf.training.plotting import plot_training_curves
    from align_hf.training.trainer import AlignTrainer

    if data_args.task != "contrastive":
        raise ValueError(f"run_training trains contrastive models; task {data_args.task!r} has its own run "
                         "(align_hf.training.classification.run_classification)")
    if not data_args.train_data:
        raise ValueError("run_training needs data_args.train_data")
    set_seed(training_args.seed)
    manifest = synthetic_manifest(data_args.train_data)
    corpus = data_args.train_data if manifest is not None else None
    train_source = os.path.join(corpus, "train") if corpus else data_args.train_data
    vocab_file = os.path.join(corpus, manifest.get("vocab_file", "vocab.txt")) if corpus else None
    model, processor = build_model_and_processor(model_args, vocab_file)
    progress = not training_args.disable_tqdm and training_args.process_index == 0
    align_filter = build_filter(data_args.filter, train_source, model.config.vision_config.image_size, progress,
                                counts_path=data_args.filter_counts)
    flip_swap = LEFT_RIGHT_SWAP if (data_args.flip_swap_left_right or manifest is not None) else None
    train_dataset = build_train_stream(train_source, processor.image_processor, training_args.seed, filter=align_filter,
                                       flip_swap=flip_swap, shuffle_buffer=data_args.shuffle_buffer,
                                       image_column=data_args.image_column, text_column=data_args.text_column)
    eval_sets = build_eval_sets(data_args, manifest, corpus)
    if training_args.eval_strategy != "no" and not eval_sets:
        raise SystemExit("align-hf train: evaluation was requested but there is no --eval_data / --zero_shot_data")
    trainer = AlignTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_sets or None,
                           processing_class=processor, flip_swap=flip_swap)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=_resume_target(training_args.resume_from_checkpoint))
    train_seconds = time.perf_counter() - start
    metrics = final_metrics(trainer)
    summary: dict[str, Any] = {"train_seconds": train_seconds, "global_step": trainer.state.global_step, **metrics}
    data_stats = trainer.data_stats()
    if data_stats is not None:
        summary["data"] = data_stats.as_dict()
    out = training_args.output_dir
    card_metrics = {"eval": {k: float(v) for k, v in metrics.items() if isinstance(v, float)}} if metrics else None
    trainer.save_hub_folder(os.path.join(out, "model"), metrics=card_metrics)
    if trainer.is_world_process_zero():
        curves = plot_training_curves(trainer.state.log_history, os.path.join(out, "training_curves.png"),
                                      title=f"align-hf train: {model_args.model}")
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items() if not k.endswith("runtime")]
        print(f"\ntrained {trainer.state.global_step} steps in {train_seconds:.0f} s")
        if rows:
            print(format_table(rows))
        print(f"model: {os.path.join(out, 'model')}\ncurves: {curves or 'not drawn (no matplotlib)'}\n"
              f"metrics: {os.path.join(out, 'metrics.json')}")
    return summary


__all__ = ["run_training"]
