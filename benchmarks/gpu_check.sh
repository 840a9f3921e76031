#!/usr/bin/env bash
# The GPU checks of the contrastive head, as one script for a lent CUDA machine:
#   bash benchmarks/gpu_check.sh [OUTDIR]
# CUDA tests (exactness, low precision, no host syncs, torch.compile, a bf16 model step), then
# bench_loss in bf16 up to N=262144, a tile-size sweep and the sigmoid variant.
OUT=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_loss_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
timeout 240 python3 benchmarks/bench_loss.py --device cuda --output "$OUT/bench_loss_cuda.json" 2>&1 | tee "$OUT/bench_loss_cuda.txt"
for chunk in 2048 4096 16384; do
  timeout 60 python3 benchmarks/bench_loss.py --device cuda --sizes 65536 262144 --chunk-size $chunk --skip-naive 2>&1 | tee -a "$OUT/bench_loss_tiles.txt"
done
timeout 60 python3 benchmarks/bench_loss.py --device cuda --loss sigmoid --sizes 16384 65536 2>&1 | tee "$OUT/bench_loss_sigmoid.txt"
