#!/usr/bin/env python3
"""Write tiny open_clip CLIP fixtures for the Rust open_clip-compatibility tests.

For each vision pooling variant ("tok": open_clip defaults, class token + ln_pre, pooled = class
token; "avg": vision pool_type 'avg') this builds a tiny `open_clip.model.CLIP` with a fixed seed,
perturbs every LayerNorm weight/bias and every bias away from its 1/0 init and sets a non-default
logit_scale (so a loader that drops or mis-maps any of them fails the test), runs
`encode_image` / `encode_text` (normalize=False, float32, eval, no_grad) on fixed inputs and writes

    crates/cappa-models/tests/fixtures/open_clip_tiny_{tok,avg}.safetensors
        every parameter of model.state_dict() under its own open_clip name, plus
        input.images (2,3,32,32) f32, input.text (2,8) i64,
        output.image_features (2,16) f32, output.text_features (2,16) f32
    crates/cappa-models/tests/fixtures/open_clip_tiny_{tok,avg}.json
        the model config passed to open_clip, versions, what each option does, the list of
        state-dict keys with shapes, dropped buffers, and the tolerance to compare with.

Not run in CI. Run it by hand from the repository root with a Python environment that has
torch 2.11.0 (the libtorch the Rust side links against), open_clip_torch and safetensors:

    python -m venv /tmp/oc && /tmp/oc/bin/pip install "torch==2.11.0" open_clip_torch
    /tmp/oc/bin/python scripts/make_open_clip_fixture.py [--out DIR]

The output is deterministic for a given torch/open_clip version (CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "crates" / "cappa-models" / "tests" / "fixtures"

EMBED_DIM = 16
VISION_CFG = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=8, mlp_ratio=4.0)
TEXT_CFG = dict(context_length=8, vocab_size=64, width=32, heads=4, layers=2)
LOGIT_SCALE = math.log(1 / 0.05)  # open_clip's default init is ln(1/0.07)
PERTURB_STD = 0.1
EOT_ID = TEXT_CFG["vocab_size"] - 1  # 63: the largest id, so argmax pooling finds it
EOT_POSITIONS = (5, 7)

VARIANTS = {
    # name: (seed, extra vision_cfg options, description of what open_clip does)
    "tok": (0, {}, (
        "open_clip defaults (pool_type 'tok', no_ln_pre False, final_ln_after_pool False): "
        "x = cat([class_embedding, conv1 patches]) + positional_embedding (row 0 = class token); "
        "x = ln_pre(x); transformer; x = ln_post(x); pooled = x[:, 0] (the class token); "
        "image_features = pooled @ visual.proj")),
    "avg": (1, {"pool_type": "avg"}, (
        "vision pool_type 'avg' (no_ln_pre False, final_ln_after_pool False): the class token "
        "STAYS (class_embedding and its positional_embedding row 0 exist, it goes through ln_pre "
        "and all blocks and is attended to), but it is EXCLUDED from the average: "
        "x = ln_post(x); pooled = x[:, 1:].mean(dim=1) (mean over the patch tokens only); "
        "image_features = pooled @ visual.proj")),
}

COMMON_NOTES = {
    "activation": "exact GELU (nn.GELU, quick_gelu=False)",
    "layer_norm": "open_clip.transformer.LayerNorm (torch layer_norm, eps 1e-5, with bias)",
    "block": "pre-LN: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); no layer scale",
    "attention": ("nn.MultiheadAttention(batch_first=True): in_proj_weight (3W, W) rows = "
                  "[q; k; v], in_proj_bias (3W); heads split the W columns contiguously "
                  "(head h = columns h*hd..(h+1)*hd); scale 1/sqrt(hd); out_proj Linear(W, W)"),
    "mlp": "mlp.c_fc Linear(W, 4W) -> GELU -> mlp.c_proj Linear(4W, W); Linear weights are (out, in)",
    "patch_embedding": "visual.conv1.weight (W, 3, P, P), stride P, no bias; patches row-major",
    "text": ("x = token_embedding(text) + positional_embedding; transformer with a causal mask; "
             "x = ln_final(x); pooled = x[arange(B), text.argmax(-1)] (text pool_type 'argmax': "
             "the EOT token is the largest id); text_features = pooled @ text_projection"),
    "projections": "visual.proj and text_projection are (W, E), used as pooled @ proj (no bias)",
    "logit_scale": f"scalar parameter, set to ln(1/0.05) = {LOGIT_SCALE:.6f} (not used by encode_*)",
    "input_text": (f"row 0: ids in [1, {EOT_ID - 1}] at 0..4, EOT {EOT_ID} at 5, 0 padding at 6..7; "
                   f"row 1: ids in [1, {EOT_ID - 1}] at 0..6, EOT {EOT_ID} at 7"),
    "perturbation": (f"every LayerNorm weight/bias and every bias got + {PERTURB_STD}*randn after "
                     "init; logit_scale set to a non-default value"),
}


def build(seed: int, vision_extra: dict) -> tuple[CLIP, dict]:
    torch.manual_seed(seed)
    vision_cfg = {**VISION_CFG, **vision_extra}
    config = dict(embed_dim=EMBED_DIM, vision_cfg=vision_cfg, text_cfg=dict(TEXT_CFG))
    model = CLIP(**copy.deepcopy(config))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(PERTURB_STD * torch.randn_like(module.weight))
                module.bias.add_(PERTURB_STD * torch.randn_like(module.bias))
        for name, param in model.named_parameters():
            # LayerNorm biases were perturbed above; this covers attention and MLP biases.
            if name.endswith("bias") and not name.split(".")[-2].startswith("ln"):
                param.add_(PERTURB_STD * torch.randn_like(param))
        model.logit_scale.fill_(LOGIT_SCALE)
    return model.eval(), config


def make_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    images = torch.randn(2, 3, VISION_CFG["image_size"], VISION_CFG["image_size"], generator=gen)
    length = TEXT_CFG["context_length"]
    text = torch.zeros(2, length, dtype=torch.int64)
    for row, eot in enumerate(EOT_POSITIONS):
        text[row, :eot] = torch.randint(1, EOT_ID, (eot,), generator=gen)  # ids in [1, 62]
        text[row, eot] = EOT_ID
    return images, text


def write_variant(name: str, out: Path) -> None:
    seed, vision_extra, description = VARIANTS[name]
    model, config = build(seed, vision_extra)
    images, text = make_inputs(seed)

    with torch.no_grad():
        image_features = model.encode_image(images, normalize=False)
        text_features = model.encode_text(text, normalize=False)
        # Same computation in float64, to size the float32 rounding error of the fixture.
        m64 = copy.deepcopy(model).double()
        err_img = (m64.encode_image(images.double()) - image_features.double()).abs().max().item()
        err_txt = (m64.encode_text(text) - text_features.double()).abs().max().item()

    state = model.state_dict()
    param_names = {n for n, _ in model.named_parameters()}
    # Non-parameter entries: persistent buffers in the state dict, and all registered buffers
    # (open_clip's causal `attn_mask` is a non-persistent buffer, so not in state_dict at all).
    dropped = sorted(set(state) - param_names) + sorted(
        n for n, _ in model.named_buffers() if n not in state)
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items() if k in param_names}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    tensors.update({
        "input.images": images.contiguous(),
        "input.text": text.contiguous(),
        "output.image_features": image_features.contiguous(),
        "output.text_features": text_features.contiguous(),
    })

    stem = out / f"open_clip_tiny_{name}"
    # A single metadata entry: safetensors writes a multi-entry map in random order, which would
    # make reruns differ byte-wise.
    source = f"open_clip {open_clip.__version__}, torch {torch.__version__}"
    save_file(tensors, f"{stem}.safetensors", metadata={"source": source})
    max_img = image_features.abs().max().item()
    max_txt = text_features.abs().max().item()
    sidecar = {
        "variant": name,
        "description": description,
        "open_clip_config": config,  # passed as open_clip.model.CLIP(**open_clip_config)
        "open_clip_class": "open_clip.model.CLIP (quick_gelu=False, cast_dtype=None)",
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "derived": {"vision_heads": VISION_CFG["width"] // VISION_CFG["head_width"],
                    "vision_tokens": (VISION_CFG["image_size"] // VISION_CFG["patch_size"]) ** 2 + 1,
                    "mlp_hidden": int(VISION_CFG["width"] * VISION_CFG["mlp_ratio"])},
        "notes": COMMON_NOTES,
        "tolerance": {
            "note": ("outputs are float32 from PyTorch CPU eager; compare with max abs difference "
                     "<= atol + rtol*|expected|, atol 1e-4, rtol 1e-4. The float32 outputs differ "
                     "from a float64 run of the same model by the amounts below."),
            "atol": 1e-4,
            "rtol": 1e-4,
            "float64_vs_float32_max_abs": {"image_features": err_img, "text_features": err_txt},
        },
        "max_abs_output": {"image_features": max_img, "text_features": max_txt},
        "dropped_non_parameters": dropped,
        "state_dict_keys": {k: list(v.shape) for k, v in state.items() if k in param_names},
        "extra_tensors": {k: {"shape": list(tensors[k].shape), "dtype": str(tensors[k].dtype)}
                          for k in ("input.images", "input.text",
                                    "output.image_features", "output.text_features")},
    }
    with open(f"{stem}.json", "w") as f:
        json.dump(sidecar, f, indent=2)
        f.write("\n")
    Path(f"{stem}.safetensors").chmod(0o644)  # save_file creates it 0600
    size = Path(f"{stem}.safetensors").stat().st_size
    print(f"{name}: {len(tensors)} tensors, {size / 1024:.1f} KiB -> {stem}.safetensors")
    print(f"  max |image_features| = {max_img:.6f}, max |text_features| = {max_txt:.6f}")
    print(f"  float64 vs float32: image {err_img:.2e}, text {err_txt:.2e}; dropped {dropped}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture directory")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"open_clip {open_clip.__version__}, torch {torch.__version__}")
    for name in VARIANTS:
        write_variant(name, args.out)


if __name__ == "__main__":
    main()
