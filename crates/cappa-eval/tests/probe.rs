//! Few-shot ridge regression (fixture from `scripts/make_probe_fixture.py`) and the fixed-L2
//! linear probe (fixture from `scripts/make_linear_probe_fixture.py`) against scikit-learn, and
//! feature files for `cappa probe`.

use cappa_eval::classification::classification_metrics;
use cappa_eval::probe::{
    linear_probe_fixed, load_features, ridge_accuracy, ridge_fit, ProbeError, BIAS_CONSTANT,
    FEW_SHOT_L2, FIXED_L2_MAX_ITERATIONS, STD_EPSILON,
};
use serde::Deserialize;
use tch::{Kind, Tensor};

#[derive(Deserialize)]
struct Fixture {
    l2: f64,
    bias_constant: f64,
    std_epsilon: f64,
    num_classes: usize,
    train_features: Vec<Vec<f64>>,
    train_labels: Vec<i64>,
    test_features: Vec<Vec<f64>>,
    test_labels: Vec<i64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    support: Vec<usize>,
    mean: Vec<f64>,
    std: Vec<f64>,
    /// scikit-learn's `coef_`, (C, D + 1).
    coef: Vec<Vec<f64>>,
    test_scores: Vec<Vec<f64>>,
    predictions: Vec<i64>,
    accuracy: f64,
}

fn matrix(rows: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
}

/// Largest absolute difference, after checking the shapes agree.
fn max_abs_diff(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.size(), theirs.size());
    (ours - theirs).abs().max().double_value(&[])
}

#[test]
fn ridge_matches_scikit_learn() {
    let fixture: Fixture = serde_json::from_str(include_str!("fixtures/probe_ridge.json")).unwrap();
    assert_eq!(fixture.l2, FEW_SHOT_L2);
    assert_eq!(fixture.bias_constant, BIAS_CONSTANT);
    assert_eq!(fixture.std_epsilon, STD_EPSILON);
    // Weights and scores are compared on the float64 values scikit-learn saw; the accuracy is
    // also checked from float32 copies, the kind encoders produce (the fixture's smallest top-2
    // score margin, 1e-4, is far above float32 rounding).
    let train_x = matrix(&fixture.train_features);
    let test_x = matrix(&fixture.test_features);
    let dim = train_x.size()[1];
    let mut saw_primal = false;
    let mut saw_dual = false;
    for case in &fixture.cases {
        let index: Vec<i64> = case.support.iter().map(|&i| i as i64).collect();
        let support_x = train_x.index_select(0, &Tensor::from_slice(&index));
        let support_y: Vec<i64> = case
            .support
            .iter()
            .map(|&i| fixture.train_labels[i])
            .collect();
        let rows = support_y.len() as i64;
        saw_primal |= rows > dim;
        saw_dual |= rows < dim;

        let ridge = ridge_fit(&support_x, &support_y, fixture.num_classes, fixture.l2);
        let mean = Tensor::from_slice(&case.mean).unsqueeze(0);
        let std = Tensor::from_slice(&case.std).unsqueeze(0);
        assert!(
            max_abs_diff(&ridge.mean, &mean) < 1e-9,
            "{}: mean",
            case.name
        );
        assert!(max_abs_diff(&ridge.std, &std) < 1e-9, "{}: std", case.name);

        let coef = matrix(&case.coef).tr();
        let coef_diff = max_abs_diff(&ridge.weights, &coef);
        let coef_scale = coef.abs().max().double_value(&[]);
        assert!(
            coef_diff <= 1e-4 && coef_diff <= 1e-6 * coef_scale,
            "{}: weights differ from scikit-learn's by {coef_diff:e} (scale {coef_scale:e})",
            case.name
        );
        let scores = matrix(&case.test_scores);
        let score_diff = max_abs_diff(&ridge.scores(&test_x), &scores);
        assert!(
            score_diff <= 1e-4,
            "{}: test scores differ by {score_diff:e}",
            case.name
        );
        assert_eq!(ridge.predict(&test_x), case.predictions, "{}", case.name);

        let accuracy = ridge_accuracy(
            &support_x.to_kind(Kind::Float),
            &support_y,
            &test_x.to_kind(Kind::Float),
            &fixture.test_labels,
            fixture.num_classes,
            fixture.l2,
        );
        assert_eq!(
            accuracy, case.accuracy,
            "{}: accuracy from float32 features",
            case.name
        );
    }
    assert!(
        saw_primal && saw_dual,
        "the fixture must exercise both ridge forms"
    );
}

#[derive(Deserialize)]
struct LogisticFixture {
    std_epsilon: f64,
    num_classes: usize,
    train_features: Vec<Vec<f64>>,
    train_labels: Vec<i64>,
    test_features: Vec<Vec<f64>>,
    test_labels: Vec<i64>,
    cases: Vec<LogisticCase>,
}

#[derive(Deserialize)]
struct LogisticCase {
    l2: f64,
    /// scikit-learn's `predict_proba`, (M, C).
    test_probabilities: Vec<Vec<f64>>,
    predictions: Vec<i64>,
    accuracy: f64,
}

#[test]
fn linear_probe_fixed_matches_scikit_learn() {
    let fixture: LogisticFixture =
        serde_json::from_str(include_str!("fixtures/linear_probe_l2.json")).unwrap();
    assert_eq!(fixture.std_epsilon, STD_EPSILON);
    let train_x = matrix(&fixture.train_features);
    let test_x = matrix(&fixture.test_features);
    assert_eq!(fixture.cases.len(), 3);
    for case in &fixture.cases {
        let fixed = linear_probe_fixed(
            &train_x,
            &fixture.train_labels,
            &test_x,
            &fixture.test_labels,
            fixture.num_classes,
            case.l2,
        );
        assert!(
            fixed.converged && fixed.iterations < FIXED_L2_MAX_ITERATIONS,
            "l2 {}: {fixed:?}",
            case.l2
        );
        let difference = max_abs_diff(&fixed.test_probabilities, &matrix(&case.test_probabilities));
        assert!(
            difference <= 1e-4,
            "l2 {}: test probabilities differ from scikit-learn's by {difference:e} after {} \
             iterations",
            case.l2,
            fixed.iterations
        );
        assert_eq!(fixed.test_accuracy, case.accuracy, "l2 {}", case.l2);
        let predictions = Vec::<i64>::try_from(fixed.test_scores.argmax(1, false)).unwrap();
        assert_eq!(predictions, case.predictions, "l2 {}", case.l2);
        let metrics = classification_metrics(&fixed.test_scores, &fixture.test_labels);
        assert_eq!(metrics.acc1, case.accuracy, "l2 {}", case.l2);
        // From float32 copies, the kind encoders produce (the fixture's smallest top-2
        // probability margin, 0.02, is far above float32 rounding).
        let from_float32 = linear_probe_fixed(
            &train_x.to_kind(Kind::Float),
            &fixture.train_labels,
            &test_x.to_kind(Kind::Float),
            &fixture.test_labels,
            fixture.num_classes,
            case.l2,
        );
        assert_eq!(from_float32.test_accuracy, case.accuracy, "l2 {}", case.l2);
    }
}

fn example_arrays() -> Vec<(&'static str, Tensor)> {
    vec![
        (
            "train_features",
            Tensor::from_slice(&[0.5f32, 1.0, -1.0, 2.0, 0.0, 3.0]).reshape([3, 2]),
        ),
        ("train_labels", Tensor::from_slice(&[0i64, 2, 1])),
        (
            "test_features",
            Tensor::from_slice(&[1.5f32, -0.5, 2.5, 0.25]).reshape([2, 2]),
        ),
        ("test_labels", Tensor::from_slice(&[3i64, 0])),
        ("extra", Tensor::from_slice(&[7i64])),
    ]
}

fn check_round_trip(path: &std::path::Path) {
    let set = load_features(path).unwrap();
    let arrays = example_arrays();
    assert_eq!(set.train_features.kind(), Kind::Float);
    assert!(set.train_features.equal(&arrays[0].1));
    assert_eq!(set.train_labels, vec![0, 2, 1]);
    assert!(set.test_features.equal(&arrays[2].1));
    assert_eq!(set.test_labels, vec![3, 0]);
    assert_eq!(set.num_classes, 4);
}

#[test]
fn load_features_round_trips_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.safetensors");
    Tensor::write_safetensors(&example_arrays(), &path).unwrap();
    check_round_trip(&path);
}

#[test]
fn load_features_round_trips_npz() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.npz");
    Tensor::write_npz(&example_arrays(), &path).unwrap();
    check_round_trip(&path);
}

#[test]
fn load_features_names_the_missing_array() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.safetensors");
    let arrays: Vec<_> = example_arrays()
        .into_iter()
        .filter(|(name, _)| *name != "test_labels")
        .collect();
    Tensor::write_safetensors(&arrays, &path).unwrap();
    let error = load_features(&path).unwrap_err();
    assert!(
        matches!(
            &error,
            ProbeError::MissingArray {
                array: "test_labels",
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("features.safetensors"), "{message}");
    assert!(message.contains("no array `test_labels`"), "{message}");
    assert!(
        message.contains("extra, test_features, train_features, train_labels"),
        "{message}"
    );
}

#[test]
fn load_features_rejects_bad_labels_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.npz");
    let with = |name: &'static str, tensor: Tensor| -> Vec<(&'static str, Tensor)> {
        example_arrays()
            .into_iter()
            .map(|(n, t)| {
                if n == name {
                    (n, tensor.shallow_clone())
                } else {
                    (n, t)
                }
            })
            .collect()
    };

    Tensor::write_npz(
        &with("train_labels", Tensor::from_slice(&[0.0f32, 2.0, 1.0])),
        &path,
    )
    .unwrap();
    let message = load_features(&path).unwrap_err().to_string();
    assert!(
        message.contains("`train_labels`") && message.contains("integers 0..C"),
        "{message}"
    );

    Tensor::write_npz(&with("test_labels", Tensor::from_slice(&[1i64, -1])), &path).unwrap();
    let message = load_features(&path).unwrap_err().to_string();
    assert!(
        message.contains("`test_labels` holds -1 at index 1"),
        "{message}"
    );

    Tensor::write_npz(&with("train_labels", Tensor::from_slice(&[0i64, 1])), &path).unwrap();
    let message = load_features(&path).unwrap_err().to_string();
    assert!(
        message.contains("one label per row of train_features (3)"),
        "{message}"
    );

    let narrow = Tensor::from_slice(&[1.0f32, 2.0]).reshape([2, 1]);
    Tensor::write_npz(&with("test_features", narrow), &path).unwrap();
    let message = load_features(&path).unwrap_err().to_string();
    assert!(
        message.contains("has 1 columns but train_features has 2"),
        "{message}"
    );

    let nan = Tensor::from_slice(&[f32::NAN, 0.0, 1.0, 1.0, 2.0, 3.0]).reshape([3, 2]);
    Tensor::write_npz(&with("train_features", nan), &path).unwrap();
    let message = load_features(&path).unwrap_err().to_string();
    assert!(message.contains("NaN"), "{message}");

    let error = load_features(&dir.path().join("features.pt")).unwrap_err();
    assert!(
        matches!(error, ProbeError::UnsupportedFormat { .. }),
        "{error:?}"
    );
    let error = load_features(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(error, ProbeError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("absent.safetensors"), "{error}");
}
