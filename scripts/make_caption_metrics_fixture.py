"""Writes crates/cappa-eval/tests/fixtures/caption_metrics.json: pycocoevalcap's Bleu(4), Rouge()
and Cider() on a seeded toy caption set (40 images, 1-5 references each), so that
crates/cappa-eval/src/caption_metrics.rs can be checked against the reference implementation.

    /tmp/evalref/bin/python scripts/make_caption_metrics_fixture.py
    # in general: pip install pycocoevalcap && python3 scripts/make_caption_metrics_fixture.py

The captions are generated already lower-case, punctuation-free and single-space separated, and are
scored directly (no PTBTokenizer, so no Java is needed). The hypotheses cover the edge cases the
metrics treat specially: an empty hypothesis, one-word hypotheses, exact copies of a reference,
hypotheses longer than every reference, repeated words, shuffled words and no overlap at all.
"""
import importlib.metadata
import json
import pathlib
import random

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

rng = random.Random(20240611)

SUBJECTS = ["a dog", "two cats", "a man", "a woman", "a small child", "a red bus", "an old train",
            "a group of people", "a brown horse", "a pizza"]
VERBS = ["sitting on", "running across", "standing next to", "riding", "looking at", "lying on",
         "parked near", "eating", "walking down", "holding"]
OBJECTS = ["a bench", "the grass", "a street", "a table", "the beach", "a wooden fence",
           "a snowy field", "the kitchen counter", "a busy road", "a white plate"]
EXTRAS = ["in the park", "at night", "on a sunny day", "near the water", "with a frisbee",
          "in front of a building", "under a tree", ""]
OTHER = ["zebra", "umbrella", "skateboard", "laptop", "giraffe", "clock", "kite", "banana", "surfboard"]


def scene():
    """A base caption for one image, as (subject, verb, object, extra)."""
    return rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(EXTRAS)


def reference(base):
    """A reference caption: the scene with some parts swapped out, so references disagree."""
    subject, verb, obj, extra = base
    if rng.random() < 0.3:
        subject = rng.choice(SUBJECTS)
    if rng.random() < 0.3:
        verb = rng.choice(VERBS)
    if rng.random() < 0.3:
        obj = rng.choice(OBJECTS)
    if rng.random() < 0.5:
        extra = rng.choice(EXTRAS)
    return " ".join(part for part in (subject, verb, obj, extra) if part)


def hypothesis(kind, base, refs):
    """A hypothesis of the given kind for an image with these references."""
    words = rng.choice(refs).split()
    if kind == "empty":
        return ""
    if kind == "one_word":
        return rng.choice(words)
    if kind == "one_word_unseen":
        return rng.choice(OTHER)
    if kind == "copy":
        return rng.choice(refs)
    if kind == "longer":
        longest = max(refs, key=len)
        return longest + " " + " ".join(rng.choice(OTHER + words) for _ in range(rng.randint(2, 6)))
    if kind == "repeated":
        word = rng.choice(words)
        return " ".join([word] * rng.randint(2, 6) + words[: rng.randint(0, 3)])
    if kind == "shuffled":
        shuffled = words[:]
        rng.shuffle(shuffled)
        return " ".join(shuffled)
    if kind == "no_overlap":
        return " ".join(rng.choice(OTHER) for _ in range(rng.randint(2, 8)))
    if kind == "truncated":
        return " ".join(words[: rng.randint(2, max(2, len(words) - 1))])
    if kind == "paraphrase":
        return reference(base)
    raise ValueError(kind)


KINDS = ["empty", "one_word", "one_word_unseen", "copy", "longer", "repeated", "shuffled",
         "no_overlap", "truncated", "paraphrase"]

items = []
for i in range(40):
    base = scene()
    refs = [reference(base) for _ in range(rng.randint(1, 5))]
    # The first pass visits every kind once; after that kinds are drawn at random.
    kind = KINDS[i] if i < len(KINDS) else rng.choice(KINDS)
    items.append({"id": f"img{i:03d}", "kind": kind, "refs": refs, "hyp": hypothesis(kind, base, refs)})

gts = {item["id"]: item["refs"] for item in items}
res = {item["id"]: [item["hyp"]] for item in items}

bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
rouge, rouge_per_image = Rouge().compute_score(gts, res)
cider, cider_per_image = Cider().compute_score(gts, res)

fixture = {
    "pycocoevalcap_version": importlib.metadata.version("pycocoevalcap"),
    "items": items,
    "bleu": [float(b) for b in bleu],
    "rouge_l": float(rouge),
    "cider_d": float(cider),
    "rouge_l_per_image": [float(x) for x in rouge_per_image],
    "cider_d_per_image": [float(x) for x in cider_per_image],
}
out = pathlib.Path(__file__).resolve().parent.parent / "crates/cappa-eval/tests/fixtures/caption_metrics.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(fixture, indent=1) + "\n")
print(f"wrote {out}: bleu {fixture['bleu']}, rouge_l {rouge}, cider_d {cider}")
