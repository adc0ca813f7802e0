#!/usr/bin/env python3
"""Does tpe search? The same sweep run with method = "tpe" and method = "random" at the same
budget over several sweep seeds, on the shipped Fashion-MNIST sample (or --data DIR): the best
val accuracy reached after k trials (mean +- std over seeds) for both, and for the
multi-objective sweep (val accuracy, int8 latency, size) the hypervolume after k trials.

    python3 scripts/search_bench.py --mvlab target/release/mvlab --seeds 3 --samples 10

Trials are taken in the order they were asked (run ids). Standard library only.
"""
import argparse, itertools, json, os, statistics, subprocess, sys, tempfile

SPACE = """
[sweep.parameters]
"train.lr" = { distribution = "log_uniform", min = 1e-4, max = 3e-2 }
"train.label_smoothing" = { distribution = "uniform", min = 0.0, max = 0.3 }
"train.weight_decay" = { distribution = "log_uniform", min = 1e-6, max = 1e-1 }
"""
MULTI_SPACE = SPACE + '"model.variant" = ["xxs", "xs", "s"]\n"data.image_size" = [64, 128]\n'


def config(data, method, seed, samples, epochs, multi):
    # "tpe-univariate": tpe with one estimator per parameter (multivariate = false).
    multivariate = "multivariate = false\n" if method == "tpe-univariate" else ""
    method = "tpe" if method.startswith("tpe") else method
    objectives = ('objectives = ["val_accuracy:max", "int8_latency_ms:min", "size_mb:min"]\n'
                  if multi else "")
    return f"""name = "search-bench"
[model]
flavour = "paper"
variant = "xxs"
[data]
root = "{data}"
image_size = 64
resize_bigger = 144
val_fraction = 0.2
[train]
epochs = {epochs}
batch_size = 32
optimizer = "adamw"
bn_recalibrate = 10
[sweep]
method = "{method}"
samples = {samples}
startup_trials = {max(2, samples // 3)}
seed = {seed}
{multivariate}{objectives}{MULTI_SPACE if multi else SPACE}"""


def run_sweep(mvlab, work, data, method, seed, samples, epochs, multi):
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "sweep.toml")
    with open(path, "w") as f:
        f.write(config(data, method, seed, samples, epochs, multi))
    db = os.path.join(work, "r.db")
    subprocess.run([mvlab, "--db", db, "sweep", path, "--workers", "1"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run([mvlab, "--db", db, "sweep", "report", "1", "--json", "--out",
                          os.path.join(work, "s.svg")], check=True, capture_output=True)
    report = json.loads(out.stdout)
    trials = sorted(report["trials"], key=lambda t: t["run"])
    return trials


def hypervolume(points, ref):
    """Exact, by inclusion-exclusion (a handful of points)."""
    points = [p for p in points if all(x < r for x, r in zip(p, ref))]
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = [max(c) for c in zip(*subset)]
            vol = 1.0
            for c, r in zip(corner, ref):
                vol *= r - c
            total += (-1) ** (k + 1) * vol
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mvlab", default="target/release/mvlab")
    ap.add_argument("--data", default=os.path.abspath("assets/fashion-mnist-sample"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--multi", action="store_true", help="the three-objective sweep")
    ap.add_argument("--methods", default="random,tpe",
                    help="comma-separated: random, tpe (multivariate), tpe-univariate")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="search-bench-")
    curves = {}
    methods = args.methods.split(",")
    for method in methods:
        for seed in range(args.seeds):
            trials = run_sweep(args.mvlab, os.path.join(work, f"{method}-{seed}"), args.data,
                               method, seed, args.samples, args.epochs, args.multi)
            if args.multi:
                # Oriented for minimisation: error rate, latency (ms), size (MB), against a
                # reference worse than any trial here.
                pts = [(1 - t["values"]["val_accuracy"], t["values"]["int8_latency_ms"],
                        t["values"]["size_mb"]) for t in trials]
                ref = (1.0, 100.0, 10.0)
                curve = [hypervolume(pts[:k], ref) for k in range(1, len(pts) + 1)]
            else:
                best, curve = 0.0, []
                for t in trials:
                    best = max(best, t["values"]["val_accuracy"])
                    curve.append(best)
            curves.setdefault(method, []).append(curve)
            print(f"{method} seed {seed}: {['%.4f' % v for v in curve]}", file=sys.stderr)
    what = "hypervolume (error x latency ms x MB, ref 1 x 100 x 10)" if args.multi else "best val accuracy"
    print("| k | " + " | ".join(f"{m}: {what}" for m in methods) + " |")
    print("|" + " --- |" * (len(methods) + 1))
    for k in range(args.samples):
        cells = []
        for method in methods:
            vals = [c[k] for c in curves[method] if len(c) > k]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.4f} +- {sd:.4f}")
        print(f"| {k + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
