"""Forward+backward time and peak memory of the tiled contrastive head vs the naive loss.

Every (method, N) point runs in a fresh process so that peak memory is that point's alone.
"naive" is the formula of transformers' ``align_loss``: the full (N, N) logits and two
``cross_entropy(..., label_smoothing=0.1)`` calls (SigLIP's formula for ``--loss sigmoid``).
"tiled" is the head's torch tile loop (``backend="torch"``), "triton" its Triton kernels
(``backend="triton"``, softmax loss, CUDA; a column by default where it can run).

    python benchmarks/bench_loss.py                      # CPU, fp32, N = 1024 ... 65536
    python benchmarks/bench_loss.py --sizes 1024 4096    # a quick look
    python benchmarks/bench_loss.py --device cuda        # bf16, N up to 262144, + triton
    python benchmarks/bench_loss.py --device cuda --methods naive triton --sizes 65536

Extra memory is the peak above what the process held just before the step (inputs included in
the base): peak RSS on CPU (``/proc/self/status`` VmHWM after a reset), the CUDA caching
allocator's peak on GPU. Naive points whose logits cannot fit are skipped, not attempted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

METHODS = ("naive", "tiled", "triton")
CPU_SIZES = [1024, 4096, 16384, 32768, 65536]
CUDA_SIZES = [1024, 4096, 16384, 32768, 65536, 131072, 262144]
# Naive peak is about 6.4 fp32 N x N matrices (measured: 6.9 GB at N = 16384 on CPU).
NAIVE_SQUARES = 7


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_step(method: str, loss: str, n: int, d: int, device: str, dtype, chunk_size):
    import torch
    import torch.nn.functional as F

    from align_hf.loss import contrastive_loss, sigmoid_loss

    gen = torch.Generator(device=device).manual_seed(0)
    x = F.normalize(torch.randn(n, d, device=device, generator=gen), dim=-1).to(dtype)
    y = F.normalize(torch.randn(n, d, device=device, generator=gen), dim=-1).to(dtype)
    x.requires_grad_(True)
    y.requires_grad_(True)
    t = torch.tensor(1 / 64, device=device, requires_grad=True)
    b = torch.tensor(-10.0, device=device, requires_grad=True)
    labels = torch.arange(n, device=device)

    def step():
        if method in ("tiled", "triton") and loss == "softmax":
            backend = "torch" if method == "tiled" else "triton"
            value = contrastive_loss(
                x, y, t, label_smoothing=0.1, chunk_size=chunk_size, backend=backend
            )
        elif method == "tiled":
            value = sigmoid_loss(x, y, t, b, chunk_size=chunk_size)
        elif loss == "softmax":
            logits = x @ y.T / t
            value = (
                F.cross_entropy(logits, labels, label_smoothing=0.1)
                + F.cross_entropy(logits.T, labels, label_smoothing=0.1)
            ) / 2
        else:
            logits = x @ y.T / t + b
            signs = 2 * torch.eye(n, device=device, dtype=logits.dtype) - 1
            value = -F.logsigmoid(signs * logits).sum(dim=-1).mean()
        value.backward()
        x.grad = y.grad = t.grad = b.grad = None
        return value

    return step


def run_point(args) -> dict:
    """Measure one (method, N) point in this process; returns seconds and extra MiB."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cuda = args.device == "cuda"
    # Warm up kernels (and the custom ops) on a small batch first.
    _make_step(args.method, args.loss, 256, args.dim, args.device, dtype, args.chunk_size)()
    step = _make_step(args.method, args.loss, args.n, args.dim, args.device, dtype, args.chunk_size)
    times = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        exact = _reset_peak_rss()
        base = _status_kib("VmRSS") * 1024 if exact else None
    for i in range(args.repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if i == 0:
            if cuda:
                extra = torch.cuda.max_memory_allocated() - base
            else:
                extra = _status_kib("VmHWM") * 1024 - base if base is not None else float("nan")
    return {"seconds": min(times), "extra_mib": extra / 2**20}


def _available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    return _status_kib_file("/proc/meminfo", "MemAvailable") * 1024


def _status_kib_file(path: str, field: str) -> int:
    with open(path) as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def _spawn(args, method: str, n: int) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", method, "--n", str(n),
        "--loss", args.loss, "--dim", str(args.dim), "--device", args.device,
        "--dtype", args.dtype, "--repeats", str(args.repeats if n <= 8192 or args.device == "cuda" else 1),
    ]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": tail[0][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_ratio(ratio) -> str:
    if not ratio:
        return "-"
    return f"1/{1 / ratio:.0f}" if ratio < 0.5 else f"{ratio:.2f}x"


def _fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) else value


def _methods(args) -> list[str]:
    """The columns: ``--methods``, else naive + tiled (+ triton for softmax on CUDA)."""
    if args.methods:
        methods = list(dict.fromkeys(args.methods))
    else:
        methods = ["naive", "tiled"]
        if args.device == "cuda" and args.loss == "softmax":
            from align_hf.loss_triton import triton_available

            if triton_available():
                methods.append("triton")
    if args.skip_naive and "naive" in methods:
        methods.remove("naive")
    return methods


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes N")
    parser.add_argument("--dim", type=int, default=640, help="embedding size d (ALIGN-B7: 640)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--loss", choices=["softmax", "sigmoid"], default="softmax")
    parser.add_argument("--chunk-size", type=int, default=None, help="tile edge (default: auto)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps for N <= 8192")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS,
        help="columns to measure (default: naive tiled, plus triton where it can run)",
    )
    parser.add_argument("--skip-naive", action="store_true", help="time only the tiled head (tile-size sweeps)")
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.method = args.worker
        print(json.dumps(run_point(args)))
        return 0

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    sizes = args.sizes or (CUDA_SIZES if args.device == "cuda" else CPU_SIZES)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads or torch.get_num_threads()} threads"
    print(
        f"# {args.loss} loss, forward+backward, d={args.dim}, {args.dtype}, {where}, "
        f"torch {torch.__version__}, chunk_size={args.chunk_size or 'auto'}"
    )
    methods = _methods(args)
    element = 2 if args.dtype in ("bfloat16", "float16") and args.device == "cuda" else 4
    available = _available_bytes(args.device)
    fast = [m for m in methods if m != "naive"]
    header = (
        f"{'N':>7} | " + " | ".join(f"{m + ' s':>8}" for m in methods)
        + "".join(f" | {m + '/naive':>12}" for m in fast if "naive" in methods)
        + "".join(f" | {m + ' MiB':>10}" for m in methods)
        + "".join(f" | {m + ' mem':>10}" for m in fast if "naive" in methods)
    )
    print(header)
    print("-" * len(header))
    rows = []
    for n in sizes:
        row = {"n": n}
        for method in methods:
            if method == "naive" and NAIVE_SQUARES * n * n * element > 0.8 * available:
                row[method] = {"error": "skipped: does not fit"}
            else:
                row[method] = _spawn(args, method, n)
        naive = row.get("naive", {})
        for method in fast:
            if "seconds" in naive and "seconds" in row[method]:
                # Keys of the tiled column keep their earlier names (time_ratio, memory_ratio).
                prefix = "" if method == "tiled" else method + "_"
                row[prefix + "time_ratio"] = row[method]["seconds"] / naive["seconds"]
                row[prefix + "memory_ratio"] = row[method]["extra_mib"] / naive["extra_mib"]
        rows.append(row)
        cells = [f"{n:>7}"]
        cells += [f"{_fmt(row[m].get('seconds', '-'), '8.3f'):>8}" for m in methods]
        for m in fast if "naive" in methods else []:
            ratio = row.get(("" if m == "tiled" else m + "_") + "time_ratio")
            cells.append(f"{_fmt(ratio, '11.2f') + 'x' if ratio is not None else '-':>12}")
        cells += [f"{_fmt(row[m].get('extra_mib', '-'), '10.0f'):>10}" for m in methods]
        for m in fast if "naive" in methods else []:
            ratio = row.get(("" if m == "tiled" else m + "_") + "memory_ratio")
            cells.append(f"{_memory_ratio(ratio):>10}")
        print(" | ".join(cells), flush=True)
        for m in methods:
            if "error" in row[m] and not row[m]["error"].startswith("skipped"):
                print(f"  {m} failed at N={n}: {row[m]['error']}", flush=True)
    skipped = [r["n"] for r in rows if "error" in r.get("naive", {})]
    if skipped:
        print(f"naive not run for N = {skipped}: does not fit")
    print(
        "time ratio = method / naive (lower is better); mem = method extra / naive extra; "
        "tiled = torch tile loop, triton = fused Triton kernels"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
