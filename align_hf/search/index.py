"""The index directory: image and/or text collections embedded by one model, built resumably.

An index directory holds up to two collections, ``image`` and ``text``, each a FAISS
inner-product index over unit vectors, its raw embeddings and one metadata record per row::

    DIR/manifest.json              model id, embedding dim, probe embedding, per-collection info
    DIR/image.faiss                FAISS index (read back memory-mapped)
    DIR/image_embeddings.npy       (N, D) float32, memory-mapped on load
    DIR/image_meta.jsonl           one JSON object per row ({"path": ...} or {"row": ..., "caption": ...})
    DIR/text.faiss, text_embeddings.npy, text_meta.jsonl

Embedding runs chunk by chunk into ``DIR/partial/`` so an interrupted build resumes where it
stopped; unreadable images are skipped and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from align_hf.evaluation.encoding import encode_images, encode_texts
from align_hf.evaluation.fields import get_field
from align_hf.image_io import list_images, open_image
from align_hf.search.collection import VectorCollection
from align_hf.search.faiss_index import build_faiss_index
from align_hf.search.signature import model_signature

logger = logging.getLogger(__name__)

FORMAT = "align_hf-index"
FORMAT_VERSION = 1
COLLECTIONS = ("image", "text")


ChunkEmbedder = Callable[[range], tuple[np.ndarray, list[int], list[tuple[int, str]]]]


def embed_resumable(
    count: int,
    embed_chunk: ChunkEmbedder,
    work_dir: str | os.PathLike,
    name: str,
    plan: dict[str, Any],
    chunk_size: int = 2048,
    progress: bool = True,
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Embed items ``0..count-1`` chunk by chunk, saving each chunk so a rerun skips finished ones.

    Args:
        count: number of items.
        embed_chunk: embeds the items of one ``range`` -> ``(embeddings (n_ok, D), kept positions,
            [(position, reason) skipped])``.
        work_dir: where chunk files live.
        name: collection name (file prefix).
        plan: identifies the job (items, model); chunks from a different plan are discarded.
        chunk_size: items per chunk file.

    Returns:
        ``(embeddings (N_ok, D) float32, kept positions, skipped)`` in item order.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = {**plan, "count": count, "chunk_size": chunk_size}
    plan_path = work_dir / f"{name}-plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
        logger.warning("%s: partial results belong to another job; starting %s over", work_dir, name)
        for old in work_dir.glob(f"{name}-*.npz"):
            old.unlink()
    plan_path.write_text(json.dumps(plan))

    embeddings: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    starts = range(0, count, chunk_size)
    resumed = 0
    with tqdm(total=count, desc=f"embed {name}s", disable=not progress, unit=name) as bar:
        for chunk_id, start in enumerate(starts):
            path = work_dir / f"{name}-{chunk_id:06d}.npz"
            span = range(start, min(start + chunk_size, count))
            if path.is_file():
                with np.load(path) as saved:
                    emb, pos = saved["embeddings"], saved["kept"].tolist()
                    bad = list(zip(saved["skipped"].tolist(), saved["reasons"].tolist()))
                resumed += len(span)
            else:
                emb, pos, bad = embed_chunk(span)
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(
                    tmp,
                    embeddings=np.asarray(emb, dtype=np.float32),
                    kept=np.asarray(pos, dtype=np.int64),
                    skipped=np.asarray([p for p, _ in bad], dtype=np.int64),
                    reasons=np.asarray([r for _, r in bad], dtype=str),
                )
                os.replace(tmp, path)  # a chunk file exists only once complete
            embeddings.append(np.asarray(emb, dtype=np.float32))
            kept.extend(pos)
            skipped.extend(bad)
            bar.update(len(span))
    if resumed:
        logger.info("%s: resumed %d of %d %ss from %s", name, resumed, count, name, work_dir)
    nonempty = [e for e in embeddings if e.size]  # a chunk of only unreadable images embeds nothing
    out = np.concatenate(nonempty) if nonempty else np.zeros((0, 0), np.float32)
    return out, kept, skipped


def _digest(items: Iterable[str]) -> str:
    h = hashlib.sha1()
    for item in items:
        h.update(item.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


class CrossModalIndex:
    """Image and/or text collections embedded by one model, with that model's signature."""

    def __init__(self, collections: dict[str, Any], signature: dict[str, Any]) -> None:
        if not collections:
            raise ValueError("an index needs at least one collection")
        for kind, coll in collections.items():
            if kind not in COLLECTIONS:
                raise ValueError(f"unknown collection {kind!r}; expected one of {COLLECTIONS}")
            if coll.dim != signature["embedding_dim"]:
                raise ValueError(f"{kind} vectors are {coll.dim}-d but the model makes {signature['embedding_dim']}-d")
        self.collections = collections
        self.signature = signature

    @property
    def model_id(self) -> str:
        return self.signature["model_id"]

    @property
    def dim(self) -> int:
        return int(self.signature["embedding_dim"])

    def __getitem__(self, kind: str) -> Any:
        if kind not in self.collections:
            raise KeyError(f"this index has no {kind} collection (it has: {', '.join(self.collections)})")
        return self.collections[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self.collections

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for coll in self.collections.values():
            coll.save(directory)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **self.signature,
            "collections": {
                kind: {**coll.info, "count": len(coll)} for kind, coll in self.collections.items()
            },
        }
        tmp = directory / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        os.replace(tmp, directory / "manifest.json")

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "CrossModalIndex":
        """Read an index directory; FAISS indexes and embeddings are memory-mapped by default.

        Also opens a sharded index built from an embedding folder (``layout: "sharded"`` in the
        manifest, see :mod:`align_hf.search.sharded`): its collections are
        :class:`~align_hf.search.sharded_search.ShardedCollection` s with the same ``search``.
        """
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no index at {directory} (manifest.json is missing)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path} is not an align_hf index manifest")
        if manifest.get("layout") == "sharded":  # built from an embedding folder (align_hf.search.sharded)
            from align_hf.search.sharded import SHARDED_VERSION
            from align_hf.search.sharded_search import load_collection, resolve_embeddings

            if manifest.get("version", 0) > SHARDED_VERSION:
                raise ValueError(f"index format version {manifest['version']} is newer than this align_hf supports")
            emb_dir = resolve_embeddings(directory, manifest)
            collections = {
                kind: load_collection(directory, kind, info, emb_dir) for kind, info in manifest["collections"].items()
            }
        else:
            if manifest.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"index format version {manifest['version']} is newer than this align_hf supports")
            collections = {
                kind: VectorCollection.load(directory, kind, info, mmap=mmap)
                for kind, info in manifest["collections"].items()
            }
        signature = {k: manifest[k] for k in ("model_id", "embedding_dim", "probe_embedding")}
        return cls(collections, signature)

    @classmethod
    def build(
        cls,
        model: torch.nn.Module,
        processor: Any,
        output_dir: str | os.PathLike,
        images: str | os.PathLike | Sequence[Any] | None = None,
        texts: Sequence[str] | None = None,
        image_column: str = "image",
        caption_column: str | None = None,
        index_type: str = "auto",
        memory_budget: int | None = None,
        batch_size: int = 32,
        chunk_size: int = 2048,
        progress: bool = True,
    ) -> "CrossModalIndex":
        """Embed images and/or texts, index them and save everything under ``output_dir``.

        Args:
            images: an image folder, a list of image paths / PIL images, or a map-style dataset
                (``len`` + indexing) with images in ``image_column``.
            texts: texts to index for image->text search (empty strings are dropped).
            caption_column: for datasets, a column copied into each image's metadata.
            index_type: ``auto``, ``flat``, ``hnsw`` or ``ivf`` (see :func:`~align_hf.search.faiss_index.choose_index_type`).
            memory_budget: bytes the index may use when ``index_type="auto"``.
            batch_size: images per forward pass (texts use 4x).
            chunk_size: items per resumable chunk saved under ``output_dir/partial``.

        Rerunning after an interruption resumes from the last finished chunk.
        """
        if images is None and texts is None:
            raise ValueError("give images, texts or both to index")
        output_dir = Path(output_dir)
        work_dir = output_dir / "partial"
        model.eval()
        signature = model_signature(model, processor)
        model_key = _digest(str(v) for v in signature["probe_embedding"])
        collections: dict[str, VectorCollection] = {}

        if images is not None:
            if isinstance(images, (str, os.PathLike)):
                images = list_images(images)
            count = len(images)
            if count == 0:
                raise ValueError("nothing to index: no images found")
            is_table = not isinstance(images, (list, tuple))  # a dataset: rows hold the image
            images = _undecoded(images, image_column) if is_table else images

            def fetch(i: int) -> Any:
                return open_image(images[i][image_column] if is_table else images[i])

            def embed_image_chunk(span: range) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
                enc = encode_images(model, processor, span, batch_size=batch_size, progress=False, loader=fetch)
                return enc.embeddings.numpy(), [span[k] for k in enc.kept], [(span[k], r) for k, r in enc.skipped]

            # What the chunks on disk must belong to for a rerun to reuse them. `datasets` offers no
            # public content fingerprint, so its private one is read (empty when absent).
            if is_table:
                ids = [str(getattr(images, "_fingerprint", "")), str(count)]
            else:
                ids = [str(x) if isinstance(x, (str, os.PathLike)) else f"#{i}" for i, x in enumerate(images)]
            emb, kept, skipped = embed_resumable(
                count, embed_image_chunk, work_dir, "image", {"items": _digest(ids), "model": model_key},
                chunk_size=chunk_size, progress=progress,
            )
            if not kept:
                raise ValueError(f"nothing to index: all {count} images were unreadable")
            metadata = [_image_metadata(images, i, is_table, image_column, caption_column) for i in kept]
            described = [
                {"item": _image_metadata(images, i, is_table, image_column, None), "reason": reason}
                for i, reason in skipped
            ]
            collections["image"] = _make_collection("image", emb, metadata, index_type, memory_budget, described)

        if texts is not None:
            texts = [t.strip() for t in texts if t and t.strip()]
            if not texts:
                raise ValueError("nothing to index: no non-empty texts")

            def embed_text_chunk(span: range) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
                emb = encode_texts(model, processor, [texts[i] for i in span], batch_size=4 * batch_size, progress=False)
                return emb.numpy(), list(span), []

            emb, kept, _ = embed_resumable(
                len(texts), embed_text_chunk, work_dir, "text", {"items": _digest(texts), "model": model_key},
                chunk_size=chunk_size, progress=progress,
            )
            metadata = [{"text": texts[i]} for i in kept]
            collections["text"] = _make_collection("text", emb, metadata, index_type, memory_budget, [])

        index = cls(collections, signature)
        index.save(output_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
        return index


def _image_metadata(images: Any, i: int, is_table: bool, image_column: str, caption_column: str | None) -> dict:
    if not is_table:
        item = images[i]
        return {"path": str(item)} if isinstance(item, (str, os.PathLike)) else {"row": i}
    record: dict[str, Any] = {"row": i}
    row = images[i]
    image = row.get(image_column)
    path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
    if path:
        record["path"] = path
    if row.get("key") is not None:
        record["key"] = row["key"]
    if caption_column:
        caption = get_field(row, caption_column, None)
        record["caption"] = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption
    return record


def _undecoded(dataset: Any, image_column: str) -> Any:
    """Let us decode a ``datasets`` Image column ourselves, so a corrupt file is skipped, not fatal."""
    features = getattr(dataset, "features", None)
    feature = features.get(image_column) if features is not None else None
    if feature is not None and type(feature).__name__ == "Image" and getattr(feature, "decode", False):
        import datasets

        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _make_collection(
    kind: str,
    emb: np.ndarray,
    metadata: list[dict],
    index_type: str,
    memory_budget: int | None,
    skipped: list[dict],
) -> VectorCollection:
    start = time.perf_counter()
    index, chosen, params = build_faiss_index(emb, index_type, memory_budget=memory_budget)
    logger.info("%s: built %s index over %d vectors in %.1fs", kind, chosen, len(emb), time.perf_counter() - start)
    info = {"index_type": chosen, "search_params": params, "skipped": skipped}
    return VectorCollection(kind, index, metadata, emb, info)


__all__ = ["COLLECTIONS", "FORMAT", "FORMAT_VERSION", "ChunkEmbedder", "CrossModalIndex", "embed_resumable"]
