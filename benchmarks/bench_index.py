"""Web-scale index benchmark (not a test).

``--part embed``: embedding throughput, delegated to ``benchmarks/bench_embed.py``'s ``run(args)``
(options this script does not know are passed on to it, e.g. ``--images 512 --methods a,b,c``).
``--part index``: a clustered collection of ``--n-vectors`` unit vectors (d=640 by default) is
generated part by part onto disk in the embedding-folder layout (never all in RAM), built as a
sharded on-disk IVF-PQ within ``--memory-gb`` of RAM, then measured: build time (train / add /
merge), index size on disk, peak memory (this process plus its Ray workers, sampled), p50/p99
single-query latency and recall@10 against exact brute-force search (streamed over the parts) at
several ``nprobe`` values, with and without exact re-ranking. Ends with a paper projection to
1B vectors from the measured per-shard costs.

Example (the README's table)::

    python benchmarks/bench_index.py --part index --n-vectors 10000000 --workdir /tmp/bench_index
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tree_rss() -> int:
    """RSS of this process and all its descendants (Ray's raylet and workers included), in bytes."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """Samples :func:`tree_rss` in a thread; ``peak`` is the largest value seen."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss())


class Clustered:
    """Two-level clustered unit vectors (topics, then sub-topics, then noise), like real embeddings.

    Draws are deterministic per (part, seed) so parts can be regenerated independently.
    """

    def __init__(self, dim: int, topics: int = 1000, subtopics: int = 64, noise: float = 1.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.noise = dim, noise
        self.topics = rng.standard_normal((topics, dim), dtype=np.float32)
        self.sub = rng.standard_normal((topics, subtopics, dim), dtype=np.float32) * 0.7

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        t = rng.integers(0, len(self.topics), n)
        s = rng.integers(0, self.sub.shape[1], n)
        x = self.topics[t] + self.sub[t, s]
        x += self.noise * rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def generate(emb: Path, n: int, dim: int, part_rows: int, dtype: str, gen: Clustered) -> float:
    """Write ``n`` vectors as image parts of an embedding folder; returns seconds (skips if done)."""
    from align_hf.search.emb_folder import MANIFEST, write_manifest, write_part

    if (emb / MANIFEST).is_file() and json.loads((emb / MANIFEST).read_text())["rows"] == n:
        return 0.0
    start = time.perf_counter()
    parts = []
    n_parts = math.ceil(n / part_rows)
    for p in range(n_parts):
        rows = min(part_rows, n - p * part_rows)
        vec = gen.draw(rows, seed=1000 + p).astype(dtype)
        parts.append(write_part(emb, p, p * part_rows, image=vec, source=f"shard-{p:05d}.tar"))
        print(f"  generated part {p + 1}/{n_parts}", flush=True, end="\r")
    write_manifest(emb, parts, dim, dtype, modalities=("image",))
    print()
    return time.perf_counter() - start


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in path.glob(pattern) if f.is_file())


def run_index(args: argparse.Namespace) -> dict:
    import faiss

    from align_hf.search import CrossModalIndex
    from align_hf.search.sharded import build_sharded
    from align_hf.search.sharded_search import exact_search, recall_at_k

    work = Path(args.workdir)
    emb, out = work / f"emb_{args.n_vectors}_n{args.noise:g}", work / f"index_{args.n_vectors}_n{args.noise:g}"
    work.mkdir(parents=True, exist_ok=True)
    gen = Clustered(args.dim, noise=args.noise, seed=args.seed)
    print(f"generating {args.n_vectors:,} x {args.dim} {args.dtype} vectors in {emb} ...", flush=True)
    gen_s = generate(emb, args.n_vectors, args.dim, args.part_rows, args.dtype, gen)
    emb_bytes = dir_bytes(emb / "img_emb")
    if args.rebuild and out.exists():
        shutil.rmtree(out)

    budget = int(args.memory_gb * (1 << 30))
    with PeakMemory() as peak:
        t = time.perf_counter()
        built = build_sharded(
            emb, out, index_type=args.index_type, memory_budget=budget, nlist=args.nlist, pq_bytes=args.pq_bytes,
            workers=args.workers, use_ray=False if args.no_ray else None, progress=True,
        )
        build_s = time.perf_counter() - t
    stats = built["build"]["image"]
    index_bytes = dir_bytes(out, "image.*")
    plan = stats["plan"]
    print(f"built {plan.get('factory', plan['index_type'])} in {build_s:.0f}s; peak RSS (tree) {peak.peak / 2**30:.2f} GiB")

    queries = gen.draw(args.queries, seed=999_999)  # same law, not in the collection
    t = time.perf_counter()
    truth_s, truth = exact_search(emb, queries, k=10)
    exact_s = time.perf_counter() - t

    faiss.omp_set_num_threads(1)  # one query, one thread: the latency a server sees per request
    index = CrossModalIndex.load(out)
    coll = index["image"]
    rows = []
    nprobes = [int(x) for x in args.nprobe.split(",")]
    nlist = plan.get("nlist") or 1
    for nprobe in [p for p in nprobes if p <= nlist]:
        for rerank in ([0, coll.rerank or 10] if plan["index_type"] == "ivf_pq" else [0]):
            coll.set_search_params(nprobe=nprobe, rerank=rerank)
            for q in queries[: args.warmup]:
                coll.search_ids(q[None], 10)
            lat, found = [], []
            for _ in range(args.repeats):  # repeated passes, median per query: less noise from neighbours
                per = []
                for q in queries:
                    s = time.perf_counter()
                    _, ids = coll.search_ids(q[None], 10)
                    per.append((time.perf_counter() - s) * 1000)
                    if len(found) < len(queries):
                        found.append(ids[0])
                lat.append(per)
            lat = np.median(np.array(lat), axis=0)
            row = {"nprobe": nprobe, "rerank": rerank, "recall@10": recall_at_k(np.array(found), truth, 10),
                   "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
            rows.append(row)
            print(f"  nprobe={nprobe:<4} rerank={rerank:<3} recall@10={row['recall@10']:.3f} "
                  f"p50={row['p50_ms']:.2f} ms p99={row['p99_ms']:.2f} ms", flush=True)

    n = args.n_vectors
    shards = stats.get("shards_total", 1)
    per_shard_add = stats.get("add_seconds", 0.0) * stats.get("workers", 1) / max(1, shards)
    projection = project(n, args.dim, args.part_rows, plan, stats, index_bytes, emb_bytes, per_shard_add, peak.peak, rows)
    result = {
        "n_vectors": n, "dim": args.dim, "dtype": args.dtype, "parts": shards, "generate_s": gen_s,
        "plan": {k: plan[k] for k in ("index_type", "factory", "nlist", "pq_bytes", "train_size") if k in plan},
        "build_s": build_s, "train_s": stats.get("train_seconds"), "add_s": stats.get("add_seconds"),
        "merge_s": stats.get("merge_seconds"), "workers": stats.get("workers"),
        "peak_rss_tree_gib": peak.peak / 2**30, "worker_max_rss_gib": stats.get("worker_max_rss", 0) / 2**30,
        "index_gib": index_bytes / 2**30, "embeddings_gib": emb_bytes / 2**30,
        "exact_search_s": exact_s, "queries": len(queries), "search": rows, "projection_1b": projection,
    }
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return result


def project(n: int, dim: int, part_rows: int, plan: dict, stats: dict, index_bytes: int, emb_bytes: int,
            per_shard_add_s: float, peak: int, rows: list[dict], target: int = 1_000_000_000,
            node_gib: float = 8.0, node_cores: int = 16) -> dict:
    """Paper projection to ``target`` vectors from the measured costs (nothing is run at 1B).

    - disk and add work scale linearly with vectors (per-shard add cost measured here);
    - the plan is :func:`plan_index` 's for ``target`` within ``node_gib`` (nlist capped at 65536,
      training sample capped by the budget); k-means cost scales with sample x nlist;
    - per-query scan cost scales with the list length ``N / nlist`` at the same ``nprobe``;
    - lists must sit in RAM (page cache) for millisecond queries: nodes = index size / RAM per node.
    """
    from align_hf.search.sharded import plan_index

    plan_1b = plan_index(target, dim, "ivf_pq", memory_budget=int(node_gib * 2**30), pq_bytes=plan.get("pq_bytes"))
    scale = target / n
    index_1b = index_bytes * scale
    quantizer_1b = plan_1b["nlist"] * dim * 4 * 1.5  # centroids + HNSW graph
    shards_1b = math.ceil(target / part_rows)
    train_1b = (stats.get("train_seconds") or 0.0) * (plan_1b["train_size"] * plan_1b["nlist"]) / max(
        1, plan.get("train_size", 1) * plan.get("nlist", 1))
    add_core_h = per_shard_add_s * shards_1b / 3600
    usable = node_gib - quantizer_1b / 2**30 - 1.0  # the OS, Python and the quantizer come first
    list_ratio = (target / plan_1b["nlist"]) / (n / max(1, plan.get("nlist", 1)))
    best = min((r for r in rows if r["recall@10"] >= 0.9), key=lambda r: r["p50_ms"], default=None)
    return {
        "vectors": target, "plan": {k: plan_1b[k] for k in ("factory", "nlist", "pq_bytes", "train_size")},
        "embeddings_fp16_gib": target * dim * 2 / 2**30,
        "index_disk_gib": index_1b / 2**30,
        "quantizer_ram_gib": quantizer_1b / 2**30,
        "build_ram_per_node_gib": peak / 2**30,
        "train_hours_here": train_1b / 3600,
        "add_core_hours": add_core_h,
        f"build_nodes_{node_cores}cores_for_10h": math.ceil(add_core_h / (node_cores * 10)),
        "shards": shards_1b,
        f"search_nodes_{node_gib:g}gib_lists_in_ram": math.ceil(index_1b / 2**30 / usable),
        "codes_scanned_per_query_ratio": list_ratio,
        # Upper bound: the whole measured latency scaled by the scan length (rerank and the
        # quantizer do not grow that fast); searched by all nodes in parallel, each scans 1/nodes.
        "p50_ms_projected_one_node": best["p50_ms"] * list_ratio if best else None,
        "p50_ms_projected_over_search_nodes": best["p50_ms"] * list_ratio / math.ceil(index_1b / 2**30 / usable)
        if best else None,
        "at": {"nprobe": best["nprobe"], "rerank": best["rerank"], "recall@10": best["recall@10"]} if best else None,
    }


def markdown(r: dict) -> str:
    """The README table of one result."""
    plan = r["plan"]
    lines = [
        f"{r['n_vectors']:,} x {r['dim']} {r['dtype']} vectors in {r['parts']} parts "
        f"({r['embeddings_gib']:.1f} GiB), `{plan.get('factory', plan['index_type'])}`, {r['workers']} shard workers",
        "",
        "| build | train | add | merge | index on disk | peak RAM (process tree) | peak RAM (one worker) |",
        "|---|---|---|---|---|---|---|",
        f"| {r['build_s'] / 60:.1f} min | {r['train_s'] or 0:.0f} s | {r['add_s'] or 0:.0f} s | {r['merge_s'] or 0:.1f} s "
        f"| {r['index_gib']:.2f} GiB | {r['peak_rss_tree_gib']:.2f} GiB | {r['worker_max_rss_gib']:.2f} GiB |",
        "",
        "| nprobe | exact re-rank | recall@10 | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for row in r["search"]:
        rerank = f"{row['rerank']} x k" if row["rerank"] else "off"
        lines.append(f"| {row['nprobe']} | {rerank} | {row['recall@10']:.3f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("embed", "index", "all"), default="index")
    parser.add_argument("--n-vectors", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--part-rows", type=int, default=250_000)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--workdir", default="/tmp/bench_index")
    parser.add_argument("--memory-gb", type=float, default=8.0)
    parser.add_argument("--index-type", default="ivf_pq", choices=("auto", "flat", "hnsw", "ivf_flat", "ivf_pq"))
    parser.add_argument("--nlist", type=int, help="IVF lists (default: ~4 sqrt(N))")
    parser.add_argument("--pq-bytes", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--no-ray", action="store_true", help="add shards in threads instead of Ray tasks")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nprobe", default="8,16,32,64,128")
    parser.add_argument("--rebuild", action="store_true", help="delete a previous index first")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="per-dimension noise around the sub-topic centres (topic 1.0, sub-topic 0.7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--reproject", metavar="RESULT_JSON",
                        help="only recompute the 1B projection from a saved --output file")
    parser.add_argument("--table", metavar="RESULT_JSON", help="only print the markdown table of a saved --output file")
    args, rest = parser.parse_known_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return 0
    if args.reproject:
        r = json.loads(Path(args.reproject).read_text())
        per_shard = (r["add_s"] or 0.0) * (r["workers"] or 1) / max(1, r["parts"])
        r["projection_1b"] = project(r["n_vectors"], r["dim"], args.part_rows, r["plan"], {"train_seconds": r["train_s"]},
                                     int(r["index_gib"] * 2**30), int(r["embeddings_gib"] * 2**30), per_shard,
                                     int(r["peak_rss_tree_gib"] * 2**30), r["search"])
        print(json.dumps(r["projection_1b"], indent=1))
        Path(args.reproject).write_text(json.dumps(r, indent=1))
        return 0
    if args.part in ("embed", "all"):
        import importlib.util

        path = Path(__file__).with_name("bench_embed.py")
        if not path.is_file():
            print("bench_embed.py is not there yet; skipping the embedding part", file=sys.stderr)
        else:
            spec = importlib.util.spec_from_file_location("bench_embed", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            embed_args = module.parse_args(rest) if hasattr(module, "parse_args") else argparse.Namespace()
            module.run(embed_args)
    if args.part in ("index", "all"):
        run_index(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
