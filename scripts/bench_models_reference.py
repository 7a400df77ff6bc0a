#!/usr/bin/env python3
"""PyTorch-eager reference for `cargo xtask bench models`.

Mirrors, layer for layer, the Rust models of `crates/cappa-models` (ViT encoder, CLIP text tower,
Cap/CapPa decoder with KV cache) and times the same work the Rust benchmark times, written the way
a typical PyTorch user would write it: nn.Linear / nn.LayerNorm / nn.Conv2d / nn.Embedding,
F.scaled_dot_product_attention, torch.optim.AdamW with its defaults (lr 1e-3), float32, CPU, eager
mode (no torch.compile).

What is measured
  * clip_step_ms / cappa_step_ms: median wall time of one training step
    (zero_grad(set_to_none=True) + forward + loss + backward + optimizer.step()).
  * greedy_{cached,uncached}_tokens_per_s: CapPa greedy decoding (eval, no_grad) of exactly 64
    tokens for a batch of 8 images from a BOS input 0 (EOS ignored); 8*64 / seconds, median of 3
    runs after 1 warm-up. Each timed run encodes the images once, then decodes:
      cached:   per layer, self-attention K,V grow by torch.cat each step and cross-attention K,V
                are computed once; each step runs the decoder on the newest position only
                (position embedding = step index), no mask;
      uncached: each step runs the full decoder forward (cross-attention K,V from the image
                tokens included) on the whole prefix with a causal mask and takes the last
                position's argmax.
    The head is zero-initialised as in training, so the argmax is always token 0; the work per
    step does not depend on the tokens.
  * params: parameter counts of the two models (compared against the Rust side).

Run it with the torch 2.11.0 that the Rust side links against, e.g.

    ~/.cache/cappa/torch-2.11.0/bin/python scripts/bench_models_reference.py \
        --preset tiny --threads 2 --json /tmp/bench-ref-tiny.json
    ~/.cache/cappa/torch-2.11.0/bin/python scripts/bench_models_reference.py \
        --preset small --threads 2 --json /tmp/bench-ref-small.json

Options: --steps N (timed training steps; default 20 for tiny, 8 for small), --warmup N (default 3),
--check (also verify that cached and uncached greedy decoding agree, with a non-zero head).
Only torch is needed (no numpy).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Token ids shared with the Rust side: 0 = pad / BOS, 2 = EOS; the mask token is id V.
PAD_ID = 0
BOS_ID = 0
EOS_ID = 2
FIRST_ORDINARY_ID = 3
PARALLEL_PROB = 0.75
GREEDY_BATCH = 8
GREEDY_TOKENS = 64


@dataclass(frozen=True)
class Preset:
    # Encoder (ViT); the CLIP text tower uses the same width and MLP size.
    image: int
    patch: int
    width: int
    depth: int
    heads: int
    mlp: int
    # CLIP text tower.
    vocab: int
    text_len: int  # L: training sequence length (CLIP text and Cap targets)
    text_depth: int
    text_heads: int
    embed: int
    # Cap/CapPa decoder.
    dec_depth: int
    dec_heads: int
    dec_mlp: int
    max_len: int
    batch: int
    timed_steps: int


PRESETS = {
    "tiny": Preset(image=32, patch=8, width=64, depth=2, heads=4, mlp=256,
                   vocab=512, text_len=16, text_depth=2, text_heads=4, embed=64,
                   dec_depth=1, dec_heads=4, dec_mlp=256, max_len=64, batch=32, timed_steps=20),
    "small": Preset(image=64, patch=8, width=192, depth=6, heads=3, mlp=768,
                    vocab=512, text_len=32, text_depth=6, text_heads=3, embed=192,
                    dec_depth=3, dec_heads=3, dec_mlp=768, max_len=64, batch=32, timed_steps=8),
    # ViT-B/16 at 224 (cappa's `b16`): CLIP text tower 12 × 768, Cap decoder 6 × 768. The vocabulary
    # is the one cappa's throughput bench reports (--vocab), for identical models.
    "b16": Preset(image=224, patch=16, width=768, depth=12, heads=12, mlp=3072,
                  vocab=512, text_len=64, text_depth=12, text_heads=12, embed=768,
                  dec_depth=6, dec_heads=12, dec_mlp=3072, max_len=64, batch=256, timed_steps=20),
}


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, W) -> (B, heads, T, W/heads)."""
    b, t, w = x.shape
    return x.view(b, t, heads, w // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, hd) -> (B, T, heads*hd)."""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


class SelfAttention(nn.Module):
    """Fused qkv Linear(W, 3W) -> SDPA -> Linear(W, W), with biases unless `bias=False` (the
    CapPa decoder's, as big_vision's)."""

    def __init__(self, width: int, heads: int, bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)

    def forward(self, x, attn_mask=None, is_causal=False, cache=None):
        """`cache`, if given, is a dict holding this layer's past K,V (B, heads, t, hd); the new
        positions' K,V are appended to it (torch.cat) and attention runs over all of them."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.out(merge_heads(y))


class CrossAttention(nn.Module):
    """q Linear(W, W), kv Linear(W_enc, 2W), out Linear(W, W), without biases (big_vision's
    CapPa decoder)."""

    def __init__(self, width: int, enc_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(enc_width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def memory(self, enc_tokens):
        """K, V of the image tokens, (B, heads, N, hd) each; computable once per image."""
        k, v = self.kv(enc_tokens).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x, memory):
        k, v = memory
        q = split_heads(self.q(x), self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(merge_heads(y))


class Mlp(nn.Sequential):
    def __init__(self, width: int, hidden: int, bias: bool = True):
        super().__init__(nn.Linear(width, hidden, bias=bias), nn.GELU(),
                         nn.Linear(hidden, width, bias=bias))


class Block(nn.Module):
    """Pre-LN transformer block (encoder and CLIP text tower); LayerNorms with bias."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, mlp)

    def forward(self, x, is_causal=False):
        x = x + self.attn(self.ln_1(x), is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


class DecoderBlock(nn.Module):
    """Pre-LN decoder block: self-attn -> cross-attn -> MLP; no biases in attention, MLP and
    LayerNorms (big_vision's CapPa with decoder_bias=False)."""

    def __init__(self, width: int, enc_width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.self_attn = SelfAttention(width, heads, bias=False)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.cross_attn = CrossAttention(width, enc_width, heads)
        self.ln_3 = nn.LayerNorm(width, bias=False)
        self.mlp = Mlp(width, mlp, bias=False)

    def forward(self, x, memory, attn_mask=None, is_causal=False, cache=None):
        x = x + self.self_attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal, cache=cache)
        x = x + self.cross_attn(self.ln_2(x), memory)
        return x + self.mlp(self.ln_3(x))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

class VisionTransformer(nn.Module):
    """Patch conv (no bias) + learned positions, no class token, no ln_pre, pre-LN blocks,
    final LayerNorm; returns (pooled = mean of the normed tokens, normed tokens (B, N, W))."""

    def __init__(self, p: Preset):
        super().__init__()
        n = (p.image // p.patch) ** 2
        self.conv1 = nn.Conv2d(3, p.width, p.patch, stride=p.patch, bias=False)
        self.positional_embedding = nn.Parameter(torch.randn(n, p.width) * 0.02)
        self.blocks = nn.ModuleList(Block(p.width, p.heads, p.mlp) for _ in range(p.depth))
        self.ln_post = nn.LayerNorm(p.width)

    def forward(self, images):
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, N, W)
        x = x + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        tokens = self.ln_post(x)
        return tokens.mean(dim=1), tokens


class Clip(nn.Module):
    def __init__(self, p: Preset):
        super().__init__()
        self.visual = VisionTransformer(p)
        self.visual_proj = nn.Parameter(torch.randn(p.width, p.embed) * p.width ** -0.5)
        self.token_embedding = nn.Embedding(p.vocab, p.width)
        self.positional_embedding = nn.Parameter(torch.randn(p.text_len, p.width) * 0.01)
        self.text_blocks = nn.ModuleList(
            Block(p.width, p.text_heads, p.mlp) for _ in range(p.text_depth))
        self.ln_final = nn.LayerNorm(p.width)
        self.text_projection = nn.Parameter(torch.randn(p.width, p.embed) * p.width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images):
        pooled, _ = self.visual(images)
        return pooled @ self.visual_proj

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        for block in self.text_blocks:
            x = block(x, is_causal=True)
        x = self.ln_final(x)
        eos_pos = (text == EOS_ID).int().argmax(dim=1)  # first EOS position of each row
        x = x[torch.arange(x.shape[0]), eos_pos]
        return x @ self.text_projection

    def loss(self, images, text):
        img = F.normalize(self.encode_image(images), dim=-1)
        txt = F.normalize(self.encode_text(text), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.T
        labels = torch.arange(images.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class CapPa(nn.Module):
    def __init__(self, p: Preset):
        super().__init__()
        self.p = p
        self.mask_id = p.vocab
        self.visual = VisionTransformer(p)
        self.token_embedding = nn.Embedding(p.vocab + 1, p.width)
        self.positional_embedding = nn.Parameter(torch.randn(p.max_len, p.width) * 0.02)
        self.blocks = nn.ModuleList(
            DecoderBlock(p.width, p.width, p.dec_heads, p.dec_mlp) for _ in range(p.dec_depth))
        self.ln_final = nn.LayerNorm(p.width)
        self.head = nn.Linear(p.width, p.vocab)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def memories(self, enc_tokens):
        return [block.cross_attn.memory(enc_tokens) for block in self.blocks]

    def decode(self, tokens, memories, start=0, attn_mask=None, is_causal=False, caches=None):
        """Logits (B, T, V) for decoder inputs `tokens` (B, T) at positions start..start+T."""
        x = self.token_embedding(tokens) + self.positional_embedding[start:start + tokens.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, memories[i], attn_mask=attn_mask, is_causal=is_causal,
                      cache=None if caches is None else caches[i])
        return self.head(self.ln_final(x))

    def loss(self, images, targets):
        b, l = targets.shape
        _, enc_tokens = self.visual(images)
        # Parallel prediction: with prob 0.75 an example sees only mask tokens, bidirectionally;
        # otherwise the caption shifted right (BOS first) with a causal mask.
        parallel = torch.rand(b) < PARALLEL_PROB
        shifted = torch.cat([torch.full((b, 1), BOS_ID), targets[:, :-1]], dim=1)
        inputs = torch.where(parallel[:, None], torch.full_like(targets, self.mask_id), shifted)
        causal = torch.ones(l, l, dtype=torch.bool).tril()
        attn_mask = causal | parallel[:, None, None, None]  # (B, 1, L, L), True = attend
        logits = self.decode(inputs, self.memories(enc_tokens), attn_mask=attn_mask)
        tok_loss = F.cross_entropy(logits.reshape(b * l, -1), targets.reshape(-1),
                                   reduction="none").view(b, l)
        weight = (targets != PAD_ID).float()
        per_caption = (tok_loss * weight).sum(1) / weight.sum(1).clamp(min=1)
        return per_caption.mean()

    @torch.no_grad()
    def greedy_cached(self, enc_tokens, n_tokens):
        memories = self.memories(enc_tokens)  # cross-attention K,V once per image
        caches = [{} for _ in self.blocks]  # self-attention K,V, grown by torch.cat each step
        token = torch.full((enc_tokens.shape[0], 1), BOS_ID)
        out = []
        for step in range(n_tokens):
            logits = self.decode(token, memories, start=step, caches=caches)
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def greedy_uncached(self, enc_tokens, n_tokens):
        seq = torch.full((enc_tokens.shape[0], 1), BOS_ID)
        for _ in range(n_tokens):
            # The plain decoder forward on the whole prefix each step (causal), cross-attention
            # K,V included: nothing is carried over between steps but the image tokens.
            logits = self.decode(seq, self.memories(enc_tokens), is_causal=True)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return seq[:, 1:]


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------

def n_params(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


def time_train(model, make_loss, warmup, steps):
    """Median milliseconds of a full training step (AdamW defaults, lr 1e-3)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = make_loss()
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        if i >= warmup:
            times.append(dt * 1e3)
    return statistics.median(times)


def time_greedy(fn, enc_tokens, runs=3):
    """Tokens/s of greedy decoding from already encoded images: 8*64 / seconds, median of `runs`
    after one warm-up (the encoder is not timed)."""
    fn(enc_tokens, GREEDY_TOKENS)
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(enc_tokens, GREEDY_TOKENS)
        rates.append(enc_tokens.shape[0] * GREEDY_TOKENS / (time.perf_counter() - t0))
    return statistics.median(rates)


def check_cache(model: CapPa, p: Preset):
    """Cached and uncached greedy decoding must agree once the head is non-zero."""
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=1.0)
    with torch.no_grad():
        _, enc_tokens = model.visual(torch.randn(2, 3, p.image, p.image))
    a = model.greedy_cached(enc_tokens, 16)
    b = model.greedy_uncached(enc_tokens, 16)
    model.head.load_state_dict(head)
    if not torch.equal(a, b):
        raise RuntimeError(f"cached and uncached greedy decoding differ:\n{a}\n{b}")
    print("check: cached and uncached greedy decoding agree")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    ap.add_argument("--steps", type=int, help="timed training steps (20 tiny, 8 small)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--check", action="store_true", help="verify the KV cache first")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    p = PRESETS[args.preset]
    steps = args.steps or p.timed_steps
    b = p.batch

    clip = Clip(p)
    cappa = CapPa(p)
    params = {"clip": n_params(clip), "cappa": n_params(cappa)}

    # Fixed inputs: images randn; CLIP text random ids in [3, V) with EOS last;
    # CapPa targets random ids in [3, V) (no pads).
    images = torch.randn(b, 3, p.image, p.image)
    text = torch.randint(FIRST_ORDINARY_ID, p.vocab, (b, p.text_len))
    text[:, -1] = EOS_ID
    targets = torch.randint(FIRST_ORDINARY_ID, p.vocab, (b, p.text_len))

    clip_ms = time_train(clip, lambda: clip.loss(images, text), args.warmup, steps)
    cappa_ms = time_train(cappa, lambda: cappa.loss(images, targets), args.warmup, steps)

    # Greedy decoding with a freshly initialised model (zero head): the work is the same.
    cappa = CapPa(p).eval()
    if args.check:
        check_cache(cappa, p)
    gimages = torch.randn(GREEDY_BATCH, 3, p.image, p.image)
    with torch.no_grad():
        _, enc_tokens = cappa.visual(gimages)
    cached = time_greedy(cappa.greedy_cached, enc_tokens)
    uncached = time_greedy(cappa.greedy_uncached, enc_tokens)

    result = {
        "preset": args.preset,
        "threads": args.threads,
        "params": params,
        "clip_step_ms": clip_ms,
        "cappa_step_ms": cappa_ms,
        "greedy_cached_tokens_per_s": cached,
        "greedy_uncached_tokens_per_s": uncached,
        "torch_version": torch.__version__,
    }
    print(f"PyTorch eager reference, preset {args.preset}, {args.threads} thread(s), "
          f"torch {torch.__version__}, batch {b}, {steps} timed steps after {args.warmup} warm-up")
    print(f"  params            CLIP {params['clip']:,}   CapPa {params['cappa']:,}")
    print(f"  train step        CLIP {clip_ms:9.2f} ms   CapPa {cappa_ms:9.2f} ms  (median)")
    print(f"  greedy 8x{GREEDY_TOKENS}       cached {cached:9.1f} tok/s   "
          f"uncached {uncached:9.1f} tok/s  (median of 3)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
