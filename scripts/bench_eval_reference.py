#!/usr/bin/env python3
"""open_clip reference for `cappa bench eval --open-clip DIR`: image features/s of a CLIP B/16.

`cappa bench eval --open-clip DIR` writes an ImageFolder of JPEGs (`DIR/images/CLASS/*.jpg`,
320x256 and 256x320) and exports its untrained CLIP B/16 (open_clip's ViT-B-16 layout) with the
open_clip exporter to `DIR/model` (`open_clip_config.json` + `open_clip_model.safetensors`). This
script loads the same weights with

    open_clip.create_model_and_transforms("local-dir:DIR/model")

and times, on the same files, batch 32, fp32, eval mode, torch.no_grad, after one warm-up batch:

  * end to end: PIL.Image.open -> open_clip's own validation preprocess (Resize(224) of the
    shorter side, BICUBIC, CenterCrop(224), ToTensor, Normalize(0.5, 0.5) from the exported
    preprocess_cfg) -> torch.stack -> model.encode_image(x, normalize=True), one image after
    the other in this process (no DataLoader workers); cappa decodes and resizes with bilinear
    filtering, on rayon threads;
  * model only: model.encode_image on the already preprocessed batches.

The thread count is set with torch.set_num_threads(--threads) (cappa's `--threads`).

Run it with the torch the Rust side links against, e.g.

    ~/.cache/cappa/torch-2.11.0/bin/python scripts/bench_eval_reference.py \\
        --dir target/bench/eval-open-clip --threads 2 --json /tmp/bench-eval-ref.json

Output: one line and a JSON file {"features_per_s": ..., "model_only_features_per_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def image_files(root: Path) -> list[Path]:
    """ImageFolder order: classes sorted, then file names sorted (as cappa reads it)."""
    files = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files.extend(
            sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        )
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the DIR of cappa bench eval --open-clip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{args.dir / 'model'}")
    model.eval()
    files = image_files(args.dir / "images")
    assert files, f"no images under {args.dir / 'images'}"
    batches = [files[i : i + args.batch] for i in range(0, len(files), args.batch)]

    def encode(paths: list[Path]) -> torch.Tensor:
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        return model.encode_image(pixels, normalize=True)

    with torch.no_grad():
        encode(batches[0])  # warm-up
        start = time.perf_counter()
        for chunk in batches:
            encode(chunk)
        seconds = time.perf_counter() - start

        prepared = [torch.stack([preprocess(Image.open(p).convert("RGB")) for p in chunk]) for chunk in batches]
        model.encode_image(prepared[0], normalize=True)
        start = time.perf_counter()
        for pixels in prepared:
            model.encode_image(pixels, normalize=True)
        model_seconds = time.perf_counter() - start

    figures = {
        "model": "open_clip local-dir export of cappa's CLIP B/16 at 224, fp32",
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "images": len(files),
        "batch": args.batch,
        "preprocess": "open_clip val: PIL open, Resize(224, bicubic), CenterCrop, ToTensor, Normalize(0.5)",
        "features_per_s": len(files) / seconds,
        "model_only_features_per_s": len(files) / model_seconds,
        "params": sum(p.numel() for p in model.parameters()),
    }
    print(
        f"open_clip encode_image: {figures['features_per_s']:.2f} image features/s end to end "
        f"(PIL + open_clip preprocess, bicubic), {figures['model_only_features_per_s']:.2f}/s model only; "
        f"{len(files)} images, batch {args.batch} ({figures['threads']} threads)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
