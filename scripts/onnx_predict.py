#!/usr/bin/env python3
"""Runs an ONNX file exported by `mvlab export` with onnxruntime and prints the same top-k as
`mvlab predict` (optional; CI does not need it).

    python3 -m venv .venv && .venv/bin/pip install onnxruntime pillow numpy
    .venv/bin/python scripts/onnx_predict.py model.onnx image.jpg [more images] [--top-k 3]

Images are prepared as mvlab's validation does: RGB (alpha over white), resized to the model's
input size with a bilinear (triangle) filter, scaled to [0, 1], NCHW.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image


def load(path, size):
    img = Image.open(path)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    img = img.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--top-k", type=int, default=3)
    args = ap.parse_args()
    session = ort.InferenceSession(args.model)
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"])
    size = json.loads(meta["mvlab_model"])["image_size"]
    for path in args.images:
        logits = session.run(["logits"], {"images": load(path, size)[None]})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        print(path)
        for i in np.argsort(-probs)[: args.top_k]:
            print(f"  {classes[i]:<20} {probs[i] * 100:6.2f}%")


if __name__ == "__main__":
    main()
