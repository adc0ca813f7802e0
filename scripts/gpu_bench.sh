#!/usr/bin/env bash
# The GPU check, one prepared script for a lent GPU machine (about 8 minutes): mvlab's cuda
# backend against PyTorch/timm on the same GPU in the same run. Each step has its own timeout
# and writes its results as it goes, so a step that runs long costs only itself.
#
#   scripts/build_cuda.sh                                  # here: the cuda (+ vulkan) binary
#   strip -o gpu/mvlab target/release/mvlab && xz -6 -T2 gpu/mvlab   # fits a 64 MiB carry
#   scripts/gpu_bench.sh [path/to/mvlab[.xz]] [out-dir]
#
# In out-dir:
#   gpu.txt               the card and driver
#   quickstart-cold.txt   `mvlab run experiments/quickstart.toml` on the GPU from an empty
#                         autotune cache (--autotune minimal): seconds to the first step, to the
#                         end, and the accuracy (compare the CPU's in BENCHMARKS.md)
#   parity.txt            `mvlab bench --parity`: cube kernels (depthwise, 1x1, BatchNorm) vs
#                         burn's ops, keras-xxs and paper-xxs vs the CPU backend, fused optimizer
#   bench-b<N>.txt        paper-xxs training step and inference with mvlab's GPU kernels and
#                         fused optimizer ("after") and with burn's ops throughout ("before",
#                         --unfused), kernel launches per step by phase, first-step compile and
#                         tuning; then PyTorch eager on the same GPU
#   data.txt              an epoch's end-to-end img/s with flower-sized JPEGs (decoding, then
#                         cached), next to the step rate
# Environment: DEVICE (cuda), SIZE (256), BATCHES ("8 64"), PYTHON (python3 with torch + timm).
set -uo pipefail
bin=${1:-target/release/mvlab}
out=${2:-gpu-bench}
device=${DEVICE:-cuda}
size=${SIZE:-256}
batches=${BATCHES:-8 64}
python=${PYTHON:-python3}
mkdir -p "$out"
if [[ "$bin" == *.xz ]]; then
    xz -dc "$bin" > /tmp/mvlab-gpu && chmod +x /tmp/mvlab-gpu && bin=/tmp/mvlab-gpu
fi
export MVLAB_GPU_CACHE=${MVLAB_GPU_CACHE:-$out/cubecl-cache}
rm -rf "$MVLAB_GPU_CACHE"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started ))s] $*" | tee -a "$out/steps.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
stamp "gpu: $(tail -n 1 "$out/gpu.txt")"

# 1. Cold start: the quickstart from an empty cache, minimal autotune.
t0=$(date +%s.%N)
timeout -k 10 150 "$bin" --autotune minimal --db "$out/runs.db" run experiments/quickstart.toml \
    --set train.device="$device" > "$out/quickstart-cold.txt" 2>&1
code=$?
t1=$(date +%s.%N)
"$bin" --db "$out/runs.db" show 1 --json > "$out/quickstart-cold.json" 2>/dev/null
echo "exit $code after $(awk "BEGIN{print $t1 - $t0}") s" >> "$out/quickstart-cold.txt"
stamp "quickstart cold: exit $code, $(awk "BEGIN{print $t1 - $t0}") s"

# 2. Parity on the GPU (reported as each check finishes).
timeout -k 10 90 "$bin" --autotune minimal bench --parity --device "$device" > "$out/parity.txt" 2>&1
stamp "parity: exit $? ($(grep -c '^ok' "$out/parity.txt") ok, $(grep -c '^FAIL' "$out/parity.txt") failed)"

# 3. Training step and inference, after and before, launches by phase; then PyTorch.
for batch in $batches; do
    timeout -k 10 110 "$bin" --autotune minimal bench --device "$device" --model xxs --batch "$batch" \
        --size "$size" --reps 10 --unfused > "$out/bench-b$batch.txt" 2>&1
    stamp "bench b$batch: exit $?"
    timeout -k 10 45 "$python" scripts/reference_bench.py --device "$device" --only torch --batch "$batch" \
        --size "$size" --reps 10 >> "$out/bench-b$batch.txt" 2>&1
    stamp "torch b$batch: exit $?"
done

# 4. Data keeps up: two epochs on 1,000 flower-sized JPEGs at 256, batch 64.
"$bin" data synth --out "$out/flowers" --classes 5 --per-class 200 --size 500 --height 375 \
    --format jpg > /dev/null 2>&1
cat > "$out/flowers.toml" <<TOML
name = "flowers-throughput"
[model]
flavour = "paper"
variant = "xxs"
[data]
root = "flowers"
image_size = $size
resize_bigger = $((size * 280 / 256))
workers = 8
[train]
epochs = 2
batch_size = 64
bn_recalibrate = 0
device = "$device"
TOML
timeout -k 10 90 "$bin" --autotune minimal --db "$out/runs.db" run "$out/flowers.toml" > "$out/data.txt" 2>&1
stamp "data: exit $?"
"$bin" --db "$out/runs.db" show 2 --json >> "$out/data.json" 2>/dev/null
stamp "done"
