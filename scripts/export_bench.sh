#!/usr/bin/env bash
# Latency and size of the model people ship, side by side: keras-xxs at 256 px (the Keras
# example's model) trained one epoch on the shipped sample, exported as ONNX (none, int8) and
# TFLite (none, dynamic, int8), each timed at batch 1 in the runtimes apps use: tract and
# onnxruntime for ONNX, LiteRT for TFLite (1 thread and all cores). Prints a Markdown table.
#   scripts/export_bench.sh [path/to/mvlab]
# Needs python3 with onnxruntime and ai-edge-litert.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mvlab=${1:-$root/target/release/mvlab}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$mvlab" --db b.db run "$root/experiments/xxs.toml" --set data.root="$root/assets/fashion-mnist-sample" \
  --set train.epochs=1 --set train.batch_size=16 >/dev/null 2>&1
for kind in none int8; do "$mvlab" --db b.db export 1 --format onnx --quantize $kind --out m-$kind.onnx >&2; done
for kind in none dynamic int8; do "$mvlab" --db b.db export 1 --format tflite --quantize $kind --out m-$kind.tflite >&2; done

ort_ms() { # median batch-1 latency in onnxruntime, one intra-op thread
  python3 - "$1" <<'PY'
import sys, time, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = (np.arange(3 * 256 * 256) % 251).astype(np.float32).reshape(1, 3, 256, 256) / 251
for _ in range(3): s.run(None, {"images": x})
t = []
for _ in range(15):
    a = time.perf_counter(); s.run(None, {"images": x}); t.append((time.perf_counter() - a) * 1e3)
print("%.2f" % sorted(t)[7])
PY
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "| file | size | tract 1 thread | onnxruntime 1 thread | LiteRT 1 thread | LiteRT all cores |"
echo "| --- | --- | --- | --- | --- | --- |"
for kind in none int8; do
  f=m-$kind.onnx
  tract=$("$mvlab" bench --json --onnx $f | json "'%.2f' % d['latency']['median_ms']")
  echo "| ONNX $kind | $(du -b $f | cut -f1 | awk '{printf "%.2f MB", $1/1e6}') | $tract ms | $(ort_ms $f) ms | | |"
done
for kind in none dynamic int8; do
  f=m-$kind.tflite
  lite=$("$mvlab" bench --json --tflite $f | json "' | '.join('%.2f ms' % l['median_ms'] for l in d['latency'])")
  echo "| TFLite $kind | $(du -b $f | cut -f1 | awk '{printf "%.2f MB", $1/1e6}') | | | $lite |"
done
echo "| Keras example, dynamic (reported) | 1.62 MB | | | | |"
