"""Input plumbing for :class:`~align_hf.trainer.AlignTrainer`: the endless training stream and eval sets.

Web-scale image-text data arrives as a stream (webdataset shards), so training is step-based:
:class:`StreamingTrainLoader` cycles through data epochs forever and the Trainer stops at
``max_steps``. Resuming replays the stream from the same seed and drops the batches already
trained on, so a resumed run sees exactly the batches an uninterrupted run would have seen.

The evaluation sets hold rows (a list, a ``datasets`` dataset or a :func:`~align_hf.data.load_pairs`
stream) and say which fields hold the image, the caption(s) or the label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from .data.pipeline import DataStats, ImageTextLoader

logger = logging.getLogger(__name__)


class StreamingTrainLoader:
    """Endless batches from an :class:`~align_hf.data.ImageTextLoader`, one data epoch after another.

    Each data epoch reshuffles with ``loader.set_epoch(epoch)``; the order depends only on the seed
    and the epoch, so :attr:`skip_batches` (set when resuming) reproduces the interrupted stream.
    Batches are dicts of ``pixel_values (B, 3, H, W)``, ``input_ids (B, L)``, ``attention_mask (B, L)``.
    """

    def __init__(self, loader: ImageTextLoader):
        self.loader = loader
        self.skip_batches = 0
        self.epoch = 0

    @property
    def stats(self) -> DataStats:
        """What was read, kept, skipped and filtered so far (this process's share of the data)."""
        return self.loader.stats

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        to_skip, self.skip_batches = self.skip_batches, 0
        if to_skip:
            logger.info("resuming: fast-forwarding the data stream past %d batches", to_skip)
        epoch = 0
        while True:
            self.epoch = epoch
            self.loader.set_epoch(epoch)
            batches = 0
            for batch in self.loader:
                batches += 1
                if to_skip:
                    to_skip -= 1
                    continue
                yield batch
            if batches == 0:
                raise RuntimeError(
                    "the training data gave no complete batch in a whole pass "
                    f"({self.stats.summary()}); check the data source, filters and batch size"
                )
            epoch += 1


def _rows_of_rank(rows: Any, rank: int, world_size: int) -> Iterator[tuple[int, dict]]:
    """``(global index, row)`` for the rows this rank evaluates (every ``world_size``-th)."""
    for index, row in enumerate(rows):
        if index % world_size == rank:
            yield index, row


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


@dataclass
class ZeroShotEvalSet:
    """Labelled images for zero-shot classification with prompt templates (no classifier is trained).

    ``label_column`` holds a class index or a class name. ``subsets`` maps a name to a list of class
    names; top-1 is also reported over the images of those classes only (still choosing among all
    classes), e.g. ``{"unseen_combinations": [...]}``.
    """

    rows: Any
    class_names: Sequence[str]
    templates: Any = "imagenet"
    name: str = "zero_shot"
    image_column: str = "image"
    label_column: str = "label"
    subsets: dict[str, Sequence[str]] = field(default_factory=dict)


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


__all__ = ["StreamingTrainLoader", "RetrievalEvalSet", "ZeroShotEvalSet", "EvalSet", "as_eval_sets"]
