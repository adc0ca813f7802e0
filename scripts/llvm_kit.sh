#!/usr/bin/env bash
# Places a static LLVM 23.1 kit from PyPI where cubecl's LLVM bundler (tracel-llvm-bundler, a build
# dependency of the `cuda` and `cube-cpu` features) looks for the bundle it would otherwise download
# from GitHub. Idempotent; prints the kit's folder.
#
#   scripts/llvm_kit.sh            # then: cargo build --release --features cuda (or cube-cpu)
#
# MVLAB_LLVM_CACHE: where the wheels are unpacked (default ~/.cache/mvlab-llvm).
set -euo pipefail
version=23.1.1.post0
cache=${MVLAB_LLVM_CACHE:-$HOME/.cache/mvlab-llvm}/$version
data=${XDG_DATA_HOME:-$HOME/.local/share}
# The bundler's own name for the LLVM it was made for (tracel-llvm-bundler 23.1.0-4).
dest=$data/tracel/tracel-llvm-23.1.0-4
marker=.tracel-llvm-installed

if [ -f "$dest/$marker" ] && [ -x "$dest/bin/llvm-config" ]; then
  echo "$dest"
  exit 0
fi
if [ ! -x "$cache/mlc_llvm_static/static/bin/llvm-config" ]; then
  # The base kit has llvm-config and the host target; the extra one adds NVPTX (PTX for cuda).
  python3 -m pip install -q --no-deps --target "$cache" \
    "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version" >&2
fi
kit=$cache/mlc_llvm_static/static
"$kit/bin/llvm-config" --version >/dev/null
mkdir -p "$(dirname "$dest")"
if [ -e "$dest" ] && [ ! -L "$dest" ]; then
  echo "$dest exists and is not a link to the kit; move it away first" >&2
  exit 1
fi
ln -sfn "$kit" "$dest"
touch "$kit/$marker"
echo "$dest"
