"""Image embedding throughput, files to vectors, side by side in one run (not a test).

    (a) transformers' AlignModel in a plain loop: open each file, processor, ``get_image_features``
    (b) today's ``align-hf index build`` (``open_images`` + ``CrossModalIndex.build``, flat index)
    (c) ``align-hf index embed`` on Ray Data: a local Ray (started once, its start-up timed apart)
        with read tasks decoding and an embedding actor pool
    plus, for reference, the same embedding folder written by one process (``--no-ray``), and
    (b0) ``index build`` as it was at ``--baseline-rev`` (default be563d0, before the Ray path and
        the image tower's fast path: images decoded one by one in the main thread, eager BatchNorm),
        run from a git worktree of that commit in a subprocess; only its build call is timed;
    (m), with ``--methods ...,m``: the image tower alone as (b) runs it, on pixels decoded once (no
        file reading or decoding): the ceiling of any path embedding on this process's CPUs.

Same weights everywhere (EfficientNet-B0 widths, 4-layer BERT 256 wide, ``--image-size`` px, the
configuration of ``bench_model.py``), same synthetic JPEG files (smooth random images), images
only (no captions). This process keeps freed memory as the ``align-hf`` program does unless
``--allocator default`` (Ray's embedding actors keep it in any case). Each repeat runs every method once, interleaved, so load changes hit all of
them alike; the table gives median images/s and the ratio to (b). Start-up of the Ray actors
(a fresh process importing torch and unpickling the model) is inside (c)'s time.

    python benchmarks/bench_embed.py                                  # 1024 images in a folder
    python benchmarks/bench_embed.py --format tars --images 2048      # webdataset shards
    python benchmarks/bench_index.py --part embed                     # the same, from bench_index
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="number of JPEG files (default: 1024)")
    parser.add_argument("--format", choices=("folder", "tars"), default="folder", help="input layout (default: folder)")
    parser.add_argument("--per-tar", type=int, default=128, help="images per tar with --format tars (default: 128)")
    parser.add_argument("--photo-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
                        help="size of the JPEG files (default: 320 240)")
    parser.add_argument("--image-size", type=int, default=128, help="model input size (default: 128)")
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: 3)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--actors", type=int, default=None, help="Ray embedding actors (default: plan_resources)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per Ray actor (default: plan_resources)")
    parser.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs reserved per Ray actor (default: plan_resources)")
    parser.add_argument("--main-threads", type=int, default=None,
                        help="torch threads of this process, for (a), (b) and --no-ray (default: torch's choice)")
    parser.add_argument("--methods", default="a,b0,b,c,one", help="comma list of a, b0, b, c, one, m (default: all but m)")
    parser.add_argument("--baseline-rev", default="be563d0",
                        help="commit whose index build is (b0) (default: be563d0, before the Ray and fast paths)")
    parser.add_argument("--allocator", choices=("kept", "default"), default="kept",
                        help="kept (default): this process keeps freed memory as the align-hf program does "
                             "(align_hf.training.allocator), so (b) runs as `align-hf index build` does; Ray's "
                             "embedding actors always keep it. default: glibc's settings in this process")
    parser.add_argument("--workdir", default=None, help="where files go (default: a temporary folder)")
    return parser.parse_args(argv)


def write_images(folder: Path, count: int, size: tuple[int, int], fmt: str, per_tar: int) -> str:
    """Smooth random JPEGs (upsampled noise: decodes like a photo, unlike white noise); returns the input path."""
    from PIL import Image

    from align_hf.data.webdataset import ShardWriter

    rng = np.random.default_rng(0)

    def jpeg(i: int) -> bytes:
        small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize(size, Image.BILINEAR).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    if fmt == "folder":
        target = folder / "images"
        target.mkdir(parents=True)
        for i in range(count):
            (target / f"{i:06d}.jpg").write_bytes(jpeg(i))
        return str(target)
    target = folder / "tars"
    with ShardWriter(str(target), max_count=per_tar) as writer:
        for i in range(count):
            writer.write({"__key__": f"{i:06d}", "jpg": jpeg(i)})
    return str(target)


BASELINE_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from align_hf import AlignModel, AlignProcessor
from align_hf.cli.search import open_images
from align_hf.search import CrossModalIndex
model_dir, source, out, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
model, processor = AlignModel.from_pretrained(model_dir).eval(), AlignProcessor.from_pretrained(model_dir)
start = time.perf_counter()
images, column, _ = open_images(source, None, "train", out / "partial")
index = CrossModalIndex.build(model, processor, out, images=images, image_column=column or "image",
                              index_type="flat", batch_size=batch, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(index["image"])}))
"""


def baseline_worktree(rev: str, work: Path) -> Path:
    """A git worktree of this repository at ``rev`` (removed by :func:`drop_worktree`)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    tree = work / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "--force", str(tree), rev],
                   check=True, capture_output=True)
    return tree


def drop_worktree(tree: Path) -> None:
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)


def run_baseline(tree: Path, model_dir: str, source: str, out: Path, batch: int) -> tuple[float, int]:
    """(seconds of the build call, rows) of the old ``index build`` code in a subprocess."""
    import json
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT, model_dir, source, str(out), str(batch)],
                          cwd=str(tree), env=env, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["rows"]


def build_models(image_size: int, folder: Path) -> tuple[Any, Any, Any, str]:
    """(transformers model, align_hf model, processor, saved align_hf folder) with the same weights."""
    from bench_model import build_pair

    from align_hf.processing_align import AlignImageProcessor, AlignProcessor
    from align_hf.testing import tiny_tokenizer

    reference, ours = build_pair(image_size)
    processor = AlignProcessor(image_processor=AlignImageProcessor.for_image_size(image_size), tokenizer=tiny_tokenizer())
    saved = folder / "model"
    ours.save_pretrained(saved)
    processor.save_pretrained(saved)
    return reference.eval(), ours.eval(), processor, str(saved)


def plain_loop(reference: Any, processor: Any, files: list[str], batch: int) -> int:
    """(a): what a user writes with transformers: open, preprocess, embed, batch after batch."""
    import torch
    from PIL import Image

    done = 0
    with torch.inference_mode():
        for start in range(0, len(files), batch):
            images = [Image.open(f).convert("RGB") for f in files[start : start + batch]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            reference.get_image_features(pixel_values=pixels)
            done += len(images)
    return done


def run(args: argparse.Namespace) -> list[dict]:
    """Run the comparison; prints the table and returns one row per method."""
    import torch

    from align_hf.cli.search import open_images
    from align_hf.search import CrossModalIndex
    from align_hf.search.embed_steps import plan_inputs
    from align_hf.search.embeddings import embed_to_folder
    from align_hf.search.ray_embed import connect, embed_with_ray

    defaults = vars(parse_args([]))
    args = argparse.Namespace(**{**defaults, **vars(args)})
    if args.main_threads:
        torch.set_num_threads(args.main_threads)
    kept = False
    if args.allocator == "kept":
        from align_hf.training.allocator import keep_freed_memory

        kept = keep_freed_memory()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_embed_"))
    work.mkdir(parents=True, exist_ok=True)
    source = write_images(work / "data", args.images, tuple(args.photo_size), args.format, args.per_tar)
    if args.format == "folder":
        files = sorted(str(p) for p in Path(source).iterdir())
    else:
        files = []  # (a) reads the same images decoded from the tars
        from align_hf.data.sources import load_pairs

        extracted = work / "data" / "extracted"
        extracted.mkdir()
        for record in load_pairs(source):
            path = extracted / f"{record['key']}.jpg"
            path.write_bytes(record["image"]["bytes"])
            files.append(str(path))
    reference, ours, processor, model_dir = build_models(args.image_size, work)
    plan = plan_inputs(source)
    count = len(files)

    def run_a() -> int:
        return plain_loop(reference, processor, files, args.batch)

    ceiling: dict[str, Any] = {}
    if "m" in methods:  # set up outside the timed runs: the folded model and one batch of pixels
        from PIL import Image

        from align_hf.evaluation.encoding import prepare_for_embedding

        images = [Image.open(f).convert("RGB") for f in files[: args.batch]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        ceiling.update(model=prepare_for_embedding(ours), pixels=pixels.contiguous(memory_format=torch.channels_last))

    def run_m(out: Path) -> int:
        """(m): only the image tower, as (b) runs it, on one batch of pixels decoded once and embedded
        ``count / batch`` times: no reading, decoding or resizing. No path that embeds files on this
        process's CPUs can pass it, so it bounds what (b) and (c) can reach here."""
        done = 0
        with torch.inference_mode():
            for start in range(0, count, args.batch):
                rows = min(args.batch, count - start)
                ceiling["model"].get_image_features(pixel_values=ceiling["pixels"][:rows])
                done += rows
        return done

    def run_b(out: Path) -> int:
        images, image_column, _ = open_images(source, None, "train", out / "partial")
        index = CrossModalIndex.build(ours, processor, out, images=images, image_column=image_column or "image",
                                      index_type="flat", batch_size=args.batch, progress=False)
        return len(index["image"])

    steady: dict[str, list[float]] = {"one": [], "c": []}

    def timer(method: str):
        """on_part callback: the rate from the first part written to the last (start-up left out)."""
        marks: list[tuple[float, int]] = []

        def on_part(info: dict, resumed: bool) -> None:
            marks.append((time.perf_counter(), info["rows"]))
            if len(marks) == len(plan.labels) and len(marks) > 1:
                steady[method].append(sum(r for _, r in marks[1:]) / (marks[-1][0] - marks[0][0]))

        return on_part

    def run_one(out: Path) -> int:
        return embed_to_folder(ours, processor, source, out, batch_size=args.batch, text=False, progress=False,
                               on_part=timer("one"))["rows"]

    def run_c(out: Path) -> int:
        return embed_with_ray(model_dir, processor, source, out, batch_size=args.batch, text=False, progress=False,
                              actors=args.actors, threads=args.threads, cpus_per_actor=args.cpus_per_actor,
                              on_part=timer("c"))["rows"]

    tree = baseline_worktree(args.baseline_rev, work) if "b0" in methods else None
    timed_inside: dict[str, float] = {}

    def run_b0(out: Path) -> int:
        seconds, rows = run_baseline(tree, model_dir, source, out, args.batch)
        timed_inside["b0"] = seconds
        return rows

    runners = {"a": ("(a) transformers AlignModel, plain loop", lambda out: run_a()),
               "b0": (f"(b0) align-hf index build at {args.baseline_rev}", run_b0),
               "b": ("(b) align-hf index build (today)", run_b),
               "m": ("(m) image tower alone, decoded pixels", run_m),
               "one": ("    align-hf index embed --no-ray", run_one),
               "c": ("(c) align-hf index embed (Ray Data)", run_c)}
    ray_start = None
    if "c" in methods:
        start = time.perf_counter()
        connect(None, args.ray_cpus)
        ray_start = time.perf_counter() - start
    times: dict[str, list[float]] = {m: [] for m in methods}
    for repeat in range(args.repeats):
        for method in methods:
            out = work / f"out-{method}-{repeat}"
            start = time.perf_counter()
            done = runners[method][1](out)
            times[method].append(timed_inside.pop(method, time.perf_counter() - start))
            if done != count:
                raise RuntimeError(f"{method} embedded {done} of {count} images")
            shutil.rmtree(out, ignore_errors=True)
            print(f"  repeat {repeat + 1}: {method} {times[method][-1]:.1f} s", file=sys.stderr)
    if "c" in methods:
        import ray

        ray.shutdown()
    if tree is not None:
        drop_worktree(tree)
    rows = []
    base = count / statistics.median(times["b"]) if "b" in times else None
    base0 = count / statistics.median(times["b0"]) if "b0" in times else None
    for method in methods:
        rate = count / statistics.median(times[method])
        after = statistics.median(steady[method]) if steady.get(method) else None
        rows.append({"method": runners[method][0], "images_per_s": rate, "vs_b": rate / base if base else None,
                     "vs_b0": rate / base0 if base0 else None, "steady_images_per_s": after, "seconds": times[method]})
    print(f"{count} JPEGs {args.photo_size[0]}x{args.photo_size[1]} ({args.format}, {len(plan.labels)} shards), "
          f"{args.image_size}px B0 + BERT 4x256, batch {args.batch}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads here), freed memory {'kept' if kept else 'returned (glibc default)'} here, "
          f"median of {args.repeats}"
          + (f"; Ray start-up {ray_start:.1f} s, not counted" if ray_start else ""))
    print(f"| {'method':42s} | {'images/s':>9s} | {'vs (b0)':>7s} | {'vs (b)':>7s} | {'after 1st shard':>15s} |")
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 17}|")
    for row in rows:
        ratio0 = f"{row['vs_b0']:.2f}x" if row["vs_b0"] else "-"
        ratio = f"{row['vs_b']:.2f}x" if row["vs_b"] else "-"
        after = f"{row['steady_images_per_s']:.1f}" if row["steady_images_per_s"] else "-"
        print(f"| {row['method']:42s} | {row['images_per_s']:9.1f} | {ratio0:>7s} | {ratio:>7s} | {after:>15s} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    run(parse_args())
