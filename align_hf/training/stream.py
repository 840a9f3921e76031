"""The endless, resumable training stream of :class:`~align_hf.training.trainer.AlignTrainer`.

Web-scale image-text data arrives as a stream (webdataset shards), so training is step-based:
:class:`StreamingTrainLoader` cycles through data epochs forever and the Trainer stops at
``max_steps``. Its :meth:`~StreamingTrainLoader.state_dict` (the data epoch, torchdata's
``StatefulDataLoader`` state with every worker's shard position, offset and shuffle buffer, and the
data counts) is saved with each checkpoint, one file per rank; a resumed run continues from it
without decoding a single batch again, and sees exactly the batches an uninterrupted run would
have seen. Without torchdata, resuming falls back to replaying the current data epoch.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from align_hf.data.pipeline import DataStats, ImageTextLoader

logger = logging.getLogger(__name__)


class StreamingTrainLoader:
    """Endless batches from an :class:`~align_hf.data.ImageTextLoader`, one data epoch after another.

    Each data epoch reshuffles with ``loader.set_epoch(epoch)``; the order depends only on the seed
    and the epoch. :meth:`load_state_dict` (or, as a fallback, :attr:`skip_batches`) makes the next
    iteration continue an interrupted stream. Batches are dicts of ``pixel_values (B, 3, H, W)``,
    ``input_ids (B, L)``, ``attention_mask (B, L)``.
    """

    def __init__(self, loader: ImageTextLoader):
        self.loader = loader
        self.skip_batches = 0  # batches to drop from the start (replay; for states saved without torchdata)
        self.epoch = 0
        self.epoch_batches = 0  # batches yielded in the current data epoch
        self._resume: dict[str, Any] | None = None

    @property
    def stats(self) -> DataStats:
        """What was read, kept, skipped and filtered so far (this process's share of the data)."""
        return self.loader.stats

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch yielded: ``epoch``, ``epoch_batches``, and the loader's state
        (``None`` without torchdata) and counts."""
        loader = self.loader.state_dict() if self.loader.stateful else {"loader": None, "stats": self.stats.as_dict()}
        return {"epoch": self.epoch, "epoch_batches": self.epoch_batches, **loader}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue from ``state`` (counts continue from the saved ones)."""
        self._resume = state
        self.loader.stats = DataStats.from_dict(state["stats"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        resume, self._resume = self._resume, None
        to_skip, self.skip_batches = self.skip_batches, 0
        epoch, batches = 0, 0
        counted: DataStats | None = None  # the saved counts, put back after a replay
        if resume is not None:
            epoch, batches = resume["epoch"], resume["epoch_batches"]
            if resume["loader"] is None or not self.loader.stateful:
                logger.warning("resuming without a saved loader state: replaying %d batches of data epoch %d", batches, epoch)
                to_skip, batches, counted = batches, 0, DataStats.from_dict(resume["stats"])
        elif to_skip:
            logger.info("resuming: fast-forwarding the data stream past %d batches", to_skip)
        while True:
            self.epoch, self.epoch_batches = epoch, batches
            self.loader.set_epoch(epoch)
            if resume is not None and resume["loader"] is not None and self.loader.stateful:
                self.loader.loader.load_state_dict(resume["loader"])
                logger.info("resuming the data stream at data epoch %d, batch %d (no replay)", epoch, batches)
            resume = None
            for batch in self.loader:
                batches += 1
                if to_skip:
                    to_skip -= 1
                    if not to_skip and counted is not None:
                        self.loader.stats = counted  # the replayed batches were counted before the stop
                    continue
                self.epoch_batches = batches
                yield batch
            if batches == 0:
                raise RuntimeError(
                    "the training data gave no complete batch in a whole pass "
                    f"({self.stats.summary()}); check the data source, filters and batch size"
                )
            epoch, batches = epoch + 1, 0


__all__ = ["StreamingTrainLoader"]
