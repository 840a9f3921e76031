"""Decoded + transformed image-text pairs per second per core, from local webdataset shards.

Compares align_hf's pipeline (load_pairs -> ImageTextPairs with ImageTransform: robust decoding,
counting, JPEG draft decoding, ALIGN resize/crop/flip) against a plain loop over the same tar
files: tarfile + PIL.Image.open().convert("RGB") + a torchvision v2 transform chain doing the
same resize / random crop / flip / scaling. Both run in one process on one thread, side by side,
best of --repeats rounds, so the ratio is what matters (absolute numbers depend on the machine).

Two workloads:
- web: photo-like JPEGs of 320..800 px (random sizes), ALIGN sizes 346 -> 289;
- synthetic: the 64 px synthetic corpus (what the quickstart trains on), 77 -> 64.

    python benchmarks/bench_data.py [--web-images 400] [--synthetic-images 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from align_hf.data import ImageTextPairs, ImageTransform, SyntheticConfig, load_pairs, write_synthetic_corpus
from align_hf.data.webdataset import ShardWriter


def photo_like(rng: np.random.Generator) -> Image.Image:
    """A smooth random image (upsampled noise plus grain) of a random web-ish size."""
    width, height = int(rng.integers(320, 801)), int(rng.integers(320, 801))
    small = rng.integers(0, 256, size=(max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


def write_web_shards(directory: str, count: int) -> None:
    rng = np.random.default_rng(0)
    with ShardWriter(directory, prefix="web", max_count=100) as writer:
        for i in range(count):
            buffer = io.BytesIO()
            photo_like(rng).save(buffer, format="JPEG", quality=90)
            writer.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue(), "txt": f"a photo number {i} of something"})


def plain_loop(directory: str, size: int, crop: int) -> int:
    """The reference: what one would write by hand with PIL and torchvision."""
    transform = T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.RandomCrop(crop),
        T.RandomHorizontalFlip(),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize([0.5] * 3, [0.5] * 3),
    ])
    count = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".tar"):
            continue
        with tarfile.open(os.path.join(directory, name)) as archive:
            captions = {}
            images = {}
            for member in archive:
                key, _, ext = member.name.partition(".")
                data = archive.extractfile(member).read()
                if ext == "txt":
                    captions[key] = data.decode("utf-8")
                elif ext == "jpg":
                    images[key] = data
            for key, data in images.items():
                pixels = transform(Image.open(io.BytesIO(data)).convert("RGB"))
                assert pixels.shape[-1] == crop and captions[key]
                count += 1
    return count


def ours(directory: str, size: int, crop: int, backend: str) -> int:
    dataset = ImageTextPairs(load_pairs(directory), ImageTransform(size, crop, train=True, seed=0, backend=backend))
    count = 0
    for sample in dataset:
        assert sample["pixel_values"].shape[-1] == crop
        count += 1
    return count


def measure(fn, repeats: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - start)
    return best, count


def run(name: str, directory: str, size: int, crop: int, repeats: int) -> list[tuple]:
    methods = {
        "plain PIL + torchvision loop": lambda: plain_loop(directory, size, crop),
        "align_hf (default: torchvision resize)": lambda: ours(directory, size, crop, "torchvision"),
        "align_hf (backend='pil')": lambda: ours(directory, size, crop, "pil"),
    }
    # Warm-up (file cache, lazy imports), then interleaved rounds.
    for fn in methods.values():
        fn()
    results = {label: [float("inf"), 0] for label in methods}
    for _ in range(repeats):
        for label, fn in methods.items():
            seconds, count = measure(fn, 1)
            results[label] = [min(results[label][0], seconds), count]
    reference = results["plain PIL + torchvision loop"]
    rows = []
    for label, (seconds, count) in results.items():
        rate = count / seconds
        rows.append((name, label, count, rate, rate / (reference[1] / reference[0])))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--web-images", type=int, default=400)
    parser.add_argument("--synthetic-images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per core
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        web = os.path.join(tmp, "web")
        write_web_shards(web, args.web_images)
        rows += run("web 320-800px -> 346/289", web, 346, 289, args.repeats)
        synthetic = os.path.join(tmp, "synthetic")
        config = SyntheticConfig(num_train=args.synthetic_images, shard_size=500)
        write_synthetic_corpus(synthetic, config, progress=False, splits=["train"])
        rows += run("synthetic 64px -> 77/64", os.path.join(synthetic, "train"), 77, 64, args.repeats)
    print(f"torch {torch.__version__}, 1 thread, best of {args.repeats}; pairs/s = decoded + transformed pairs per second per core")
    print("| workload | method | pairs | pairs/s/core | vs plain loop |")
    print("|---|---|---:|---:|---:|")
    for workload, label, count, rate, ratio in rows:
        print(f"| {workload} | {label} | {count} | {rate:,.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
