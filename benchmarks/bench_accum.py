"""Peak memory and time of one training step: one micro-batch, feature-cached accumulation of K
micro-batches (``--accum_freq K``), and one batch of K x N pairs.

Memory is the peak of tensor bytes allocated during the step and still alive (parameters, their
gradients and the input batch exist before and are not counted): on CPU from the profiler's
allocation events, on CUDA from ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_accum.py                       # tiny model, 128 px, N = 8, K = 2 4 8
    python benchmarks/bench_accum.py --device cuda --preset align-base --image-size 289 --micro-batch 64
"""

from __future__ import annotations

import argparse
import functools
import time


def _cuda_peak(fn) -> int:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="AlignConfig preset (random weights)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8, help="N, pairs per micro-batch")
    parser.add_argument("--accum-freq", type=int, nargs="+", default=[2, 4, 8], help="K values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = parser.parse_args()

    import contextlib

    import torch

    from align_hf import AlignConfig, AlignModel
    from align_hf.testing import peak_cpu_allocation
    from align_hf.training.feature_cache import feature_cached_step, split_micro_batches

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = AlignConfig.from_preset(args.preset, vision_config={"image_size": args.image_size})
    model = AlignModel(config).to(device).train()
    d = config.projection_dim
    peak = _cuda_peak if device.type == "cuda" else peak_cpu_allocation
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def batch(size: int) -> dict:
        return {
            "pixel_values": torch.randn(size, 3, args.image_size, args.image_size, device=device),
            "input_ids": torch.randint(5, config.text_config.vocab_size, (size, 32), device=device),
            "attention_mask": torch.ones(size, 32, dtype=torch.long, device=device),
        }

    def plain(b):
        def step():
            with autocast():
                loss = model(**b, return_loss=True, return_logits=False).loss
            loss.backward()

        return step

    n = args.micro_batch
    one = batch(n)
    plain(one)()  # warm-up; gradients allocated, as from the second micro-batch of any accumulation

    def measure(step):
        # Timed without the profiler (its allocation tracking slows small ops down), then profiled.
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return peak(step) / 2**20, seconds

    print(f"{args.preset}, {args.image_size} px, N = {n}, d = {d}, {device}, {args.threads} threads"
          f"{', bf16' if args.bf16 else ''}\n")
    print("| step | pairs contrasted | peak MiB | s/step |")
    print("|---|---|---|---|")
    mib, secs = measure(plain(one))
    print(f"| one micro-batch | {n} | {mib:.1f} | {secs:.2f} |")
    for k in args.accum_freq:
        big = batch(k * n)
        cached = functools.partial(feature_cached_step, model, split_micro_batches(big, k), model.contrastive_head,
                                   autocast=autocast)
        mib, secs = measure(cached)
        print(f"| accum_freq {k} (cached) | {k * n} | {mib:.1f} | {secs:.2f} |")
        mib, secs = measure(plain(big))
        print(f"| one batch of {k} x {n} | {k * n} | {mib:.1f} | {secs:.2f} |")
        del big, cached


if __name__ == "__main__":
    main()
