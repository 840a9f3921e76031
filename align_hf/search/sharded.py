"""Index building past one machine's memory: an on-disk, sharded IVF index built from an
embedding folder (see :mod:`align_hf.search.emb_folder`).

Steps, each resumable:

1. plan: flat or HNSW for small collections (as ``align-hf index build`` does), else IVF-PQ (or
   IVF-Flat) with parameters chosen to fit a memory budget (:func:`plan_index`);
2. train the IVF quantizer (and PQ codebooks) once, on a random sample of the parts;
3. add every embedding part to its own copy of the trained, empty index, in parallel Ray tasks
   (``ray.init()`` on this machine by default, ``ray_address`` for a cluster) or in threads when
   Ray is not installed; each finished shard is a file, so a rerun skips it;
4. merge the shards' inverted lists on disk (faiss ``OnDiskInvertedLists``) into ``<kind>.faiss``
   plus ``<kind>.ivfdata``; the lists are memory-mapped at search time, never read whole into RAM.

Output directory::

    OUT/manifest.json           format align_hf-index, layout "sharded", model signature, per-kind info
    OUT/<kind>.faiss            index (IVF: quantizer + list sizes; flat/HNSW: everything)
    OUT/<kind>.ivfdata          IVF inverted lists (codes and global ids)
    OUT/work/                   trained index and shard files while building (removed at the end)

Ids in the index are the embedding folder's global ids, so hits map straight back to its
metadata parquet files and raw vectors (used to re-rank PQ candidates exactly).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from align_hf.search.emb_folder import (
    kinds_present,
    load_manifest,
    nonzero_rows,
    part_ids,
    part_path,
)
from align_hf.search.faiss_index import (
    HNSW_EF_SEARCH,
    available_memory_bytes,
    choose_index_type,
    faiss,
    in_ram_index,
    ivf_lists,
    pq_code_sizes,
)

logger = logging.getLogger(__name__)

LAYOUT = "sharded"
SHARDED_VERSION = 2
SHARDED_TYPES = ("auto", "flat", "hnsw", "ivf_flat", "ivf_pq")
# Candidates re-ranked with exact inner products per wanted hit (PQ distances are approximate).
PQ_RERANK_FACTOR = 10
ADD_BATCH = 65_536
# From this many lists on, the coarse quantizer is an HNSW graph: assigning 10M vectors to 16k
# centroids by brute force would dominate the build.
HNSW_QUANTIZER_FROM = 4096


def plan_index(
    n: int,
    dim: int,
    index_type: str = "auto",
    memory_budget: int | None = None,
    nlist: int | None = None,
    pq_bytes: int | None = None,
) -> dict[str, Any]:
    """Choose the index and its parameters for ``n`` ``dim``-vectors within ``memory_budget`` bytes.

    The budget bounds what one machine holds while building (a training sample, one part being
    added per worker) and, for flat/HNSW, the whole index. ``auto``: flat up to
    ``FLAT_MAX_VECTORS``, HNSW while it fits half the budget, else IVF-PQ with about
    ``4 * sqrt(n)`` lists and the largest PQ code (<= ``dim / 8`` bytes) whose codes fit the budget.

    Returns:
        dict with ``index_type``, ``factory`` (faiss index_factory string, IVF only), ``nlist``,
        ``pq_bytes``, ``train_size``, ``search_params`` and ``memory_budget``.
    """
    if index_type not in SHARDED_TYPES:
        raise ValueError(f"index_type must be one of {SHARDED_TYPES}, got {index_type!r}")
    budget = int(memory_budget or available_memory_bytes() // 2)
    if index_type == "auto":
        chosen = choose_index_type(n, dim, budget // 2)
        index_type = "ivf_pq" if chosen == "ivf" else chosen
    plan: dict[str, Any] = {"index_type": index_type, "memory_budget": budget, "n": n, "dim": dim}
    if index_type == "flat":
        return {**plan, "search_params": {}}
    if index_type == "hnsw":
        return {**plan, "search_params": {"ef_search": HNSW_EF_SEARCH}}

    if nlist is None:
        nlist = ivf_lists(n, per_sqrt=4)
    # k-means wants >= 39 points per centroid; PQ codebooks (256 centroids each) ~10k points.
    train_size = max(39 * nlist, 256 * 39 if index_type == "ivf_pq" else 0)
    train_size = min(n, train_size, max(1, budget // 4 // (dim * 4)))
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"
    params: dict[str, Any] = {"nprobe": min(nlist, max(8, nlist // 64))}
    if index_type == "ivf_flat":
        factory = f"{quantizer},Flat"
        pq = None
    else:
        divisors = pq_code_sizes(dim)
        if pq_bytes is not None:
            if dim % pq_bytes:
                raise ValueError(f"pq_bytes must divide the dimension {dim}, got {pq_bytes}")
            pq = pq_bytes
        else:
            fitting = [m for m in divisors if n * (m + 8) <= budget] or divisors[:1]
            pq = max(fitting)
        factory = f"{quantizer},PQ{pq}x8"
        params["rerank"] = PQ_RERANK_FACTOR
    if nlist >= HNSW_QUANTIZER_FROM:
        params["quantizer_ef"] = max(64, 2 * params["nprobe"])
    return {**plan, "factory": factory, "nlist": nlist, "pq_bytes": pq, "train_size": int(train_size),
            "search_params": params}


def sample_vectors(emb_dir: Path, kind: str, parts: list[dict[str, Any]], size: int, seed: int = 0) -> np.ndarray:
    """``(<= size, D)`` float32 rows drawn uniformly from all parts, read part by part (memory-mapped)."""
    total = sum(p["rows"] for p in parts)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out = []
    offset = 0
    for p in parts:
        local = chosen[(chosen >= offset) & (chosen < offset + p["rows"])] - offset
        if len(local):
            out.append(np.asarray(np.load(part_path(emb_dir, kind, p["part"]), mmap_mode="r")[local], dtype=np.float32))
        offset += p["rows"]
    return np.ascontiguousarray(np.concatenate(out))


def add_part(
    trained_path: str, emb_dir: str, kind: str, entry: dict[str, Any], out_path: str, threads: int = 1
) -> dict[str, Any]:
    """Add one embedding part to a copy of the trained index and write it to ``out_path``.

    Runs in a Ray task or a thread; the shard file appears (atomically) only once complete.

    Returns:
        ``{"part", "rows", "seconds", "max_rss"}`` (``max_rss``: this worker's peak RSS in bytes).
    """
    start = time.perf_counter()
    if threads:
        faiss.omp_set_num_threads(int(threads))
    index = faiss.read_index(trained_path)
    vectors = np.load(part_path(emb_dir, kind, entry["part"]), mmap_mode="r")
    ids = part_ids(emb_dir, entry)
    added = 0
    for s in range(0, len(ids), ADD_BATCH):
        block = np.asarray(vectors[s : s + ADD_BATCH], dtype=np.float32)
        block_ids = ids[s : s + ADD_BATCH]
        if kind == "text":
            block, block_ids = nonzero_rows(block, block_ids)
        if len(block):
            index.add_with_ids(np.ascontiguousarray(block), block_ids)
            added += len(block)
    tmp = f"{out_path}.tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, out_path)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"part": entry["part"], "rows": added, "seconds": time.perf_counter() - start, "max_rss": int(rss)}


def _run_parallel(jobs: list[tuple], workers: int, ray_address: str | None, use_ray: bool | None, progress: bool) -> list[dict]:
    """Run :func:`add_part` over ``jobs`` with Ray tasks when available, else a thread pool."""
    results: list[dict] = []
    if not jobs:
        return results
    ray = None
    if use_ray is None and not ray_address and (workers <= 1 or len(jobs) <= 1):
        use_ray = False  # nothing to run side by side: starting Ray would cost more than it saves
    if use_ray is not False:
        try:
            import ray
        except ImportError:
            if use_ray:
                raise ImportError("Ray is not installed: pip install 'align_hf[scale]' or pass use_ray=False") from None
    bar = tqdm(total=len(jobs), desc="add shards", unit="shard", disable=not progress)
    if ray is not None:
        from align_hf.data.counting import init_ray

        # Only paths travel through the object store: a small one is enough for a local Ray.
        store = {} if ray_address else {"object_store_memory": 100 << 20}
        started = init_ray(ray_address, workers, log_to_driver=False, **store)
        try:
            remote = ray.remote(num_cpus=1)(add_part)
            pending = [remote.remote(*job) for job in jobs]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results.extend(ray.get(done))
                bar.update(len(done))
        finally:
            if started:  # a Ray we started ends with the build; a cluster or a caller's Ray stays
                ray.shutdown()
    else:
        # OpenMP threads are per process here: set them once for all jobs, and put them back.
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(max(1, jobs[0][-1]))
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:  # faiss releases the GIL while adding
                for result in pool.map(lambda job: add_part(*job[:-1], threads=0), jobs):
                    results.append(result)
                    bar.update(1)
        finally:
            faiss.omp_set_num_threads(before)
    bar.close()
    return results


def build_sharded(
    emb_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    index_type: str = "auto",
    memory_budget: int | None = None,
    nlist: int | None = None,
    pq_bytes: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    use_ray: bool | None = None,
    kinds: list[str] | None = None,
    keep_shards: bool = False,
    target_recall: float | None = None,
    tune_queries: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the index of an embedding folder into ``output_dir`` (rerun to resume).

    Args:
        emb_dir: embedding folder (``align-hf index embed`` output).
        output_dir: index directory to write; :meth:`CrossModalIndex.load` and ``align-hf search`` read it.
        index_type: ``auto``, ``flat``, ``hnsw``, ``ivf_flat`` or ``ivf_pq`` (see :func:`plan_index`).
        memory_budget: bytes one machine may use (default: half the available memory).
        nlist, pq_bytes: override the IVF list count / PQ code size.
        workers: parallel shard tasks (default: CPUs, fewer if the budget says so).
        ray_address: Ray cluster to run the shard tasks on (default: a local Ray).
        use_ray: ``None`` uses Ray when installed and two or more shard tasks can run at once,
            ``False`` threads, ``True`` requires Ray.
        kinds: collections to build (default: all the folder has).
        keep_shards: keep the per-part shard files after the merge.
        target_recall: for IVF, choose the smallest ``nprobe`` reaching this recall@10 against
            exact search, on ``tune_queries`` vectors sampled from the collection (their own ids
            left out), and save it as the default.

    Returns:
        The written manifest, plus a ``build`` entry per kind with timings and peak memory.
    """
    emb_dir, out = Path(emb_dir).resolve(), Path(output_dir)
    manifest = load_manifest(emb_dir)
    dim = int(manifest["dim"])
    kinds = kinds or kinds_present(emb_dir, manifest)
    if not kinds:
        raise ValueError(f"nothing to index: {emb_dir} has no complete img_emb or text_emb parts")
    parts = [p for p in manifest["parts"] if p["rows"] > 0]
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    collections: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for kind in kinds:
        n = sum(p["rows"] for p in parts)
        plan = plan_index(n, dim, index_type, memory_budget, nlist, pq_bytes)
        plan["kind"] = kind
        plan["parts"] = [[p["part"], p["rows"], p["first_id"]] for p in parts]
        info, stats[kind] = _build_kind(emb_dir, out, work, kind, parts, plan, workers, ray_address, use_ray,
                                        keep_shards, seed, progress)
        if target_recall and info.get("nlist"):
            info["search_params"], stats[kind]["tuning"] = _tune(
                emb_dir, out, kind, info, parts, target_recall, tune_queries, seed)
        collections[kind] = info
    model = manifest.get("model") or {}
    written = {
        "format": "align_hf-index",
        "version": SHARDED_VERSION,
        "layout": LAYOUT,
        "model_id": model.get("model_id", ""),
        "embedding_dim": int(model.get("embedding_dim", dim)),
        "probe_embedding": model.get("probe_embedding", []),
        "embeddings": os.path.relpath(emb_dir, out.resolve()),
        "embeddings_abs": str(emb_dir),
        "collections": collections,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(written, indent=1))
    os.replace(tmp, out / "manifest.json")
    if not keep_shards:
        shutil.rmtree(work, ignore_errors=True)
    return {**written, "build": stats}


def _build_kind(
    emb_dir: Path, out: Path, work: Path, kind: str, parts: list[dict], plan: dict[str, Any],
    workers: int | None, ray_address: str | None, use_ray: bool | None, keep_shards: bool, seed: int, progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    final = out / f"{kind}.faiss"
    plan_path = work / f"{kind}-plan.json"
    done_path = out / f"{kind}.done.json"
    # What files on disk must agree on to be reused (the budget may differ between runs).
    plan = {**plan, "key": {k: plan.get(k) for k in ("kind", "index_type", "factory", "nlist", "pq_bytes", "dim", "parts")}}
    if done_path.is_file() and final.is_file() and json.loads(done_path.read_text())["plan"]["key"] == plan["key"]:
        logger.info("%s: index already built in %s", kind, out)
        done = json.loads(done_path.read_text())
        return done["info"], {**done["stats"], "resumed": True}
    if plan_path.is_file() and json.loads(plan_path.read_text())["key"] != plan["key"]:
        logger.warning("%s: %s holds a build with other parameters; starting over", kind, work)
        for old in work.glob(f"{kind}*"):
            old.unlink()
    plan_path.write_text(json.dumps(plan))
    stats: dict[str, Any] = {"plan": plan}
    t0 = time.perf_counter()
    dim = plan["dim"]

    if plan["index_type"] in ("flat", "hnsw"):  # small: one in-RAM index, global ids kept
        index = faiss.IndexIDMap2(in_ram_index(plan["index_type"], dim))
        for entry in tqdm(parts, desc=f"add {kind} parts", disable=not progress, unit="part"):
            vec = np.load(part_path(emb_dir, kind, entry["part"]), mmap_mode="r")
            ids = part_ids(emb_dir, entry)
            index.add_with_ids(*nonzero_rows(np.ascontiguousarray(vec, dtype=np.float32), ids))
        faiss.write_index(index, f"{final}.tmp")
        os.replace(f"{final}.tmp", final)
        stats["build_seconds"] = time.perf_counter() - t0
        stats["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        info = {"index_type": plan["index_type"], "search_params": plan["search_params"],
                "count": int(index.ntotal), "file": final.name}
        done_path.write_text(json.dumps({"plan": plan, "info": info, "stats": stats}))
        return info, stats

    trained = work / f"{kind}-trained.faiss"
    if not trained.is_file():
        t = time.perf_counter()
        sample = sample_vectors(emb_dir, kind, parts, plan["train_size"], seed)
        index = faiss.index_factory(dim, plan["factory"], faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        if plan["index_type"] == "ivf_pq":
            faiss.downcast_index(ivf).do_polysemous_training = False  # Hamming filtering is never used
        ivf.cp.seed = seed
        logger.info("%s: training %s on %d vectors", kind, plan["factory"], len(sample))
        index.train(sample)
        del sample
        faiss.write_index(index, f"{trained}.tmp")
        os.replace(f"{trained}.tmp", trained)
        stats["train_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    cpus = os.cpu_count() or 1
    if workers is None:
        per_task = max(p["rows"] for p in parts) * dim * 4 * 2  # a float32 batch + codes + slack
        workers = max(1, min(cpus, len(parts), plan["memory_budget"] // max(1, per_task)))
    jobs = []
    shard_paths = []
    for entry in parts:
        shard = work / f"{kind}-shard-{entry['part']:05d}.faiss"
        shard_paths.append(str(shard))
        if not shard.is_file():  # a finished shard is never added twice
            jobs.append((str(trained), str(emb_dir), kind, entry, str(shard), max(1, cpus // workers)))
    stats["shards_total"], stats["shards_added"] = len(parts), len(jobs)
    results = _run_parallel(jobs, workers, ray_address, use_ray, progress)
    stats["add_seconds"] = time.perf_counter() - t
    stats["workers"] = workers
    stats["worker_max_rss"] = max((r["max_rss"] for r in results), default=0)

    t = time.perf_counter()
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.read_index(str(trained))
    ivfdata = out / f"{kind}.ivfdata"
    merge_ondisk(index, shard_paths, str(ivfdata.resolve()))
    faiss.write_index(index, f"{final}.tmp")
    os.replace(f"{final}.tmp", final)
    count = int(index.ntotal)
    del index
    stats["merge_seconds"] = time.perf_counter() - t
    stats["build_seconds"] = time.perf_counter() - t0
    stats["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats["index_bytes"] = final.stat().st_size + ivfdata.stat().st_size
    info = {"index_type": plan["index_type"], "factory": plan["factory"], "nlist": plan["nlist"],
            "search_params": plan["search_params"], "count": count, "file": final.name, "ivfdata": ivfdata.name}
    done_path.write_text(json.dumps({"plan": plan, "info": info, "stats": stats}))
    if not keep_shards:
        for path in shard_paths:
            Path(path).unlink(missing_ok=True)
    return info, stats


def _tune(emb_dir: Path, out: Path, kind: str, info: dict[str, Any], parts: list[dict], target: float,
          n_queries: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """nprobe tuning on vectors of the collection; returns (search_params, tuning report)."""
    from align_hf.search.sharded_search import exact_search, load_collection, tune_nprobe

    start = time.perf_counter()
    queries = sample_vectors(emb_dir, kind, parts, n_queries, seed=seed + 1)
    if kind == "text":
        queries = queries[np.any(queries != 0, axis=1)]
    _, truth = exact_search(emb_dir, queries, k=11, kind=kind)
    collection = load_collection(out, kind, info, emb_dir)
    report = tune_nprobe(collection, queries, truth, target=target, k=10, exclude=truth[:, 0])
    params = {**info["search_params"], "nprobe": report["nprobe"]}
    report["seconds"] = time.perf_counter() - start
    logger.info("%s: nprobe=%d reaches recall@10=%.3f (target %.2f)", kind, report["nprobe"], report["recall"], target)
    return params, report


__all__ = [
    "LAYOUT",
    "PQ_RERANK_FACTOR",
    "SHARDED_TYPES",
    "SHARDED_VERSION",
    "add_part",
    "build_sharded",
    "plan_index",
    "sample_vectors",
]
