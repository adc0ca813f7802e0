#!/usr/bin/env python3
"""Mislabel detection, measured (BENCHMARKS.md): Fashion-MNIST (Debian's dataset-fashion-mnist),
2,000 training images (200 a class) with 5% of their labels flipped to another class (seeded),
1,000 clean val images; one mvlab run records its per-image dynamics, then `mvlab samples`
lists its top 100 suspects. Prints the precision among them (chance: 0.05) as JSON.

    python3 scripts/mislabel_bench.py --mvlab target/release/mvlab --out /tmp/mislabel [--seed 1]
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG = """name = "mislabel-{seed}"
[model]
flavour = "paper"
variant = "xxs"
[data]
train_dir = "{train}"
val_dir = "{val}"
image_size = {size}
resize_bigger = {bigger}
[train]
epochs = {epochs}
batch_size = 32
lr = 0.002
label_smoothing = 0.1
seed = {seed}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mvlab", default="target/release/mvlab")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--flip", type=float, default=0.05)
    args = ap.parse_args()
    mvlab = str(Path(args.mvlab).resolve())
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    raw, train, val = out / "raw", out / "train", out / "val"
    run = lambda *a: subprocess.run([mvlab, "--db", str(out / "reg.db"), *a], check=True,
                                    capture_output=True, text=True).stdout
    run("data", "import", "fashion-mnist", "--out", str(raw), "--per-class", "200")
    classes = sorted(p.name for p in raw.iterdir() if p.is_dir())
    for c in classes:
        (train / c).mkdir(parents=True)
        (val / c).mkdir(parents=True)
        for f in sorted((raw / c).glob("train-*.png")):
            f.rename(train / c / f.name)
        for f in sorted((raw / c).glob("t10k-*.png"))[:100]:
            f.rename(val / c / f.name)
    shutil.rmtree(raw)

    rng = random.Random(args.seed)
    images = sorted(train.glob("*/*.png"))
    flipped = set()
    for f in rng.sample(images, round(args.flip * len(images))):
        wrong = rng.choice([c for c in classes if c != f.parent.name])
        dest = train / wrong / f.name
        f.rename(dest)
        flipped.add(str(dest))
    (out / "flipped.txt").write_text("\n".join(sorted(flipped)) + "\n")

    cfg = out / "mislabel.toml"
    cfg.write_text(CONFIG.format(seed=args.seed, train=train, val=val, size=args.size,
                                 bigger=args.size + args.size // 8, epochs=args.epochs))
    print(f"training {len(images)} images ({len(flipped)} relabelled) for {args.epochs} epochs",
          file=sys.stderr)
    run("run", str(cfg))
    runs = json.loads(run("runs", "--json"))
    run_id = max(r["id"] for r in (runs["runs"] if isinstance(runs, dict) else runs))
    samples = json.loads(run("samples", str(run_id), "--top", str(args.top), "--json"))
    top = [s["path"] for s in samples["suspects"]]
    hits = sum(1 for p in top if str(Path(p).resolve()) in flipped)
    result = {
        "seed": args.seed, "train_images": len(images), "flipped": len(flipped),
        "epochs": args.epochs, "image_size": args.size, "top": len(top), "hits": hits,
        "precision": hits / max(1, len(top)), "chance": len(flipped) / len(images),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
