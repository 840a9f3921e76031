"""Evaluation used by :class:`~align_hf.trainer.AlignTrainer`: whole-set embeddings, then metrics.

Every image and every text of an eval set is embedded first (rows split across ranks and gathered),
and only then are retrieval recall@K and zero-shot accuracy computed on the full embedding
matrices, so the numbers do not depend on batch size or world size.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from .evaluation import classification_metrics, encode_images, encode_texts, get_field, retrieval_metrics
from .train_data import EvalSet, RetrievalEvalSet, ZeroShotEvalSet, _rows_of_rank
from .zero_shot import build_class_embeddings, load_templates

logger = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (CPU tensors inside are fine)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _assemble(parts: list[tuple[list[int], torch.Tensor]], dim: int) -> tuple[list[int], torch.Tensor]:
    """Merge per-rank ``(global indices, rows)`` into global index order."""
    indices = [i for idx, _ in parts for i in idx]
    rows = [t for _, t in parts if t.shape[0]]
    matrix = torch.cat(rows) if rows else torch.zeros(0, dim)
    order = sorted(range(len(indices)), key=indices.__getitem__)
    return [indices[i] for i in order], matrix[torch.tensor(order, dtype=torch.long)] if order else matrix


class _Encoder:
    """Embeds texts and images for one evaluation, splitting the work over ranks."""

    def __init__(self, model, processor, batch_size: int, progress: bool, shard: bool):
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.progress = progress
        self.rank, self.world = _world() if shard else (0, 1)
        self.dim = int(getattr(model.config, "projection_dim", 0) or 0)

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` normalised embeddings of ``texts``, in order."""
        mine = [(i, t) for i, t in enumerate(texts) if i % self.world == self.rank]
        emb = (
            encode_texts(self.model, self.processor, [t for _, t in mine], batch_size=max(self.batch_size, 128), progress=self.progress)
            if mine
            else torch.zeros(0, self.dim)
        )
        _, matrix = _assemble(_gather(([i for i, _ in mine], emb), self.world), self.dim)
        return matrix

    def images(self, items: list[tuple[int, Any]]) -> tuple[list[int], torch.Tensor, int]:
        """Embed this rank's ``(global index, image)`` items; returns all ranks' readable
        ``(global indices, (N, D) embeddings)`` and the total number of unreadable images."""
        encoded = encode_images(
            self.model, self.processor, [item for _, item in items], batch_size=self.batch_size, progress=self.progress
        )
        kept = [items[pos][0] for pos in encoded.kept]
        parts = _gather((kept, encoded.embeddings, len(encoded.skipped)), self.world)
        indices, matrix = _assemble([(k, e) for k, e, _ in parts], self.dim)
        return indices, matrix, sum(s for _, _, s in parts)


def _captions(value: Any) -> list[str]:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    captions = [value] if isinstance(value, str) else list(value or [])
    return [c.strip() for c in captions if isinstance(c, str) and c.strip()]


def evaluate_retrieval_set(encoder: _Encoder, spec: RetrievalEvalSet) -> dict[str, float]:
    """Recall@K both ways over the whole set (see :func:`~align_hf.evaluation.retrieval_metrics`)."""
    items, captions, no_caption = [], {}, 0
    for index, row in _rows_of_rank(spec.rows, encoder.rank, encoder.world):
        caps = _captions(get_field(row, spec.caption_column, None))
        if not caps:
            no_caption += 1
            continue
        items.append((index, get_field(row, spec.image_column, None)))
        captions[index] = caps
    image_index, image_embeds, unreadable = encoder.images(items)
    all_captions: dict[int, list[str]] = {}
    for part in _gather(captions, encoder.world):
        all_captions.update(part)
    no_caption = sum(_gather(no_caption, encoder.world))
    if not image_index:
        raise ValueError(f"eval set {spec.name!r}: no readable image with a caption")
    texts, owner = [], []
    for position, index in enumerate(image_index):
        texts += all_captions[index]
        owner += [position] * len(all_captions[index])
    text_embeds = encoder.texts(texts)
    metrics = retrieval_metrics(image_embeds, text_embeds, torch.tensor(owner), ks=tuple(spec.ks))
    metrics["skipped"] = unreadable + no_caption
    return metrics


def _label_index(value: Any, index_of: dict[str, int], num_classes: int) -> int | None:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        value = index_of.get(text, int(text) if text.isdigit() else None)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < num_classes:
        return None
    return int(value)


def evaluate_zero_shot_set(encoder: _Encoder, spec: ZeroShotEvalSet) -> dict[str, float]:
    """Zero-shot top-1/top-5/mean per-class recall over the whole set, plus top-1 per subset."""
    class_names = list(spec.class_names)
    if not class_names:
        raise ValueError(f"eval set {spec.name!r} has no class names")
    index_of = {name: i for i, name in enumerate(class_names)}
    unknown = {name: [c for c in subset if c not in index_of] for name, subset in spec.subsets.items()}
    unknown = {k: v for k, v in unknown.items() if v}
    if unknown:
        raise ValueError(f"eval set {spec.name!r}: subset classes not among class_names: {unknown}")
    templates = load_templates(spec.templates)
    items, labels, bad_labels = [], {}, 0
    for index, row in _rows_of_rank(spec.rows, encoder.rank, encoder.world):
        label = _label_index(get_field(row, spec.label_column, None), index_of, len(class_names))
        if label is None:
            bad_labels += 1
            continue
        items.append((index, get_field(row, spec.image_column, None)))
        labels[index] = label
    image_index, image_embeds, unreadable = encoder.images(items)
    all_labels: dict[int, int] = {}
    for part in _gather(labels, encoder.world):
        all_labels.update(part)
    bad_labels = sum(_gather(bad_labels, encoder.world))
    if not image_index:
        raise ValueError(f"eval set {spec.name!r}: no readable image with a usable label")
    class_embeds = build_class_embeddings(encoder.texts, class_names, templates)
    logits = image_embeds.float() @ class_embeds.T
    label_tensor = torch.tensor([all_labels[i] for i in image_index])
    metrics = classification_metrics(logits, label_tensor)
    metrics["chance"] = 1.0 / len(class_names)
    correct = logits.argmax(1) == label_tensor
    for subset_name, subset in spec.subsets.items():
        members = torch.tensor([index_of[c] for c in subset])
        mask = torch.isin(label_tensor, members)
        if mask.any():
            metrics[f"{subset_name}_top1"] = correct[mask].float().mean().item()
            metrics[f"{subset_name}_num_samples"] = int(mask.sum())
    metrics["skipped"] = unreadable + bad_labels
    return metrics


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
    import contextlib

    was_training = model.training
    model.eval()
    encoder = _Encoder(model, processor, batch_size, progress, shard)
    metrics: dict[str, float] = {}
    try:
        with (context() if context is not None else contextlib.nullcontext()), torch.no_grad():
            for spec in sets:
                if isinstance(spec, ZeroShotEvalSet):
                    result = evaluate_zero_shot_set(encoder, spec)
                else:
                    result = evaluate_retrieval_set(encoder, spec)
                metrics.update({f"{spec.name}_{k}": v for k, v in result.items()})
    finally:
        model.train(was_training)
    return metrics


__all__ = ["evaluate_sets", "evaluate_retrieval_set", "evaluate_zero_shot_set"]
