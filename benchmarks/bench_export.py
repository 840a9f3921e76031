"""ONNX export of the two towers: export time, file sizes, parity and CPU latency against PyTorch.

Builds a preset with random weights (or loads ``--model``), exports it with
:func:`align_hf.export.save_onnx`, then times onnxruntime and PyTorch (BatchNorm folded, the same
graph ``align-hf`` embeds with) on one image batch and one text batch padded to 64 tokens,
interleaved, on the CPU. Medians are reported; ``--threads`` sets both runtimes' thread count.

    python benchmarks/bench_export.py [--preset align-base] [--batch 8] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="AlignConfig preset with random weights (default: tiny)")
    parser.add_argument("--model", help="an align_hf / transformers ALIGN folder or Hub id instead of --preset")
    parser.add_argument("--batch", type=int, default=8, help="images and texts per forward pass (default: 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per engine (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both engines (default: torch's)")
    args = parser.parse_args()

    import onnxruntime as ort

    from align_hf.export import measure_parity, onnx_runner, random_text_batch, save_onnx
    from align_hf.loading import load_model_and_processor
    from align_hf.testing import tiny_processor

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, processor = load_model_and_processor(args.model, device="cpu")
        name = args.model
    else:
        from align_hf import AlignConfig, AlignModel

        config = AlignConfig.from_preset(args.preset)
        torch.manual_seed(0)
        model = AlignModel(config).eval()
        processor = tiny_processor(image_size=config.vision_config.image_size)
        name = f"preset {args.preset} (random weights)"

    with tempfile.TemporaryDirectory() as folder:
        manifest = save_onnx(model, processor, folder, verify=False)
        sizes = {p.name: p.stat().st_size / 2**20 for p in Path(folder).glob("*.onnx*")}
        parity = measure_parity(model, processor, onnx_runner(folder))

        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        sessions = {
            tower: ort.InferenceSession(str(Path(folder) / f"{tower}.onnx"), options, providers=["CPUExecutionProvider"])
            for tower in ("image_encoder", "text_encoder")
        }
        height, width = manifest["image_encoder"]["inputs"][0]["shape"][2:]
        pixels = torch.rand(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
        length = min(64, model.config.text_config.max_position_embeddings)  # ALIGN pads texts to 64 tokens
        feeds = random_text_batch(args.batch, length, int(model.config.text_config.vocab_size))
        folded = model.for_inference()
        text_tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def torch_image():
            with torch.inference_mode():
                folded.encode_image(pixels.contiguous(memory_format=torch.channels_last))

        def torch_text():
            with torch.inference_mode():
                folded.encode_text(**text_tensors)

        runs = {
            ("image", "onnxruntime"): lambda: sessions["image_encoder"].run(None, {"pixel_values": pixels.numpy()}),
            ("image", "torch"): torch_image,
            ("text", "onnxruntime"): lambda: sessions["text_encoder"].run(None, feeds),
            ("text", "torch"): torch_text,
        }
        for fn in runs.values():
            fn()  # warm-up
        times: dict = {key: [] for key in runs}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both engines alike
            for key, fn in runs.items():
                times[key].append(seconds(fn))

    print(f"model: {name}; torch {torch.__version__}, onnxruntime {ort.__version__}, opset {manifest['opset']}")
    print(f"export: {manifest['export_seconds']:.1f} s; files: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()))
    print("max |onnxruntime - PyTorch|: " + ", ".join(f"{k} {v:.2e}" for k, v in parity.items()))
    print(f"\n| tower (batch {args.batch}) | onnxruntime ms | PyTorch ms | ratio |")
    print("|---|---:|---:|---:|")
    for tower in ("image", "text"):
        ort_ms = 1000 * statistics.median(times[(tower, "onnxruntime")])
        torch_ms = 1000 * statistics.median(times[(tower, "torch")])
        print(f"| {tower} | {ort_ms:.1f} | {torch_ms:.1f} | {ort_ms / torch_ms:.2f} |")


if __name__ == "__main__":
    main()
