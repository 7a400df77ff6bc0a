"""Writes crates/cappa-trainer/tests/fixtures/adamw_torch.json: torch.optim.AdamW on two
parameters (a decayed 3x4 matrix and an undecayed bias of 4) for six steps with given
gradients and per-step learning rates (warmup then decay, as a schedule would set them).

    python3 scripts/make_adamw_fixture.py   # needs torch (any 2.x)
"""
import json
import math
import pathlib

import torch

torch.manual_seed(0)
weight = torch.randn(3, 4)
bias = torch.randn(4)
steps = 6
grads = [(torch.randn(3, 4) * (1 + s), torch.randn(4) * 0.1) for s in range(steps)]
lrs = [1e-2 * min(1.0, (s + 1) / 3) * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]
config = dict(betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)

w = weight.clone().requires_grad_(True)
b = bias.clone().requires_grad_(True)
opt = torch.optim.AdamW(
    [{"params": [w], "weight_decay": config["weight_decay"]}, {"params": [b], "weight_decay": 0.0}],
    lr=lrs[0], betas=config["betas"], eps=config["eps"], foreach=False, fused=False,
)
after = []
for s in range(steps):
    for group in opt.param_groups:
        group["lr"] = lrs[s]
    w.grad, b.grad = grads[s][0].clone(), grads[s][1].clone()
    opt.step()
    after.append({"weight": w.detach().flatten().tolist(), "bias": b.detach().flatten().tolist()})

fixture = {
    "torch_version": torch.__version__,
    "beta1": config["betas"][0], "beta2": config["betas"][1], "eps": config["eps"],
    "weight_decay": config["weight_decay"],
    "weight": weight.flatten().tolist(), "bias": bias.flatten().tolist(),
    "grads": [{"weight": g.flatten().tolist(), "bias": gb.flatten().tolist()} for g, gb in grads],
    "lrs": lrs,
    "after": after,
}
out = pathlib.Path(__file__).resolve().parent.parent / "crates/cappa-trainer/tests/fixtures/adamw_torch.json"
out.write_text(json.dumps(fixture, indent=1) + "\n")
print(f"wrote {out}")
