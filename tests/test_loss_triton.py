"""The Triton kernels of the softmax head, run by Triton's CPU interpreter, against float64
references; and the backend selection rules.

``TRITON_INTERPRET=1`` only takes effect for kernels defined after it is set, so the kernel
checks run once, in a subprocess that sets it before importing align_hf (this file's
``__main__``), and the tests below read its JSON report. On a CUDA machine
``tests/test_loss_cuda.py`` runs the same kernels natively.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align_hf.loss import AlignContrastiveHead, contrastive_loss, sigmoid_loss
from align_hf.loss_triton import ENV_VAR, resolve_backend, triton_available

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

# (name, N, d, chunk, label smoothing, temperature, tolerance): N below, at and above a block,
# blocks that do not divide N, several launches (4 * chunk < N), t down to 1/1000 (logits up to
# 1000, where test_loss.py's torch-path check also allows 1e-8).
SOFTMAX_CASES = [
    ("one_pair", 1, 4, None, 0.1, 0.3, 1e-9),
    ("n64_eps0", 64, 16, 32, 0.0, 1.0, 1e-9),
    ("n97_t64", 97, 24, 40, 0.1, 1 / 64, 1e-9),
    ("n150_eps0_t100", 150, 12, 16, 0.0, 1 / 100, 1e-9),
    ("n300_launches", 300, 20, 32, 0.1, 1 / 64, 1e-9),
    ("n120_t1000", 120, 8, 64, 0.1, 1e-3, 1e-8),
]
SMALL_BLOCKS = (32, 32, 16)  # several blocks per matrix at these N (and K-loops over d)


def _case_errors() -> dict:
    """Run every kernel check in this (interpreting) process; returns {case: max abs error}."""
    from test_loss import loss_and_grads, make_pair, max_error, naive_softmax_loss

    from align_hf import loss_triton
    from align_hf.loss_tiles import TiledCrossEntropy

    assert loss_triton.triton_interpreting(), "TRITON_INTERPRET=1 was not in effect"
    # "auto" leaves CPU tensors on the torch path even here: only forcing reaches the interpreter.
    assert loss_triton.resolve_backend("auto", torch.zeros(2, 2)) == "torch"
    default_blocks = dict(loss_triton.BLOCKS)
    report = {}
    for name, n, d, chunk, eps, t, _ in SOFTMAX_CASES:
        x, y = make_pair(n, d, seed=n, related=1.0)
        temp = torch.tensor(t, dtype=torch.float64)
        ref = loss_and_grads(lambda a, b, c: naive_softmax_loss(a, b, c, eps), x, y, temp)
        for blocks in ("small", "default"):
            loss_triton.BLOCKS.update(
                {k: SMALL_BLOCKS for k in default_blocks} if blocks == "small" else default_blocks
            )
            ours = loss_and_grads(
                lambda a, b, c: contrastive_loss(
                    a, b, c, label_smoothing=eps, chunk_size=chunk, backend="triton"
                ),
                x, y, temp,
            )
            report[f"{name}/{blocks}"] = max_error(ours, ref)
    loss_triton.BLOCKS.update({k: SMALL_BLOCKS for k in default_blocks})

    # fp32 operands (fp32 accumulation) against the float64 reference, relative.
    x, y = make_pair(130, 32, seed=1, related=1.0)
    temp = torch.tensor(1 / 64, dtype=torch.float64)
    ref = loss_and_grads(lambda a, b, c: naive_softmax_loss(a, b, c, 0.1), x, y, temp)
    for backend in ("triton", "torch"):
        ours = loss_and_grads(
            lambda a, b, c: contrastive_loss(a, b, c, chunk_size=48, backend=backend),
            x.float(), y.float(), temp.float(),
        )
        # Each output's error relative to its largest entry (d/dt is ~300 here, the loss ~4).
        report[f"float32/{backend}"] = max(
            float((u.double() - v).abs().max() / v.abs().max())
            for u, v in zip((ours[0], *ours[1]), (ref[0], *ref[1]))
        )

    # The distributed shape: local rows against all columns, labels at an offset, no columns.
    x, y = make_pair(70, 12, seed=2, related=1.0)
    _, y_all = make_pair(150, 12, seed=3)
    y_all[40:110] = y
    scale = torch.tensor(20.0, dtype=torch.float64)

    def rows_only(backend):
        def fn(a, b, s):
            return TiledCrossEntropy.apply(a, b, s, None, 0.1, False, False, 40, 32, backend)[
                0
            ].sum()

        got = loss_and_grads(fn, x, y_all, scale)
        with torch.no_grad():
            _, _, row_max, _, labels = TiledCrossEntropy.apply(
                x, y_all, scale, None, 0.1, False, False, 40, 32, backend
            )
        return got, row_max, labels

    (tri, tri_max, tri_labels), (ref, ref_max, ref_labels) = rows_only("triton"), rows_only("torch")
    report["offset_rows"] = max(
        max_error(tri, ref),
        float((tri_max - ref_max).abs().max()),
        float((tri_labels - ref_labels).abs().max()),
    )

    # fp16 operands reach the kernels as they are (the tile GEMMs accumulate in fp32); the
    # reference is float64 on the same fp16-rounded values. (The interpreter's bf16 dot is not
    # numpy-backed, so bf16 is checked natively in test_loss_cuda.py.)
    xh, yh = (t.half() for t in make_pair(100, 40, seed=4, related=1.0))
    scale = torch.tensor(30.0)
    row_lse, row_max, labels, col_max, col_sum = loss_triton.softmax_stats(
        xh, yh, scale, True, 0, 64
    )
    logits = (xh.double() @ yh.double().T) * 30.0
    g_row, g_col = torch.linspace(-1, 1, 100), torch.linspace(2, 0, 100)
    grad = loss_triton.softmax_grad_tile(
        xh, yh, scale, row_lse, g_row, col_max + col_sum.log(), g_col
    )
    want = g_row[:, None].double() * logits.softmax(1) + g_col[None].double() * logits.softmax(0)
    report["float16/stats"] = max(
        float((row_lse - logits.logsumexp(1)).abs().max()),
        float((col_max + col_sum.log() - logits.logsumexp(0)).abs().max()),
        float((row_max - logits.amax(1)).abs().max()),
        float((labels - logits.diagonal()).abs().max()),
    )
    report["float16/grad_tile"] = float((grad.double() - want).abs().max())
    report["float16/grad_dtype"] = str(grad.dtype)

    # The head: same loss and accuracies (ties included) as the torch path.
    x, y = make_pair(90, 16, seed=5, related=2.0)
    with torch.no_grad():
        outs = [
            AlignContrastiveHead(chunk_size=32, backend=b).double()(x, y)
            for b in ("triton", "torch")
        ]
    report["head"] = max(
        abs(float(outs[0].loss - outs[1].loss)),
        abs(float(outs[0].i2t_accuracy - outs[1].i2t_accuracy)),
        abs(float(outs[0].t2i_accuracy - outs[1].t2i_accuracy)),
    )
    return report


@pytest.fixture(scope="module")
def interpreter_report() -> dict:
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tests_dir), str(tests_dir.parent), env.get("PYTHONPATH", "")]
    )
    env.pop(ENV_VAR, None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("case,tol", [(c[0], c[-1]) for c in SOFTMAX_CASES])
@pytest.mark.parametrize("blocks", ["small", "default"])
def test_triton_softmax_matches_naive_float64(interpreter_report, case, tol, blocks):
    assert interpreter_report[f"{case}/{blocks}"] <= tol


@needs_triton
def test_triton_float32_close_to_float64(interpreter_report):
    # Within fp32 rounding, and no worse than the torch path's own fp32 error.
    assert interpreter_report["float32/triton"] <= 1e-5
    assert interpreter_report["float32/triton"] <= 4 * interpreter_report["float32/torch"]


@needs_triton
def test_triton_rows_at_an_offset_match_torch_path(interpreter_report):
    assert interpreter_report["offset_rows"] <= 1e-9


@needs_triton
def test_triton_float16_operands_accumulate_in_float32(interpreter_report):
    assert interpreter_report["float16/stats"] <= 1e-4  # logits up to 30: fp32 sums
    assert interpreter_report["float16/grad_tile"] <= 2e-3  # G is stored in fp16
    assert interpreter_report["float16/grad_dtype"] == "torch.float16"


@needs_triton
def test_triton_head_matches_torch_head(interpreter_report):
    assert interpreter_report["head"] <= 1e-12


# ----------------------------------------------------------------------------------------------
# Backend selection (in this process; the kernels are not run)


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    x = torch.zeros(3, 2)
    assert resolve_backend("auto", x) == "torch"
    assert resolve_backend(None, x) == "torch"
    assert resolve_backend("torch", x) == "torch"


def test_forcing_triton_where_it_cannot_run_says_why(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    from align_hf import loss_triton

    x = torch.randn(4, 3)
    interpreting = loss_triton.triton_interpreting()
    if not interpreting:
        match = "needs CUDA tensors" if triton_available() else "needs the `triton` package"
        with pytest.raises(ValueError, match=match):
            contrastive_loss(x, x, 0.1, backend="triton")
    with pytest.raises(ValueError, match="softmax loss only" if triton_available() else "triton"):
        resolve_backend("triton", x, sigmoid=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        contrastive_loss(x, x, 0.1, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        AlignContrastiveHead(backend="fast")


def test_environment_variable_overrides_auto(monkeypatch):
    x = torch.randn(5, 3, dtype=torch.float64)
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend("auto", x) == "torch"
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend("auto", x)
    # An explicit argument wins over the environment.
    assert resolve_backend("torch", x) == "torch"
    # The sigmoid loss has no Triton kernel; "auto" with the env var still gives torch.
    monkeypatch.setenv(ENV_VAR, "auto")
    assert float(sigmoid_loss(x, x, 0.5, -1.0)) > 0


if __name__ == "__main__":
    print(json.dumps(_case_errors()))


# ----------------------------------------------------------------------------------------------
# Without a GPU: the kernels still compile, for Hopper, all the way to a cubin (ptxas ships with
# triton), with the alignment facts the JIT finds at run time (d = 640, 16-byte aligned tensors).


@needs_triton
@pytest.mark.parametrize("dtype", ["bf16", "fp64"])
def test_kernels_compile_for_sm90(dtype):
    from align_hf import loss_triton

    try:
        from triton import compile as triton_compile
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:  # the ahead-of-time API moves between triton versions
        pytest.skip(f"triton's ahead-of-time compile API is not available: {err}")
    if loss_triton.triton_interpreting():
        pytest.skip("kernels are interpreted in this process")
    acc = "fp64" if dtype == "fp64" else "fp32"
    torch_dtype = {"bf16": torch.bfloat16, "fp64": torch.float64}[dtype]
    bm, bn, bk = loss_triton.BLOCKS[torch_dtype]
    constants = dict(COLUMNS=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION="tf32")
    for kernel in (loss_triton._softmax_stats_kernel, loss_triton._softmax_grad_kernel):
        names = kernel.arg_names
        signature, attrs = {}, {}
        for i, name in enumerate(names):
            if name in constants:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = "*" + (dtype if name in ("x_ptr", "y_ptr", "out_ptr") else acc)
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[name] = "i32"
                if name in ("d", "m") or name.startswith("stride"):
                    attrs[(i,)] = [["tt.divisibility", 16]]
        try:
            source = ASTSource(
                fn=kernel, signature=signature,
                constexprs={(names.index(k),): v for k, v in constants.items()}, attrs=attrs,
            )
        except TypeError as err:
            pytest.skip(f"this triton's ASTSource takes other arguments: {err}")
        compiled = triton_compile(
            source, target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=loss_triton.NUM_WARPS, num_stages=loss_triton.NUM_STAGES),
        )
        assert compiled.asm["cubin"]
        if dtype == "bf16":
            # Hopper tensor cores and software-pipelined loads, as in a tuned Triton GEMM.
            assert "wgmma.mma_async" in compiled.asm["ptx"]
            assert "cp.async" in compiled.asm["ptx"]
