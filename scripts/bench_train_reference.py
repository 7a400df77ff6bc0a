#!/usr/bin/env python3
"""PyTorch-eager reference for `cargo xtask bench train`.

The training loop a PyTorch user would write for the models of scripts/bench_models_reference.py
(imported from there, so the architectures are the same code): data in memory (batch 32 of random
images; random token ids, for CLIP ending in EOS), torch.optim.AdamW (lr 1e-3, betas 0.9/0.999,
eps 1e-8) with two parameter groups (weight decay 0.1 on matrices, none on biases, norms,
embeddings, logit scale), a warmup-cosine LambdaLR, clip_grad_norm_(1.0), and loss.item() each
step for logging. float32, CPU, eager by default; `--device cuda --precision bf16 --batch N`
for the GPU comparison of `cargo xtask device-bench` (torch.autocast bf16 around forward and loss,
TF32 and cuDNN benchmark on, as cappa's trainer does on CUDA).

Measured: median wall time of one step (zero_grad + forward + loss + backward + clipping +
optimizer.step + scheduler.step + loss.item()) for CLIP and CapPa.

    ~/.cache/cappa/torch-2.11.0/bin/python scripts/bench_train_reference.py \
        --preset tiny --threads 2 --json /tmp/train-ref-tiny.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_models_reference as models  # noqa: E402

DEVICE = "cpu"


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim >= 2 and "embedding" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def time_training(model, loss_fn, warmup: int, steps: int, total: int = 1_000_000,
                  bf16: bool = False) -> float:
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        device_type = "cuda" if torch.cuda.is_available() and DEVICE.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        value = loss.item()
        dt = time.perf_counter() - t0
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite loss {value}")
        if i >= warmup:
            times.append(dt * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(models.PRESETS), default="tiny")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, help="timed steps (20 tiny, 8 small)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU runs: cargo xtask device-bench)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast around the forward and loss")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--only", choices=["clip", "cappa"], help="time one model only")
    ap.add_argument("--seq-len", type=int, help="caption tokens (default: the preset's)")
    ap.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's)")
    ap.add_argument("--peak-flops", type=float, default=989e12,
                    help="for the MFU with --flops-per-example")
    ap.add_argument("--flops-per-example", type=str,
                    help="clip=F,cappa=F: training FLOPs per example (from cappa's JSON) for the MFU")
    args = ap.parse_args()

    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    if args.device != "cpu":
        # Every tensor the models and losses create goes to the device.
        torch.set_default_device(args.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    base = models.PRESETS[args.preset]
    text_len = args.seq_len or base.text_len
    # The trainer sizes the decoder's positions to the caption length.
    p = dataclasses.replace(base, max_len=text_len, text_len=text_len, vocab=args.vocab or base.vocab)
    steps = args.steps or p.timed_steps
    b = args.batch
    bf16 = args.precision == "bf16"

    clip = models.Clip(p)
    cappa = models.CapPa(p)
    images = torch.randn(b, 3, p.image, p.image)
    text = torch.randint(models.FIRST_ORDINARY_ID, p.vocab, (b, p.text_len))
    text[:, -1] = models.EOS_ID
    targets = torch.randint(models.FIRST_ORDINARY_ID, p.vocab, (b, p.text_len))

    result = {
        "preset": args.preset,
        "threads": args.threads,
        "params": {"clip": models.n_params(clip), "cappa": models.n_params(cappa)},
        "torch_version": torch.__version__,
        "device": args.device,
        "precision": args.precision,
        "batch": b,
    }
    names = [args.only] if args.only else ["clip", "cappa"]
    if "clip" in names:
        result["clip_step_ms"] = time_training(clip, lambda: clip.loss(images, text), args.warmup,
                                               steps, bf16=bf16)
    if "cappa" in names:
        result["cappa_step_ms"] = time_training(cappa, lambda: cappa.loss(images, targets),
                                                args.warmup, steps, bf16=bf16)
    flops = {}
    if args.flops_per_example:
        flops = {k: float(v) for k, v in (kv.split("=") for kv in args.flops_per_example.split(","))}
    for name in names:
        result[f"{name}_samples_per_s"] = b / (result[f"{name}_step_ms"] / 1e3)
        if name in flops:
            result[f"{name}_mfu"] = result[f"{name}_samples_per_s"] * flops[name] / args.peak_flops
    timings = ", ".join(f"{n} {result[n + '_step_ms']:.2f} ms" for n in names)
    print(f"PyTorch eager training loop, preset {args.preset}, {args.device} {args.precision}, "
          f"batch {b}, {args.threads} thread(s): {timings} per step")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
