"""The endless, resumable training stream of :class:`~align_hf.training.trainer.AlignTrainer`.

Web-scale image-text data arrives as a stream (webdataset shards), so training is step-based:
:class:`StreamingTrainLoader` cycles through data epochs forever and the Trainer stops at
``max_steps``. Resuming replays the stream from the same seed and drops the batches already
trained on, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch

from align_hf.data.pipeline import DataStats, ImageTextLoader

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


__all__ = ["StreamingTrainLoader"]
