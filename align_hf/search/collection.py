"""One searchable collection: a FAISS index over unit vectors, its embeddings and one metadata
record per row, saved as ``<kind>.faiss``, ``<kind>_embeddings.npy`` and ``<kind>_meta.jsonl``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from align_hf.search.faiss_index import faiss, set_search_params


@dataclass
class Hit:
    """One search result: row ``id`` of collection ``kind`` with its score and metadata."""

    rank: int
    id: int
    score: float
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VectorCollection:
    """A FAISS index over unit vectors, with one metadata record per row.

    Args:
        kind: ``"image"`` or ``"text"``.
        index: inner-product FAISS index.
        metadata: one dict per indexed row.
        embeddings: the ``(N, D)`` vectors (kept for re-ranking, export and rebuilding; may be a
            memory map).
        info: manifest entry (``index_type``, ``search_params``, ``skipped``...).
    """

    def __init__(
        self,
        kind: str,
        index: faiss.Index,
        metadata: list[dict[str, Any]],
        embeddings: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if index.ntotal != len(metadata):
            raise ValueError(f"{kind} index has {index.ntotal} rows but {len(metadata)} metadata records")
        self.kind = kind
        self.index = index
        self.metadata = metadata
        self.embeddings = embeddings
        self.info = dict(info or {})

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 10) -> list[list[Hit]]:
        """``(Q, D)`` (or ``(D,)``) unit queries -> ``Q`` lists of at most ``k`` hits, best first."""
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query has dimension {queries.shape[1]} but the {self.kind} index has {self.dim}")
        if len(self) == 0:
            raise ValueError(f"the {self.kind} index is empty")
        if k < 1:
            raise ValueError("k must be >= 1")
        scores, ids = self.index.search(queries, min(k, len(self)))
        return [
            [
                Hit(rank=r, id=int(i), score=float(s), kind=self.kind, metadata=self.metadata[int(i)])
                for r, (s, i) in enumerate((s, i) for s, i in zip(srow, irow) if i >= 0)
            ]
            for srow, irow in zip(scores, ids)
        ]

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``<kind>.faiss``, ``<kind>_embeddings.npy`` and ``<kind>_meta.jsonl``.

        Each file is written aside and renamed into place, so a reader (or this very collection,
        memory-mapped from the same directory) never sees a half-written file.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)

        def replace(name: str, write: Callable[[Path], None]) -> None:
            tmp = directory / f".{name}.tmp"
            write(tmp)
            os.replace(tmp, directory / name)

        replace(f"{self.kind}.faiss", lambda p: faiss.write_index(self.index, str(p)))
        if self.embeddings is not None:
            def write_npy(p: Path) -> None:
                with open(p, "wb") as f:
                    np.save(f, np.asarray(self.embeddings, dtype=np.float32))

            replace(f"{self.kind}_embeddings.npy", write_npy)

        def write_meta(p: Path) -> None:
            with open(p, "w", encoding="utf-8") as f:
                for record in self.metadata:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")

        replace(f"{self.kind}_meta.jsonl", write_meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, kind: str, info: dict[str, Any], mmap: bool = True) -> "VectorCollection":
        directory = Path(directory)
        index_path = directory / f"{kind}.faiss"
        meta_path = directory / f"{kind}_meta.jsonl"
        for path in (index_path, meta_path):
            if not path.is_file():
                raise FileNotFoundError(f"index directory {directory} is incomplete: {path.name} is missing")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(index_path), flags)
        set_search_params(index, **info.get("search_params", {}))
        with open(meta_path, encoding="utf-8") as f:
            metadata = [json.loads(line) for line in f]
        emb_path = directory / f"{kind}_embeddings.npy"
        embeddings = np.load(emb_path, mmap_mode="r" if mmap else None) if emb_path.is_file() else None
        return cls(kind, index, metadata, embeddings, info)


__all__ = ["Hit", "VectorCollection"]
