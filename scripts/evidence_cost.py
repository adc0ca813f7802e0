#!/usr/bin/env python3
"""What recording evidence costs (BENCHMARKS.md): the quickstart run with per-image dynamics off
and on, alternating, in one go on one machine. Each run's cost is its training time as recorded
(the sum of its epochs' seconds: steps, the dynamics' readback and file, evaluation) and the
process's wall time (run creation, which fingerprints the dataset, included; it ends on the
registry writer's one-second tick, so it is coarse). Then the first and later fingerprints of
the dataset folder with an empty cache.

    python3 scripts/evidence_cost.py --mvlab target/release/mvlab [--reps 3] [--data DIR]
"""
import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mvlab", default="target/release/mvlab")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default=str(HERE / "assets/fashion-mnist-sample"))
    args = ap.parse_args()
    mvlab = str(Path(args.mvlab).resolve())
    config = str(HERE / "experiments/quickstart.toml")
    times = {"off": [], "on": []}
    train = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, XDG_CACHE_HOME=tmp)
        for rep in range(args.reps):
            for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                start = time.perf_counter()
                subprocess.run([mvlab, "--db", f"{tmp}/r.db", "run", config, "--set",
                                f"train.dynamics={'true' if mode == 'on' else 'false'}"],
                               check=True, capture_output=True, env=env)
                times[mode].append(time.perf_counter() - start)
                with sqlite3.connect(f"{tmp}/r.db") as db:
                    (seconds,) = db.execute(
                        "SELECT sum(value) FROM metrics WHERE split = 'train' AND name = "
                        "'epoch_seconds' AND run_id = (SELECT max(id) FROM runs)").fetchone()
                train[mode].append(seconds)
        prints = []
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, XDG_CACHE_HOME=cache)
            for _ in range(3):
                out = subprocess.run([mvlab, "data", "fingerprint", args.data], check=True,
                                     capture_output=True, text=True, env=env).stdout
                prints.append(float(out.split(" in ")[1].split(" ms")[0]))
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}
    wall, trained = med(times), med(train)
    print(json.dumps({
        "wall_s": times, "train_s": train, "median_wall_s": wall, "median_train_s": trained,
        "cost_train": trained["on"] / trained["off"] - 1,
        "cost_wall": wall["on"] / wall["off"] - 1,
        "fingerprint_ms": prints, "data": args.data,
    }))


if __name__ == "__main__":
    main()
