"""Build time, memory, single-query latency and recall@10 of flat, HNSW and IVF search, side by side.

Each size runs every index type on the same vectors and the same queries; recall@10 is measured
against exact (flat) search and the last column is the p50 speed-up over flat.

    python benchmarks/bench_search.py --threads 1                       # 100k and 1M, clustered
    python benchmarks/bench_search.py --sizes 100000 --data isotropic    # the worst case
    python benchmarks/bench_search.py --sizes 20000 --queries 200        # a quick look

Data (640-d, L2-normalised, queries drawn fresh from the same law, never database members):

- ``clustered``: a 1000-component Gaussian mixture in a random 64-d subspace plus isotropic
  noise. Real image/text embeddings have a low intrinsic dimension and cluster by content; this
  is a stand-in for them.
- ``isotropic``: i.i.d. Gaussian vectors. In 640 dimensions every point is almost equally far
  from every other, so no approximate index can find the true top-10 without scanning most of
  the collection: the worst case, shown for honesty, not a model of real embeddings.

Memory is the serialized index size (what the process holds for it); build time includes
training (IVF) and adding. Latency is one query per ``search`` call, as an interactive search
issues them. The indexes are the ones :func:`align_hf.search.build_faiss_index` builds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from align_hf.search import build_faiss_index, set_search_params  # noqa: E402

DIM = 640


def make_data(kind: str, n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "isotropic":
        draw = lambda m: rng.standard_normal((m, DIM), dtype=np.float32)  # noqa: E731
    elif kind == "clustered":
        latent, components = 64, 1000
        basis = np.linalg.qr(rng.standard_normal((DIM, latent)))[0].T.astype(np.float32)  # (64, 640) orthonormal rows
        centres = rng.standard_normal((components, latent), dtype=np.float32)

        def draw(m: int) -> np.ndarray:
            out = np.empty((m, DIM), np.float32)
            for lo in range(0, m, 100_000):  # in slices: the noise matrix is the memory peak
                k = min(100_000, m - lo)
                z = centres[rng.integers(0, components, k)] + 0.5 * rng.standard_normal((k, latent), dtype=np.float32)
                noise = rng.standard_normal((k, DIM), dtype=np.float32) * np.float32(0.3 * np.sqrt(latent / DIM))
                out[lo : lo + k] = z @ basis + noise
            return out
    else:
        raise ValueError(kind)
    base, queries = draw(n), draw(n_queries)
    for x in (base, queries):
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return base, queries


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))


def single_query_latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query times (s) and the ids found, one ``search`` call per query."""
    times = np.empty(len(queries))
    ids = np.empty((len(queries), k), np.int64)
    index.search(queries[:1], k)  # warm-up
    for i in range(len(queries)):
        t0 = time.perf_counter()
        _, found = index.search(queries[i : i + 1], k)
        times[i] = time.perf_counter() - t0
        ids[i] = found[0]
    return times, ids


def bench_size(kind: str, n: int, args: argparse.Namespace) -> list[dict]:
    t0 = time.perf_counter()
    base, queries = make_data(kind, n, args.queries)
    print(f"\n[{kind} n={n:,}] data in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    rows: list[dict] = []
    truth = None
    for index_type in args.indexes:
        t0 = time.perf_counter()
        index, _, params = build_faiss_index(base, index_type)
        build_s = time.perf_counter() - t0
        size_mb = faiss.serialize_index(index).nbytes / 2**20
        print(f"  {index_type}: built in {build_s:.1f}s, {size_mb:.0f} MB", file=sys.stderr, flush=True)
        if truth is None:
            if index_type != "flat":
                raise SystemExit("list flat first: it is the reference")
            truth = index.search(queries, args.k)[1]  # exact top-k, batched
        if index_type == "flat":
            sweep = [{}]
        elif index_type == "hnsw":
            sweep = [{"ef_search": ef} for ef in args.ef_search]
        else:
            sweep = [{"nprobe": p, "k_factor": params["k_factor"]} for p in args.nprobe]
        for point in sweep:
            set_search_params(index, **point)
            # exact search is slow per query at 1M: time a subset, it is the same work each time
            m = min(len(queries), args.flat_latency_queries) if index_type == "flat" else len(queries)
            times, ids = single_query_latency(index, queries[:m], args.k)
            rec = recall_at_k(ids, truth[:m]) if index_type != "flat" else 1.0
            if index_type == "flat":
                # sanity: single-query exact results agree with the batched reference
                assert recall_at_k(ids, truth[:m]) > 0.999, "flat single-query results differ from batched"
            row = {
                "data": kind, "n": n, "index": index_type,
                "params": ", ".join(f"{k}={v}" for k, v in point.items()) or "exact",
                "build_s": build_s, "index_mb": size_mb,
                "p50_ms": 1e3 * float(np.percentile(times, 50)), "p99_ms": 1e3 * float(np.percentile(times, 99)),
                "recall_at_10": rec, "queries_timed": m,
            }
            rows.append(row)
            print(f"    {row['params']}: p50 {row['p50_ms']:.3f} ms, recall {rec:.3f}", file=sys.stderr, flush=True)
        del index
        gc.collect()
    flat_p50 = next(r["p50_ms"] for r in rows if r["index"] == "flat")
    for r in rows:
        r["speedup_vs_flat"] = flat_p50 / r["p50_ms"]
    return rows


def print_table(rows: list[dict]) -> None:
    print("| data | n | index | search params | build s | index MB | p50 ms | p99 ms | recall@10 | p50 speed-up vs flat |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['data']} | {r['n']:,} | {r['index']} | {r['params']} | {r['build_s']:.1f} | {r['index_mb']:.0f} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['recall_at_10']:.3f} | {r['speedup_vs_flat']:.0f}x |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data", nargs="+", choices=("clustered", "isotropic"), default=["clustered"])
    parser.add_argument("--indexes", nargs="+", choices=("flat", "hnsw", "ivf"), default=["flat", "hnsw", "ivf"])
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and latency (default: 1000)")
    parser.add_argument("--flat-latency-queries", type=int, default=100, help="queries timed one by one for flat")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, help="FAISS OpenMP threads (default: all cores)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores", file=sys.stderr)
    rows = [r for kind in args.data for n in args.sizes for r in bench_size(kind, n, args)]
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
