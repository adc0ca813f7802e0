#!/usr/bin/env python3
"""Train the reference implementations on an image folder, for accuracy comparisons with mvlab
on identical splits.

    python3 -m venv .venv && .venv/bin/pip install tensorflow-cpu torch timm
    .venv/bin/python scripts/reference_train.py --framework keras --train DIR/train --val DIR/val \
        --image-size 64 --resize-bigger 72 --epochs 10 --batch 32 --seed 0

- keras: the Keras example's model code (scripts/reference_bench.py, unchanged) and recipe:
  resize to --resize-bigger, random crop to --image-size and random horizontal flip for training,
  resize only for val; Adam (--lr, epsilon 1e-7), categorical cross-entropy with label smoothing
  0.1, `model.fit`.
- timm: timm's `mobilevit_xxs` (paper flavour, from scratch) with the same data pipeline, pixels in
  [0, 1] as mvlab feeds them, Adam (--lr, epsilon 1e-7), cross-entropy with label smoothing 0.1.

Folders are DIR/<class>/<image>, class names sorted (as mvlab does). Prints one JSON object per
epoch ({"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}), then a summary
({"best_val_accuracy", "best_epoch", "final_val_accuracy"}).
"""
import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def listing(root):
    classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((Path(root) / c).iterdir()):
            if f.suffix.lower() in EXTENSIONS:
                files.append(str(f))
                labels.append(i)
    return classes, files, labels


def emit(record):
    print(json.dumps(record), flush=True)


def summary(history):
    best = max(history, key=lambda h: h["val_accuracy"])
    return {"best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
            "final_val_accuracy": history[-1]["val_accuracy"]}


def train_keras(a, classes, train, val):
    import numpy as np
    import keras
    import tensorflow as tf

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("reference_bench", here / "reference_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    keras.utils.set_random_seed(a.seed)
    n = len(classes)

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.cast(image, tf.float32)

    def pipeline(files, labels, training):
        ds = tf.data.Dataset.from_tensor_slices((files, labels))
        if training:
            ds = ds.shuffle(len(files), seed=a.seed, reshuffle_each_iteration=True)

        def pp(path, label):
            image = load(path)
            if training:
                image = tf.image.resize(image, (a.resize_bigger, a.resize_bigger))
                image = tf.image.random_crop(image, (a.image_size, a.image_size, 3))
                image = tf.image.random_flip_left_right(image)
            else:
                image = tf.image.resize(image, (a.image_size, a.image_size))
            return image, tf.one_hot(label, depth=n)

        return ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE).batch(a.batch).prefetch(tf.data.AUTOTUNE)

    model = bench.keras_model(a.image_size, n)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=a.lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    history = []

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            h = {"epoch": epoch + 1, "train_loss": float(logs["loss"]),
                 "train_accuracy": float(logs["accuracy"]), "val_loss": float(logs["val_loss"]),
                 "val_accuracy": float(logs["val_accuracy"])}
            history.append(h)
            emit(h)

    model.fit(pipeline(*train, True), validation_data=pipeline(*val, False), epochs=a.epochs,
              callbacks=[Report()], verbose=0)
    emit({**summary(history), "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}"})


def train_timm(a, classes, train, val):
    import random

    import numpy as np
    import timm
    import torch
    from PIL import Image

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    def image(path, size):
        img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)

    class Folder(torch.utils.data.Dataset):
        def __init__(self, files, labels, training):
            self.files, self.labels, self.training = files, labels, training

        def __len__(self):
            return len(self.files)

        def __getitem__(self, i):
            if not self.training:
                return image(self.files[i], a.image_size), self.labels[i]
            x = image(self.files[i], a.resize_bigger)
            top = random.randint(0, a.resize_bigger - a.image_size)
            left = random.randint(0, a.resize_bigger - a.image_size)
            x = x[:, top:top + a.image_size, left:left + a.image_size]
            if random.random() < 0.5:
                x = x.flip(2)
            return x, self.labels[i]

    gen = torch.Generator().manual_seed(a.seed)
    train_dl = torch.utils.data.DataLoader(Folder(*train, True), batch_size=a.batch, shuffle=True, generator=gen)
    val_dl = torch.utils.data.DataLoader(Folder(*val, False), batch_size=a.batch)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    history = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        loss_sum, right, seen = 0.0, 0, 0
        for x, y in train_dl:
            opt.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            right += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        model.eval()
        v_loss, v_right, v_seen = 0.0, 0, 0
        with torch.inference_mode():
            for x, y in val_dl:
                logits = model(x)
                v_loss += loss_fn(logits, y).item() * len(y)
                v_right += (logits.argmax(1) == y).sum().item()
                v_seen += len(y)
        h = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": right / seen,
             "val_loss": v_loss / v_seen, "val_accuracy": v_right / v_seen}
        history.append(h)
        emit(h)
    emit({**summary(history), "framework": f"pytorch {torch.__version__} / timm {timm.__version__}"})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=["keras", "timm"], required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--resize-bigger", type=int, default=280)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    classes, *train = listing(a.train)
    val_classes, *val = listing(a.val)
    if classes != val_classes:
        sys.exit(f"class folders differ: {classes} vs {val_classes}")
    if a.framework == "keras":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
        train_keras(a, classes, train, val)
    else:
        import torch
        torch.set_num_threads(a.threads)
        train_timm(a, classes, train, val)


if __name__ == "__main__":
    main()
