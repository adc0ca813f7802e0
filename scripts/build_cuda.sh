#!/usr/bin/env bash
# Builds mvlab with the `cuda` backend (and `vulkan`, so one binary serves both) on a machine
# that cannot reach GitHub: cubecl's LLVM bundler would download LLVM 23.1 from there, so the
# same LLVM comes from PyPI instead (scripts/llvm_kit.sh). Online, plain
# `cargo build --release --features cuda` does the same.
#
#   scripts/build_cuda.sh [extra cargo args...]     # e.g. --features cube-cpu for the parity tests
#
# No GPU or CUDA toolkit is needed to build: cudarc loads the driver at run time
# (CUDARC_CUDA_VERSION picks the API it binds, default 13.0; a 12.x driver wants 12080).
# About 25 minutes on 2 cores when burn's CPU build is already in the target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/llvm_kit.sh >/dev/null
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
cargo build --release --features cuda,vulkan "$@"
bin=${CARGO_TARGET_DIR:-target}/release/mvlab
"$bin" --version
echo "built $bin (cuda + vulkan); try: $bin bench --parity --device cuda"
