#!/usr/bin/env python3
"""Pillow + torchvision reference for the data-pipeline benchmark.

Times, for a directory of JPEGs (about 256 px), the work a typical PyTorch user's training
pipeline does per image and per batch:

    PIL.Image.open -> convert("RGB") -> RandomResizedCrop(224) (torchvision defaults, PIL
    bilinear) -> ToTensor -> Normalize(0.5, 0.5) (values in [-1, 1]) -> torch.stack by 32.

The file bytes are read into memory once, so disk speed does not enter the figure (the Rust side,
`bench_pipeline` in `crates/cappa-data/src/pipeline.rs`, does the same). No DataLoader:
  * 1 thread: torch.set_num_threads(1), a plain loop in this process;
  * 2 threads: 2 worker processes (multiprocessing, fork), each with torch.set_num_threads(1),
    each building whole batches of its share of the files. The batches stay in the workers (only
    a count comes back), so the figure leaves out the inter-process transfer a DataLoader pays.

images/s = images processed / wall seconds, over repeated passes for at least --seconds seconds
after one warm-up pass.

Run it with the torch the Rust side links against, e.g.

    /tmp/cappa-fresh/torch-2.11.0/bin/python scripts/bench_data_reference.py \\
        --dir /tmp/cappa-bench-jpegs --json /tmp/bench-data-ref.json

Output: one line per thread count and a JSON file {"images_per_s_1": ..., "images_per_s_2": ...}.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import time

import torch
from PIL import Image
from torchvision import transforms

BATCH = 32
SIZE = 224

_FILES: list[bytes] = []


def make_transform() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE),
            transforms.ToTensor(),
            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )


def run_batches(indices: list[int]) -> int:
    """Decodes, transforms and stacks the files at `indices` in batches; returns the count."""
    transform = make_transform()
    done = 0
    for start in range(0, len(indices), BATCH):
        chunk = indices[start : start + BATCH]
        views = []
        for index in chunk:
            image = Image.open(io.BytesIO(_FILES[index])).convert("RGB")
            views.append(transform(image))
        batch = torch.stack(views)
        done += batch.shape[0]
    return done


def _worker_init() -> None:
    torch.set_num_threads(1)


def measure(threads: int, seconds: float) -> float:
    n = len(_FILES) // BATCH * BATCH
    indices = list(range(n))
    if threads == 1:
        torch.set_num_threads(1)
        run_batches(indices)
        start = time.perf_counter()
        images = 0
        while time.perf_counter() - start < seconds:
            images += run_batches(indices)
        return images / (time.perf_counter() - start)
    # Whole batches per worker: split the batch list, not the images.
    batches = [indices[i : i + BATCH] for i in range(0, n, BATCH)]
    shares = [sum(batches[w::threads], []) for w in range(threads)]
    with mp.get_context("fork").Pool(threads, initializer=_worker_init) as pool:
        pool.map(run_batches, shares)
        start = time.perf_counter()
        images = 0
        while time.perf_counter() - start < seconds:
            images += sum(pool.map(run_batches, shares))
        return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="directory of .jpg files (>= 32)")
    parser.add_argument("--json", default="bench-data-ref.json", help="where to write results")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per setting")
    args = parser.parse_args()

    names = sorted(f for f in os.listdir(args.dir) if f.lower().endswith((".jpg", ".jpeg")))
    for name in names:
        with open(os.path.join(args.dir, name), "rb") as f:
            _FILES.append(f.read())
    if len(_FILES) < BATCH:
        raise SystemExit(f"need at least {BATCH} JPEGs in {args.dir}, found {len(_FILES)}")

    result = {}
    for threads in (1, 2):
        rate = measure(threads, args.seconds)
        print(f"pillow+torchvision: {threads} thread(s): {rate:.0f} images/s")
        result[f"images_per_s_{threads}"] = rate
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
