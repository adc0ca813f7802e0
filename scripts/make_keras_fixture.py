#!/usr/bin/env python3
"""Writes the Keras parity fixture used by tests/keras_parity.rs (run once by hand, not in CI).

    python3 -m venv .venv && .venv/bin/pip install tensorflow
    .venv/bin/python scripts/make_keras_fixture.py

Builds the Keras example's MobileViT-XXS (the model code in scripts/reference_bench.py) at 64x64
with 5 classes, seed 0, draws BatchNorm statistics and affine parameters at random (fresh ones are
the identity), and writes, in tests/fixtures/:
  keras_mobilevit_xxs.safetensors     the weights under mvlab's module paths, in burn's layouts
  keras_mobilevit_xxs_io.safetensors  `input` [2, 3, 64, 64] in [0, 1] (NCHW: a gradient and a
                                      checkerboard with a disc), Keras' `logits`, and `features`: the
                                      first MobileViT block's output (NCHW), which depends on the input
                                      far more than the logits of an untrained network do
"""
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reference_bench import keras_model  # noqa: E402

SIZE = 64
GAIN = 2.0
out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
keras.utils.set_random_seed(0)
model = keras_model(SIZE, num_classes=5)
model.layers[-1].activation = keras.activations.linear  # logits, not softmax

# mvlab's modules in construction order: (kind, path prefix).
plan = [("conv", "stem.conv")]
irb = lambda i: [("conv_nb", f"blocks.{i}.expand.conv"), ("bn", f"blocks.{i}.expand.bn"),
                 ("dw", f"blocks.{i}.depthwise.conv"), ("bn", f"blocks.{i}.depthwise.bn"),
                 ("conv_nb", f"blocks.{i}.project.conv"), ("bn", f"blocks.{i}.project.bn")]


def vit(i, depth):
    p = f"blocks.{i}"
    steps = [("conv", f"{p}.conv_kxk.conv"), ("conv", f"{p}.conv_1x1.conv")]
    for j in range(depth):
        t = f"{p}.transformer.{j}"
        steps += [("ln", f"{t}.norm1"), ("mha", f"{t}.attn"), ("ln", f"{t}.norm2"), ("dense", f"{t}.fc1"), ("dense", f"{t}.fc2")]
    return steps + [("conv", f"{p}.conv_proj.conv"), ("conv", f"{p}.conv_fusion.conv")]


for i in range(5):
    plan += irb(i)
plan += vit(5, 2) + irb(6) + vit(7, 4) + irb(8) + vit(9, 3) + [("conv", "final_conv.conv"), ("dense", "head")]

# Structured images (i.i.d. noise would give both the same global statistics).
yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
gradient = np.stack([xx, yy, 1 - xx])
checker = np.stack([(np.floor(xx * 4) + np.floor(yy * 4)) % 2, 0.2 + 0.0 * xx, (xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1])
x = np.stack([gradient, checker]).astype("float32")
nhwc = x.transpose(0, 2, 3, 1) * 255.0
rng = np.random.default_rng(0)

weights = {}
kinds = {"Conv2D": ("conv", "conv_nb"), "DepthwiseConv2D": ("dw",), "BatchNormalization": ("bn",),
         "LayerNormalization": ("ln",), "MultiHeadAttention": ("mha",), "Dense": ("dense",)}
steps = iter(plan)
for layer in model.layers:
    kind = kinds.get(type(layer).__name__)
    if kind is None:
        continue
    want, prefix = next(steps)
    if prefix == "blocks.5.conv_fusion.conv":
        first_vit = layer  # its output: the first MobileViT block's, compared as well
    assert want in kind, (want, prefix, layer.name)
    w = layer.get_weights()
    if want in ("conv", "conv_nb", "dw", "dense", "mha"):
        # Larger weights than Glorot's keep the input's trace alive through the network, so that
        # the comparison sees how the input is handled (any weights serve a parity test).
        w = [a * GAIN if a.ndim > 1 else a + rng.uniform(-0.05, 0.05, a.shape).astype("float32") for a in w]
        layer.set_weights(w)
    if want in ("conv", "conv_nb"):
        weights[f"{prefix}.weight"] = w[0].transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
        if want == "conv":
            weights[f"{prefix}.bias"] = w[1]
    elif want == "dw":
        weights[f"{prefix}.weight"] = w[0].transpose(2, 3, 0, 1)  # [kh, kw, c, 1] -> [c, 1, kh, kw]
    elif want == "bn":
        c = w[0].shape[0]
        w = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.1, 0.1, c), rng.uniform(-0.1, 0.1, c), rng.uniform(0.5, 1.5, c)]
        w = [a.astype("float32") for a in w]
        layer.set_weights(w)
        for name, v in zip(["gamma", "beta", "running_mean", "running_var"], w):
            weights[f"{prefix}.{name}"] = v
    elif want == "ln":
        weights[f"{prefix}.gamma"], weights[f"{prefix}.beta"] = w
    elif want == "dense":
        weights[f"{prefix}.weight"], weights[f"{prefix}.bias"] = w  # [in, out], as burn stores it
    elif want == "mha":
        qk, qb, kk, kb, vk, vb, ok, ob = w  # kernels [D, heads, key_dim], biases [heads, key_dim]
        d = qk.shape[0]
        weights[f"{prefix}.qkv.weight"] = np.concatenate([a.reshape(d, -1) for a in (qk, kk, vk)], axis=1)
        weights[f"{prefix}.qkv.bias"] = np.concatenate([a.reshape(-1) for a in (qb, kb, vb)])
        weights[f"{prefix}.proj.weight"] = ok.reshape(-1, ok.shape[-1])  # [heads, key_dim, D] -> [inner, D]
        weights[f"{prefix}.proj.bias"] = ob
assert next(steps, None) is None, "every mvlab module got weights"

logits = np.asarray(model(nhwc, training=False))
# At initialisation the logits barely depend on the input; the first MobileViT block's output does.
features = np.asarray(keras.Model(model.inputs, first_vit.output)(nhwc, training=False)).transpose(0, 3, 1, 2)
save_file({k: np.ascontiguousarray(v, dtype="float32") for k, v in weights.items()}, str(out / "keras_mobilevit_xxs.safetensors"))
save_file({"input": x, "logits": logits.astype("float32"), "features": np.ascontiguousarray(features, dtype="float32")},
          str(out / "keras_mobilevit_xxs_io.safetensors"))
print("features of the two images differ by up to", np.abs(features[0] - features[1]).max())
print(f"{len(weights)} tensors, {model.count_params()} parameters; logits:\n{logits}")
