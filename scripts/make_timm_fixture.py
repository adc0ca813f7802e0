#!/usr/bin/env python3
"""Writes the timm parity fixture used by tests/timm_parity.rs (run once by hand, not in CI).

    python3 -m venv .venv && .venv/bin/pip install torch timm safetensors
    .venv/bin/python scripts/make_timm_fixture.py

timm `mobilevit_xxs`, pretrained=False, seed 0, 5 classes, eval mode. BatchNorm statistics and
affine parameters are then drawn at random (seed 0) so that the fixture exercises them (fresh
ones are the identity). Outputs, in tests/fixtures/:
  timm_mobilevit_xxs.safetensors     the state dict (timm names)
  timm_mobilevit_xxs_io.safetensors  `input` [2, 3, 64, 64] in [0, 1] and timm's `logits` [2, 5]
It also prints the trainable parameter counts of mobilevit_xxs/xs/s with 5 classes.
"""
import pathlib

import timm
import torch
from safetensors.torch import save_file

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
out.mkdir(parents=True, exist_ok=True)

for name in ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]:
    m = timm.create_model(name, pretrained=False, num_classes=5)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    print(f"{name}: {n} trainable parameters (5 classes)")

torch.manual_seed(0)
model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5).eval()
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    x = torch.rand(2, 3, 64, 64, generator=g)
    logits = model(x)

state = {k: v.contiguous() for k, v in model.state_dict().items()}
save_file(state, str(out / "timm_mobilevit_xxs.safetensors"))
save_file({"input": x.contiguous(), "logits": logits.contiguous()}, str(out / "timm_mobilevit_xxs_io.safetensors"))
print("logits:", logits)
