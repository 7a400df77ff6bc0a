#!/usr/bin/env python3
"""Supervised reference for the scene world's shape task: can a small network learn the shape of
a scene's largest object from its pixels, and how many labelled examples does it take?

It trains on an ImageFolder that `cappa synth` writes (`OUT/eval/classify/shape/CLASS/*.png`):
80 % of the images for training, 20 % held out, and prints after every epoch the examples seen,
the last batch's loss and the held-out accuracy (chance is 1/K for K classes).

  cappa synth --out /tmp/shapes --samples 10 --eval-samples 6000 --image-format png \
      --world world.json
  python scripts/shape_learnability.py /tmp/shapes/eval/classify/shape --model vit --patch 16
  python scripts/shape_learnability.py /tmp/shapes/eval/classify/shape --model cnn

`--model vit` is the default comparison's encoder (pre-LN, width 64, 4 layers, 4 heads, MLP 256,
learned positions, GAP) with a linear head; `--model cnn` is a 4-layer convolutional network with
global max pooling. `--classes a,b,c` keeps only those shape classes. Used for
docs/shape-diagnosis.md; needs torch and Pillow (the venv `cargo xtask setup` provisions has both).
"""

import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image


def load(root, classes):
    xs, ys = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            if file.endswith((".png", ".jpg")):
                xs.append(np.asarray(Image.open(os.path.join(folder, file)).convert("RGB")))
                ys.append(label)
    if not xs:
        raise SystemExit(f"{root}: no images under the class folders {classes}")
    x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.tensor(ys)


class Vit(nn.Module):
    def __init__(self, image_size, patch, classes, width=64, depth=4, heads=4, mlp=256):
        super().__init__()
        self.conv = nn.Conv2d(3, width, patch, patch, bias=False)
        tokens = (image_size // patch) ** 2
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * width**-0.5)
        layer = nn.TransformerEncoderLayer(
            width, heads, mlp, 0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.conv(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.ln(self.blocks(x)).mean(1))


def cnn(classes):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, classes),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="an ImageFolder: one folder of images per class")
    ap.add_argument("--model", choices=["vit", "cnn"], default="vit")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", help="comma-separated subset of the class folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    classes = args.classes.split(",") if args.classes else sorted(
        d for d in os.listdir(args.root) if os.path.isdir(os.path.join(args.root, d))
    )
    x, y = load(args.root, classes)
    order = torch.randperm(len(y))
    x, y = x[order], y[order]
    n = int(0.8 * len(y))
    train_x, train_y, test_x, test_y = x[:n], y[:n], x[n:], y[n:]
    print(f"{len(y)} images, {len(classes)} classes ({','.join(classes)}), chance {1 / len(classes):.3f}")

    model = Vit(x.shape[-1], args.patch, len(classes)) if args.model == "vit" else cnn(len(classes))
    opt = torch.optim.AdamW(model.parameters(), args.lr, weight_decay=1e-4)
    started = time.time()
    print("epoch examples loss held_out_accuracy seconds")
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, args.batch):
            idx = perm[i : i + args.batch]
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        seen = (epoch + 1) * n
        print(f"{epoch} {seen} {loss.item():.3f} {accuracy:.3f} {time.time() - started:.0f}", flush=True)


if __name__ == "__main__":
    main()
