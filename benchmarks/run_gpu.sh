#!/usr/bin/env bash
# Every GPU measurement in one command, inside a time budget (default 570 s, so that it fits one
# 10-minute device call):
#   bash benchmarks/run_gpu.sh [out_dir]               (default results/bench)
#   BUDGET_S=1500 FILL=1 bash benchmarks/run_gpu.sh    (a longer lease: adds the fill-the-GPU batches)
# Stages run most important first; each gets min(its cap, what is left of the budget) and a
# stage cut short or failing does not stop the next (scripts/stage.sh). Each writes its own JSON + CSV (--tag), so
# a run cut short keeps what it finished. Ratios compare variants within one command only.
# FLOPs per image come from the exact meta-device counts in results/bench (--flops-from), so
# the GPU's time goes to timing; the counts do not depend on the device. AFTER_STAGE, if set,
# is run after every stage (e.g. to archive out_dir where only some files come back). STAGES,
# if set, names the stages to run (space-separated); the others are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/bench}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
BUDGET_S=${BUDGET_S:-570}
mkdir -p "$OUT"
end=$((SECONDS + BUDGET_S))
FLOPS="--flops-from results/bench/train_step_flops.json"

source scripts/stage.sh  # stage NAME CAP_S COMMAND...

"$PY" -c "import torch, timm; assert torch.cuda.is_available(), 'no CUDA device'; p = torch.cuda.get_device_properties(0); print(torch.cuda.get_device_name(), f'{p.total_memory / 2**30:.1f} GiB', 'torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null || true

# The public I-JEPA checkout (imported at run time, never copied): REFERENCE_IJEPA, else the
# first of ../shared/ref/ijepa and shared/ref/ijepa that exists.
REF=${REFERENCE_IJEPA:-$(for d in ../shared/ref/ijepa shared/ref/ijepa; do [ -f "$d/src/helper.py" ] && echo "$d" && break; done)}
REF=${REF:-../shared/ref/ijepa}
# 0. The fused text cross-attention, most important first (about 9 minutes): the kernel against
#    eager at ViT-L/16 shapes; the public I-JEPA step beside our I-JEPA eager / compiled and
#    TC-JEPA N=8 fused / fused+compiled / eager, one process per model (ratios from one run;
#    each row is written as it finishes); the 200-step bf16 loss curves, fused vs eager.
stage xattn_kernel 40 "$PY" -m benchmarks.text_xattn --device cuda --out "$OUT"
# The kernels at other tile sizes (30 tilings, each compiled and checked against eager; the log
# has each row as it finishes, the JSON all of them at the end), at the ViT-L/16 step's mean
# shape: 4 blocks x (48 context + 34 target tokens) per image, batch 128.
stage xattn_tiles 130 "$PY" -m benchmarks.text_xattn --device cuda --shape 128,328,8,64,384 --tile-sweep --reps 5 --out "$OUT/tiles"
stage ref_large 230 "$PY" -m benchmarks.reference_ijepa --reference-ijepa "$REF" --device cuda --models vit_large $FLOPS --out "$OUT" --tag large
# The fused step's kernel-category profile beside I-JEPA's and the eager attention's (what remains).
stage profile_fused 90 "$PY" -m benchmarks.train_step --device cuda --models vit_large --variants ijepa,tc_n8_xattn --attention-impl fused --profile 3 $FLOPS --out "$OUT" --tag large_fused_profile
stage numerics_fused 80 "$PY" -m benchmarks.numerics --device cuda --model vit_small --steps 200 --pairs attention --tag fused --out "$OUT"
stage ref_huge 110 "$PY" -m benchmarks.reference_ijepa --reference-ijepa "$REF" --device cuda --models vit_huge $FLOPS --out "$OUT" --tag huge
stage ref_base 100 "$PY" -m benchmarks.reference_ijepa --reference-ijepa "$REF" --device cuda --models vit_base $FLOPS --out "$OUT" --tag base
# The stages below are the earlier full survey: with the default budget the ones above spend it;
# BUDGET_S=1500 runs them all.
# 1. ViT-L/16 at batch 128 (the targets' model), every variant, with a kernel-category profile.
stage large 110 "$PY" -m benchmarks.train_step --device cuda --models vit_large $FLOPS --profile 3 --out "$OUT" --tag large
# 2. ViT-H/14 at batch 64, then with activation checkpointing (as configs/pretrain/*_h14_* train).
stage huge 80 "$PY" -m benchmarks.train_step --device cuda --models vit_huge --variants ijepa,tc_n1_xattn,tc_n8_xattn,tc_n8_block $FLOPS --out "$OUT" --tag huge
stage huge_actckpt 50 "$PY" -m benchmarks.train_step --device cuda --models vit_huge --variants ijepa,tc_n8_xattn --activation-checkpointing --flops-from results/bench/train_step_flops_actckpt.json --out "$OUT" --tag huge_actckpt
# 3. ViT-B/16 at batch 128.
stage base 60 "$PY" -m benchmarks.train_step --device cuda --models vit_base $FLOPS --out "$OUT" --tag base
# 4. FSDP2 (train.distributed=fsdp) on one GPU under torchrun: its cost against stage 1.
stage fsdp 50 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m benchmarks.train_step --device cuda --models vit_large --variants ijepa,tc_n8_xattn --fsdp $FLOPS --out "$OUT" --tag fsdp
# 4b. The training loop's host sync per step (the finite-loss check): its cost against stage 1.
stage loop_syncs 50 "$PY" -m benchmarks.train_step --device cuda --models vit_large --variants ijepa,tc_n8_xattn --loop-syncs $FLOPS --out "$OUT" --tag loop_syncs
# 5. torch.compile, same model and batch as stage 1 (an eager fallback is recorded as compile=false).
#    One collated batch (--pool 1): one shape, one compilation, so the lease pays for no recompiles;
#    one stage per variant, so a slow compilation of the second keeps the first's numbers.
for v in ijepa tc_n8_xattn; do  # H200: I-JEPA compiled in ~85 s; TC-JEPA N=8 took over 110 s
  stage "compile_$v" 180 "$PY" -m benchmarks.train_step --device cuda --models vit_large --variants $v --compile --pool 1 $FLOPS --out "$OUT" --tag "compile_$v"
done
# 6. Numerics: bf16 vs fp32 loss curves, compiled vs eager, small model.
stage numerics 120 "$PY" -m benchmarks.numerics --device cuda --model vit_small --steps 200 --out "$OUT"
# 6b. Captioning throughput (tcjepa-data captions) with base-size random-weight BLIP and LLaVA in bf16.
stage captioning 180 "$PY" -m benchmarks.captioning --device cuda --size base --families blip,llava --out "$OUT"
# 6c. Evaluation throughput: extraction images/s (ViT-L/16 224 px bf16, target >= 2000) and
#     seconds per head-training step; ViT-H/14 as the paper's dense-eval backbone.
stage eval_throughput 120 "$PY" -m benchmarks.eval_throughput --device cuda --models vit_large:16,vit_huge:14 --batch-size 256 --iters 20 --warmup 3 --head-iters 10 --out "$OUT" --tag gpu
# 7. Longer leases: the largest batch per variant that fits in 90% of the GPU.
if [[ "${FILL:-0}" == 1 ]]; then
  stage fill 600 "$PY" -m benchmarks.train_step --device cuda --models vit_large,vit_huge --variants ijepa,tc_n8_xattn --batch-size fill --out "$OUT" --tag fill
fi
echo "done: $OUT ($SECONDS s)"
