"""Builders of a training run's parts from :mod:`align_hf.training.arguments`: the model and its
processor, the ALIGN filter, the evaluation sets.

Shared by ``align-hf train`` (:mod:`align_hf.training.pretrain`), the quickstart and image
classification, so a preset, a checkpoint or a synthetic corpus means the same thing everywhere.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from align_hf.training.arguments import DataArguments, ModelArguments


def synthetic_manifest(path: str | None) -> dict[str, Any] | None:
    """The manifest of a synthetic corpus folder, or None when ``path`` is something else."""
    from align_hf.data import find_manifest

    found = find_manifest(path) if path and os.path.isdir(path) else None
    return found[0] if found else None


def preset_processor(image_size: int, tokenizer: Any, crop: bool = True) -> Any:
    """The ``AlignProcessor`` of a preset model of ``image_size`` px.

    Sizes come from ``AlignImageProcessor.for_image_size``: with ``crop`` the paper's resize to
    346/289 of ``image_size`` and a centre crop back, without it a resize straight to ``image_size``.
    """
    from align_hf.processing_align import AlignImageProcessor, AlignProcessor

    return AlignProcessor(image_processor=AlignImageProcessor.for_image_size(image_size, crop=crop), tokenizer=tokenizer)


def _preset_tokenizer(model_args: ModelArguments, vocab_file: str | None) -> tuple[Any, Any]:
    """``(tokenizer, processor or None)`` of a preset model, from the first of --processor, --tokenizer, a vocab."""
    if model_args.processor:
        from align_hf.processing_align import AlignProcessor

        processor = AlignProcessor.from_pretrained(model_args.processor)
        return processor.tokenizer, processor
    if model_args.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_args.tokenizer), None
    vocab_path = model_args.vocab or vocab_file
    if vocab_path is None:
        raise ValueError(
            f"a preset model ({model_args.model}) needs a tokenizer: pass --tokenizer, --vocab or --processor, "
            "or train on a synthetic corpus folder (it carries vocab.txt)"
        )
    from align_hf.data.vocab import make_tokenizer

    with open(vocab_path, encoding="utf-8") as handle:
        vocab = [line.rstrip("\n") for line in handle if line.strip()]
    return make_tokenizer(vocab, model_max_length=64), None


def build_model_and_processor(model_args: ModelArguments, vocab_file: str | None = None, crop: bool = True):
    """``(model, processor)`` in train mode: a preset from scratch (seeded by the caller) or a checkpoint.

    A checkpoint goes through :func:`align_hf.loading.load_model_and_processor` (float32, on the CPU:
    the Trainer places it). A preset's processor is :func:`preset_processor` of its image size with
    ``crop`` unless ``--processor`` names one.
    """
    from align_hf.configuration_align import PRESETS, AlignConfig
    from align_hf.modeling_align import AlignModel

    if model_args.model not in PRESETS:
        from align_hf.loading import load_model_and_processor

        return load_model_and_processor(model_args.model, device="cpu", processor=model_args.processor,
                                        allow_pickle=model_args.allow_pickle, train=True)
    tokenizer, processor = _preset_tokenizer(model_args, vocab_file)
    overrides: dict[str, Any] = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    overrides.setdefault("text_config", {}).setdefault("vocab_size", len(tokenizer))
    if model_args.image_size:
        overrides.setdefault("vision_config", {})["image_size"] = model_args.image_size
    if model_args.temperature_init is not None:
        overrides["temperature_init_value"] = model_args.temperature_init
    config = AlignConfig.from_preset(model_args.model, **overrides)
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the text tower only {config.text_config.vocab_size}")
    if processor is None:
        processor = preset_processor(config.vision_config.image_size, tokenizer, crop=crop)
    return AlignModel(config).train(), processor


def build_filter(kind: str, source: Any, image_size: int, progress: bool, counts_path: str | None = None):
    """The ALIGN filter (``"paper"`` or ``"small"`` thresholds for ``image_size`` px corpora); None for ``"none"``.

    Its corpus counts come from ``counts_path`` (a store written by ``align-hf data count``, or its
    JSON) when given, else from one counting pass over ``source``.
    """
    if kind == "none":
        return None
    from align_hf.data.filtering import AlignFilter, FilterConfig, count_frequencies
    from align_hf.data.sources import load_pairs

    config = FilterConfig.paper() if kind == "paper" else FilterConfig.small_corpus(image_size)
    counts = None
    if counts_path is not None:
        from align_hf.data.count_store import load_counts

        counts = load_counts(counts_path)
    elif config.needs_counts:
        counts = count_frequencies(load_pairs(source), count_images=config.max_texts_per_image is not None,
                                   progress=progress, max_ngram=config.rare_ngrams)
    return AlignFilter(config, counts)


def _limit(rows: Any, limit: int | None) -> Any:
    return rows if limit is None else list(itertools.islice(rows, limit))


def build_eval_sets(data_args: DataArguments, manifest: dict[str, Any] | None, corpus: str | None) -> list[Any]:
    """Eval sets from the flags, or the held-out splits of the synthetic corpus ``corpus``."""
    from align_hf.data.sources import load_pairs
    from align_hf.evaluation.eval_sets import RetrievalEvalSet, ZeroShotEvalSet
    from align_hf.evaluation.zero_shot import load_class_names

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


__all__ = ["build_eval_sets", "build_filter", "build_model_and_processor", "preset_processor", "synthetic_manifest"]
