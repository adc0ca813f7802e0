#!/usr/bin/env python3
"""The accuracy table in BENCHMARKS.md: mvlab and the reference code on identical splits of
Fashion-MNIST (Debian's dataset-fashion-mnist), same recipe, several seeds.

    .venv/bin/python scripts/accuracy_table.py --mvlab target/release/mvlab --out /tmp/acc

Datasets: `small` (30 images per class to train, 30 to validate), `large` (100 and 100), `2k`
(200 and 100), and `small-rgb` / `large-rgb` (those sets with each image's foreground and
background tinted by two random colours drawn per image, independent of the class: RGB-looking
variants with no colour cue). Train images come from Fashion-MNIST's train split, val images
from its t10k split.
Rows: the Keras example's code, timm's mobilevit_xxs, and mvlab (keras flavour: without
BatchNorm recalibration, with it, with it plus a moving average of the weights, and with it plus
AdamW + cosine; paper flavour with recalibration, and with the moving average too).
`--sets` and `--rows` (substrings of row names) pick part of the table; results.json keeps every
curve measured, so later calls add to it. Prints the markdown table; progress goes to stderr.
"""
import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Images per class: (train, val).
SETS = {"small": (30, 30), "large": (100, 100), "small-rgb": (30, 30), "large-rgb": (100, 100),
        "2k": (200, 100)}
# mvlab's defaults recalibrate and average; each row says what it uses.
MVLAB_ROWS = {
    "mvlab keras, no recalibration": ["model.flavour=keras", "train.bn_recalibrate=0",
                                      "train.ema_decay=0"],
    "mvlab keras, recalibration 10": ["model.flavour=keras", "train.bn_recalibrate=10",
                                      "train.ema_decay=0"],
    "mvlab keras, recal. + EMA 0.999": ["model.flavour=keras", "train.bn_recalibrate=10",
                                        "train.ema_decay=0.999"],
    "mvlab keras, recal. + AdamW + cosine": [
        "model.flavour=keras", "train.bn_recalibrate=10", "train.ema_decay=0",
        "train.optimizer=adamw", "train.weight_decay=0.01", "train.schedule=cosine",
        "train.warmup_epochs=1.0", "train.min_lr=0.0002"],
    "mvlab paper, recalibration 10": ["model.flavour=paper", "train.bn_recalibrate=10",
                                      "train.ema_decay=0"],
    "mvlab paper, recal. + EMA 0.999": ["model.flavour=paper", "train.bn_recalibrate=10",
                                        "train.ema_decay=0.999"],
}
REFERENCE_ROWS = {"Keras example code": "keras", "timm mobilevit_xxs": "timm"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_sets(mvlab, out, fmnist):
    for name, (train_n, val_n) in SETS.items():
        root = out / name
        if (root / "val").exists():
            continue
        source = out / f"import-{train_n}"
        if not source.exists():
            subprocess.run([mvlab, "data", "import", "fashion-mnist", "--from", fmnist, "--out",
                            str(source), "--per-class", str(train_n)], check=True,
                           stdout=subprocess.DEVNULL)
        for folder in sorted(source.iterdir()):
            images = sorted(folder.glob("*.png"))
            train = [i for i in images if i.name.startswith("train-")][:train_n]
            val = [i for i in images if not i.name.startswith("train-")][:val_n]
            for split, image in [("train", i) for i in train] + [("val", i) for i in val]:
                make_image(image, root / split / folder.name / image.name, name.endswith("-rgb"))


def make_image(image, dest, tint):
    """A link to `image`, or with `tint` an RGB copy coloured by a hash of its name."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    if tint:
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
    return curves(shown["epochs"])


def curves(epochs):
    """Val and train accuracy per epoch."""
    return {"val": [e["val_accuracy"] for e in epochs],
            "train": [e["train_accuracy"] for e in epochs]}


def run_reference(python, framework, data, a, seed):
    out = subprocess.run([python, str(HERE / "reference_train.py"), "--framework", framework,
                          "--train", str(data / "train"), "--val", str(data / "val"),
                          "--image-size", str(a.size), "--resize-bigger", str(a.resize),
                          "--epochs", str(a.epochs), "--batch", str(a.batch), "--seed", str(seed)],
                         check=True, capture_output=True, text=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return curves([l for l in lines if "epoch" in l and "best_epoch" not in l]), lines[-1]


def describe(runs, prior):
    vals = [r["val"] for r in runs]
    best = [max(c) for c in vals]
    final = [c[-1] for c in vals]
    first = [next((i + 1 for i, v in enumerate(c) if v > 2 * prior), None) for c in vals]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    pct = lambda v: f"{100 * statistics.mean(v):.1f} ± {100 * sd(v):.1f}"
    mean = lambda v: f"{100 * statistics.mean(v):.0f}"
    return {"best": pct(best), "final": pct(final),
            "best_minus_final": f"{100 * statistics.mean(b - f for b, f in zip(best, final)):.1f}",
            "first_epoch_over_twice_prior": ", ".join(str(f) if f else "never" for f in first),
            "epoch_1": f"{mean([r['val'][0] for r in runs])} / {mean([r['train'][0] for r in runs])}",
            # How far evaluation lags what training shows: about 0 when val is meaningful.
            "val_minus_train": f"{100 * statistics.mean(v - t for r in runs for v, t in zip(r['val'], r['train'])):+.1f}"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mvlab", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", required=True)
    p.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--rows", nargs="+", default=[""], help="substrings of the row names to run")
    p.add_argument("--table-only", action="store_true", help="print what results.json holds")
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
        rows = [r for r in list(REFERENCE_ROWS) + list(MVLAB_ROWS) if any(x in r for x in a.rows)]
        for row in rows:
            for seed in a.seeds:
                key = f"{name}|{row}|{seed}"
                if key in results or a.table_only:
                    continue
                log(f"{name}: {row}, seed {seed}")
                if row in REFERENCE_ROWS:
                    curve, last = run_reference(a.python, REFERENCE_ROWS[row], data, a, seed)
                    versions[row] = last.get("framework")
                else:
                    curve = run_mvlab(a.mvlab, out / f"runs-{name}.db", config, MVLAB_ROWS[row],
                                      seed)
                results[key] = curve
                results_path.write_text(json.dumps(results, indent=1))
    classes = 10
    print(f"| data | implementation | best val acc % | final val acc % | best − final | "
          f"first epoch val > 2x prior ({200 // classes}%), per seed | epoch 1 val / train acc % | "
          f"val − train acc, all epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in a.sets:
        for row in list(REFERENCE_ROWS) + list(MVLAB_ROWS):
            curves = [results[k] for k in (f"{name}|{row}|{s}" for s in a.seeds) if k in results]
            if curves:
                d = describe(curves, 1 / classes)
                print(f"| {name} | {row} | {d['best']} | {d['final']} | {d['best_minus_final']} | "
                      f"{d['first_epoch_over_twice_prior']} | {d['epoch_1']} | {d['val_minus_train']} |")
    if versions:
        log(json.dumps(versions))


if __name__ == "__main__":
    main()
