"""Writes crates/cappa-eval/tests/fixtures/linear_probe_l2.json: scikit-learn's multinomial
logistic regression on a small clustered feature set, set up exactly as the full linear probe of
crates/cappa-eval/src/probe.rs sets it up, for the test `linear_probe_fixed_matches_scikit_learn`
in crates/cappa-eval/tests/probe.rs.

The features (4 classes, D = 10, 60 training and 40 test examples, per-feature scales and
offsets so that standardisation matters, overlapping clusters so that no L2 strength gives an
infinite optimum) are standardised with the training mean and population standard deviation
(ddof 0) plus 1e-5, and for every L2 strength l2 in L2_VALUES
sklearn.linear_model.LogisticRegression(C=1/(N*l2), tol=1e-10, max_iter=10000) is fitted
(lbfgs, multinomial, intercept unpenalised): its objective, C * sum of cross-entropies + 1/2 |W|^2,
is N * C times probe.rs's mean cross-entropy + l2/2 |W|^2. The fixture records the raw
(unstandardised) features and labels, and per L2 strength scikit-learn's test probabilities
(M, C), argmax predictions and test accuracy; floats are rounded to 10 significant digits.

    /tmp/evalref/bin/python scripts/make_linear_probe_fixture.py   # needs numpy and scikit-learn
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

NUM_CLASSES = 4
DIM = 10
TRAIN_PER_CLASS = 15
NUM_TEST = 40
L2_VALUES = [1e-1, 1e-2, 1e-3]
STD_EPSILON = 1e-5
SIGNIFICANT_DIGITS = 10

rng = np.random.default_rng(20240612)
centers = rng.normal(size=(NUM_CLASSES, DIM))
# Per-feature scales and offsets so that standardisation matters.
scales = np.exp(rng.normal(scale=1.0, size=DIM))
offsets = rng.normal(scale=5.0, size=DIM)


def sample(labels):
    x = centers[labels] + rng.normal(scale=2.0, size=(len(labels), DIM))
    # Rounded so that the JSON holds exactly the values both sides compute with.
    return np.round(x * scales + offsets, 4)


def rounded(values):
    """Nested lists of floats rounded to SIGNIFICANT_DIGITS significant digits."""
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in values]


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


train_labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), TRAIN_PER_CLASS))
test_labels = rng.integers(0, NUM_CLASSES, size=NUM_TEST)
train_x = sample(train_labels)
test_x = sample(test_labels)

mean = train_x.mean(axis=0, keepdims=True)
std = train_x.std(axis=0, keepdims=True) + STD_EPSILON
z = (train_x - mean) / std
z_test = (test_x - mean) / std
rows = len(train_labels)
targets = np.eye(NUM_CLASSES)[train_labels]

cases = []
for l2 in L2_VALUES:
    model = LogisticRegression(C=1.0 / (rows * l2), tol=1e-10, max_iter=10000).fit(z, train_labels)
    assert model.n_iter_.max() < 10000, f"l2={l2}: lbfgs did not converge"
    probabilities = model.predict_proba(z_test)
    # Multinomial: the probabilities are the softmax of the C linear scores.
    assert np.allclose(probabilities, softmax(model.decision_function(z_test)), atol=1e-12)
    # The solution is the optimum of probe.rs's objective: its gradient vanishes.
    residual = softmax(z @ model.coef_.T + model.intercept_) - targets
    gradient = np.concatenate([z.T @ residual / rows + l2 * model.coef_.T, residual.mean(axis=0)[None]])
    assert np.abs(gradient).max() < 1e-6, f"l2={l2}: gradient {np.abs(gradient).max():.1e}"
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    assert margin > 1e-3, f"l2={l2}: near tie in the test probabilities ({margin})"
    predictions = probabilities.argmax(axis=1)
    accuracy = float((predictions == test_labels).mean())
    train_accuracy = float((model.predict(z) == train_labels).mean())
    print(
        f"l2={l2:g}: C={model.C:.4g} lbfgs iterations={int(model.n_iter_.max())} "
        f"train accuracy={train_accuracy:.3f} test accuracy={accuracy:.3f} "
        f"smallest top-2 margin={margin:.2e} gradient={np.abs(gradient).max():.1e}"
    )
    cases.append({
        "l2": l2,
        "test_probabilities": [rounded(row) for row in probabilities],
        "predictions": predictions.tolist(),
        "accuracy": accuracy,
    })
# Overlapping clusters: even the weakest penalty leaves training errors, so the optimum is finite
# for reasons beyond the penalty.
assert train_accuracy < 1.0, "the training set is separable at the weakest L2"

fixture = {
    "sklearn_version": sklearn.__version__,
    "numpy_version": np.__version__,
    "std_epsilon": STD_EPSILON,
    "num_classes": NUM_CLASSES,
    "train_features": train_x.tolist(),
    "train_labels": train_labels.tolist(),
    "test_features": test_x.tolist(),
    "test_labels": test_labels.tolist(),
    "cases": cases,
}
out = pathlib.Path(__file__).resolve().parent.parent / "crates/cappa-eval/tests/fixtures/linear_probe_l2.json"
out.write_text(json.dumps(fixture) + "\n")
print(f"wrote {out}")
