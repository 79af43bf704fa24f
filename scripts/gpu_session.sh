#!/usr/bin/env bash
# The GPU measurements every open issue still waits for, most important first, in two device
# calls: a short one whose checks decide the long one (or both in one: PART=all).
#   bash scripts/gpu_session.sh smoke    (about 235 s)
#       the fused text cross-attention against eager at ViT-L/16 shapes (errors and times,
#       results/bench/text_xattn_cuda.*), then 30 tilings at the step's shape
#       (results/bench/tiles/); the public I-JEPA step beside ours at tiny size, no
#       compile (does the reference import, does our harness run there); the long-horizon fast
#       path's steps/s on the GPU, one run, one padded and 6 stacked, and one checkpoint's
#       evaluation alone and 6 together (results/studies/long-horizon/gpu/speed.txt)
#   bash scripts/gpu_session.sh main     (BUDGET_S, default 560 s), each part capped:
#       1. the fused text cross-attention against eager at ViT-L/16 shapes (XATTN_S, 35)
#       2. ViT-L/16 B=128: public I-JEPA step, ours eager / compiled, TC-JEPA N=8 fused /
#          fused+compiled / eager, one run (REF_LARGE_S, 230)                  -> results/bench/
#       3. the fused step's kernel profile beside I-JEPA's (PROFILE_S, 90), the 200-step bf16
#          loss curves, fused vs eager attention (NUMERICS_S, 60)
#       4. the long-horizon 2000-step grid, breadth-first over its checkpoints (GRID_S, 180)
#                                                              -> results/studies/long-horizon/gpu/
#       5. ViT-H/14 B=64, then ViT-B/16, as 2 (REF_HUGE_S 110, REF_BASE_S 100), with what is left
# Every part writes each row as it finishes, so a call cut short keeps what it measured.
# ARCHIVE=FILE tars results/bench and results/studies/long-horizon/gpu into FILE every 20 s and
# at the end (for a device whose working tree does not come back: ARCHIVE=$OUT/results.tgz).
# The grid stacks the runs of each code path into one vmapped step (3 processes of 6 runs);
# STACK=0 runs them one by one in WORKERS (default 6) processes sharing the GPU.
# On a bare remote machine (a copy of the tree, the machine's own torch): PYTHON=python3; set
# TCJEPA_COMMIT / TCJEPA_DIRTY=0 (no .git there); REFERENCE_IJEPA=a copy of the public code sent
# along; and, where the text-encoder package is missing, the study's text bank built here
# (python -c "from tcjepa.study.text_bank import build_text_bank;
# build_text_bank('runs/long-horizon/gpu/budget2000/text_bank')", 137 MB, 48 MB as .tgz) and
# unpacked there before the call.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
BUDGET_S=${BUDGET_S:-560}
[[ -n ${WORKERS:-} ]] && export WORKERS  # else the grid script's default for its STACK mode
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHON=$PY PYTHONUNBUFFERED=1
REF=${REFERENCE_IJEPA:-$(for d in ../shared/ref/ijepa shared/ref/ijepa; do [ -f "$d/src/helper.py" ] && echo "$d" && break; done)}
export REFERENCE_IJEPA=${REF:-../shared/ref/ijepa}
end=$((SECONDS + BUDGET_S))
OUTS="results/bench results/studies/long-horizon/gpu"

archive() {
  [[ -n "${ARCHIVE:-}" ]] || return 0
  tar czf "$ARCHIVE.part" $OUTS 2>/dev/null && mv "$ARCHIVE.part" "$ARCHIVE"
}
if [[ -n "${ARCHIVE:-}" ]]; then
  mkdir -p $OUTS
  (while sleep 20; do archive; done) &
  archiver=$!
  trap 'kill $archiver 2>/dev/null; archive' EXIT
fi
part() {  # part CAP_S SCRIPT STAGES: SCRIPT's STAGES with min(CAP_S, what is left) seconds
  local cap=$1 script=$2; shift 2
  local left=$((end - SECONDS)); local t=$(( cap < left ? cap : left ))
  if (( t < 20 )); then echo "== [$*]: skipped, ${left}s left"; return 0; fi
  case $script in
    bench) BUDGET_S=$t STAGES="$*" bash benchmarks/run_gpu.sh results/bench ;;
    grid) BUDGET_S=$t STAGES="$*" bash scripts/studies/long_horizon_gpu.sh results/studies/long-horizon/gpu ;;
  esac
  archive
}

"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" || exit 1
if [[ $PART == smoke || $PART == all ]]; then
  part 45 bench xattn_kernel
  part 135 bench xattn_tiles
  echo "== reference smoke (up to 40s)"
  timeout --signal=INT --kill-after=10 40 "$PY" -m benchmarks.reference_ijepa --reference-ijepa "$REFERENCE_IJEPA" \
    --device cuda --tiny --rows "ijepa eager,tc_n8 fused,tc_n8 eager" --out ""
  echo "== reference smoke: rc=$?"
  part 75 grid text_bank speed
fi
if [[ $PART == main || $PART == all ]]; then
  [[ $PART == main ]] && part "${XATTN_S:-35}" bench xattn_kernel  # smoke ran it in PART=all
  part "${REF_LARGE_S:-230}" bench ref_large
  part "${PROFILE_S:-90}" bench profile_fused
  part "${NUMERICS_S:-60}" bench numerics_fused
  part "${GRID_S:-180}" grid text_bank grid2000
  part "${REF_HUGE_S:-110}" bench ref_huge
  part "${REF_BASE_S:-100}" bench ref_base
fi
echo "done: $PART ($SECONDS s)"
