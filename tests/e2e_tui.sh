#!/usr/bin/env bash
# End to end in a real terminal (tmux): a seed group of two one-epoch runs is trained headless
# first; then open the workbench, start the quickstart experiment, watch the epoch counter and
# chart advance, edit the experiment file (the watcher picks it up), run it again, compare the
# two runs, draw the seed group as a band in Compare, show a run's likeliest mislabelled image
# (Unicode half-blocks, forced with MVLAB_IMAGES as tmux may pass sixel through), and quit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mvlab=${MVLAB:-$here/target/release/mvlab}
tmp=$(mktemp -d)
session="mvlab-e2e-$$"
cleanup() { tmux kill-session -t "$session" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

mkdir -p "$tmp/experiments"
sed -e "s|^root = .*|root = \"$here/assets/fashion-mnist-sample\"|" -e 's/^epochs = .*/epochs = 2/' -e 's/^image_size = .*/image_size = 32/' \
  -e 's/^resize_bigger = .*/resize_bigger = 36/' "$here/experiments/quickstart.toml" > "$tmp/experiments/quickstart.toml"

screen() { tmux capture-pane -p -t "$session"; }
wait_for() { # pattern, seconds
  local deadline=$((SECONDS + $2))
  until screen | grep -q -- "$1"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for: $1"; screen; exit 1; fi
    sleep 0.2
  done
}

"$mvlab" --db "$tmp/e2e.db" run "$tmp/experiments/quickstart.toml" --seeds 2 --set train.epochs=1 > "$tmp/group.txt" 2>&1 \
  || { cat "$tmp/group.txt"; echo "seed group failed"; exit 1; }
grep -q "group g1" "$tmp/group.txt" || { cat "$tmp/group.txt"; echo "no group line"; exit 1; }
echo "ok: seed group g1 trained headless"

tmux new-session -d -s "$session" -x 110 -y 32 "cd $tmp && MVLAB_IMAGES=halfblocks $mvlab --db $tmp/e2e.db; echo \$? > $tmp/exit_code"
wait_for "quickstart.toml" 20
echo "ok: experiments listed"

tmux send-keys -t "$session" Enter
wait_for "epoch 1/2" 60
echo "ok: run started, epoch counter at 1/2"
wait_for "epoch 2/2" 120
echo "ok: epoch counter advanced to 2/2"
screen | LC_ALL=C grep -qP '\xe2[\xa0-\xa3]' || { echo "no braille chart on screen"; screen; exit 1; }
echo "ok: chart drawn"
wait_for "run 3 completed" 120

# Edit the file: the watcher updates the preview, then a second run uses the new value.
sed -i 's/^lr = .*/lr = 0.001/' "$tmp/experiments/quickstart.toml"
tmux send-keys -t "$session" 1
wait_for "lr = 0.001" 10
echo "ok: edited experiment shown live"
tmux send-keys -t "$session" Enter
wait_for "run 4 completed" 180

tmux send-keys -t "$session" 2
wait_for "completed" 10
tmux send-keys -t "$session" ' ' j ' ' 4
wait_for "differing hyperparameters" 10
screen | grep -q "train.lr" || { echo "compare view lacks the differing train.lr"; screen; exit 1; }
echo "ok: two runs compared (train.lr differs)"

# Runs, newest first: 4 3 2 1. Unmark 4 and 3, then mark run 2's seed group with g.
tmux send-keys -t "$session" 2 ' ' k ' ' j j g 4
wait_for "±1 std band" 10
screen | grep -q "g1 mean±std" || { echo "compare view lacks the group's mean"; screen; exit 1; }
screen | grep -q "run 3" && { echo "unmarked run 3 still drawn"; screen; exit 1; }
echo "ok: seed group drawn as its mean with a ±1 std band"

tmux send-keys -t "$session" 7
wait_for "likeliest mislabelled" 60
screen | LC_ALL=C grep -qP '\xe2\x96[\x80\x84]' || { echo "no half-block image on screen"; screen; exit 1; }
echo "ok: a training image drawn with half-blocks in Samples"

tmux send-keys -t "$session" q
for _ in $(seq 50); do [ -f "$tmp/exit_code" ] && break; sleep 0.2; done
[ "$(cat "$tmp/exit_code" 2>/dev/null)" = "0" ] || { echo "mvlab did not exit cleanly"; exit 1; }
echo "ok: quit cleanly"
echo "e2e: 1 passed, 0 failed"
