#!/usr/bin/env python3
"""The accuracy table in BENCHMARKS.md: mvlab and the reference code on identical splits of
Fashion-MNIST (Debian's dataset-fashion-mnist), same recipe, several seeds.

    .venv/bin/python scripts/accuracy_table.py --mvlab target/release/mvlab --out /tmp/acc

Datasets: `small` (30 images per class to train, 30 to validate), `large` (100 and 100), and
`small-rgb` (the small set with each image's foreground and background tinted by two random
colours drawn per image, independent of the class: an RGB-looking variant with no colour cue).
Train images come from Fashion-MNIST's train split, val images from its t10k split.
Rows: the Keras example's code, timm's mobilevit_xxs, and mvlab (keras flavour: without
BatchNorm recalibration, with it, and with it plus AdamW + cosine; paper flavour with it).
Writes results.json and prints the markdown table. Progress goes to stderr.
"""
import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = {"small": 30, "large": 100, "small-rgb": 30}
MVLAB_ROWS = {
    "mvlab keras, no recalibration": ["model.flavour=keras", "train.bn_recalibrate=0"],
    "mvlab keras, recalibration 10": ["model.flavour=keras", "train.bn_recalibrate=10"],
    "mvlab keras, recal. + AdamW + cosine": [
        "model.flavour=keras", "train.bn_recalibrate=10", "train.optimizer=adamw",
        "train.weight_decay=0.01", "train.schedule=cosine", "train.warmup_epochs=1.0",
        "train.min_lr=0.0002"],
    "mvlab paper, recalibration 10": ["model.flavour=paper", "train.bn_recalibrate=10"],
}
REFERENCE_ROWS = {"Keras example code": "keras", "timm mobilevit_xxs": "timm"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_sets(mvlab, out, fmnist):
    from PIL import Image

    for name, per_class in SETS.items():
        root = out / name
        if (root / "val").exists():
            continue
        source = out / f"import-{per_class}"
        if not source.exists():
            subprocess.run([mvlab, "data", "import", "fashion-mnist", "--from", fmnist, "--out",
                            str(source), "--per-class", str(per_class)], check=True,
                           stdout=subprocess.DEVNULL)
        for image in sorted(source.glob("*/*.png")):
            split = "train" if image.name.startswith("train-") else "val"
            dest = root / split / image.parent.name / image.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith("-rgb"):
                gray = Image.open(image).convert("L")
                seed = hashlib.sha256(image.name.encode()).digest()
                fg, bg = tuple(seed[:3]), tuple(seed[3:6])
                Image.composite(Image.new("RGB", gray.size, fg), Image.new("RGB", gray.size, bg),
                                gray).save(dest)
            else:
                dest.symlink_to(image.resolve())


def run_mvlab(mvlab, db, config, sets, seed):
    args = [mvlab, "--db", str(db), "run", str(config)] + [
        x for s in sets + [f"train.seed={seed}"] for x in ("--set", s)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = json.loads(subprocess.run([mvlab, "--db", str(db), "runs", "--json"], check=True,
                                     capture_output=True, text=True).stdout)
    shown = json.loads(subprocess.run([mvlab, "--db", str(db), "show", str(runs[0]["id"]), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    return [e["val_accuracy"] for e in shown["epochs"]]


def run_reference(python, framework, data, a, seed):
    out = subprocess.run([python, str(HERE / "reference_train.py"), "--framework", framework,
                          "--train", str(data / "train"), "--val", str(data / "val"),
                          "--image-size", str(a.size), "--resize-bigger", str(a.resize),
                          "--epochs", str(a.epochs), "--batch", str(a.batch), "--seed", str(seed)],
                         check=True, capture_output=True, text=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return [l["val_accuracy"] for l in lines if "epoch" in l and "best_epoch" not in l], lines[-1]


def describe(curves, prior):
    best = [max(c) for c in curves]
    final = [c[-1] for c in curves]
    first = [next((i + 1 for i, v in enumerate(c) if v > 2 * prior), None) for c in curves]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    pct = lambda v: f"{100 * statistics.mean(v):.1f} ± {100 * sd(v):.1f}"
    return {"best": pct(best), "final": pct(final),
            "best_minus_final": f"{100 * statistics.mean(b - f for b, f in zip(best, final)):.1f}",
            "first_epoch_over_twice_prior": ", ".join(str(f) if f else "never" for f in first)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mvlab", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", required=True)
    p.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--resize", type=int, default=72)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    make_sets(a.mvlab, out, a.fashion_mnist)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    versions = {}
    for name in a.sets:
        data = out / name
        config = data / "experiment.toml"
        config.write_text(
            f'name = "acc-{name}"\n[data]\ntrain_dir = "{data}/train"\nval_dir = "{data}/val"\n'
            f"image_size = {a.size}\nresize_bigger = {a.resize}\n"
            f'[train]\nepochs = {a.epochs}\nbatch_size = {a.batch}\nlr = 0.002\ndevice = "cpu"\n')
        rows = list(REFERENCE_ROWS) + list(MVLAB_ROWS)
        for row in rows:
            for seed in a.seeds:
                key = f"{name}|{row}|{seed}"
                if key in results:
                    continue
                log(f"{name}: {row}, seed {seed}")
                if row in REFERENCE_ROWS:
                    curve, last = run_reference(a.python, REFERENCE_ROWS[row], data, a, seed)
                    versions[row] = last.get("framework")
                else:
                    curve = run_mvlab(a.mvlab, out / "runs.db", config, MVLAB_ROWS[row], seed)
                results[key] = curve
                results_path.write_text(json.dumps(results, indent=1))
    classes = 10
    print(f"| data | implementation | best val acc % | final val acc % | best − final | "
          f"first epoch val > 2x prior ({200 // classes}%), per seed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in a.sets:
        for row in list(REFERENCE_ROWS) + list(MVLAB_ROWS):
            curves = [results[k] for k in (f"{name}|{row}|{s}" for s in a.seeds) if k in results]
            if curves:
                d = describe(curves, 1 / classes)
                print(f"| {name} | {row} | {d['best']} | {d['final']} | {d['best_minus_final']} | "
                      f"{d['first_epoch_over_twice_prior']} |")
    if versions:
        log(json.dumps(versions))


if __name__ == "__main__":
    main()
