#!/usr/bin/env bash
# The GPU checks of the contrastive head and the model, as one script for a lent CUDA machine
# (about 5 minutes on an H100/H200; the per-step timeouts cap it at 8 minutes):
#
#   bash benchmarks/gpu_check.sh [OUTDIR]            # default: $OUT, else benchmarks/results/gpu_<UTC time>
#   bash benchmarks/gpu_check.sh --dry-run [OUTDIR]  # the same steps on CPU at toy sizes
#
# Steps, each under `timeout` (a failed or timed-out step is logged and the next one runs):
#   1. tests: tests/test_loss_cuda.py (torch tiles and Triton kernels natively: fp64 exactness, bf16/fp16,
#      no host syncs, torch.compile, a bf16 model step) and tests/test_loss_triton.py;
#   2. the head at N = 65,536 and 262,144 (bf16, d = 640): naive loss vs torch tiles vs Triton kernels,
#      forward+backward time and peak memory (bench_loss.py; naive is skipped where it cannot fit);
#   3. ALIGN-B7 at 289 px against transformers' AlignModel: training step and image embedding
#      (samples/s; bf16, channels-last), eager, then torch.compile'd (bench_model.py);
#   4. two other Triton tile shapes for the head at N = 65,536 (ALIGN_HF_TRITON_TILE), for tuning.
# Raw outputs land in OUTDIR (one .txt per step, JSON where the script writes one, gpu_check.log).
# --dry-run runs every step on CPU with tiny sizes (Triton kernels in its interpreter), so a broken
# path shows up before GPU time is spent. PYTHON=... picks the interpreter (default python3);
# GPU_CHECK_FULL=1 adds the tile-size sweep and the sigmoid loss.
set -u
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
RES=${1:-${OUT:-benchmarks/results/gpu_$(date -u +%Y%m%d_%H%M)}}
mkdir -p "$RES"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
LOG="$RES/gpu_check.log"
START=$SECONDS

step() {  # step NAME SECONDS CMD...: run CMD under a timeout, output to NAME.txt, status to the log
  local name=$1 secs=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (timeout ${secs}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$secs" "$@" > "$RES/$name.txt" 2>&1
  local rc=$?
  tail -n 30 "$RES/$name.txt"
  [ $rc -eq 124 ] && echo "== $name: TIMED OUT" | tee -a "$LOG"
  echo "== $name: exit $rc after $((SECONDS - t0)) s (total $((SECONDS - START)) s)" | tee -a "$LOG"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 || echo "triton not importable"
  git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
} > "$RES/environment.txt" 2>&1
cat "$RES/environment.txt"

if [ $DRY -eq 0 ]; then
  DEV=(--device cuda --dtype bfloat16)
  step tests 110 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_loss_cuda.py tests/test_loss_triton.py
  step bench_loss_head 90 "$PY" benchmarks/bench_loss.py "${DEV[@]}" --sizes 65536 262144 \
    --methods naive tiled triton --output "$RES/bench_loss_head.json"
  MODEL=(--preset b7 --image-size 289 "${DEV[@]}" --channels-last --batch-size 32 --repeats 5
    --targets-only --output json)
  step bench_model_b7_eager 75 "$PY" benchmarks/bench_model.py "${MODEL[@]}"
  step bench_model_b7_compiled 150 "$PY" benchmarks/bench_model.py "${MODEL[@]}" --compile
  step bench_loss_triton_tiles 40 bash -c 'for t in 128,128,64,8,4 128,64,64,4,3; do
      echo "ALIGN_HF_TRITON_TILE=$t"
      ALIGN_HF_TRITON_TILE=$t "$0" benchmarks/bench_loss.py --device cuda --dtype bfloat16 \
        --sizes 65536 --methods triton | grep -v "^time ratio"
    done' "$PY"
  if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
    for chunk in 2048 4096 16384; do
      step "bench_loss_tiles_$chunk" 90 "$PY" benchmarks/bench_loss.py "${DEV[@]}" --sizes 65536 262144 \
        --chunk-size $chunk --methods tiled triton
    done
    step bench_loss_sigmoid 60 "$PY" benchmarks/bench_loss.py "${DEV[@]}" --loss sigmoid --sizes 16384 65536
  fi
else
  # The CUDA tests skip here; the Triton tests run in the interpreter as in `make test`.
  step tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_loss_cuda.py tests/test_loss_triton.py
  step bench_loss_head 240 env TRITON_INTERPRET=1 "$PY" benchmarks/bench_loss.py --device cpu \
    --sizes 200 300 --dim 32 --repeats 1 --methods naive tiled triton --output "$RES/bench_loss_head.json"
  # fp32: bf16 autocast on 2 CPU cores takes about a minute per B7 training step.
  MODEL=(--preset b7 --image-size 64 --device cpu --dtype float32 --channels-last --batch-size 2 --repeats 1
    --targets-only --output json)
  step bench_model_b7_eager 600 "$PY" benchmarks/bench_model.py "${MODEL[@]}"
  step bench_loss_triton_tiles 120 bash -c 'for t in 64,64,32,4,2; do
      echo "ALIGN_HF_TRITON_TILE=$t"
      ALIGN_HF_TRITON_TILE=$t TRITON_INTERPRET=1 "$0" benchmarks/bench_loss.py --device cpu \
        --dim 32 --sizes 200 --repeats 1 --methods triton | grep -v "^time ratio"
    done' "$PY"
  if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
    step bench_model_b7_compiled 900 "$PY" benchmarks/bench_model.py "${MODEL[@]}" --compile
  fi
fi
echo "== done in $((SECONDS - START)) s; outputs in $RES" | tee -a "$LOG"
