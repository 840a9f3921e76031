"""A shuffle buffer over a ``datasets`` stream whose position is saved and restored sample-exactly.

``datasets`` can save a stream's position (``IterableDataset.state_dict``: shard and offset, per
DataLoader worker) but not the contents of its shuffle buffer: a resumed stream refills the buffer
with new records, so it differs from the uninterrupted one. :class:`ResumableShuffle` keeps the
buffer itself and saves, instead of the records, their read indices plus one ``datasets`` position
(an *anchor*) at or before the oldest buffered record. Resuming re-reads the raw records from the
anchor and puts the buffered ones back in their slots; the buffer's random generator continues
from its saved state, so the resumed stream is the uninterrupted one, record for record.

The buffer holds raw records (bytes), so nothing re-read on resume is decoded; what is re-read is
the span back to the oldest buffered record (about ``buffer_size * ln(buffer_size)`` records) plus,
for generator-backed sources, the start of the shards in flight (``datasets`` skips to an offset
within a shard by reading up to it).
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from typing import Any, Iterator, Sequence

import datasets
import numpy as np
import torch

from align_hf.data.sources import iter_records

logger = logging.getLogger(__name__)


class _BufferlessShuffleWarning(logging.Filter):
    """Drops the warning ``datasets`` gives when a shuffled stream's position is restored.

    The shard order is shuffled by ``datasets`` with a buffer of ONE record, which is always empty
    when a position is saved (see :func:`shuffle_shards`), so nothing is lost; the real buffer is
    :class:`ResumableShuffle`'s, restored exactly.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "shuffle buffer of a dataset without the buffer content" not in record.getMessage()


logging.getLogger("datasets.iterable_dataset").addFilter(_BufferlessShuffleWarning())


def shuffle_shards(pairs: datasets.IterableDataset, seed: int) -> datasets.IterableDataset:
    """``pairs`` with its shard order shuffled per epoch (``set_epoch``) and no record buffer.

    One shard is read at a time: ``datasets`` >= 4 can interleave several shards into its buffer,
    but the position of an interleaved stream saved in a DataLoader worker cannot be loaded back
    there (datasets 5.2 first applies it to the whole, unsplit stream, whose list of shard states is
    longer, and the stream fails), so exact resumption needs the plain shard-after-shard order.
    """
    if "max_buffer_input_shards" in inspect.signature(pairs.shuffle).parameters:
        return pairs.shuffle(seed=seed, buffer_size=1, max_buffer_input_shards=1)
    return pairs.shuffle(seed=seed, buffer_size=1)


class ResumableShuffle:
    """Raw records of one pass over ``source`` through a shuffle buffer, with an exact ``state_dict``.

    One object serves one pass of one process (a DataLoader worker or the main process); its
    :meth:`state_dict` describes the position after the last record yielded.

    Buffer: the first ``buffer_size`` records fill it; then each new record replaces a uniformly
    drawn slot whose record is yielded; at the end of the source the rest is yielded in random
    order. ``buffer_size=0`` passes records through.

    Args:
        source: the ``datasets.IterableDataset`` to read (this rank's part; ``datasets`` gives each
            DataLoader worker its own shards).
        buffer_size: records held.
        seed: seed material of the buffer's generator, e.g. ``(seed, epoch, rank, worker)``.
        state: a :meth:`state_dict` of the same pass to resume from.
    """

    def __init__(self, source: datasets.IterableDataset, buffer_size: int, seed: Sequence[int], state: dict | None = None):
        self.source = source
        self.buffer_size = max(0, int(buffer_size))
        self.rng = np.random.default_rng(list(seed))
        # Anchors every eighth of a buffer: a resume re-reads at most that much before the oldest record.
        self.anchor_every = max(1, self.buffer_size // 8) if self.buffer_size else 0
        self.reads = 0  # records read from the source in this pass
        self.slots: list[int] = []  # read index of each buffered record, in slot order
        self.buffer: list[dict] = []
        # (read index, datasets position just before that read); None: the start of the pass.
        self.anchors: deque[tuple[int, dict | None]] = deque([(0, None)])
        self.started = False
        self.reread = 0  # records read again on resume to refill the buffer
        if state is not None:
            self.rng.bit_generator.state = state["rng"]
            self.reads = int(state["reads"])
            self.slots = [int(i) for i in state["slots"].tolist()]
            self.anchors = deque([(int(state["anchor_read"]), state["anchor"])])

    def state_dict(self) -> dict[str, Any]:
        """Position after the last record yielded: ``reads``, ``slots`` (int64 tensor), ``anchor_read``,
        ``anchor`` (a ``datasets`` position or None) and ``rng`` (the buffer generator's state)."""
        if self.started and not self.slots:
            # Nothing buffered: the source's own position is the whole story.
            self.anchors = deque([(self.reads, self.source.state_dict())])
        self._prune()
        read, anchor = self.anchors[0]
        return {
            "reads": self.reads,
            "slots": torch.tensor(self.slots, dtype=torch.int64),
            "anchor_read": read,
            "anchor": anchor,
            "rng": self.rng.bit_generator.state,
        }

    def _prune(self) -> None:
        oldest = min(self.slots) if self.slots else self.reads
        while len(self.anchors) > 1 and self.anchors[1][0] <= oldest:
            self.anchors.popleft()

    def _refill(self, records: Iterator[dict]) -> None:
        """Re-read from the anchor up to ``reads``, putting buffered records back into their slots."""
        start = self.anchors[0][0]
        slot_of = {read: slot for slot, read in enumerate(self.slots)}
        self.buffer = [None] * len(self.slots)  # type: ignore[list-item]
        for read in range(start, self.reads):
            record = next(records, None)
            if record is None:
                raise RuntimeError(f"the data ended after {read} of {self.reads} records while resuming: did it change?")
            slot = slot_of.get(read)
            if slot is not None:
                self.buffer[slot] = record
        self.reread = self.reads - start
        if self.reread:
            logger.info("resumed the data stream: re-read %d raw records (none decoded) to refill %d buffered",
                        self.reread, len(self.slots))

    def __iter__(self) -> Iterator[dict]:
        # Start the source at the anchor (None: at the start of the pass, as a fresh iteration).
        self.source.load_state_dict(self.anchors[0][1])
        records = iter_records(self.source)
        self.started = True
        if self.reads > self.anchors[0][0] or self.slots:
            self._refill(records)
        for record in records:
            self.reads += 1
            out = None
            if not self.buffer_size:
                out = record
            elif len(self.buffer) < self.buffer_size:
                self.buffer.append(record)
                self.slots.append(self.reads - 1)
            else:
                slot = int(self.rng.integers(self.buffer_size))
                out, self.buffer[slot] = self.buffer[slot], record
                self.slots[slot] = self.reads - 1
            if self.anchor_every and self.reads % self.anchor_every == 0:
                self.anchors.append((self.reads, self.source.state_dict()))
                self._prune()
            if out is not None:
                yield out
        while self.buffer:  # the source is spent: the rest in random order
            slot = int(self.rng.integers(len(self.buffer)))
            out = self.buffer[slot]
            self.buffer[slot], self.slots[slot] = self.buffer[-1], self.slots[-1]
            self.buffer.pop()
            self.slots.pop()
            yield out


__all__ = ["ResumableShuffle", "shuffle_shards"]
