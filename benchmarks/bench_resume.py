"""What resuming the training stream costs: saved shard + offset + shuffle-buffer state vs. replay.

Writes a synthetic webdataset corpus, reads it with the training stream (2 DataLoader workers,
a shuffle buffer), stops after ``--stop`` batches and resumes two ways:

- state: ``StreamingTrainLoader.load_state_dict`` (torchdata ``StatefulDataLoader`` + per-worker
  ``ImageTextPairs.state_dict``), what ``AlignTrainer`` does from a checkpoint;
- replay: the previous behaviour, decoding, transforming and collating the ``--stop`` batches again.

Reports seconds to the first resumed batch, images decoded before it, raw records re-read to
refill the shuffle buffers, and the size of the saved state (one rank's ``data_state`` file).

    python benchmarks/bench_resume.py [--images 6000] [--shards 24] [--buffer 2000] [--batch 64] [--stop 60]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stop", type=int, default=60, help="batches read before the stop")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import torch

    import align_hf.data.pipeline as pipeline
    from align_hf.data import ImageTextCollator, ImageTextLoader, SyntheticConfig, write_synthetic_corpus
    from align_hf.data.pipeline import build_train_stream
    from align_hf.testing import tiny_processor
    from align_hf.training.stream import StreamingTrainLoader

    root = tempfile.mkdtemp(prefix="bench_resume_")
    config = SyntheticConfig(image_size=args.image_size, num_train=args.images, shard_size=max(1, args.images // args.shards),
                             num_retrieval=1, zeroshot_per_class=1)
    write_synthetic_corpus(root, config, num_workers=os.cpu_count() or 1, progress=False, splits=("train",))
    processor = tiny_processor()
    log = os.path.join(root, "decodes.log")
    original = pipeline.decode_image

    def counting(data, *a, **k):  # inherited by the forked workers
        with open(log, "a") as handle:
            handle.write("1\n")
        return original(data, *a, **k)

    pipeline.decode_image = counting

    def decodes() -> int:
        return sum(1 for _ in open(log)) if os.path.exists(log) else 0

    def make() -> StreamingTrainLoader:
        stream = build_train_stream(os.path.join(root, "train"), processor.image_processor, seed=0, shuffle_buffer=args.buffer)
        return StreamingTrainLoader(ImageTextLoader(stream, ImageTextCollator(processor.tokenizer), args.batch,
                                                    num_workers=args.workers))

    stopped = make()
    iterator = iter(stopped)
    for _ in range(args.stop):
        next(iterator)
    state = stopped.state_dict()
    del iterator
    buffer = io.BytesIO()
    torch.save({"stream": state, "budget_seconds": 0.0}, buffer)
    workers = state["loader"]["_snapshot"]["_worker_snapshots"].values()
    reread = sum(w["dataset_state"]["records"]["reads"] - w["dataset_state"]["records"]["anchor_read"] for w in workers)

    results = {}
    for how in ("state", "replay"):
        resumed = make()
        if how == "state":
            resumed.load_state_dict(state)
        else:
            resumed.skip_batches = args.stop
        before, start = decodes(), time.perf_counter()
        next(iter(resumed))
        results[how] = (time.perf_counter() - start, decodes() - before)
    print(f"{args.images} images of {args.image_size} px in {args.shards} shards, {args.workers} workers, "
          f"buffer {args.buffer}, batch {args.batch}, stopped after {args.stop} batches ({args.stop * args.batch} samples)")
    for how, (seconds, count) in results.items():
        print(f"  resume by {how:6s}: first batch after {seconds:6.2f} s, {count:6d} images decoded")
    print(f"  raw records re-read to refill the shuffle buffers: {reread} (not decoded)")
    print(f"  saved stream state of this rank: {buffer.tell() / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
