"""Counting alt-texts, images and n-grams over billions of pairs: a map-reduce on Ray Data or in one process.

ALIGN's frequency rules need corpus-wide counts. :func:`count_corpus` computes them with
memory bounded independently of the corpus size:

- **map** (:func:`map_task`, one per group of input shards): each shard is counted by
  :func:`~align_hf.data.filtering.count_frequencies`, the same per-shard code the in-memory
  path uses; its counts are keyed by 64-bit hashes and buffered. When ``spill_rows`` keys are
  buffered, equal keys are summed and the buffer is written as one sorted parquet *run*, one
  row group per hash partition.
- **reduce** (:func:`reduce_partition`, one per table and partition): the partition's row
  groups of every run are summed into ``<table>/part-NNNNN.parquet`` of the store, with the
  partition's count histogram.

``engine="ray"`` runs both stages as Ray Data ``map`` operators (a local Ray started with the
machine's CPUs, or the cluster at ``ray_address``; there, ``output`` must be storage every node
sees); ``engine="local"`` runs the same two functions in a loop. Both give identical stores.
Peak memory: a map task holds one shard's counts plus ``spill_rows`` buffered keys (about
100 bytes each with the sort); a reduce task holds one partition of one table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import time
import uuid
from collections import Counter
from typing import Any, Sequence

import numpy as np

from align_hf.data.count_store import META_FILE, STORE_FORMAT, CountStore, partition_of, partition_path
from align_hf.data.filter_index import TABLES, combine, histogram

logger = logging.getLogger(__name__)

RUN_PARTITIONS = b"align_hf.partitions"  # parquet metadata: the partition of each row group of a run


@dataclasses.dataclass(frozen=True)
class CountPlan:
    """What every map and reduce task needs to know (picklable, sent to Ray workers).

    Args:
        source: what :func:`~align_hf.data.sources.load_pairs` opens (paths, globs, brace patterns).
        output: the store folder; ``work_dir`` holds the runs until the reduce has read them.
        num_shards: shards of the opened source (``IterableDataset.n_shards``); a map task opens
            shard ``i`` with ``IterableDataset.shard(num_shards, i)``.
        partition_bits: ``2**partition_bits`` hash partitions per table.
        spill_rows: buffered keys that make a map task write a run.
    """

    source: str | tuple[str, ...]
    output: str
    work_dir: str
    num_shards: int
    image_column: str | None = None
    text_column: str | None = None
    split: str = "train"
    count_images: bool = False
    max_ngram: int = 2
    partition_bits: int = 5
    spill_rows: int = 4_000_000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def open_shard(plan: CountPlan, shard: int):
    """Shard ``shard`` of the plan's source as a ``load_pairs`` stream."""
    from align_hf.data.sources import load_pairs

    source = plan.source if isinstance(plan.source, str) else list(plan.source)
    pairs = load_pairs(source, image_column=plan.image_column, text_column=plan.text_column, split=plan.split)
    return pairs.shard(num_shards=plan.num_shards, index=shard) if plan.num_shards > 1 else pairs


def write_run(path: str, keys: np.ndarray, counts: np.ndarray, bits: int) -> None:
    """Write ascending unique ``(n,)`` keys/counts as parquet, one row group per non-empty partition."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = partition_of(keys, bits)
    present = np.unique(parts)
    bounds = np.searchsorted(parts, present), np.searchsorted(parts, present, side="right")
    schema = pa.schema([("key", pa.uint64()), ("count", pa.uint64())],
                       metadata={RUN_PARTITIONS: json.dumps([int(p) for p in present]).encode()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for start, stop in zip(*bounds):
            writer.write_table(pa.table({"key": keys[start:stop], "count": counts[start:stop]}, schema=schema),
                               row_group_size=int(stop - start))


def read_run_partition(path: str, partition: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The row group of ``partition`` in a run, or ``None`` if the run has no key there."""
    import pyarrow.parquet as pq

    run = pq.ParquetFile(path)
    present = json.loads(run.schema_arrow.metadata[RUN_PARTITIONS])
    if partition not in present:
        return None
    group = run.read_row_group(present.index(partition))
    return group.column("key").to_numpy(), group.column("count").to_numpy()


def map_task(task: dict[str, Any], plan: CountPlan) -> dict[str, Any]:
    """Count the shards ``task["shards"]`` and spill them as sorted, partitioned runs.

    A shard that cannot be opened, or breaks mid-stream, is counted under ``skipped``
    (``shard_error``, or the stream's reason), never raised: one bad shard in 10^5 must not end
    the job. Returns the runs written per table and the shards' record counts.
    """
    from align_hf.data.filtering import count_frequencies

    start = time.perf_counter()
    runs: dict[str, list[str]] = {table: [] for table in TABLES}
    buffers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {table: [] for table in TABLES}
    buffered = num_records = num_texts = 0
    skipped: Counter = Counter()

    def spill() -> None:
        for table, chunks in buffers.items():
            if chunks:
                keys, counts = combine(np.concatenate([k for k, _ in chunks]), np.concatenate([c for _, c in chunks]))
                path = os.path.join(plan.work_dir, table, f"task{task['task']:06d}-{len(runs[table]):04d}.parquet")
                write_run(path, keys, counts, plan.partition_bits)
                runs[table].append(path)
                chunks.clear()

    for shard in task["shards"]:
        try:
            counts = count_frequencies(open_shard(plan, shard), count_images=plan.count_images, progress=False, max_ngram=plan.max_ngram)
        except Exception as error:  # noqa: BLE001 - a bad shard is counted, the job goes on
            logger.error("shard %d of %s could not be read: %r", shard, plan.source, error)
            skipped["shard_error"] += 1
            continue
        num_records += counts.num_records
        num_texts += counts.num_texts
        skipped.update(counts.skipped)
        for table, arrays in counts.hashed_tables().items():
            buffers[table].append(arrays)
            buffered += len(arrays[0])
        if buffered >= plan.spill_rows:
            spill()
            buffered = 0
    spill()
    return {"task": task["task"], "runs": runs, "num_records": num_records, "num_texts": num_texts,
            "skipped": dict(skipped), "seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


def reduce_partition(job: dict[str, Any], plan: CountPlan) -> dict[str, Any]:
    """Sum partition ``job["partition"]`` of every table over the runs listed in ``job["runs_file"]``; write it to the store.

    One table's partition is in memory at a time. Returns per table: rows, occurrences, the
    ``[count, keys]`` histogram.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    partition, result = job["partition"], {}
    with open(job["runs_file"], encoding="utf-8") as handle:
        runs = json.load(handle)  # {table: [run paths]}: one file, not a copy in every job
    for table, run_paths in runs.items():
        pieces = [piece for piece in (read_run_partition(path, partition) for path in run_paths) if piece is not None]
        if pieces:
            keys, counts = combine(np.concatenate([k for k, _ in pieces]), np.concatenate([c for _, c in pieces]))
        else:
            keys, counts = np.empty(0, np.uint64), np.empty(0, np.uint64)
        path = partition_path(plan.output, table, partition)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        pq.write_table(pa.table({"key": pa.array(keys, pa.uint64()), "count": pa.array(counts, pa.uint64())}), temporary)
        os.replace(temporary, path)  # a retried task never leaves a half-written partition
        result[table] = {"rows": len(keys), "occurrences": int(counts.sum()), "histogram": sorted(histogram(counts).items())}
    return {"partition": partition, "tables": result, "peak_rss_mb": _peak_rss_mb()}


def _json_call(function, plan: CountPlan):
    """A Ray Data ``map`` function: row ``{"job": json}`` -> ``{"result": json}`` (flat rows, no schema trouble)."""

    def call(row: dict[str, Any]) -> dict[str, str]:
        return {"result": json.dumps(function(json.loads(row["job"]), plan))}

    return call


def _run_local(function, jobs: list[dict], plan: CountPlan, progress: bool, desc: str) -> list[dict]:
    from tqdm.auto import tqdm

    return [function(job, plan) for job in tqdm(jobs, desc=desc, disable=not progress)]


def _run_ray(function, jobs: list[dict], plan: CountPlan, progress: bool, desc: str) -> list[dict]:
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    dataset = ray.data.from_items([{"job": json.dumps(job)} for job in jobs], override_num_blocks=len(jobs))
    rows = dataset.map(_json_call(function, plan), num_cpus=1).take_all()
    return [json.loads(row["result"]) for row in rows]


def init_ray(address: str | None = None, num_cpus: int | None = None, **options: Any) -> bool:
    """Connect to Ray (the cluster at ``address``, else a local one with ``num_cpus``); True if we started it.

    ``options`` go to ``ray.init`` (e.g. ``log_to_driver=False``, ``object_store_memory=...``).
    """
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False, configure_logging=False,
             **options)
    return True


def count_corpus(
    source: str | Sequence[str],
    output: str | os.PathLike,
    *,
    engine: str = "local",
    image_column: str | None = None,
    text_column: str | None = None,
    split: str = "train",
    count_images: bool = False,
    max_ngram: int = 2,
    partitions: int = 32,
    shards_per_task: int | None = None,
    spill_rows: int = 4_000_000,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    keep_runs: bool = False,
    progress: bool = True,
) -> CountStore:
    """Count ``source`` into a :class:`~align_hf.data.count_store.CountStore` at ``output``.

    Args:
        engine: ``"ray"`` (Ray Data; a local Ray unless ``ray_address``) or ``"local"`` (this process).
        partitions: hash partitions per table, a power of two; a reduce task holds one, so use
            about (distinct keys x 16 bytes x 4) / (memory per CPU), e.g. 1024 at 1.8B pairs.
        shards_per_task: input shards per map task (default: about 4 tasks per CPU).
        spill_rows: keys a map task buffers before writing a run (~100 bytes each at the sort).
        keep_runs: keep the map stage's runs under ``output/_runs`` (default: delete them).
    """
    from align_hf.data.sources import load_pairs

    if engine not in ("ray", "local"):
        raise ValueError(f"engine must be 'ray' or 'local', got {engine!r}")
    bits = int(math.log2(partitions))
    if partitions < 1 or 1 << bits != partitions:
        raise ValueError(f"partitions must be a power of two, got {partitions}")
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(os.path.join(output, META_FILE)):
        os.remove(os.path.join(output, META_FILE))  # the store is incomplete until the new meta lands
    shutil.rmtree(os.path.join(output, "filter_index"), ignore_errors=True)
    start = time.perf_counter()
    src = source if isinstance(source, str) else tuple(os.fspath(s) for s in source)
    num_shards = load_pairs(src if isinstance(src, str) else list(src), image_column=image_column, text_column=text_column, split=split).n_shards
    plan = CountPlan(source=src, output=output, work_dir=os.path.join(output, "_runs"), num_shards=num_shards,
                     image_column=image_column, text_column=text_column, split=split, count_images=count_images,
                     max_ngram=max_ngram, partition_bits=bits, spill_rows=spill_rows)
    started_ray = False
    if engine == "ray":
        started_ray = init_ray(ray_address, num_cpus)
        import ray

        parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        run = _run_ray
    else:
        parallelism, run = 1, _run_local
    per_task = shards_per_task or max(1, math.ceil(num_shards / (4 * parallelism)))
    tasks = [{"task": i, "shards": list(range(s, min(s + per_task, num_shards)))} for i, s in enumerate(range(0, num_shards, per_task))]
    try:
        mapped = run(map_task, tasks, plan, progress, "counting shards")
        runs_file = os.path.join(plan.work_dir, "runs.json")
        os.makedirs(plan.work_dir, exist_ok=True)
        with open(runs_file, "w", encoding="utf-8") as handle:
            json.dump({table: [path for m in mapped for path in m["runs"][table]] for table in TABLES}, handle)
        jobs = [{"partition": p, "runs_file": runs_file} for p in range(partitions)]
        reduced = run(reduce_partition, jobs, plan, progress, "merging partitions")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    tables: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        hist: Counter = Counter()
        rows = [r["tables"][table] for r in reduced]
        for r in rows:
            hist.update({int(c): int(n) for c, n in r["histogram"]})
        tables[table] = {"rows": sum(r["rows"] for r in rows), "occurrences": sum(r["occurrences"] for r in rows),
                         "histogram": sorted(hist.items())}
    skipped: Counter = Counter()
    for m in mapped:
        skipped.update(m["skipped"])
    meta = {
        "format": STORE_FORMAT, "id": uuid.uuid4().hex, "hash": "blake2b-64", "source": src,
        "partition_bits": bits, "max_ngram": max_ngram, "counted_images": count_images,
        "num_shards": num_shards, "num_records": sum(m["num_records"] for m in mapped),
        "num_texts": sum(m["num_texts"] for m in mapped), "skipped": dict(skipped), "tables": tables,
        "engine": engine, "map_tasks": len(tasks), "seconds": time.perf_counter() - start,
        "peak_rss_mb": {"map": max(m["peak_rss_mb"] for m in mapped), "reduce": max(r["peak_rss_mb"] for r in reduced)},
    }
    if not keep_runs:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    temporary = os.path.join(output, f"{META_FILE}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    os.replace(temporary, os.path.join(output, META_FILE))
    return CountStore(output)
