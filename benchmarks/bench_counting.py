"""Corpus counting for ALIGN's frequency filter: pairs/s and peak memory, with a projection to 1.8B pairs.

Writes a web-like corpus as webdataset shards (Zipf-distributed words over a 500k-word
vocabulary, 3-20 words a caption, 8% boilerplate alt-texts, images repeating), then counts it
three ways, each in a fresh process so peak RSS is its own:

- ``memory``: ``count_frequencies`` into Python Counters (the small-corpus JSON path); its
  memory grows with the corpus, which is why the store exists;
- ``local``: ``count_corpus(engine="local")``: the store's map-reduce in one process;
- ``ray``: ``count_corpus(engine="ray")``: the same on Ray Data over this machine's CPUs.

It then projects to the paper's 1.8B pairs: time per node from the measured per-core rate,
store size from the measured bytes per key and a Heaps'-law fit of distinct n-grams (fitted on
this corpus, an assumption stated in the output), and reduce memory per partition count.

    python benchmarks/bench_counting.py [--pairs 200000] [--shard-size 5000] [--cpus N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

PAPER_PAIRS = 1_800_000_000


def word(index: int) -> str:
    """A letters-only word for a vocabulary id (base 26), so each id is one unigram."""
    letters = []
    index += 26
    while index:
        index, digit = divmod(index, 26)
        letters.append(chr(97 + digit))
    return "".join(reversed(letters))


def write_corpus(directory: str, pairs: int, shard_size: int, seed: int = 0) -> None:
    from align_hf.data.webdataset import ShardWriter

    rng = np.random.default_rng(seed)
    vocab = [word(i) for i in range(500_000)]
    boilerplate = [" ".join(vocab[j] for j in rng.integers(0, 300, 5)) for _ in range(500)]
    images = [rng.bytes(256) for _ in range(max(1, int(pairs * 0.9)))]
    lengths = rng.integers(3, 21, pairs)
    ranks = np.minimum(rng.zipf(1.15, int(lengths.sum())), len(vocab)) - 1
    position = 0
    with ShardWriter(directory, prefix="web", max_count=shard_size) as writer:
        for i in range(pairs):
            words = ranks[position : position + lengths[i]]
            position += lengths[i]
            text = boilerplate[int(rng.integers(0, 500))] if rng.random() < 0.08 else " ".join(vocab[w] for w in words)
            writer.write({"__key__": f"{i:09d}", "jpg": images[int(rng.integers(0, len(images)))], "txt": text})


def resident_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def child(args: argparse.Namespace) -> None:
    """One measurement, run in its own process; prints a JSON line."""
    from align_hf.data.sources import load_pairs

    load_pairs(args.corpus.split(",")[0])  # imports and first-open costs, outside the memory of counting
    result: dict = {"engine": args.child, "base_rss_mb": resident_mb()}
    start = time.perf_counter()
    if args.child == "memory":
        from align_hf.data.filtering import count_frequencies
        from align_hf.data.sources import load_pairs

        counts = count_frequencies(load_pairs(args.corpus), count_images=True, progress=False)
        result.update(pairs=counts.num_records, distinct_ngrams=len(counts.token_counts))
    else:
        from align_hf.data.counting import count_corpus, init_ray

        if args.child == "ray":
            init_ray(num_cpus=args.cpus)
            result["ray_init_s"] = time.perf_counter() - start
        source = args.corpus.split(",") if "," in args.corpus else args.corpus
        store = count_corpus(source, args.store, engine=args.child, count_images=True, partitions=args.partitions,
                             keep_runs=True, progress=False)
        meta = store.meta
        run_rows = 0
        import pyarrow.parquet as pq

        for root, _dirs, files in os.walk(os.path.join(args.store, "_runs")):
            run_rows += sum(pq.ParquetFile(os.path.join(root, f)).metadata.num_rows for f in files if f.endswith(".parquet"))
        shutil.rmtree(os.path.join(args.store, "_runs"))
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(args.store) for f in fs if f.endswith(".parquet"))
        result.update(pairs=meta["num_records"], count_s=meta["seconds"], tables={t: v["rows"] for t, v in meta["tables"].items()},
                      store_bytes=size, run_rows=run_rows, worker_peak_rss_mb=meta["peak_rss_mb"])
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(engine: str, corpus: str, store: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", engine, "--corpus", corpus, "--store", store,
               "--cpus", str(args.cpus), "--partitions", str(args.partitions)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def parallel_local(corpus: str, root: str, args: argparse.Namespace) -> float:
    """Aggregate pairs/s of ``--cpus`` independent single-process counts over slices of the shards.

    The ceiling a Ray run on this machine can reach: if it is far below ``cpus`` x the one-process
    rate, the CPUs do not scale (shared or hyper-threaded cores), whatever the engine.
    """
    shards = sorted(f for f in os.listdir(corpus) if f.endswith(".tar"))
    slices = [shards[i :: args.cpus] for i in range(args.cpus)]
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, __file__, "--child", "local", "--corpus", ",".join(os.path.join(corpus, f) for f in part),
                                  "--store", os.path.join(root, f"store-slice{i}"), "--cpus", "1", "--partitions", str(args.partitions)],
                                 stdout=subprocess.PIPE, text=True) for i, part in enumerate(slices) if part]
    pairs = sum(json.loads(child.communicate()[0].strip().splitlines()[-1])["pairs"] for child in children)
    return pairs / (time.perf_counter() - start)


def heaps_fit(corpus: str, shards: list[str]) -> tuple[float, float]:
    """Heaps' law ``distinct = k * pairs**beta`` for unigrams+bigrams, from prefixes of the corpus."""
    from align_hf.data.filtering import count_frequencies
    from align_hf.data.sources import load_pairs

    points, merged = [], None
    for i, shard in enumerate(shards, 1):
        counts = count_frequencies(load_pairs(shard), progress=False)
        merged = counts if merged is None else merged.merge(counts)
        if i in (max(1, len(shards) // 4), len(shards)):
            points.append((merged.num_records, len(merged.token_counts)))
    (n1, d1), (n2, d2) = points
    beta = math.log(d2 / d1) / math.log(n2 / n1)
    return beta, d2 / n2**beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray")
    parser.add_argument("--partitions", type=int, default=32)
    parser.add_argument("--keep", help="write the corpus and stores here and keep them")
    parser.add_argument("--child", choices=("memory", "local", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    root = args.keep or tempfile.mkdtemp(prefix="bench-counting-")
    corpus = os.path.join(root, "corpus")
    start = time.perf_counter()
    if not os.path.isdir(corpus):
        write_corpus(corpus, args.pairs, args.shard_size)
    print(f"corpus: {args.pairs:,} pairs in {math.ceil(args.pairs / args.shard_size)} shards ({time.perf_counter() - start:.0f} s to write)")
    results = {engine: measure(engine, corpus, os.path.join(root, f"store-{engine}"), args) for engine in ("memory", "local", "ray")}
    print(f"\n{'engine':<8}{'wall s':>9}{'count s':>9}{'pairs/s':>10}{'peak RSS MiB':>14}{'over base':>11}  notes")
    for engine, r in results.items():
        seconds = r.get("count_s", r["wall_s"])
        notes = ""
        if engine == "ray":
            notes = f"{args.cpus} CPUs; Ray start {r['ray_init_s']:.1f} s; peak RSS of a worker {r['worker_peak_rss_mb']['map']:.0f} MiB"
        elif engine == "local":
            notes = "1 process"
        else:
            notes = "Python Counters, grows with the corpus"
        print(f"{engine:<8}{r['wall_s']:>9.1f}{seconds:>9.1f}{r['pairs'] / seconds:>10,.0f}{r['peak_rss_mb']:>14.0f}"
              f"{r['peak_rss_mb'] - r['base_rss_mb']:>11.0f}  {notes}")

    scaling = parallel_local(corpus, root, args)
    print(f"ceiling: {args.cpus} independent one-process counts together: {scaling:,.0f} pairs/s "
          f"({scaling / (results['local']['pairs'] / results['local']['count_s']):.2f}x one process)")

    local = results["local"]
    rows = sum(local["tables"].values())
    bytes_per_row = local["store_bytes"] / rows
    run_factor = local["run_rows"] / rows  # partial rows the reduce reads per final row
    beta, k = heaps_fit(corpus, sorted(os.path.join(corpus, f) for f in os.listdir(corpus)))
    per_core = local["pairs"] / local["count_s"]
    grams = k * PAPER_PAIRS**beta
    texts = images = PAPER_PAIRS  # upper bound: every alt-text and image distinct
    total_keys = grams + texts + images
    print(f"\nstore: {rows:,} keys, {local['store_bytes'] / 2**20:.1f} MiB ({bytes_per_row:.1f} B/key); "
          f"distinct unigrams+bigrams ~ {k:.2f} * pairs^{beta:.3f} on this corpus")
    print(f"projection to {PAPER_PAIRS / 1e9:.1f}B pairs (per-core rate {per_core:,.0f} pairs/s, text+image keys, "
          f"n-grams by the Heaps fit, every alt-text and image assumed distinct):")
    for cores in (64, 256, 1024):
        print(f"  {cores:>5} cores: {PAPER_PAIRS / per_core / cores / 3600:6.2f} h")
    print(f"  store: {total_keys / 1e9:.1f}B keys, ~{total_keys * bytes_per_row / 2**30:.0f} GiB of parquet")
    for partitions in (256, 1024, 4096):
        largest = max(grams, texts) * run_factor / partitions
        print(f"  reduce with --partitions {partitions}: ~{largest * 16 * 3 / 2**30:.2f} GiB per task "
              f"({largest / 1e6:.0f}M partial rows x 16 B x 3 for the sort)")
    memory = results["memory"]
    grown = (memory["peak_rss_mb"] - memory["base_rss_mb"]) / memory["pairs"]
    print(f"  in-memory Counters instead: ~{grown * PAPER_PAIRS / 2**20:,.0f} TiB at {grown * 2**20:,.0f} B/pair (growth measured here)")
    print(f"  map tasks: bounded by --spill-rows (4M keys ~ 0.4 GiB) plus one shard; measured here {results['ray']['worker_peak_rss_mb']['map']:.0f} MiB")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
