#!/usr/bin/env bash
# The shipped default's two-stage recipe (configs/default.yaml, then configs/default_stage2.yaml from its weights)
# on one large NVIDIA GPU, sized together for <= 9 minutes on an H100/H200, then scored on the held-out sources.
#   bash scripts/train_default_gpu.sh            (from the repository root, ../shared/data beside it)
# Extra key=value overrides go to both stages (a dry run on a CPU: device=cpu iterations=2 batch_paired=2 workers=1;
# SCORE=0 skips the scoring).
#
# What changes from the CPU recipe, and why:
# * bf16 autocast, batch 64 of 128² (8x the CPU's 8), lr scaled by sqrt(8) ~ 2.8 (stage 1 1e-3 -> 2.8e-3,
#   stage 2 3e-4 -> 8.5e-4);
# * synthesis_device=cuda: the 6 worker processes only cut the 8-bit windows and draw each item's parameters
#   (neurmap_core/data/device_synthesis.py); the blur, noise and clipping are rendered in batch on the GPU, JPEG by
#   OpenCV in the main process. On this 2-core CPU the worker share is 0.21x of the CPU path's (CPU seconds per
#   batch of 8 of 128², bench/synthesis_speed.py: 0.029 vs 0.142), i.e. ~3.6 ms per crop: 6 workers hand over
#   ~25 batches of 64 per second, more than the GPU steps below need (the old script fed ~10 it/s with 14).
# * iterations: the CPU recipe is 15,000 + 6,000 iterations of batch 8 (168k crops; 1.5-1.7 h at 3.4-4 it/s on
#   the 2-core CPU). Here 3,000 + 1,200 of batch 64: the same 2.5:1 split between the stages, 269k crops (1.6x
#   the CPU recipe's). At the ~10 it/s assumed for a 0.95M-parameter net at batch 64 (the main process also launches
#   ~250 small render kernels and codes ~22 JPEG crops, ~4 ms, per iteration) that is 7 minutes of steps, plus
#   ~1 minute of start-up for the two stages (CUDA, sources, caches filling in the workers): <= 9 minutes.
#   A faster GPU finishes early; a slower one shows in the printed seconds per stage.
# * warm-up and EMA scaled to the shorter schedules (the same fractions: ema_decay 0.995 over 3,000 its
#   ~ 0.999 over 15,000), checkpoints every 500.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
neurmap train configs/default.yaml device=cuda precision=bf16 synthesis_device=cuda workers=6 \
  batch_paired=64 lr_G=2.8e-3 iterations=3000 lr_warmup=100 ema_decay=0.995 checkpoint_every=500 log_every=100 \
  output_dir=runs/default_gpu "$@"
stage1=$(date +%s)
echo "stage 1 wall seconds: $(( stage1 - start ))"
neurmap train configs/default_stage2.yaml device=cuda precision=bf16 synthesis_device=cuda workers=6 \
  batch_paired=64 lr_G=8.5e-4 iterations=1200 lr_warmup=40 ema_decay=0.995 checkpoint_every=500 log_every=100 \
  init_weights=runs/default_gpu/final.safetensors init_motion=runs/default_gpu/final.safetensors \
  output_dir=runs/default_gpu_stage2 "$@"
echo "stage 2 wall seconds: $(( $(date +%s) - stage1 )); training wall seconds: $(( $(date +%s) - start ))"
if [ "${SCORE:-1}" != 0 ]; then
  python bench/default_quality.py --weights gpu=runs/default_gpu_stage2/final.safetensors --weights shipped=default \
    --no-dmphn --name default_quality_gpu --threads 8
fi
