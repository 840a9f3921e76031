"""Read access to an embedding folder (clip-retrieval layout plus ``align_manifest.json``) as the
sharded index needs it: part files, global ids, raw vectors for re-ranking, lazy metadata.

Layout (written by ``align-hf index embed``)::

    EMB/img_emb/img_emb_{i:05d}.npy         (rows_i, D) float32 or float16, unit rows
    EMB/text_emb/text_emb_{i:05d}.npy       same rows as img_emb part i
    EMB/metadata/metadata_{i:05d}.parquet   id, key, image_path, caption, source
    EMB/align_manifest.json                 model signature, dim, dtype, parts (rows, first_id)

Reading and writing the files is :mod:`align_hf.search.embeddings`'s; this module adds what
the index needs on top (random access to vectors by id) and a writer for synthetic collections
(the same files ``align-hf index embed`` writes, without a model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from align_hf.search import embeddings
from align_hf.search.embeddings import FORMAT as EMB_FORMAT
from align_hf.search.embeddings import MANIFEST, EmbeddingFolder, part_path, read_metadata


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished embedding folder (an unfinished one cannot be indexed yet)."""
    return EmbeddingFolder(path).manifest


def metadata_path(emb_dir: str | os.PathLike, part: int) -> Path:
    return part_path(emb_dir, "metadata", part)


def kinds_present(emb_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """Collections the folder holds (its manifest's ``modalities`` whose part files all exist)."""
    parts = [p["part"] for p in manifest["parts"] if p["rows"] > 0]
    kinds = [k for k in ("image", "text") if k in manifest.get("modalities", ["image"])]
    return [k for k in kinds if parts and all(part_path(emb_dir, k, p).is_file() for p in parts)]


def part_ids(emb_dir: str | os.PathLike, entry: dict[str, Any]) -> np.ndarray:
    """``(rows,)`` int64 global ids of one part: ``first_id + row`` (the manifest's contract)."""
    return np.arange(entry["first_id"], entry["first_id"] + entry["rows"], dtype=np.int64)


def nonzero_rows(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``vectors`` and ``ids`` without the all-zero rows: the text vectors of samples without a
    caption, which no index holds (they would score 0 against every query)."""
    keep = np.any(vectors != 0, axis=1)
    return vectors[keep], ids[keep]


class PartVectors:
    """Random access to the raw vectors of every part by global id (memory-mapped, opened lazily).

    Used to re-rank PQ candidates with exact inner products.
    """

    def __init__(self, emb_dir: str | os.PathLike, kind: str, manifest: dict[str, Any]) -> None:
        self.emb_dir = Path(emb_dir)
        self.kind = kind
        parts = sorted((p for p in manifest["parts"] if p["rows"] > 0), key=lambda p: p["first_id"])
        self.parts = [p["part"] for p in parts]
        self.first_ids = np.array([p["first_id"] for p in parts], dtype=np.int64)
        self.rows = np.array([p["rows"] for p in parts], dtype=np.int64)
        self._open: dict[int, np.ndarray] = {}

    def _array(self, slot: int) -> np.ndarray:
        if slot not in self._open:
            self._open[slot] = np.load(part_path(self.emb_dir, self.kind, self.parts[slot]), mmap_mode="r")
        return self._open[slot]

    def get(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), D)`` float32 vectors for global ``ids`` (every id must exist)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        slots = np.searchsorted(self.first_ids, ids, side="right") - 1
        rows = ids - self.first_ids[slots]
        if (slots < 0).any() or (rows >= self.rows[slots]).any():
            raise KeyError("id outside the embedding folder's parts")
        out = None
        for slot in np.unique(slots):
            sel = np.flatnonzero(slots == slot)
            order = np.argsort(rows[sel])  # sorted reads are kinder to the disk
            block = np.asarray(self._array(int(slot))[rows[sel][order]], dtype=np.float32)
            if out is None:
                out = np.empty((len(ids), block.shape[1]), dtype=np.float32)
            out[sel[order]] = block
        return out if out is not None else np.zeros((0, 0), np.float32)


def write_part(
    emb_dir: str | os.PathLike,
    part: int,
    first_id: int,
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
    captions: list[str] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Write part ``part`` (``(rows, D)`` unit vectors per modality and its metadata) atomically.

    For synthetic collections (tests, benchmarks); ``align-hf index embed`` writes real ones.

    Returns:
        the manifest's ``parts`` entry.
    """
    rows = len(image if image is not None else text)
    for kind, vectors in (("image", image), ("text", text)):
        if vectors is not None:
            embeddings.save_npy(part_path(emb_dir, kind, part), vectors)
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    info = {"part": part, "source": source or f"part-{part:05d}", "rows": rows, "skipped": 0, "first_id": first_id}
    columns = {
        "id": ids,
        "key": [f"{i:09d}" for i in ids],
        "image_path": [f"{source or 'part'}/{i:09d}.jpg" for i in ids],
        "caption": list(captions) if captions is not None else [""] * rows,
        "source": [info["source"]] * rows,
    }
    embeddings.save_metadata(metadata_path(emb_dir, part), columns, info)
    return info


def write_manifest(emb_dir: str | os.PathLike, parts: list[dict[str, Any]], dim: int, dtype: str,
                   model: dict[str, Any] | None = None, modalities: tuple[str, ...] = ("image", "text")) -> None:
    """Write ``align_manifest.json`` for ``parts`` (entries from :func:`write_part`)."""
    manifest = {
        "format": EMB_FORMAT, "version": embeddings.FORMAT_VERSION, "complete": True,
        "model": model or {"model_id": "", "embedding_dim": dim, "probe_embedding": []},
        "dim": dim, "dtype": dtype, "modalities": list(modalities), "parts": parts,
        "rows": sum(p["rows"] for p in parts), "skipped": sum(p["skipped"] for p in parts),
    }
    embeddings.write_manifest(emb_dir, manifest)


__all__ = [
    "EMB_FORMAT",
    "MANIFEST",
    "PartVectors",
    "kinds_present",
    "load_manifest",
    "metadata_path",
    "nonzero_rows",
    "part_ids",
    "part_path",
    "read_metadata",
    "write_manifest",
    "write_part",
]
