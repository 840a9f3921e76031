"""Cross-modal search over FAISS indexes of ALIGN embeddings.

An index directory holds up to two collections, ``image`` and ``text``, each a FAISS
inner-product index over unit vectors, its raw embeddings and one metadata record per row::

    DIR/manifest.json              model id, embedding dim, probe embedding, per-collection info
    DIR/image.faiss                FAISS index (read back memory-mapped)
    DIR/image_embeddings.npy       (N, D) float32, memory-mapped on load
    DIR/image_meta.jsonl           one JSON object per row ({"path": ...} or {"row": ..., "caption": ...})
    DIR/text.faiss, text_embeddings.npy, text_meta.jsonl

Index types: ``flat`` (exact), ``hnsw`` (graph, fast, in RAM) and ``ivf`` (IVF-PQ codes with an
SQ8 refinement pass: about 3.6x less memory than flat at 640 dims). ``auto`` picks flat up to
``FLAT_MAX_VECTORS`` rows, then HNSW if it fits the memory budget, else IVF.

Embedding runs chunk by chunk into ``DIR/partial/`` so an interrupted build resumes where it
stopped; unreadable images are skipped and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from .evaluation import ImageLike, encode_images, encode_pil_images, encode_texts, get_field, load_image

logger = logging.getLogger(__name__)

FORMAT = "align_hf-index"
FORMAT_VERSION = 1
COLLECTIONS = ("image", "text")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Exact search over 100k x 640 float32 costs ~25 ms a query on 2 cores; beyond that go approximate.
FLAT_MAX_VECTORS = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_REFINE_K_FACTOR = 16
PROBE_TEXT = "a photo of a dog playing on the beach."
# Same weights in fp16/bf16 or on another device still agree far above this.
PROBE_MIN_COSINE = 0.99


class ModelMismatchError(ValueError):
    """The query model is not the model that built the index."""


# ----------------------------------------------------------------------------------------------
# FAISS index construction
# ----------------------------------------------------------------------------------------------


def available_memory_bytes() -> int:
    """Memory the OS can still hand out (Linux: MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def index_memory_bytes(index_type: str, n: int, dim: int, hnsw_m: int = HNSW_M) -> int:
    """Rough RAM an index of ``n`` ``dim``-vectors needs (vectors plus links/codes)."""
    if index_type == "flat":
        return n * dim * 4
    if index_type == "hnsw":
        return n * (dim * 4 + hnsw_m * 2 * 4 * 3 // 2)  # level-0 has 2M links; upper levels add ~half
    if index_type == "ivf":
        return n * (dim + _pq_subquantizers(dim) + 8)
    raise ValueError(f"unknown index type {index_type!r}")


def choose_index_type(n: int, dim: int, memory_budget: int | None = None) -> str:
    """Exact search while it is fast enough, HNSW while it fits in memory, IVF-PQ otherwise.

    Args:
        n: number of vectors.
        dim: their dimension.
        memory_budget: bytes the index may use; defaults to half the memory available now.
    """
    if n <= FLAT_MAX_VECTORS:
        return "flat"
    budget = available_memory_bytes() // 2 if memory_budget is None else memory_budget
    if index_memory_bytes("hnsw", n, dim) <= budget:
        return "hnsw"
    return "ivf"


def _pq_subquantizers(dim: int) -> int:
    """Largest divisor of ``dim`` not above ``dim / 8`` (80 bytes per code at 640 dims)."""
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _ivf_lists(n: int) -> int:
    """About sqrt(n) inverted lists (a power of two, >= 39 training points each).

    More lists make queries cheaper but k-means training slower; sqrt(n) keeps a 1M build to
    minutes on a laptop-class CPU.
    """
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return int(max(1, min(nlist, n // 39, 65536)))


def build_faiss_index(
    vectors: np.ndarray,
    index_type: str = "auto",
    memory_budget: int | None = None,
    hnsw_m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    nlist: int | None = None,
    train_per_list: int = 64,
    seed: int = 0,
) -> tuple[faiss.Index, str, dict[str, Any]]:
    """Build an inner-product FAISS index over ``(N, D)`` unit vectors.

    Returns:
        ``(index, index_type, search_params)``; ``search_params`` are the defaults
        :func:`set_search_params` applies (``ef_search`` or ``nprobe``/``k_factor``).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"nothing to index: expected (N, D) vectors with N > 0, got shape {vectors.shape}")
    n, dim = vectors.shape
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    if index_type == "auto":
        index_type = choose_index_type(n, dim, memory_budget)
    params: dict[str, Any] = {}
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        params = {"ef_search": HNSW_EF_SEARCH}
    else:
        nlist = nlist or _ivf_lists(n)
        if n < max(256, 39 * nlist):
            raise ValueError(f"IVF needs at least {max(256, 39 * nlist)} vectors to train, got {n}; use 'flat'")
        m = _pq_subquantizers(dim)
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x8,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
        # Polysemous codes only serve Hamming pre-filtering, which we never use; training them is slow.
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        train_size = max(train_per_list * nlist, 256 * 39)  # PQ's 256 centroids need ~10k points too
        rng = np.random.default_rng(seed)
        sample = vectors if n <= train_size else vectors[np.sort(rng.choice(n, train_size, replace=False))]
        index.train(sample)
        params = {"nprobe": min(nlist, max(16, nlist // 64)), "k_factor": IVF_REFINE_K_FACTOR}
    # Add in slices so a long build shows progress and never copies the whole array again.
    step = 65_536
    for start in tqdm(range(0, n, step), desc=f"add to {index_type} index", disable=n <= step, unit="slice"):
        index.add(vectors[start : start + step])
    set_search_params(index, **params)
    return index, index_type, params


def set_search_params(
    index: faiss.Index, ef_search: int | None = None, nprobe: int | None = None, k_factor: float | None = None
) -> None:
    """Apply query-time knobs: HNSW ``efSearch``, IVF ``nprobe`` and the refinement ``k_factor``."""
    if ef_search is not None:
        faiss.downcast_index(index).hnsw.efSearch = int(ef_search)
    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)
    if k_factor is not None:
        faiss.downcast_index(index).k_factor = float(k_factor)


# ----------------------------------------------------------------------------------------------
# One collection: index + embeddings + metadata
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Model identity
# ----------------------------------------------------------------------------------------------


def model_signature(model: torch.nn.Module, processor: Any) -> dict[str, Any]:
    """What the index records about its model: id, embedding dim and the embedding of a probe text.

    Two models whose probe embeddings differ live in different embedding spaces, whatever their
    names; the same weights at another precision or on another device still match.
    """
    probe = encode_texts(model, processor, [PROBE_TEXT], progress=False)[0]
    config = getattr(model, "config", None)
    return {
        "model_id": str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or ""),
        "embedding_dim": int(probe.shape[0]),
        "probe_embedding": [round(float(v), 6) for v in probe],
    }


def check_model(index_signature: dict[str, Any], signature: dict[str, Any]) -> None:
    """Raise :class:`ModelMismatchError` unless both signatures describe the same embedding space."""
    if index_signature["embedding_dim"] != signature["embedding_dim"]:
        raise ModelMismatchError(
            f"the index holds {index_signature['embedding_dim']}-d embeddings of model "
            f"{index_signature['model_id']!r} but the query model {signature['model_id']!r} "
            f"makes {signature['embedding_dim']}-d embeddings"
        )
    a = np.asarray(index_signature["probe_embedding"], dtype=np.float64)
    b = np.asarray(signature["probe_embedding"], dtype=np.float64)
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    if cosine < PROBE_MIN_COSINE:
        raise ModelMismatchError(
            f"the index was built with model {index_signature['model_id']!r} and the query model "
            f"{signature['model_id']!r} embeds differently (probe cosine {cosine:.3f} < {PROBE_MIN_COSINE}); "
            "query with the index's model or rebuild the index"
        )


# ----------------------------------------------------------------------------------------------
# Resumable embedding
# ----------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Absolute paths of the image files under ``folder`` (by extension), sorted for reproducible builds."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(str(p) for p in files)


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


# ----------------------------------------------------------------------------------------------
# The index directory
# ----------------------------------------------------------------------------------------------


class CrossModalIndex:
    """Image and/or text collections embedded by one model, with that model's signature."""

    def __init__(self, collections: dict[str, VectorCollection], signature: dict[str, Any]) -> None:
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

    def __getitem__(self, kind: str) -> VectorCollection:
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
        """Read an index directory; FAISS indexes and embeddings are memory-mapped by default."""
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no index at {directory} (manifest.json is missing)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path} is not an align_hf index manifest")
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
            index_type: ``auto``, ``flat``, ``hnsw`` or ``ivf`` (see :func:`choose_index_type`).
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
                return load_image(images[i][image_column] if is_table else images[i])

            def embed_image_chunk(span: range) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
                enc = encode_images(model, processor, span, batch_size=batch_size, progress=False, loader=fetch)
                return enc.embeddings.numpy(), [span[k] for k in enc.kept], [(span[k], r) for k, r in enc.skipped]

            # What the chunks on disk must belong to for a rerun to reuse them.
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


# ----------------------------------------------------------------------------------------------
# Queries
# ----------------------------------------------------------------------------------------------


def compose_query(
    image: torch.Tensor | np.ndarray | None = None,
    texts: torch.Tensor | np.ndarray | None = None,
    minus: torch.Tensor | np.ndarray | None = None,
    image_weight: float = 1.0,
    text_weight: float = 2.0,
) -> np.ndarray:
    """Combine unit embeddings into one unit query: ``w_i * image + w_t * sum(texts) - w_t * sum(minus)``.

    The paper's default weighs text x2 and image x1; subtracting a text removes an attribute.

    Args:
        image: ``(D,)`` image embedding or ``None``.
        texts: ``(T, D)`` embeddings of texts to add.
        minus: ``(M, D)`` embeddings of texts to subtract.

    Returns:
        ``(D,)`` float32 unit vector.
    """
    parts = []
    if image is not None:
        parts.append(image_weight * _as_rows(image).sum(0))
    if texts is not None and len(texts):
        parts.append(text_weight * _as_rows(texts).sum(0))
    if minus is not None and len(minus):
        parts.append(-text_weight * _as_rows(minus).sum(0))
    if not parts:
        raise ValueError("empty query: give an image, a text or both")
    query = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(query))
    if not norm > 1e-6:
        raise ValueError("the query terms cancel out (zero vector); change the weights or the terms")
    return (query / norm).astype(np.float32)


def _as_rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


class Searcher:
    """Text->image, image->text, image->image and image+text search over a :class:`CrossModalIndex`.

    The query model must embed like the index's model (checked once, here).

    Example::

        searcher = Searcher(CrossModalIndex.load("my-index"), model, processor)
        searcher.search(text="a red bicycle", k=5)             # text -> image
        searcher.search(image="eiffel.jpg", text="snow")       # image + text -> image
        searcher.search(image="cat.jpg", target="text")        # image -> text
    """

    def __init__(
        self, index: CrossModalIndex | str | os.PathLike, model: torch.nn.Module, processor: Any, check: bool = True
    ) -> None:
        self.index = index if isinstance(index, CrossModalIndex) else CrossModalIndex.load(index)
        self.model = model.eval()
        self.processor = processor
        if check:
            check_model(self.index.signature, model_signature(model, processor))

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(T, D)`` unit text embeddings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return encode_texts(self.model, self.processor, texts, progress=False).numpy()

    def embed_image(self, image: ImageLike) -> np.ndarray:
        """``(D,)`` unit embedding of one image (PIL, path, bytes)."""
        try:
            pil = load_image(image)
        except Exception as err:
            raise ValueError(f"cannot read the query image {image!r}: {err}") from err
        return encode_pil_images(self.model, self.processor, [pil])[0].numpy()

    def search(
        self,
        text: str | Sequence[str] | None = None,
        image: ImageLike | None = None,
        minus: str | Sequence[str] | None = None,
        target: str | None = None,
        k: int = 10,
        image_weight: float = 1.0,
        text_weight: float = 2.0,
    ) -> list[Hit]:
        """Search with any mix of image, texts to add and texts to subtract.

        Args:
            text: text(s) to add to the query.
            image: query image.
            minus: text(s) to subtract (removes an attribute).
            target: collection to search, ``"image"`` or ``"text"``; defaults to images when the
                index has them.
            k: number of results.
            image_weight, text_weight: composition weights (paper default 1 and 2).

        Returns:
            Up to ``k`` :class:`Hit` s, best first.
        """
        target = target or ("image" if "image" in self.index else "text")
        collection = self.index[target]
        query = compose_query(
            image=self.embed_image(image) if image is not None else None,
            texts=self.embed_text(text) if text else None,
            minus=self.embed_text(minus) if minus else None,
            image_weight=image_weight,
            text_weight=text_weight,
        )
        return collection.search(query, k)[0]

    def text_to_image(self, text: str, k: int = 10) -> list[Hit]:
        return self.search(text=text, target="image", k=k)

    def image_to_text(self, image: ImageLike, k: int = 10) -> list[Hit]:
        return self.search(image=image, target="text", k=k)

    def image_to_image(self, image: ImageLike, k: int = 10) -> list[Hit]:
        return self.search(image=image, target="image", k=k)


__all__ = [
    "CrossModalIndex",
    "VectorCollection",
    "Searcher",
    "Hit",
    "ModelMismatchError",
    "build_faiss_index",
    "choose_index_type",
    "compose_query",
    "embed_resumable",
    "list_images",
    "model_signature",
    "check_model",
    "set_search_params",
]
