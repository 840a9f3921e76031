"""Throughput of align_hf's AlignModel against transformers' AlignModel on the same weights.

Both models are built from one transformers config with random weights: transformers' model is
saved and align_hf loads that transformers-format checkpoint. Each measure runs both sides
interleaved (warm-up, then ``--repeats`` alternating timed runs) in one process; the table reports
medians and the align_hf/transformers ratio (above 1: align_hf is faster).

Presets: ``b0`` (default; EfficientNet-B0 + a 4-layer BERT of width 256, 128 px, captions of
8-24 tokens padded to 64 as both processors pad them) and ``b7`` (the paper's model:
EfficientNet-B7 + BERT-base at 289 px).

align_hf runs its fast path (``model.set_fast_path()``: channels-last image tower, BatchNorm
folded on the fly in eval mode, oneDNN conv+activation fusion on CPU), which the package's
embedding functions use by default; the "default path" rows are align_hf with the fast path off
(op for op transformers' computation). transformers' AlignModel runs as it comes (NCHW) unless
``--channels-last`` is given, which puts both models and their pixels in channels-last.

    python benchmarks/bench_model.py                              # CPU, fp32, the b0 workload
    python benchmarks/bench_model.py --threads 1 --repeats 9      # one core, less noise
    python benchmarks/bench_model.py --allocator kept             # both models without page-fault churn
    python benchmarks/bench_model.py --preset b7 --device cuda --dtype bfloat16 --channels-last \\
        --batch-size 32 --output json                             # GPU; JSON as the last line
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from typing import Callable

import torch
import transformers

from align_hf import AlignModel

PRESETS = {
    "b0": dict(
        text_config=dict(
            vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
        ),
        vision_config=dict(width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280),
        projection_dim=320,
        image_size=128,
    ),
    # transformers' defaults are kakaobrain/align-base: EfficientNet-B7 (width 2.0, depth 3.1) + BERT-base.
    "b7": dict(text_config={}, vision_config=dict(width_coefficient=2.0, depth_coefficient=3.1, hidden_dim=2560),
               projection_dim=640, image_size=289),
}


def build_pair(image_size: int | None = None, preset: str = "b0"):
    """``(transformers AlignModel, align_hf AlignModel)`` with the same random weights, on CPU."""
    spec = PRESETS[preset]
    image_size = image_size or spec["image_size"]
    config = transformers.AlignConfig(
        text_config=dict(spec["text_config"]),
        vision_config=dict(spec["vision_config"], image_size=image_size),
        projection_dim=spec["projection_dim"],
    )
    torch.manual_seed(0)
    reference = transformers.AlignModel(config)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = AlignModel.from_pretrained(folder)
    return reference, ours


def make_batch(batch: int, image_size: int, seq_len: int = 64):
    """Pixels ``(B, 3, S, S)`` in [-1, 1], token ids and mask ``(B, seq_len)``, captions of 8-24 tokens."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1
    lengths = torch.randint(8, 25, (batch,), generator=g)
    ids = torch.randint(1000, 30000, (batch, seq_len), generator=g)
    mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
    ids = ids * mask
    ids[:, 0] = 101
    return pixels, ids, mask


def interleaved(cases: list[tuple[Callable, Callable]], repeats: int, sync: Callable[[], None]) -> list[tuple[float, float]]:
    """Median seconds of each ``(theirs, ours)`` pair, the two timed alternately after a warm-up."""
    results = []
    for theirs_fn, ours_fn in cases:
        theirs_fn(), ours_fn()
        sync()
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats):  # interleave so load changes hit both sides alike
            for fn, bucket in ((theirs_fn, times[0]), (ours_fn, times[1])):
                start = time.perf_counter()
                fn()
                sync()
                bucket.append(time.perf_counter() - start)
        results.append((statistics.median(times[0]), statistics.median(times[1])))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="b0")
    parser.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's (b0 128, b7 289)")
    parser.add_argument("--repeats", "--steps", dest="repeats", type=int, default=5, help="timed runs per side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: both models run under bf16 autocast")
    parser.add_argument("--channels-last", action="store_true",
                        help="transformers' model and pixels channels-last too (align_hf's fast path always is)")
    parser.add_argument("--compile", action="store_true",
                        help="also time align_hf with torch.compile'd towers (transformers stays eager)")
    parser.add_argument("--targets-only", action="store_true",
                        help="only the training step and image embedding on align_hf's fast path")
    parser.add_argument("--allocator", choices=("default", "kept"), default="default",
                        help="kept: keep freed memory in this process as the align-hf program does "
                             "(align_hf.training.allocator), for both models; default: glibc's settings")
    parser.add_argument("--output", default=None,
                        help="'json': print a JSON summary as the last line; a path: also write it there")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator == "kept":
        from align_hf.training.allocator import keep_freed_memory

        if not keep_freed_memory():
            print("note: could not keep freed memory here (not glibc, or ALIGN_HF_KEEP_FREED_MEMORY=0)")
    device = torch.device(args.device)
    image_size = args.image_size or PRESETS[args.preset]["image_size"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if args.dtype == "bfloat16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    reference, default = build_pair(image_size, args.preset)
    reference.to(device)
    default.to(device)
    fast = copy.deepcopy(default).set_fast_path(True)
    fast.vision_model.to(memory_format=torch.channels_last)
    pixels, ids, mask = (t.to(device) for t in make_batch(args.batch_size, image_size))
    ref_pixels = pixels
    if args.channels_last:
        reference.vision_model.to(memory_format=torch.channels_last)
        ref_pixels = pixels.contiguous(memory_format=torch.channels_last)
    fast_pixels = pixels.contiguous(memory_format=torch.channels_last)
    # The embedding path of align_hf.evaluation.encoding: BatchNorm folded (prepare_for_embedding).
    from align_hf.evaluation.encoding import prepare_for_embedding

    embedder = prepare_for_embedding(fast)

    def image_embed(model, px):
        def run():
            with torch.inference_mode(), autocast():
                model.eval()
                model.get_image_features(pixel_values=px)

        return run

    def text_embed(model):
        def run():
            with torch.inference_mode(), autocast():
                model.eval()
                model.get_text_features(input_ids=ids, attention_mask=mask)

        return run

    def train_step(model, px):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run():
            model.train()
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, pixel_values=px, return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    rows: list[tuple[str, str, Callable, Callable]] = [
        ("training step, AdamW", "pairs/s", train_step(reference, ref_pixels), train_step(fast, fast_pixels)),
        ("image embedding", "images/s", image_embed(reference, ref_pixels), image_embed(embedder, fast_pixels)),
    ]
    if not args.targets_only:
        rows += [
            ("image embedding, fast path on the fly", "images/s", image_embed(reference, ref_pixels),
             image_embed(fast, fast_pixels)),
            ("text embedding", "texts/s", text_embed(reference), text_embed(fast)),
            ("training step, default path", "pairs/s", train_step(reference, ref_pixels), train_step(default, pixels)),
            ("image embedding, default path", "images/s", image_embed(reference, ref_pixels),
             image_embed(default, pixels)),
        ]
    compile_seconds = None
    if args.compile:
        compiled = copy.deepcopy(fast).compile_towers()
        start = time.perf_counter()
        for fn in (image_embed(compiled, fast_pixels), train_step(compiled, fast_pixels)):
            fn()  # eval and train graphs, compiled once each
        sync()
        compile_seconds = time.perf_counter() - start
        rows += [
            ("training step, align_hf compiled", "pairs/s", train_step(reference, ref_pixels),
             train_step(compiled, fast_pixels)),
            ("image embedding, align_hf compiled", "images/s", image_embed(reference, ref_pixels),
             image_embed(compiled, fast_pixels)),
        ]

    medians = interleaved([(t, o) for _, _, t, o in rows], args.repeats, sync)
    header = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}"
        + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
        + f", {args.dtype}, preset {args.preset}, batch {args.batch_size}, {image_size}px, "
        f"transformers {'channels-last' if args.channels_last else 'as it comes (NCHW)'}, eager"
        + (f"; align_hf compiled rows: compile took {compile_seconds:.0f} s, not counted" if args.compile else "")
        + f"; freed memory {'kept' if args.allocator == 'kept' else 'returned (glibc default)'}"
        + f"; medians of {args.repeats} interleaved runs"
    )
    print(header)
    print(f"| {'measure':38s} | {'unit':9s} | {'transformers':>12s} | {'align_hf':>10s} | {'ratio':>6s} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 14}|{'-' * 12}|{'-' * 8}|")
    table = []
    for (name, unit, _, _), (theirs, mine) in zip(rows, medians):
        t_rate, o_rate = args.batch_size / theirs, args.batch_size / mine
        print(f"| {name:38s} | {unit:9s} | {t_rate:12.4g} | {o_rate:10.4g} | {o_rate / t_rate:5.2f}x |")
        table.append(dict(measure=name, unit=unit, transformers=t_rate, align_hf=o_rate, ratio=o_rate / t_rate))
    summary = dict(
        benchmark="bench_model", preset=args.preset, device=args.device, dtype=args.dtype,
        channels_last=args.channels_last, compile=args.compile, compile_seconds=compile_seconds,
        batch_size=args.batch_size, image_size=image_size, repeats=args.repeats, allocator=args.allocator,
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        torch=torch.__version__, transformers=transformers.__version__, rows=table,
    )
    if args.output:
        if args.output != "json":
            with open(args.output, "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=2)
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
