# Runs a TFLite file in LiteRT for mvlab (src/export/litert.rs). argv: model path, then a JSON
# request. Inputs arrive on stdin as float32 NHWC; answers go to stdout.
import json
import sys
import time

try:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
except ImportError as e:
    sys.stderr.write(f"LiteRT is not installed ({e}): python3 -m pip install ai-edge-litert\n")
    sys.exit(3)

path, request = sys.argv[1], json.loads(sys.argv[2])
resolver = {
    "reference": OpResolverType.BUILTIN_REF,
    "default": OpResolverType.AUTO,
}[request["kernels"]]
interp = Interpreter(
    model_path=path,
    num_threads=request.get("threads"),
    experimental_op_resolver_type=resolver,
)
inp = interp.get_input_details()[0]
out = interp.get_output_details()[0]
s = request["size"]

if request["mode"] == "logits":
    n = request["n"]
    images = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32).reshape(n, s, s, 3)
    batch = request.get("batch", 1)
    if batch != 1:
        interp.resize_tensor_input(inp["index"], [batch, s, s, 3])
    interp.allocate_tensors()
    rows = []
    for i in range(0, n, batch):
        chunk = images[i : i + batch]
        if len(chunk) != batch:
            interp.resize_tensor_input(inp["index"], [len(chunk), s, s, 3])
            interp.allocate_tensors()
        interp.set_tensor(inp["index"], np.ascontiguousarray(chunk))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"]).astype(np.float32))
    sys.stdout.buffer.write(np.concatenate(rows).tobytes())
elif request["mode"] == "latency":
    interp.allocate_tensors()
    image = (np.arange(s * s * 3) % 251).astype(np.float32).reshape(1, s, s, 3) / 251.0
    for _ in range(request["warmup"]):
        interp.set_tensor(inp["index"], image)
        interp.invoke()
    times = []
    for _ in range(request["runs"]):
        interp.set_tensor(inp["index"], image)
        started = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - started) * 1e3)
    sys.stdout.write(json.dumps({"times_ms": times}))
else:
    sys.stderr.write(f"unknown mode {request['mode']!r}\n")
    sys.exit(2)
