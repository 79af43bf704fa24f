#!/usr/bin/env bash
# Every GPU measurement of issue 7 in one command (one GPU, ~15-25 min in all):
#   bash benchmarks/run_gpu.sh [out_dir]            (default results/bench)
# Each line is also a command of its own; they write separate JSON + CSV files (--tag), so
# a run cut short keeps what it finished. Ratios compare variants within one command only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/bench}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"

# 1. Same batch for every variant (SPEC section 9's batches: B/16 128, L/16 128, H/14 64): ratios.
"$PY" -m benchmarks.train_step --device cuda --models vit_base,vit_large,vit_huge --out "$OUT" --tag same_batch
# 2. Largest batch per variant that fits in 90% of the GPU (img/s at full occupancy; gives GiB/img).
"$PY" -m benchmarks.train_step --device cuda --models vit_base,vit_large,vit_huge --batch-size fill --out "$OUT" --tag fill
# 3. torch.compile (eager fallback is recorded as compile=false + compile_error).
"$PY" -m benchmarks.train_step --device cuda --models vit_base,vit_large --variants ijepa,tc_n8_xattn --compile --out "$OUT" --tag compile
# 4. Activation checkpointing (as configs/pretrain/*_h14_* use it), ViT-H/14.
"$PY" -m benchmarks.train_step --device cuda --models vit_huge --variants ijepa,tc_n8_xattn --activation-checkpointing --out "$OUT" --tag actckpt
# 5. Numerics on the GPU: bf16 vs fp32 over 300 steps, compiled vs eager.
"$PY" -m benchmarks.numerics --device cuda --model vit_small --steps 300 --out "$OUT"
echo "done: $OUT"
