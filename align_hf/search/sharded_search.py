"""Searching a sharded index directory (:mod:`align_hf.search.sharded`): the collection behind
:class:`~align_hf.search.Searcher`, exact re-ranking from the raw vectors, lazy metadata, and the
measuring tools (exact ground truth streamed over the parts, recall@k, ``nprobe`` tuning).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_hf.search.collection import Hit
from align_hf.search.emb_folder import PartVectors, load_manifest, nonzero_rows, part_ids, part_path
from align_hf.search.embeddings import EmbeddingFolder
from align_hf.search.faiss_index import faiss, set_search_params


class ShardedCollection:
    """One collection (``image`` or ``text``) of a sharded index directory.

    Same search interface as :class:`~align_hf.search.collection.VectorCollection`; hit ids are
    the embedding folder's global ids. IVF inverted lists stay on disk (memory-mapped), PQ
    candidates are re-ranked with exact inner products read from the embedding parts, and
    metadata is read from the parquet parts only for the hits.

    Args:
        kind: ``"image"`` or ``"text"``.
        index: the loaded FAISS index (ids are global ids).
        emb_dir: the embedding folder the index was built from.
        info: the manifest's entry for this collection.
    """

    def __init__(self, kind: str, index: faiss.Index, emb_dir: str | os.PathLike, info: dict[str, Any]) -> None:
        self.kind = kind
        self.index = index
        self.emb_dir = Path(emb_dir)
        self.info = dict(info)
        self.rerank = 0
        self._vectors: PartVectors | None = None
        self._folder: EmbeddingFolder | None = None
        self.set_search_params(**self.info.get("search_params", {}))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def folder(self) -> EmbeddingFolder:
        """The embedding folder, its manifest read once (metadata reads go through it)."""
        if self._folder is None:
            self._folder = EmbeddingFolder(self.emb_dir)
        return self._folder

    @property
    def metadata(self) -> "_LazyMetadata":
        """``collection.metadata[id]`` (or ``[a:b]``) reads those rows' metadata from parquet."""
        return _LazyMetadata(self.folder)

    def set_search_params(
        self, nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None,
        quantizer_ef: int | None = None,
    ) -> None:
        """Query-time knobs: IVF ``nprobe``, HNSW ``ef_search``, ``rerank`` (candidates re-ranked
        exactly per wanted hit; 0 = off) and the HNSW coarse quantizer's ``quantizer_ef``."""
        set_search_params(self.index, ef_search=ef_search, nprobe=nprobe, quantizer_ef=quantizer_ef)
        if rerank is not None:
            self.rerank = int(rerank)

    def save(self, directory: str | os.PathLike) -> None:
        raise NotImplementedError(
            "a sharded index lives in its build directory; copy that directory (with its embedding folder) instead"
        )

    @property
    def nprobe(self) -> int | None:
        ivf = faiss.try_extract_index_ivf(self.index)
        return int(ivf.nprobe) if ivf is not None else None

    def search_ids(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, D)`` float32 unit queries -> ``(scores (Q, k), ids (Q, k))``; missing hits have id -1.

        No metadata is read (the fast path benchmarks time).
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query has dimension {queries.shape[1]} but the {self.kind} index has {self.dim}")
        if k < 1:
            raise ValueError("k must be >= 1")
        fetch = min(len(self), k * self.rerank) if self.rerank else min(k, len(self))
        scores, ids = self.index.search(queries, max(fetch, 1))
        if not self.rerank:
            return scores, ids
        if self._vectors is None:
            self._vectors = PartVectors(self.emb_dir, self.kind, self.folder.manifest)
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        for q, (row_ids, query) in enumerate(zip(ids, queries)):
            cand = row_ids[row_ids >= 0]
            if not len(cand):
                continue
            exact = self._vectors.get(cand) @ query
            top = np.argsort(-exact, kind="stable")[:k]
            out_s[q, : len(top)], out_i[q, : len(top)] = exact[top], cand[top]
        return out_s, out_i

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 10) -> list[list[Hit]]:
        """``(Q, D)`` (or ``(D,)``) unit queries -> ``Q`` lists of at most ``k`` hits, best first."""
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        if len(self) == 0:
            raise ValueError(f"the {self.kind} index is empty")
        scores, ids = self.search_ids(queries, k)
        wanted = np.unique(ids[ids >= 0])
        meta = dict(zip(wanted.tolist(), self.folder.read_metadata(wanted))) if len(wanted) else {}
        return [
            [
                Hit(rank=r, id=int(i), score=float(s), kind=self.kind, metadata=_describe(meta.get(int(i), {}), self.kind))
                for r, (s, i) in enumerate((s, i) for s, i in zip(srow, irow) if i >= 0)
            ]
            for srow, irow in zip(scores, ids)
        ]


def _describe(row: dict[str, Any], kind: str) -> dict[str, Any]:
    """Parquet row -> hit metadata in the keys the flat index uses (``path``, ``caption``/``text``)."""
    meta = {k: v for k, v in row.items() if v is not None and v != ""}
    if meta.get("image_path"):
        meta.setdefault("path", meta["image_path"])
    if kind == "text" and meta.get("caption"):
        meta.setdefault("text", meta["caption"])
    return meta


class _LazyMetadata:
    """Metadata rows by global id, read on access: an id gives one row, a slice a list (as the
    flat index's list of rows does, e.g. the demo's gallery reads ``metadata[:n]``)."""

    def __init__(self, folder: EmbeddingFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return self.folder.rows

    def __getitem__(self, key: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(key, slice):
            ids = range(self.folder.rows)[key]
            return self.folder.read_metadata(list(ids)) if len(ids) else []
        return self.folder.read_metadata([int(key)])[0]


def load_collection(directory: Path, kind: str, info: dict[str, Any], emb_dir: Path) -> ShardedCollection:
    """Open one collection; IVF lists are memory-mapped from ``<kind>.ivfdata`` next to the index."""
    path = directory / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"index directory {directory} is incomplete: {path.name} is missing")
    if "ivfdata" in info:
        if not (directory / info["ivfdata"]).is_file():
            raise FileNotFoundError(f"index directory {directory} is incomplete: {info['ivfdata']} is missing")
        # SAME_DIR: find the .ivfdata beside the index wherever the directory was moved. (faiss's
        # IO_FLAG_MMAP does not combine with on-disk lists; they are memory-mapped anyway.)
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    else:
        index = faiss.read_index(str(path))
    return ShardedCollection(kind, index, emb_dir, info)


def resolve_embeddings(directory: Path, manifest: dict[str, Any]) -> Path:
    """The embedding folder of a sharded index: relative to the index first, then the absolute path."""
    candidates = [directory / manifest["embeddings"]] if manifest.get("embeddings") else []
    candidates += [Path(manifest["embeddings_abs"])] if manifest.get("embeddings_abs") else []
    for candidate in candidates:
        if (candidate / "align_manifest.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"the index at {directory} reads its vectors and metadata from the embedding folder "
        f"{manifest.get('embeddings_abs')}, which is gone; keep the two folders together"
    )


# --- measuring: exact neighbours, recall, nprobe tuning ---------------------------------------


def exact_search(emb_dir: str | os.PathLike, queries: np.ndarray, k: int = 10, kind: str = "image",
                 chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` over every part, streamed chunk by chunk (never all vectors in RAM).
    All-zero text rows (samples without a caption) are skipped, as the index builds skip them.

    Returns:
        ``(scores (Q, k), ids (Q, k))`` exact inner-product neighbours (global ids).
    """
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for entry in load_manifest(emb_dir)["parts"]:
        if entry["rows"] == 0:
            continue
        vectors = np.load(part_path(emb_dir, kind, entry["part"]), mmap_mode="r")
        ids = part_ids(emb_dir, entry)
        for s in range(0, len(ids), chunk):
            block, block_ids = np.asarray(vectors[s : s + chunk], dtype=np.float32), ids[s : s + chunk]
            if kind == "text":  # as the index builds do: captionless samples are not in the collection
                block, block_ids = nonzero_rows(block, block_ids)
                if not len(block):
                    continue
            scores = queries @ block.T
            take = min(k, scores.shape[1])
            top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            all_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
            all_i = np.concatenate([best_i, block_ids[top]], axis=1)
            order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_s, best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-``k`` ids found in the returned top-``k``."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _drop(ids: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """First ``k`` ids of each row other than that row's ``exclude`` id."""
    if exclude is None:
        return ids[:, :k]
    return np.array([[i for i in row if i != ex][:k] for row, ex in zip(ids, exclude)])


def tune_nprobe(collection: ShardedCollection, queries: np.ndarray, truth: np.ndarray, target: float = 0.9,
                k: int = 10, max_nprobe: int | None = None, exclude: np.ndarray | None = None) -> dict[str, Any]:
    """Smallest power-of-two ``nprobe`` reaching ``target`` recall@k on ``queries``.

    Args:
        truth: ``(Q, >= k)`` exact neighbour ids (with one extra column when ``exclude`` is given).
        exclude: ``(Q,)`` ids left out of both answers (queries drawn from the collection itself,
            whose own id would be a free hit).

    Returns:
        ``{"nprobe", "recall", "curve": [(nprobe, recall, ms_per_query), ...]}``; the collection is
        left set to the chosen ``nprobe``.
    """
    ivf = faiss.try_extract_index_ivf(collection.index)
    if ivf is None:
        raise ValueError("nprobe tuning needs an IVF index")
    top = min(max_nprobe or ivf.nlist, ivf.nlist)
    wanted = k + (exclude is not None)
    truth = _drop(truth, exclude, k)
    curve = []
    nprobe = 1
    while True:
        collection.set_search_params(nprobe=nprobe)
        start = time.perf_counter()
        _, ids = collection.search_ids(queries, wanted)
        ms = (time.perf_counter() - start) * 1000 / len(queries)
        curve.append((nprobe, recall_at_k(_drop(ids, exclude, k), truth, k), ms))
        if curve[-1][1] >= target or nprobe >= top:
            break
        nprobe = min(top, nprobe * 2)
    chosen = next((c for c in curve if c[1] >= target), curve[-1])
    collection.set_search_params(nprobe=chosen[0])
    return {"nprobe": chosen[0], "recall": chosen[1], "curve": curve}


__all__ = [
    "ShardedCollection",
    "exact_search",
    "load_collection",
    "recall_at_k",
    "resolve_embeddings",
    "tune_nprobe",
]
