#!/usr/bin/env bash
# Is the latency a sweep records the file's latency? Runs experiments/mobile-sweep.toml (shrunk
# with --set) with two workers, then times each trial's exported best.int8.onnx again with
# `mvlab bench --onnx` on the quiet machine, and prints recorded / measured per trial.
#   scripts/latency_check.sh [path/to/mvlab] [samples]
set -euo pipefail
mvlab=${1:-target/release/mvlab}
samples=${2:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
exp="$(cd "$(dirname "$0")/.." && pwd)/experiments/mobile-sweep.toml"
(cd "$work" && "$mvlab" --db m.db sweep "$exp" --workers 2 --set train.epochs=1 \
  --set sweep.samples="$samples" --set sweep.startup_trials=3 >/dev/null 2>&1)
echo "| run | parameters | recorded ms | bench ms | recorded / bench |"
echo "| --- | --- | --- | --- | --- |"
for run in $(seq 1 "$samples"); do
  file="$work/m.runs/$run/best.int8.onnx"
  [ -f "$file" ] || continue
  recorded=$(python3 -c "import sqlite3; print(sqlite3.connect('$work/m.db').execute(\"select value from metrics where run_id=$run and name='int8_latency_ms'\").fetchone()[0])")
  params=$(python3 -c "import sqlite3,json; o=json.loads(sqlite3.connect('$work/m.db').execute('select overrides from runs where id=$run').fetchone()[0]); print(' '.join(x for x in o if x.startswith(('model.','data.'))))")
  measured=$("$mvlab" bench --json --onnx "$file" | python3 -c "import json,sys; print(json.load(sys.stdin)['latency']['median_ms'])")
  python3 -c "print('| $run | $params | %.2f | %.2f | %.2f |' % ($recorded, $measured, $recorded / $measured))"
done
