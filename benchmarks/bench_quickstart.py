"""Where a quickstart training step spends its time, and which thread setting holds up on a busy machine.

    python benchmarks/bench_quickstart.py [--rounds 2] [--steps 10] [--components-only]

1. Threads and allocator: one training step of the quickstart model (64 px, batch 128, fast path
   on) timed with 1 thread, 2 threads, 2 threads with ``OMP_WAIT_POLICY=PASSIVE``, and 1 and 2
   threads with glibc keeping freed memory (``align_hf.training.allocator``, which the quickstart
   turns on), each in its own process (the policy is read when torch loads), interleaved for
   ``--rounds`` rounds: medians of wall ms per step. Run it once on an idle machine and once while
   something else is busy to see both states.
2. Components, one thread, CPU time (``time.process_time``, steady under contention): data per batch
   streamed (decode every read), pre-decoded (``align_hf.data.decoded``) and with the captions
   tokenised once; the model's forward / backward / optimiser step with the text tower's dropout at
   0.1 (BERT), with the full last text layer and an AdamW that loops over tensors (the state before
   the text fast path and the fused optimiser), and as the quickstart trains.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

# (name, torch threads, OMP_WAIT_POLICY, glibc keeps freed memory: align_hf.training.allocator)
SETTINGS = (
    ("1 thread", 1, None, False),
    ("2 threads", 2, None, False),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, "PASSIVE", False),
    ("1 thread, freed memory kept (the quickstart)", 1, None, True),
    ("2 threads, freed memory kept", 2, None, True),
)


# Model variants of the component table: (name, text dropout, text tower's [CLS]-only last layer, fused AdamW).
MODEL_VARIANTS = (
    ("text dropout 0.1 (BERT's)", 0.1, True, True),
    ("full last text layer, AdamW looping over tensors (the previous state)", 0.0, False, False),
    ("the quickstart", 0.0, True, True),
)


def _model(image_size: int, text_dropout: float, vocab_size: int = 700, text_fast_path: bool = True, fused: bool = True):
    import torch

    from align_hf.configuration_align import AlignConfig
    from align_hf.modeling_align import AlignModel

    torch.manual_seed(0)
    config = AlignConfig.from_preset("tiny", vision_config={"image_size": image_size}, text_config={
        "vocab_size": vocab_size, "hidden_dropout_prob": text_dropout, "attention_probs_dropout_prob": text_dropout})
    model = AlignModel(config).train().set_fast_path(True)  # as the quickstart's trainer runs it
    model.text_model.set_fast_path(text_fast_path)
    model.vision_model.to(memory_format=torch.channels_last)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)  # AlignTrainer fuses it on CPU


def _batch(image_size: int, batch: int):
    import torch

    pixels = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    ids = torch.randint(5, 700, (batch, 20))
    return pixels, ids, torch.ones_like(ids)


def step_child(threads: int, steps: int, image_size: int, batch: int, keep_memory: bool) -> None:
    """In a child process: print the median wall ms of ``steps`` training steps as JSON."""
    import torch

    from align_hf.training.allocator import keep_freed_memory

    torch.set_num_threads(threads)
    if keep_memory and not keep_freed_memory():
        raise SystemExit("this C library has no mallopt: the 'freed memory kept' rows need glibc")
    model, optimizer = _model(image_size, 0.0)
    pixels, ids, mask = _batch(image_size, batch)
    times = []
    for index in range(steps + 2):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:  # the first steps allocate
            times.append(time.perf_counter() - start)
    print(json.dumps({"ms": 1000 * statistics.median(times)}))


def thread_table(rounds: int, steps: int) -> None:
    results: dict[str, list[float]] = {name: [] for name, *_ in SETTINGS}
    for _ in range(rounds):
        for name, threads, policy, keep_memory in SETTINGS:
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            command = [sys.executable, __file__, "--child", str(threads), "--steps", str(steps)]
            out = subprocess.run(command + (["--keep-memory"] if keep_memory else []),
                                 env=env, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1])["ms"])
    print("\n| torch threads (64 px, batch 128, one training step) | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " | vs 1 thread (median) |")
    print("|---|" + "---|" * (rounds + 1))
    base = statistics.median(results["1 thread"])
    for name, values in results.items():
        print(f"| {name} | " + " | ".join(f"{v:.0f} ms" for v in values) + f" | {statistics.median(values) / base:.2f}x |")


def component_table(steps: int) -> None:
    import torch

    from align_hf.data import SyntheticConfig, write_synthetic_corpus
    from align_hf.data.decoded import decode_once
    from align_hf.data.pipeline import ImageTextLoader, build_train_stream
    from align_hf.data.sources import load_pairs
    from align_hf.data.transforms import LEFT_RIGHT_SWAP, ImageTextCollator, ImageTransform
    from align_hf.data.vocab import make_tokenizer
    from align_hf.training.factories import build_filter, preset_processor

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_corpus(root, SyntheticConfig(image_size=64, num_train=4000, zeroshot_per_class=1, num_retrieval=10),
                               num_workers=1, progress=False)
        with open(os.path.join(root, "vocab.txt"), encoding="utf-8") as handle:
            tokenizer = make_tokenizer([line.strip() for line in handle if line.strip()], model_max_length=64)
        processor = preset_processor(64, tokenizer, crop=False)
        source = os.path.join(root, "train")
        align_filter = build_filter("small", source, 64, False)
        transform = ImageTransform.from_image_processor(processor.image_processor, train=True, seed=0)
        collator = ImageTextCollator(tokenizer, max_length=64)
        stream = iter(ImageTextLoader(build_train_stream(source, seed=0, filter=align_filter, flip_swap=LEFT_RIGHT_SWAP,
                                                         transform=transform), collator, 128))
        next(stream)
        start = time.process_time()
        for _ in range(steps):
            next(stream)
        rows.append(("data: streamed (decode every read)", 1000 * (time.process_time() - start) / steps))
        start = time.process_time()
        decoded = decode_once(load_pairs(source), transform, filter=align_filter, flip_swap=LEFT_RIGHT_SWAP, progress=False)
        once = time.process_time() - start
        rng = random.Random(0)
        start = time.process_time()
        for _ in range(steps):
            collator([decoded[rng.randrange(len(decoded))] for _ in range(128)])
        rows.append((f"data: pre-decoded (+{1000 * once / len(decoded):.2f} ms per pair once)", 1000 * (time.process_time() - start) / steps))
        decoded.pretokenize(collator.tokenize)  # as AlignTrainer does
        start = time.process_time()
        for _ in range(steps):
            collator([decoded[rng.randrange(len(decoded))] for _ in range(128)])
        rows.append(("data: pre-decoded, captions tokenised once", 1000 * (time.process_time() - start) / steps))
    for variant, dropout, text_fast_path, fused in MODEL_VARIANTS:
        model, optimizer = _model(64, dropout, text_fast_path=text_fast_path, fused=fused)
        pixels, ids, mask = _batch(64, 128)
        spent = {"forward": 0.0, "backward": 0.0, "optimiser": 0.0}
        for index in range(steps + 2):
            t0 = time.process_time()
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
            t1 = time.process_time()
            loss.backward()
            t2 = time.process_time()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t3 = time.process_time()
            if index >= 2:
                spent["forward"] += t1 - t0
                spent["backward"] += t2 - t1
                spent["optimiser"] += t3 - t2
        for part, seconds in spent.items():
            rows.append((f"model {part}: {variant}", 1000 * seconds / steps))
    print("\n| one thread, 64 px, batch 128 | CPU ms per step |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the thread comparison")
    parser.add_argument("--steps", type=int, default=10, help="steps (batches) timed per measurement")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--components-only", action="store_true", help="skip the thread/allocator table")
    args = parser.parse_args()
    if args.child is not None:
        step_child(args.child, args.steps, 64, 128, args.keep_memory)
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.components_only:
        thread_table(args.rounds, args.steps)
    component_table(args.steps)


if __name__ == "__main__":
    main()
