#!/usr/bin/env bash
# The GPU measurements every open issue still waits for, in one device call (default 570 s),
# most important first; each part is its own budgeted script, given its share of the time:
#   1. benchmarks/run_gpu.sh, its first stages (TC_SHARE_S, default 280 s): the fused text
#      cross-attention kernel at ViT-L/16 shapes, then the public I-JEPA step beside ours
#      (eager / compiled) and TC-JEPA N=8 (eager / fused / fused+compiled) -> results/bench/
#   2. scripts/studies/long_horizon_gpu.sh with what is left: the fast path's GPU steps/s, the
#      2000-step grid smallest cells first -> results/studies/long-horizon/gpu/
#   bash scripts/gpu_session.sh
#   BUDGET_S=1100 TC_SHARE_S=560 bash scripts/gpu_session.sh     (a longer lease: all of run_gpu.sh's first block)
# Both parts write each row as it finishes, so a call cut short keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-570}
TC_SHARE_S=${TC_SHARE_S:-280}
end=$((SECONDS + BUDGET_S))

BUDGET_S=$TC_SHARE_S bash benchmarks/run_gpu.sh results/bench
left=$((end - SECONDS))
if (( left < 60 )); then
  echo "== long-horizon grid: skipped, ${left}s left"
  exit 0
fi
BUDGET_S=$left bash scripts/studies/long_horizon_gpu.sh results/studies/long-horizon/gpu
