#!/usr/bin/env python3
"""PyTorch-eager reference for `cargo xtask bench train`.

The training loop a PyTorch user would write for the models of scripts/bench_models_reference.py
(imported from there, so the architectures are the same code): data in memory (batch 32 of random
images; random token ids, for CLIP ending in EOS), torch.optim.AdamW (lr 1e-3, betas 0.9/0.999,
eps 1e-8) with two parameter groups (weight decay 0.1 on matrices, none on biases, norms,
embeddings, logit scale), a warmup-cosine LambdaLR, clip_grad_norm_(1.0), and loss.item() each
step for logging. float32, CPU, eager.

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


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim >= 2 and "embedding" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def time_training(model, loss_fn, warmup: int, steps: int, total: int = 1_000_000) -> float:
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    # The trainer sizes the decoder's positions to the caption length.
    p = dataclasses.replace(models.PRESETS[args.preset], max_len=models.PRESETS[args.preset].text_len)
    steps = args.steps or p.timed_steps
    b = 32

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
        "clip_step_ms": time_training(clip, lambda: clip.loss(images, text), args.warmup, steps),
        "cappa_step_ms": time_training(cappa, lambda: cappa.loss(images, targets), args.warmup,
                                       steps),
        "torch_version": torch.__version__,
    }
    print(f"PyTorch eager training loop, preset {args.preset}, {args.threads} thread(s): "
          f"CLIP {result['clip_step_ms']:.2f} ms, CapPa {result['cappa_step_ms']:.2f} ms per step")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
