"""Demo serving: concurrent users with micro-batched model calls vs one model call per request.

Several users query the demo backend at once (threads, as Gradio's workers are). With
``max_batch_size=1`` every request runs its own forward pass, one after another; with the default
micro-batching, requests that arrive while the model is busy share the next forward pass. Both
run side by side in one process on the same random-weight model and the same 20k-vector index.

    python benchmarks/bench_demo.py [--preset align-base] [--users 8] [--requests 48] [--image-size 289]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import torch
from PIL import Image

from align_hf import AlignConfig, AlignModel
from align_hf.demo.backend import DemoBackend
from align_hf.demo.limits import DEFAULT_MAX_BATCH_SIZE
from align_hf.search import CrossModalIndex, VectorCollection
from align_hf.testing import tiny_processor, tiny_tokenizer


def random_index(dim: int, n: int) -> CrossModalIndex:
    rng = np.random.default_rng(0)
    collections = {}
    for kind in ("image", "text"):
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        meta = [{"text": f"caption {i}"} if kind == "text" else {"row": i} for i in range(n)]
        collections[kind] = VectorCollection(kind, index, meta, vectors, {"index_type": "flat"})
    return CrossModalIndex(collections, {"model_id": "random", "embedding_dim": dim, "probe_embedding": [0.0] * dim})


def run(backend: DemoBackend, kind: str, users: int, requests: int) -> tuple[float, float]:
    """Requests per second with ``users`` concurrent callers, and the mean batch size seen."""
    rng = np.random.default_rng(1)
    words = "a red blue green small large circle square photo of dog cat on the beach".split()
    texts = [" ".join(rng.choice(words, 8)) for _ in range(requests)]
    images = [Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)) for _ in range(requests)]
    batcher = backend.text_batcher if kind == "text" else backend.image_batcher
    batcher.batch_sizes.clear()

    def one(i: int):
        if kind == "text":
            return backend.search_text_to_image(texts[i], 10)
        return backend.search_image_to_text(images[i], 10)

    start = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - start
    return requests / elapsed, statistics.mean(batcher.batch_sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="align-base", help="model architecture, random weights (default: align-base)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="image size (default: the preset's)")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default: 8)")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement (default: 48)")
    parser.add_argument("--kinds", nargs="+", default=["text", "image"], choices=["text", "image"])
    parser.add_argument("--index-size", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"vision_config": {"image_size": args.image_size}} if args.image_size else {}
    torch.manual_seed(0)
    model = AlignModel(AlignConfig.from_preset(args.preset, **overrides)).eval()
    size = model.config.vision_config.image_size
    processor = tiny_processor(image_size=size, max_length=64)
    processor.tokenizer = tiny_tokenizer(max_length=64)
    index = random_index(model.config.projection_dim, args.index_size)
    backends = {
        "one call per request": DemoBackend(model, processor, index, max_batch_size=1, check_index=False),
        "micro-batched": DemoBackend(model, processor, index, max_batch_size=DEFAULT_MAX_BATCH_SIZE, check_index=False),
    }
    print(
        f"preset {args.preset}, {size} px, {args.users} concurrent users, {args.requests} requests, "
        f"{torch.get_num_threads()} torch threads, flat index of {args.index_size:,}"
    )
    print(f"| search | {' | '.join(f'{name} (req/s)' for name in backends)} | speed-up | mean batch |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        label = "text -> image" if kind == "text" else "image -> text"
        for backend in backends.values():  # warm-up
            run(backend, kind, 2, 4)
        rates, batch = {}, 1.0
        for name, backend in backends.items():
            rates[name], mean_batch = run(backend, kind, args.users, args.requests)
            if name == "micro-batched":
                batch = mean_batch
        serial, batched = rates["one call per request"], rates["micro-batched"]
        print(f"| {label} | {serial:.1f} | {batched:.1f} | {batched / serial:.2f}x | {batch:.1f} |")
    for backend in backends.values():
        backend.close()


if __name__ == "__main__":
    main()
