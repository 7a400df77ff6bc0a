"""Writes crates/cappa-eval/tests/fixtures/probe_ridge.json: scikit-learn's ridge regression on a
small clustered feature set, set up exactly as big_vision's few-shot evaluator
(big_vision/evaluators/fewshot_lsr.py) sets it up, for crates/cappa-eval/tests/probe.rs.

For every support set (explicit index lists into the training pool) the features are
standardised with the support set's mean and population standard deviation (ddof 0) plus 1e-5,
a constant feature of 100 is appended (big_vision's BIAS_CONSTANT), the targets are one-hot
labels mapped to {-1, +1}, and sklearn.linear_model.Ridge(alpha=1024, fit_intercept=False)
is fitted. The fixture records the support indices, the standardisation statistics, the
coefficients, the test scores, the argmax predictions and the accuracy.

The support sets cover 1 shot (N=5 < D+1), 5 shots (N=25 = D+1, the primal form), an uneven
set with N=13 < D+1 (the dual form) and the whole pool (N=60 > D+1).

    /tmp/evalref/bin/python scripts/make_probe_fixture.py   # needs numpy and scikit-learn
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import Ridge

NUM_CLASSES = 5
DIM = 24
TRAIN_PER_CLASS = 12
NUM_TEST = 50
L2 = 1024.0
BIAS_CONSTANT = 100.0
STD_EPSILON = 1e-5

rng = np.random.default_rng(20240611)
centers = rng.normal(size=(NUM_CLASSES, DIM))
# Per-feature scales and offsets so that standardisation matters.
scales = np.exp(rng.normal(scale=0.7, size=DIM))
offsets = rng.normal(scale=3.0, size=DIM)


def sample(labels):
    x = centers[labels] + rng.normal(scale=1.6, size=(len(labels), DIM))
    # Rounded so that the JSON holds exactly the values both sides compute with.
    return np.round(x * scales + offsets, 4)


train_labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), TRAIN_PER_CLASS))
test_labels = rng.integers(0, NUM_CLASSES, size=NUM_TEST)
train_x = sample(train_labels)
test_x = sample(test_labels)


def per_class(counts):
    """The first counts[c] pool indices of every class c, in class order."""
    return [int(i) for c, k in enumerate(counts) for i in np.flatnonzero(train_labels == c)[:k]]


cases = {
    "shots_1": per_class([1] * NUM_CLASSES),
    "shots_5": per_class([5] * NUM_CLASSES),
    "uneven_n_lt_d": per_class([3, 1, 4, 2, 3]),
    "all_n_gt_d": [int(i) for i in rng.permutation(len(train_labels))],
}

out_cases = []
for name, support in cases.items():
    x = train_x[support]
    y = train_labels[support]
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + STD_EPSILON
    z = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    z_test = np.pad((test_x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    targets = 2.0 * np.eye(NUM_CLASSES)[y] - 1.0
    ridge = Ridge(alpha=L2, fit_intercept=False, solver="cholesky").fit(z, targets)
    scores = z_test @ ridge.coef_.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    assert margin > 1e-6, f"{name}: near tie in the test scores ({margin})"
    predictions = scores.argmax(axis=1)
    accuracy = float((predictions == test_labels).mean())
    print(f"{name}: N={len(support)} accuracy={accuracy:.2f} smallest top-2 margin={margin:.2e}")
    out_cases.append({
        "name": name,
        "support": support,
        "mean": mean[0].tolist(),
        "std": std[0].tolist(),
        "coef": ridge.coef_.tolist(),
        "test_scores": scores.tolist(),
        "predictions": predictions.tolist(),
        "accuracy": accuracy,
    })

fixture = {
    "sklearn_version": sklearn.__version__,
    "numpy_version": np.__version__,
    "l2": L2,
    "bias_constant": BIAS_CONSTANT,
    "std_epsilon": STD_EPSILON,
    "num_classes": NUM_CLASSES,
    "train_features": train_x.tolist(),
    "train_labels": train_labels.tolist(),
    "test_features": test_x.tolist(),
    "test_labels": test_labels.tolist(),
    "cases": out_cases,
}
out = pathlib.Path(__file__).resolve().parent.parent / "crates/cappa-eval/tests/fixtures/probe_ridge.json"
out.write_text(json.dumps(fixture) + "\n")
print(f"wrote {out}")
