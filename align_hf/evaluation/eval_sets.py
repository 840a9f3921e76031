"""Evaluation sets: which rows to evaluate on and which fields hold the image, caption(s) or label.

The sets hold rows (a list, a ``datasets`` dataset or a :func:`~align_hf.data.load_pairs` stream);
:func:`~align_hf.evaluation.runner.evaluate_sets` embeds them and computes the metrics. Fields are
read with :mod:`align_hf.evaluation.fields`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch



@dataclass
class RetrievalEvalSet:
    """Rows with an image and one caption or a list of captions, for recall@K both ways.

    ``image_column`` / ``caption_column`` may be dotted paths into a JSON sidecar
    (``"meta.captions"`` for a :func:`~align_hf.data.load_pairs` stream of the synthetic corpus).
    """

    rows: Any
    name: str = "retrieval"
    image_column: str = "image"
    caption_column: str = "text"
    ks: Sequence[int] = (1, 5, 10)
    limit: int | None = None  # evaluate at most this many rows


@dataclass
class ZeroShotEvalSet:
    """Labelled images for zero-shot classification with prompt templates (no classifier is trained).

    ``label_column`` holds a class index or a class name. ``subsets`` maps a name to a list of class
    names; top-1 is also reported over the images of those classes only (still choosing among all
    classes), e.g. ``{"unseen_combinations": [...]}``.

    ``class_embeddings`` returns the ``(C, D)`` normalised class embeddings in ``class_names`` order
    (e.g. a disk-cached :attr:`~align_hf.evaluation.zero_shot.ZeroShotClassifier.weights`); without
    it they are built from ``templates`` with the model under evaluation.
    """

    rows: Any
    class_names: Sequence[str]
    templates: Any = "imagenet"
    name: str = "zero_shot"
    image_column: str = "image"
    label_column: str = "label"
    subsets: dict[str, Sequence[str]] = field(default_factory=dict)
    limit: int | None = None  # evaluate at most this many rows
    class_embeddings: Callable[[], torch.Tensor] | None = None


EvalSet = RetrievalEvalSet | ZeroShotEvalSet


def as_eval_sets(eval_dataset: Any) -> list[EvalSet]:
    """Normalise what ``AlignTrainer(eval_dataset=...)`` accepts into a list of eval sets.

    Accepts an eval set, a list or dict of them, or plain rows (taken as a retrieval set with an
    ``image`` and a ``text`` column).
    """
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, (RetrievalEvalSet, ZeroShotEvalSet)):
        return [eval_dataset]
    if isinstance(eval_dataset, dict) and eval_dataset and all(
        isinstance(v, (RetrievalEvalSet, ZeroShotEvalSet)) for v in eval_dataset.values()
    ):
        sets = []
        for name, value in eval_dataset.items():
            value.name = name
            sets.append(value)
        return sets
    if isinstance(eval_dataset, (list, tuple)) and eval_dataset and all(
        isinstance(v, (RetrievalEvalSet, ZeroShotEvalSet)) for v in eval_dataset
    ):
        names = [s.name for s in eval_dataset]
        if len(set(names)) != len(names):
            raise ValueError(f"eval sets need distinct names, got {names}")
        return list(eval_dataset)
    return [RetrievalEvalSet(eval_dataset)]


__all__ = ["RetrievalEvalSet", "ZeroShotEvalSet", "EvalSet", "as_eval_sets"]
