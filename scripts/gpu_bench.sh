#!/usr/bin/env bash
# The GPU benchmark: mvlab's vulkan build against PyTorch/timm on the same GPU, back to back.
#
#   cargo build --release --features vulkan
#   scripts/gpu_bench.sh [path/to/mvlab] [out-dir] [batch sizes...]
#
# Needs python3 with torch (CUDA) and timm for the reference. Writes out-dir/gpu.txt (the card)
# and out-dir/bench-bN.txt per batch size: every model's train step and inference on the GPU,
# then PyTorch with its defaults (cuDNN may use TF32) and with strict fp32.
set -uo pipefail  # go on past a failed step: the others still report
bin=${1:-target/release/mvlab}
out=${2:-gpu-bench}
shift $(($# < 2 ? $# : 2))
batches=${*:-8 64}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt" || true
for batch in $batches; do
    "$bin" bench --device vulkan --model all --batch "$batch" --reps 5 --compare 2>&1 |
        tee "$out/bench-b$batch.txt"
    python3 scripts/reference_bench.py --device cuda --only torch --strict-fp32 --batch "$batch" --reps 5 2>&1 |
        tee -a "$out/bench-b$batch.txt"
done
