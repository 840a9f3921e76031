"""Evaluation runs: whole-set embeddings, then metrics. The trainer and ``align-hf eval`` both run this.

Every image and every text of an eval set is embedded first (rows split across ranks and gathered,
see :mod:`align_hf.evaluation.sharding`), and only then are retrieval recall@K and zero-shot
accuracy computed on the full embedding matrices, so the numbers do not depend on batch size or
world size. :func:`evaluate_sets` runs a list of sets for the trainer; :func:`evaluate_zero_shot`
and :func:`evaluate_retrieval` run one dataset in this process for the CLI.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from align_hf.evaluation.encoding import ImageLike
from align_hf.evaluation.eval_sets import EvalSet, RetrievalEvalSet, ZeroShotEvalSet
from align_hf.evaluation.fields import get_field, read_captions, read_label
from align_hf.evaluation.metrics import classification_metrics, retrieval_metrics
from align_hf.evaluation.sharding import ShardedEncoder, count_of_rank, rows_of_rank
from align_hf.evaluation.zero_shot import ZeroShotClassifier, build_class_embeddings, load_templates

logger = logging.getLogger(__name__)



def _rows_and_count(spec: EvalSet, encoder: ShardedEncoder) -> tuple[Iterator[tuple[int, Any]], int | None]:
    """This rank's ``(global index, row)`` of ``spec`` (at most ``spec.limit`` rows in all) and their count if known."""
    rows = spec.rows if spec.limit is None else itertools.islice(spec.rows, spec.limit)
    total = len(spec.rows) if hasattr(spec.rows, "__len__") else None
    if spec.limit is not None:
        total = spec.limit if total is None else min(total, spec.limit)
    return rows_of_rank(rows, encoder.rank, encoder.world_size), count_of_rank(total, encoder.rank, encoder.world_size)


def _encode_usable_rows(
    encoder: ShardedEncoder, spec: EvalSet, read: Callable[[Any], Any], column: str, missing: str
) -> tuple[list[int], torch.Tensor, dict[int, Any], int]:
    """Embed the images of the rows where ``read(row)`` is not None, streaming them.

    Returns:
        all ranks' readable images as ``(sorted global row indices, (N, D) embeddings)``, the
        read values by global row index, and the number of rows left out (unusable ``column``
        or unreadable image).
    """
    rows, count = _rows_and_count(spec, encoder)
    values: dict[int, Any] = {}
    unusable = 0

    def usable_images() -> Iterator[tuple[int, ImageLike]]:
        nonlocal unusable
        for index, row in rows:
            value = read(row)
            if value is None:
                unusable += 1
                continue
            values[index] = value
            yield index, get_field(row, spec.image_column, None)

    image_index, image_embeds, unreadable = encoder.images(usable_images(), total=count)
    all_values: dict[int, Any] = {}
    for part in encoder.gather(values):
        all_values.update(part)
    unusable = sum(encoder.gather(unusable))
    if unusable and encoder.rank == 0:
        logger.warning("skipped %d rows without %s in %r", unusable, missing, column)
    if not image_index:
        raise ValueError(
            f"eval set {spec.name!r}: nothing to evaluate: {unreadable} unreadable images, "
            f"{unusable} rows without {missing}"
        )
    return image_index, image_embeds, all_values, unreadable + unusable


def evaluate_retrieval_set(encoder: ShardedEncoder, spec: RetrievalEvalSet) -> dict[str, float]:
    """Recall@K both ways over the whole set (see :func:`~align_hf.evaluation.metrics.retrieval_metrics`),
    plus ``"skipped"``: rows left out because the image could not be read or no caption was given."""
    image_index, image_embeds, captions, skipped = _encode_usable_rows(
        encoder, spec, lambda row: read_captions(get_field(row, spec.caption_column, None)) or None,
        spec.caption_column, "a caption",
    )
    texts: list[str] = []
    owner: list[int] = []
    for position, index in enumerate(image_index):
        texts += captions[index]
        owner += [position] * len(captions[index])
    text_embeds = encoder.texts(texts)
    metrics = retrieval_metrics(image_embeds, text_embeds, torch.tensor(owner), ks=tuple(spec.ks))
    metrics["skipped"] = skipped
    return metrics


def evaluate_zero_shot_set(encoder: ShardedEncoder, spec: ZeroShotEvalSet) -> dict[str, float]:
    """Zero-shot top-1/top-5/mean per-class recall over the whole set, plus top-1 per subset.

    Returns:
        :func:`~align_hf.evaluation.metrics.classification_metrics`, ``"chance"`` (1 / classes),
        ``"<subset>_top1"`` and ``"<subset>_num_samples"`` per subset with images, and
        ``"skipped"``: rows left out because the image could not be read or the label was
        missing or unknown.
    """
    class_names = list(spec.class_names)
    if not class_names:
        raise ValueError(f"eval set {spec.name!r} has no class names")
    index_of = {name: i for i, name in enumerate(class_names)}
    unknown = {name: [c for c in subset if c not in index_of] for name, subset in spec.subsets.items()}
    unknown = {k: v for k, v in unknown.items() if v}
    if unknown:
        raise ValueError(f"eval set {spec.name!r}: subset classes not among class_names: {unknown}")
    templates = load_templates(spec.templates)
    image_index, image_embeds, labels, skipped = _encode_usable_rows(
        encoder, spec, lambda row: read_label(get_field(row, spec.label_column, None), index_of, len(class_names)),
        spec.label_column, "a usable label",
    )
    if spec.class_embeddings is not None:
        class_embeds = spec.class_embeddings()
    else:
        class_embeds = build_class_embeddings(encoder.texts, class_names, templates)
    if class_embeds.shape != (len(class_names), image_embeds.shape[1]):
        raise ValueError(
            f"eval set {spec.name!r}: class embeddings have shape {tuple(class_embeds.shape)}, "
            f"expected ({len(class_names)}, {image_embeds.shape[1]})"
        )
    logits = image_embeds.float() @ class_embeds.float().cpu().T  # cosine similarities (N, C)
    label_tensor = torch.tensor([labels[i] for i in image_index])
    metrics = classification_metrics(logits, label_tensor)
    metrics["chance"] = 1.0 / len(class_names)
    correct = logits.argmax(1) == label_tensor
    for subset_name, subset in spec.subsets.items():
        members = torch.tensor([index_of[c] for c in subset])
        mask = torch.isin(label_tensor, members)
        if mask.any():
            metrics[f"{subset_name}_top1"] = correct[mask].float().mean().item()
            metrics[f"{subset_name}_num_samples"] = int(mask.sum())
    metrics["skipped"] = skipped
    return metrics


def evaluate_set(encoder: ShardedEncoder, spec: EvalSet) -> dict[str, float]:
    """Metrics of one eval set (unprefixed keys)."""
    if isinstance(spec, ZeroShotEvalSet):
        return evaluate_zero_shot_set(encoder, spec)
    return evaluate_retrieval_set(encoder, spec)


def evaluate_sets(
    model: torch.nn.Module,
    processor: Any,
    sets: Sequence[EvalSet],
    batch_size: int = 64,
    progress: bool = False,
    shard: bool = True,
    context: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Metrics of every eval set, keyed ``"<set name>_<metric>"``; the model is left in its mode.

    ``shard=False`` makes every rank embed everything (engines whose forward needs all ranks).
    ``context`` (e.g. gathering sharded parameters) wraps the whole evaluation.
    """
    was_training = model.training
    model.eval()
    encoder = ShardedEncoder(model, processor, batch_size, progress, shard)
    metrics: dict[str, float] = {}
    try:
        with (context() if context is not None else contextlib.nullcontext()), torch.no_grad():
            for spec in sets:
                metrics.update({f"{spec.name}_{k}": v for k, v in evaluate_set(encoder, spec).items()})
    finally:
        model.train(was_training)
    return metrics


def _evaluate_here(model: torch.nn.Module, processor: Any, spec: EvalSet, batch_size: int, progress: bool) -> dict[str, float]:
    """One set in this process only; the model is left in eval mode."""
    model.eval()
    encoder = ShardedEncoder(model, processor, batch_size, progress, shard=False)
    with torch.no_grad():
        return evaluate_set(encoder, spec)


def evaluate_zero_shot(
    model: torch.nn.Module,
    processor: Any,
    dataset: Iterable[dict],
    class_names: str | os.PathLike | Sequence[str],
    templates: str | os.PathLike | Sequence[str] = "imagenet",
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 64,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot classification accuracy of ``model`` on a labelled image dataset, in this process.

    Args:
        dataset: rows (a ``datasets`` dataset, a list of dicts...) with an image (PIL / path /
            bytes / ``{"bytes", "path"}``) in ``image_column`` and a label in ``label_column``:
            an index into ``class_names`` (int, or digits as text/bytes such as a webdataset
            ``.cls``) or a class name. Columns may be dotted paths (``"json.label_index"``).
        class_names: one name per class, in label order (or a file of them, see
            :func:`~align_hf.evaluation.zero_shot.load_class_names`).
        templates: prompt templates (``"imagenet"``, ``"short"``, a file path or a list).
        limit: evaluate at most this many rows.
        cache_dir: where to cache the class embeddings (see :class:`ZeroShotClassifier`).

    The model is put in eval mode.

    Returns:
        :func:`evaluate_zero_shot_set`'s metrics: top-1, top-5, mean per-class recall,
        ``"num_samples"``, ``"chance"`` and ``"skipped"``.
    """
    classifier = ZeroShotClassifier(model, processor, class_names, templates, cache_dir=cache_dir, progress=progress)
    spec = ZeroShotEvalSet(
        dataset, classifier.class_names, templates=classifier.templates, image_column=image_column,
        label_column=label_column, limit=limit, class_embeddings=lambda: classifier.weights,
    )
    return _evaluate_here(model, processor, spec, batch_size, progress)


def evaluate_retrieval(
    model: torch.nn.Module,
    processor: Any,
    dataset: Iterable[dict],
    image_column: str = "image",
    caption_column: str = "caption",
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot image<->text retrieval recall on rows holding an image and one or more captions, in this process.

    Args:
        dataset: rows with an image in ``image_column`` and, in ``caption_column``, a caption or a
            list of captions (Flickr30K / MSCOCO style: all captions of an image in one row).
            Columns may be dotted paths (``"json.captions"``).
        limit: evaluate at most this many rows.

    The model is put in eval mode.

    Returns:
        :func:`~align_hf.evaluation.metrics.retrieval_metrics` plus ``"skipped"``: rows left out
        because the image could not be read or no caption was given.
    """
    spec = RetrievalEvalSet(dataset, image_column=image_column, caption_column=caption_column, ks=tuple(ks), limit=limit)
    return _evaluate_here(model, processor, spec, batch_size, progress)


__all__ = [
    "evaluate_retrieval",
    "evaluate_retrieval_set",
    "evaluate_set",
    "evaluate_sets",
    "evaluate_zero_shot",
    "evaluate_zero_shot_set",
]
