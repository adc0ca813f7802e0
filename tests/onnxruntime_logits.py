"""Logits of an ONNX file in onnxruntime, for the export tests: argv = model, input file of
float32 NCHW images, batch size, image size, output file (float32 logits)."""
import sys

import numpy as np
import onnxruntime as ort

model, inputs, n, size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
images = np.fromfile(inputs, dtype=np.float32).reshape(n, 3, size, size)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
session.run(["logits"], {"images": images})[0].astype(np.float32).tofile(out)
