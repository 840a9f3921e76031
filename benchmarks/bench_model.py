"""Throughput of align_hf's AlignModel against transformers' AlignModel on the same weights.

Architecture: EfficientNet-B0 widths, a 4-layer BERT of width 256, 128 px images, batch 32,
captions of 8-24 tokens padded to 64 (what both processors produce). Measured side by side,
interleaved, in one process; the table reports medians and our/their ratios.

    python benchmarks/bench_model.py [--batch 32] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import transformers

from align_hf import AlignModel


def build_pair(image_size: int):
    config = transformers.AlignConfig(
        text_config=dict(
            vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
        ),
        vision_config=dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=image_size, hidden_dim=1280),
        projection_dim=320,
    )
    torch.manual_seed(0)
    reference = transformers.AlignModel(config)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = AlignModel.from_pretrained(folder)
    return reference, ours


def make_batch(batch: int, image_size: int, seq_len: int = 64):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1
    lengths = torch.randint(8, 25, (batch,), generator=g)
    ids = torch.randint(1000, 30000, (batch, seq_len), generator=g)
    mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
    ids = ids * mask
    ids[:, 0] = 101
    return pixels, ids, mask


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time align_hf with torch.compile'd towers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reference, ours = build_pair(args.image_size)
    pixels, ids, mask = make_batch(args.batch, args.image_size)
    # Folded BatchNorm + channels_last: oneDNN then runs the convolutions without layout copies.
    # (channels_last alone, with BatchNorm still separate, measured no faster here.)
    fast = ours.for_inference(channels_last=True)
    pixels_cl = pixels.contiguous(memory_format=torch.channels_last)

    def image_embed(model, px):
        def run():
            with torch.inference_mode():
                model.eval()
                model.get_image_features(pixel_values=px)

        return run

    def text_embed(model):
        def run():
            with torch.inference_mode():
                model.eval()
                model.get_text_features(input_ids=ids, attention_mask=mask)

        return run

    def train_step(model, px):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run():
            model.train()
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=px, return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    cases = [
        ("image embedding (images/s)", image_embed(reference, pixels), image_embed(ours, pixels)),
        ("image embedding, for_inference() (images/s)", image_embed(reference, pixels), image_embed(fast, pixels_cl)),
        ("text embedding (texts/s)", text_embed(reference), text_embed(ours)),
        ("training step, AdamW fp32 (pairs/s)", train_step(reference, pixels), train_step(ours, pixels)),
    ]
    if args.compile:
        _, compiled = build_pair(args.image_size)
        compiled = compiled.compile_towers()
        start = time.perf_counter()
        image_embed(compiled, pixels)()
        text_embed(compiled)()
        train_step(compiled, pixels)()
        print(f"torch.compile of both towers (forward + backward) took {time.perf_counter() - start:.0f} s, not counted below")
        cases += [
            ("image embedding, compiled (images/s)", image_embed(reference, pixels), image_embed(compiled, pixels)),
            ("text embedding, compiled (texts/s)", text_embed(reference), text_embed(compiled)),
            ("training step, compiled (pairs/s)", train_step(reference, pixels), train_step(compiled, pixels)),
        ]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.image_size}px, B0 + BERT 4x256")
    print(f"| {'measure':44s} | {'transformers':>12s} | {'align_hf':>10s} | {'ratio':>6s} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 12}|{'-' * 8}|")
    for name, theirs_fn, ours_fn in cases:
        theirs, mine = [], []
        for _ in range(args.repeats):  # interleave so load changes hit both sides alike
            theirs += timed(theirs_fn, 1)
            mine += timed(ours_fn, 1)
        t_rate = args.batch / statistics.median(theirs)
        o_rate = args.batch / statistics.median(mine)
        print(f"| {name:44s} | {t_rate:12.1f} | {o_rate:10.1f} | {o_rate / t_rate:5.2f}x |")


if __name__ == "__main__":
    main()
