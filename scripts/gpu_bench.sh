#!/usr/bin/env bash
# The GPU check, one script for a lent GPU machine: mvlab's cuda and vulkan backends against
# PyTorch/timm on the same GPU in the same run.
#
#   scripts/build_cuda.sh                                  # here: one binary with cuda + vulkan
#   strip -o gpu/mvlab target/release/mvlab && xz -6 -T2 gpu/mvlab   # 49 MB: fits a 64 MiB carry
#   scripts/gpu_bench.sh [path/to/mvlab[.xz]] [out-dir] [batch sizes...]
#
# Steps (each goes on when another fails; everything lands in out-dir):
#   gpu.txt                 the card
#   parity-<backend>.txt    `mvlab bench --parity`: cube kernels vs burn's ops, keras-xxs and
#                           paper-xxs vs the CPU backend (logits, loss, gradients, 3 Adam steps)
#   bench-b<N>.txt          training step and inference, every model, cuda then vulkan, each
#                           with burn's own ops too (--unfused: "before"), then PyTorch eager
#                           (its defaults, then strict fp32)
#   profile-<which>.log     cubecl's per-kernel profile of paper-xxs training steps at batch 64,
#                           with mvlab's GPU kernels (after) and with burn's ops (before)
#   quickstart-<dev>.txt    `mvlab run experiments/quickstart.toml` on cuda and on the CPU
#
# Needs python3 with torch (CUDA) and timm for the reference (PYTHON overrides). The first run
# of each layer shape autotunes; the cache goes to out-dir/cubecl-cache (MVLAB_GPU_CACHE), so a
# second pass over the same shapes shows the warm start.
set -uo pipefail
bin=${1:-target/release/mvlab}
out=${2:-gpu-bench}
shift $(($# < 2 ? $# : 2))
batches=${*:-8 64}
python=${PYTHON:-python3}
mkdir -p "$out"
if [[ "$bin" == *.xz ]]; then
    xz -dc "$bin" > /tmp/mvlab-gpu && chmod +x /tmp/mvlab-gpu && bin=/tmp/mvlab-gpu
fi
export MVLAB_GPU_CACHE=${MVLAB_GPU_CACHE:-$out/cubecl-cache}
backends=${BACKENDS:-cuda vulkan}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt" || true

for backend in $backends; do
    timeout 600 "$bin" bench --parity --device "$backend" 2>&1 | tee "$out/parity-$backend.txt"
done

for batch in $batches; do
    for backend in $backends; do
        timeout 900 "$bin" bench --device "$backend" --model all --batch "$batch" --reps 5 --unfused 2>&1 |
            tee -a "$out/bench-b$batch.txt"
    done
    "$python" scripts/reference_bench.py --device cuda --only torch --batch "$batch" --reps 5 2>&1 |
        tee -a "$out/bench-b$batch.txt"
    "$python" scripts/reference_bench.py --device cuda --only torch --strict-fp32 --batch "$batch" --reps 5 2>&1 |
        tee -a "$out/bench-b$batch.txt"
done

# Per-kernel GPU profile of the training step (cubecl's profiler, one line per kernel launch).
for which in after before; do
    flag=$([ "$which" = before ] && echo --burn-ops)
    CUBECL_DEBUG_LOG="$out/profile-$which.log" CUBECL_DEBUG_OPTION=profile-medium \
        timeout 600 "$bin" bench --device cuda --model xxs --batch 64 --reps 3 $flag >/dev/null 2>&1
    # Kernel timings only (the compilation log is long).
    if [ -f "$out/profile-$which.log" ]; then
        grep -v -i "compil" "$out/profile-$which.log" > "$out/profile-$which.tmp"
        mv "$out/profile-$which.tmp" "$out/profile-$which.log"
    fi
done

# The quickstart on the GPU and on this machine's CPU: the same accuracy within noise.
for device in cuda cpu; do
    timeout 900 "$bin" --db "$out/quickstart.db" run experiments/quickstart.toml \
        --set train.device="$device" 2>&1 | tail -n 15 | tee "$out/quickstart-$device.txt"
done
"$bin" --db "$out/quickstart.db" runs 2>&1 | tee -a "$out/quickstart-cpu.txt"
