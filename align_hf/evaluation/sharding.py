"""Splitting an evaluation over ranks: which rows each rank embeds, and gathering the results in row order.

Row ``i`` of a set goes to rank ``i % world_size``. Each rank embeds its rows, every rank then
gathers all ranks' ``(row indices, embeddings)`` and reorders them by row index, so the full
embedding matrices are the same on every rank and the same as in a single process.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from align_hf.evaluation.encoding import ImageLike, encode_images, encode_texts


def process_rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rows_of_rank(rows: Iterable[Any], rank: int, world_size: int) -> Iterator[tuple[int, Any]]:
    """``(global index, row)`` for the rows this rank evaluates (every ``world_size``-th)."""
    for index, row in enumerate(rows):
        if index % world_size == rank:
            yield index, row


def count_of_rank(total: int | None, rank: int, world_size: int) -> int | None:
    """How many of ``total`` rows :func:`rows_of_rank` gives this rank (None when unknown)."""
    return None if total is None else len(range(rank, total, world_size))


def in_row_order(parts: Sequence[tuple[list[int], torch.Tensor]], dim: int) -> tuple[list[int], torch.Tensor]:
    """Merge per-rank ``(global indices, (n_r, D) rows)`` into ``(sorted indices, (sum n_r, D) rows)``."""
    indices = [i for idx, _ in parts for i in idx]
    rows = [t for _, t in parts if t.shape[0]]
    matrix = torch.cat(rows) if rows else torch.zeros(0, dim)
    order = sorted(range(len(indices)), key=indices.__getitem__)
    return [indices[i] for i in order], matrix[torch.tensor(order, dtype=torch.long)] if order else matrix


class ShardedEncoder:
    """Embeds the texts and images of one evaluation, splitting the work over ranks.

    With ``shard=False`` (or no process group) this process embeds everything itself.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, batch_size: int, progress: bool, shard: bool) -> None:
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.progress = progress
        self.rank, self.world_size = process_rank_and_world() if shard else (0, 1)
        self.dim = int(getattr(model.config, "projection_dim", 0) or 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (CPU tensors inside are fine)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` normalised embeddings of all ``texts``, in order."""
        mine = [(i, t) for i, t in enumerate(texts) if i % self.world_size == self.rank]
        embeddings = (
            encode_texts(
                self.model, self.processor, [t for _, t in mine],
                batch_size=max(self.batch_size, 128), progress=self.progress,
            )
            if mine
            else torch.zeros(0, self.dim)
        )
        _, matrix = in_row_order(self.gather(([i for i, _ in mine], embeddings)), self.dim)
        return matrix

    def images(
        self, items: Iterable[tuple[int, ImageLike]], total: int | None = None
    ) -> tuple[list[int], torch.Tensor, int]:
        """Embed this rank's ``(global index, image)`` items as they come (nothing is held back).

        Returns:
            all ranks' readable images as ``(sorted global indices, (N, D) normalised embeddings)``
            and the number of unreadable images over all ranks.
        """
        indices: list[int] = []

        def images_only() -> Iterator[ImageLike]:
            for index, image in items:
                indices.append(index)
                yield image

        encoded = encode_images(
            self.model, self.processor, images_only(), batch_size=self.batch_size, progress=self.progress, total=total
        )
        kept = [indices[pos] for pos in encoded.kept]
        parts = self.gather((kept, encoded.embeddings, len(encoded.skipped)))
        order, matrix = in_row_order([(k, e) for k, e, _ in parts], self.dim)
        return order, matrix, sum(s for _, _, s in parts)


__all__ = ["ShardedEncoder", "count_of_rank", "in_row_order", "process_rank_and_world", "rows_of_rank"]
