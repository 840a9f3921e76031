"""FAISS indexes over unit vectors: which type to build, what it costs, how to build and tune it.

Index types: ``flat`` (exact), ``hnsw`` (graph, fast, in RAM) and ``ivf`` (IVF-PQ codes with an
SQ8 refinement pass: about 3.6x less memory than flat at 640 dims). ``auto`` picks flat up to
``FLAT_MAX_VECTORS`` rows, then HNSW if it fits the memory budget, else IVF.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from tqdm.auto import tqdm

try:
    import faiss
except ImportError as err:  # an extra: faiss-cpu and faiss-gpu must not be installed side by side
    raise ImportError(
        "align_hf.search needs FAISS: pip install 'align_hf[search]' (faiss-cpu), or faiss-gpu on a GPU machine"
    ) from err

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# Exact search costs grow with N per query; beyond this many vectors "auto" goes approximate
# (the README's search benchmark shows the trade-off).
FLAT_MAX_VECTORS = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_REFINE_K_FACTOR = 16


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


def pq_code_sizes(dim: int) -> list[int]:
    """PQ code sizes (bytes, 8-bit sub-quantizers) usable for ``dim``: divisors of ``dim`` up to ``dim / 8``."""
    return [m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0]


def _pq_subquantizers(dim: int) -> int:
    """Largest divisor of ``dim`` not above ``dim / 8`` (80 bytes per code at 640 dims)."""
    return max(pq_code_sizes(dim))


def ivf_lists(n: int, per_sqrt: float = 1.0) -> int:
    """About ``per_sqrt * sqrt(n)`` inverted lists (a power of two, >= 39 training points each).

    More lists make queries cheaper but k-means training slower; sqrt(n) keeps a 1M build to
    minutes on a laptop-class CPU. :func:`~align_hf.search.sharded.plan_index` asks for
    ``per_sqrt=4``.
    """
    nlist = 2 ** round(math.log2(max(1.0, per_sqrt * math.sqrt(n))))
    return int(max(1, min(nlist, n // 39, 65536)))


def in_ram_index(
    index_type: str, dim: int, hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION
) -> faiss.Index:
    """An empty inner-product ``flat`` or ``hnsw`` index (neither needs training)."""
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index
    raise ValueError(f"{index_type!r} is not an in-RAM index type (flat, hnsw)")


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
    if index_type in ("flat", "hnsw"):
        index = in_ram_index(index_type, dim, hnsw_m, ef_construction)
        params = {"ef_search": HNSW_EF_SEARCH} if index_type == "hnsw" else {}
    else:
        nlist = nlist or ivf_lists(n)
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
    index: faiss.Index,
    ef_search: int | None = None,
    nprobe: int | None = None,
    k_factor: float | None = None,
    quantizer_ef: int | None = None,
) -> None:
    """Apply query-time knobs where ``index`` has them; a knob it lacks is ignored, so one set of
    settings can go to every collection of a searcher.

    Args:
        ef_search: HNSW ``efSearch`` (also of an HNSW index inside an id map).
        nprobe: IVF lists visited per query.
        k_factor: candidates per hit re-scored by a ``Refine`` index.
        quantizer_ef: ``efSearch`` of an HNSW coarse quantizer; by default ``max(64, 2 * nprobe)``
            whenever ``nprobe`` is set, since the graph must return ``nprobe`` good lists.
    """
    top = faiss.downcast_index(index)
    ivf = faiss.try_extract_index_ivf(top)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if nprobe is not None:
            ivf.nprobe = int(nprobe)
            if quantizer_ef is None:
                quantizer_ef = max(64, 2 * int(nprobe))
        if quantizer_ef is not None and hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = int(quantizer_ef)
    if ef_search is not None:
        base = faiss.downcast_index(top.index) if hasattr(top, "index") else top  # an id map's inner index
        if hasattr(base, "hnsw"):
            base.hnsw.efSearch = int(ef_search)
    if k_factor is not None and hasattr(top, "k_factor"):
        top.k_factor = float(k_factor)


__all__ = [
    "FLAT_MAX_VECTORS",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH",
    "HNSW_M",
    "INDEX_TYPES",
    "IVF_REFINE_K_FACTOR",
    "available_memory_bytes",
    "build_faiss_index",
    "choose_index_type",
    "in_ram_index",
    "index_memory_bytes",
    "ivf_lists",
    "pq_code_sizes",
    "set_search_params",
]
