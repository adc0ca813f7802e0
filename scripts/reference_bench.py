#!/usr/bin/env python3
"""The reference frameworks on mvlab's benchmark workloads (optional; CI does not need it).

    python3 -m venv .venv && .venv/bin/pip install tensorflow torch timm
    .venv/bin/python scripts/reference_bench.py --batch 8 --size 256 --threads 2 --json
    python3 scripts/reference_bench.py --device cuda --only torch     # PyTorch on the GPU

- keras-xxs: the Keras example's exact model code (Keras 3 on TensorFlow), Adam 2e-3 with
  label-smoothed categorical cross-entropy, `train_on_batch`; inference `predict_on_batch`.
- torch-xxs: timm `mobilevit_xxs` (paper flavour), 5 classes, Adam, cross-entropy with label
  smoothing 0.1; inference under `torch.inference_mode`.
Both: random images, one warm-up step, then the median of --reps repetitions, on --threads threads.
--device cuda runs PyTorch on the GPU (each timing waits for the GPU to finish), with PyTorch's
defaults (cuDNN convolutions may use TF32); --strict-fp32 turns TF32 off as well. A framework that
is not installed is skipped with a note on stderr.
`mvlab bench --compare` runs this script and prints mvlab/reference ratios.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time


def timed(fn, reps, sync=lambda: None):
    fn()  # warm-up (graph tracing, allocator, cuDNN plans)
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def keras_model(image_size, num_classes=5):
    # The Keras example "MobileViT: A mobile-friendly Transformer-based model for image
    # classification" (keras.io, Apache 2.0), model code unchanged.
    import keras
    from keras import backend, layers

    patch_size = 4
    expansion_factor = 2

    def conv_block(x, filters=16, kernel_size=3, strides=2):
        conv_layer = layers.Conv2D(filters, kernel_size, strides=strides, activation=keras.activations.swish, padding="same")
        return conv_layer(x)

    def correct_pad(inputs, kernel_size):
        img_dim = 2 if backend.image_data_format() == "channels_first" else 1
        input_size = inputs.shape[img_dim : (img_dim + 2)]
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        if input_size[0] is None:
            adjust = (1, 1)
        else:
            adjust = (1 - input_size[0] % 2, 1 - input_size[1] % 2)
        correct = (kernel_size[0] // 2, kernel_size[1] // 2)
        return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))

    def inverted_residual_block(x, expanded_channels, output_channels, strides=1):
        m = layers.Conv2D(expanded_channels, 1, padding="same", use_bias=False)(x)
        m = layers.BatchNormalization()(m)
        m = keras.activations.swish(m)
        if strides == 2:
            m = layers.ZeroPadding2D(padding=correct_pad(m, 3))(m)
        m = layers.DepthwiseConv2D(3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False)(m)
        m = layers.BatchNormalization()(m)
        m = keras.activations.swish(m)
        m = layers.Conv2D(output_channels, 1, padding="same", use_bias=False)(m)
        m = layers.BatchNormalization()(m)
        if keras.ops.equal(x.shape[-1], output_channels) and strides == 1:
            return layers.Add()([m, x])
        return m

    def mlp(x, hidden_units, dropout_rate):
        for units in hidden_units:
            x = layers.Dense(units, activation=keras.activations.swish)(x)
            x = layers.Dropout(dropout_rate)(x)
        return x

    def transformer_block(x, transformer_layers, projection_dim, num_heads=2):
        for _ in range(transformer_layers):
            x1 = layers.LayerNormalization(epsilon=1e-6)(x)
            attention_output = layers.MultiHeadAttention(num_heads=num_heads, key_dim=projection_dim, dropout=0.1)(x1, x1)
            x2 = layers.Add()([attention_output, x])
            x3 = layers.LayerNormalization(epsilon=1e-6)(x2)
            x3 = mlp(x3, hidden_units=[x.shape[-1] * 2, x.shape[-1]], dropout_rate=0.1)
            x = layers.Add()([x3, x2])
        return x

    def mobilevit_block(x, num_blocks, projection_dim, strides=1):
        local_features = conv_block(x, filters=projection_dim, strides=strides)
        local_features = conv_block(local_features, filters=projection_dim, kernel_size=1, strides=strides)
        num_patches = int((local_features.shape[1] * local_features.shape[2]) / patch_size)
        non_overlapping_patches = layers.Reshape((patch_size, num_patches, projection_dim))(local_features)
        global_features = transformer_block(non_overlapping_patches, num_blocks, projection_dim)
        folded_feature_map = layers.Reshape((*local_features.shape[1:-1], projection_dim))(global_features)
        folded_feature_map = conv_block(folded_feature_map, filters=x.shape[-1], kernel_size=1, strides=strides)
        local_global_features = layers.Concatenate(axis=-1)([x, folded_feature_map])
        return conv_block(local_global_features, filters=projection_dim, strides=strides)

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(scale=1.0 / 255)(inputs)
    x = conv_block(x, filters=16)
    x = inverted_residual_block(x, expanded_channels=16 * expansion_factor, output_channels=16)
    x = inverted_residual_block(x, expanded_channels=16 * expansion_factor, output_channels=24, strides=2)
    x = inverted_residual_block(x, expanded_channels=24 * expansion_factor, output_channels=24)
    x = inverted_residual_block(x, expanded_channels=24 * expansion_factor, output_channels=24)
    x = inverted_residual_block(x, expanded_channels=24 * expansion_factor, output_channels=48, strides=2)
    x = mobilevit_block(x, num_blocks=2, projection_dim=64)
    x = inverted_residual_block(x, expanded_channels=64 * expansion_factor, output_channels=64, strides=2)
    x = mobilevit_block(x, num_blocks=4, projection_dim=80)
    x = inverted_residual_block(x, expanded_channels=80 * expansion_factor, output_channels=80, strides=2)
    x = mobilevit_block(x, num_blocks=3, projection_dim=96)
    x = conv_block(x, filters=320, kernel_size=1, strides=1)
    x = layers.GlobalAvgPool2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def bench_keras(batch, size, reps):
    import numpy as np
    import keras
    import tensorflow as tf

    model = keras_model(size)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.002),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
    )
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch) % 5, 5)
    train = timed(lambda: model.train_on_batch(x, y), reps)
    infer = timed(lambda: model.predict_on_batch(x), reps)
    return {"model": "keras-xxs", "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
            "params": int(model.count_params()), "train_step_s": train, "infer_s": infer}


def bench_torch(batch, size, reps, device="cpu", strict_fp32=False):
    import timm
    import torch

    if strict_fp32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.rand(batch, 3, size, size, device=device)
    y = (torch.arange(batch) % 5).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        model.train()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    def infer():
        model.eval()
        with torch.inference_mode():
            model(x)

    train = timed(step, reps, sync)
    inf = timed(infer, reps, sync)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    framework = f"pytorch {torch.__version__} / timm {timm.__version__}"
    if device.startswith("cuda"):
        framework += f" on {torch.cuda.get_device_name(device)}" + (" (fp32, no TF32)" if strict_fp32 else "")
    return {"model": "xxs", "framework": framework, "device": device,
            "params": params, "train_step_s": train, "infer_s": inf}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=["keras", "torch"], default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (PyTorch only)")
    ap.add_argument("--strict-fp32", action="store_true", help="on CUDA: no TF32 in convolutions or matmuls")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = []
    if args.only is None:
        # TensorFlow and PyTorch each bring their own LLVM; they cannot share one process.
        import subprocess
        frameworks = ("keras", "torch") if args.device == "cpu" else ("torch",)
        for only in frameworks:
            cmd = [sys.executable, __file__, "--only", only, "--json", "--batch", str(args.batch),
                   "--size", str(args.size), "--threads", str(args.threads), "--reps", str(args.reps),
                   "--device", args.device] + (["--strict-fp32"] if args.strict_fp32 else [])
            results += json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
    needs = {"keras": ("tensorflow", "keras"), "torch": ("torch", "timm")}.get(args.only, ())
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        print(f"reference_bench: skipping {args.only}: {', '.join(missing)} not installed", file=sys.stderr)
        args.only = "none"
    if args.only == "keras":
        if args.device != "cpu":
            sys.exit("reference_bench: --device is for PyTorch only")
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        results.append(bench_keras(args.batch, args.size, args.reps))
    if args.only == "torch":
        import torch
        torch.set_num_threads(args.threads)
        results.append(bench_torch(args.batch, args.size, args.reps, args.device, args.strict_fp32))
    for r in results if args.only else []:
        r.update(batch=args.batch, size=args.size, threads=args.threads,
                 train_images_per_s=args.batch / r["train_step_s"], infer_images_per_s=args.batch / r["infer_s"])
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        for r in results:
            print(f"{r['model']:<10} {r['framework']}: train step {r['train_step_s']:.3f} s, inference {r['infer_s']:.3f} s")


if __name__ == "__main__":
    main()
