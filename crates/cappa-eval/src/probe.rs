//! Linear probes on frozen image features: big_vision's few-shot ridge regression (the CapPa
//! paper's few-shot protocol), a full multinomial logistic-regression probe with a validated or a
//! fixed L2 strength, and the feature files read by `cappa probe`.
//!
//! Everything runs on the CPU in float64, whatever the kind and device of the input features.
//!
//! # Few-shot linear evaluation
//!
//! [`few_shot`] reproduces `big_vision/evaluators/fewshot_lsr.py` of
//! github.com/google-research/big_vision, the evaluator that `configs/proj/cappa/pretrain.py`
//! takes from `configs/common_fewshot.py` (shots 1, 5, 10 and 25, `l2_reg=2.0**10`, 3 seeds):
//!
//! 1. **Support sets** ([`sample_shots`]). For a seed, the training indices of every class are
//!    shuffled once and the `shots`-shot support set takes the first `shots` of each class, so
//!    the 5-shot set of a seed contains its 1-shot set. A class with fewer than `shots` examples
//!    contributes all it has (big_vision slices the shuffled list the same way); a class absent
//!    from the training pool contributes nothing but still has a score column. Seeds `0..seeds`
//!    drive ChaCha8 rather than NumPy's PCG64, so the drawn sets differ from big_vision's.
//! 2. **Standardisation**. Features are centred with the support set's mean and divided by its
//!    population standard deviation (ddof 0, `jnp.std`) plus [`STD_EPSILON`] — the epsilon is
//!    added to the deviation, not to the variance. Test features use the support statistics.
//! 3. **Bias**. A constant feature [`BIAS_CONSTANT`] (100) is appended; its weight acts as an
//!    almost unregularised bias. There is no separate intercept.
//! 4. **Targets** are one-hot labels mapped to {−1, +1}.
//! 5. **Ridge regression** with λ = [`FEW_SHOT_L2`] (1024) in closed form: `(XᵀX + λI)⁻¹XᵀY` when
//!    the support set has at least as many rows as columns (bias included), the dual
//!    `Xᵀ(XXᵀ + λI)⁻¹Y` otherwise. big_vision diagonalises the same two matrices with `eigh`;
//!    here they are Cholesky-solved, which gives the same weights.
//! 6. **Accuracy** of the argmax of the test scores (the first class on ties, as `jnp.argmax`),
//!    per seed, and their mean.
//!
//! big_vision computes in float32, this module in float64: accuracies can differ only where two
//! class scores are within float32 error of each other.
//!
//! # Full linear probe
//!
//! The full linear probe fits multinomial logistic regression (softmax cross-entropy averaged
//! over the examples plus `l2 / 2 · ‖W‖²`, the bias unpenalised) on features standardised like
//! the few-shot ones (training statistics, ddof 0, + [`STD_EPSILON`]). The objective is convex;
//! it is minimised full-batch, deterministically, by Nesterov-accelerated gradient descent (FISTA
//! momentum with O'Donoghue–Candès gradient restarts) from zero weights with step `1 / L`, where
//! `L = ½·λ_max(X̃ᵀX̃ / N) + l2` bounds the curvature (Böhning's bound on the softmax Hessian;
//! `X̃` has a column of ones for the bias). No learning rate to tune.
//!
//! With N training examples this is scikit-learn's `LogisticRegression(C=1 / (N · l2))`
//! (multinomial, lbfgs, intercept unpenalised) on the same standardised features: scikit-learn
//! minimises `C · Σ cross-entropy + ½‖W‖²`, which for that `C` is N · C times the objective here,
//! so both have the same minimiser. The fixed-L2 probe reproduces scikit-learn's test
//! probabilities to 1e-4 (`tests/probe.rs`, fixture from `scripts/make_linear_probe_fixture.py`).
//!
//! [`linear_probe`] chooses the L2 strength from a grid by accuracy on a validation split carved
//! from the training set (stratified: a `validation_fraction` of every class, rounded, always
//! leaving at least one training example per class; shuffled with the config's seed). Ties go to
//! the strongest regularisation. The model is then refitted on the whole training set with the
//! chosen strength and evaluated on the test set; [`linear_probe_scored`] also returns the refit's
//! test scores, for [`classification_metrics`](crate::classification::classification_metrics).
//! Every fit runs the config's fixed number of iterations (500 by default).
//!
//! [`linear_probe_fixed`] fits one given L2 strength on the whole training set and stops on
//! convergence instead: at the first point where no entry of the gradient exceeds
//! [`FIXED_L2_TOLERANCE`] (1e-9) in absolute value, or after [`FIXED_L2_MAX_ITERATIONS`]
//! (20 000) steps, reporting which. The stop is a deterministic function of the data. Measured on
//! the fixture (4 classes, D = 10, N = 60), the steps to the tolerance grow about √10-fold per
//! decade of L2, as accelerated gradient descent on a condition number ∝ 1 / l2 should: 61, 178
//! and 469 for l2 = 1e-1, 1e-2 and 1e-3, then 1 174, 3 130 and 9 034 for 1e-4, 1e-5 and 1e-6.
//! Matching scikit-learn to 1e-4 at l2 = 1e-3 needs a tolerance of 1e-7 (329 steps); at 1e-9 the
//! remaining difference, 1.6e-6, is scikit-learn's own (lbfgs stops on its relative-decrease
//! test with a gradient near 1e-8).
//!
//! # Feature files
//!
//! [`load_features`] reads a `.safetensors` or `.npz` file with `train_features` (N, D) float,
//! `train_labels` (N) integer, `test_features` (M, D) float and `test_labels` (M) integer, the
//! labels in `0..C`; the number of classes `C` is the largest label in either split plus one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Value of the constant feature appended to the standardised features before the ridge solve
/// (big_vision's `BIAS_CONSTANT`); large so that its weight, the bias, is barely regularised.
pub const BIAS_CONSTANT: f64 = 100.0;

/// Added to the population standard deviation before dividing by it (big_vision: `jnp.std(x) + 1e-5`).
pub const STD_EPSILON: f64 = 1e-5;

/// The few-shot ridge regulariser of big_vision's configs (`l2_reg=2.0**10`).
pub const FEW_SHOT_L2: f64 = 1024.0;

/// Settings of [`few_shot`]. The default is the CapPa protocol: 1, 5, 10 and 25 shots, 3 seeds,
/// λ = 1024.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FewShotConfig {
    /// Examples per class in the support sets, one evaluation each; every entry at least 1.
    pub shots: Vec<usize>,
    /// Number of seeds; seeds `0..seeds` each draw their own support sets. At least 1.
    pub seeds: u64,
    /// Ridge regulariser λ.
    pub l2: f64,
}

impl Default for FewShotConfig {
    fn default() -> Self {
        Self {
            shots: vec![1, 5, 10, 25],
            seeds: 3,
            l2: FEW_SHOT_L2,
        }
    }
}

/// Few-shot accuracy for one number of shots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShotResult {
    /// Examples per class in the support sets.
    pub shots: usize,
    /// Mean of [`accuracies`](Self::accuracies).
    pub mean_accuracy: f64,
    /// Test accuracy (fraction in `[0, 1]`) for seeds `0, 1, …` in order.
    pub accuracies: Vec<f64>,
}

/// A ridge-regression classifier fitted by [`ridge_fit`]: the standardisation statistics of its
/// training set and the regression weights, all float64 on the CPU.
#[derive(Debug)]
pub struct Ridge {
    /// Per-feature mean of the training features, shape (1, D).
    pub mean: Tensor,
    /// Per-feature population standard deviation of the training features plus
    /// [`STD_EPSILON`], shape (1, D).
    pub std: Tensor,
    /// Weights, shape (D + 1, C): rows `0..D` for the standardised features, row `D` for the
    /// constant [`BIAS_CONSTANT`] feature.
    pub weights: Tensor,
}

impl Ridge {
    /// Class scores of `x` (N, D), shape (N, C): standardised features, with the bias feature
    /// appended, times the weights.
    ///
    /// # Panics
    /// If `x` is not (N, D) with the training D.
    pub fn scores(&self, x: &Tensor) -> Tensor {
        let x = as_f64_matrix(x, None, "features");
        let dim = self.mean.size()[1];
        assert_eq!(
            x.size()[1],
            dim,
            "features have {} columns; the ridge was fitted on {dim}",
            x.size()[1]
        );
        with_constant_column(&((x - &self.mean) / &self.std), BIAS_CONSTANT).matmul(&self.weights)
    }

    /// Predicted class of every row of `x` (N, D): the argmax of [`scores`](Self::scores), the
    /// first class on ties.
    ///
    /// # Panics
    /// As [`scores`](Self::scores).
    pub fn predict(&self, x: &Tensor) -> Vec<i64> {
        argmax_rows(&self.scores(x))
    }
}

/// Fits big_vision's few-shot ridge classifier (see the module documentation) to features `x`
/// (N, D) with `labels` in `0..num_classes` and regulariser `l2`.
///
/// # Panics
/// If `x` is not (N, D) with N = `labels.len()` ≥ 1, if a label is outside `0..num_classes`, or
/// if `l2` is not positive.
pub fn ridge_fit(x: &Tensor, labels: &[i64], num_classes: usize, l2: f64) -> Ridge {
    assert!(l2 > 0.0, "the ridge regulariser must be positive, got {l2}");
    let x = as_f64_matrix(x, Some(labels.len()), "training features");
    let (mean, std) = standardisation(&x);
    let z = with_constant_column(&((x - &mean) / &std), BIAS_CONSTANT);
    let y = one_hot(labels, num_classes) * 2.0 - 1.0;
    let size = z.size();
    let weights = if size[0] >= size[1] {
        ridge_primal(&z, &y, l2)
    } else {
        ridge_dual(&z, &y, l2)
    };
    Ridge { mean, std, weights }
}

/// Test accuracy (fraction in `[0, 1]`) of the ridge classifier fitted by [`ridge_fit`] on
/// `train_x`, `train_y`.
///
/// # Panics
/// As [`ridge_fit`], and if `test_x` is not (M, D) with M = `test_y.len()` ≥ 1.
pub fn ridge_accuracy(
    train_x: &Tensor,
    train_y: &[i64],
    test_x: &Tensor,
    test_y: &[i64],
    num_classes: usize,
    l2: f64,
) -> f64 {
    let ridge = ridge_fit(train_x, train_y, num_classes, l2);
    accuracy(
        &ridge.predict(&as_f64_matrix(test_x, Some(test_y.len()), "test features")),
        test_y,
    )
}

/// Indices into `labels` of the `shots`-shot support set of `seed`: for every class in ascending
/// order, the first `shots` of that class's indices after a ChaCha8 shuffle seeded with `seed`
/// (all of them when the class has fewer). The shuffle does not depend on `shots`, so a seed's
/// smaller support sets are prefixes, class by class, of its larger ones.
pub fn sample_shots(labels: &[i64], shots: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut support = Vec::new();
    for mut indices in indices_by_class(labels).into_values() {
        indices.shuffle(&mut rng);
        support.extend(indices.into_iter().take(shots));
    }
    support
}

/// Few-shot linear evaluation (the module documentation gives the protocol): for every entry of
/// `config.shots`, the ridge accuracy on the test set of the support sets of seeds
/// `0..config.seeds` drawn from the training pool by [`sample_shots`].
///
/// Results come in the order of `config.shots`.
///
/// # Panics
/// If `config` has no shots, a zero shot count or no seeds; otherwise as [`ridge_accuracy`].
pub fn few_shot(
    train_x: &Tensor,
    train_y: &[i64],
    test_x: &Tensor,
    test_y: &[i64],
    num_classes: usize,
    config: &FewShotConfig,
) -> Vec<FewShotResult> {
    assert!(
        !config.shots.is_empty() && config.shots.iter().all(|&s| s > 0),
        "few-shot evaluation needs shot counts of at least 1, got {:?}",
        config.shots
    );
    assert!(
        config.seeds > 0,
        "few-shot evaluation needs at least one seed"
    );
    let train_x = as_f64_matrix(train_x, Some(train_y.len()), "training features");
    let test_x = as_f64_matrix(test_x, Some(test_y.len()), "test features");
    config
        .shots
        .iter()
        .map(|&shots| {
            let accuracies: Vec<f64> = (0..config.seeds)
                .map(|seed| {
                    let support = sample_shots(train_y, shots, seed);
                    let (x, y) = select(&train_x, train_y, &support);
                    ridge_accuracy(&x, &y, &test_x, test_y, num_classes, config.l2)
                })
                .collect();
            let mean_accuracy = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
            FewShotResult {
                shots,
                mean_accuracy,
                accuracies,
            }
        })
        .collect()
}

/// Settings of [`linear_probe`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearProbeConfig {
    /// Candidate L2 strengths (coefficient of `½‖W‖²` added to the mean cross-entropy); all
    /// non-negative, at least one.
    pub l2_grid: Vec<f64>,
    /// Fraction of every class held out for choosing the L2 strength, in (0, 1).
    pub validation_fraction: f64,
    /// Full-batch accelerated gradient steps per fit; at least 1.
    pub iterations: usize,
    /// Seed of the validation split's shuffle.
    pub seed: u64,
}

impl Default for LinearProbeConfig {
    /// L2 grid 1e-5, 1e-4, …, 1e-1; 20 % validation; 500 iterations; seed 0.
    fn default() -> Self {
        Self {
            l2_grid: vec![1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
            validation_fraction: 0.2,
            iterations: 500,
            seed: 0,
        }
    }
}

/// Validation accuracy of one L2 strength of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// L2 strength.
    pub l2: f64,
    /// Accuracy on the validation split of the model fitted on the rest of the training set.
    pub validation_accuracy: f64,
}

/// Outcome of [`linear_probe`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeResult {
    /// The chosen L2 strength.
    pub l2: f64,
    /// Its validation accuracy.
    pub validation_accuracy: f64,
    /// Test accuracy of the model refitted on the whole training set with [`l2`](Self::l2).
    pub test_accuracy: f64,
    /// Validation accuracy of every grid value, in grid order.
    pub grid: Vec<GridPoint>,
}

/// Full linear probe (see the module documentation): multinomial logistic regression with the L2
/// strength chosen on a validation split of the training set, refitted on all of it and scored on
/// the test set. [`linear_probe_scored`] also returns the refitted model's test scores.
///
/// # Panics
/// If `config` is invalid (empty or negative grid, fraction outside (0, 1), no iterations), if
/// the features are not (N, D) and (M, D) matching their labels with N, M ≥ 1, if a training
/// label is outside `0..num_classes`, or if the validation split is empty (no class has two or
/// more training examples).
pub fn linear_probe(
    train_x: &Tensor,
    train_y: &[i64],
    test_x: &Tensor,
    test_y: &[i64],
    num_classes: usize,
    config: &LinearProbeConfig,
) -> LinearProbeResult {
    linear_probe_scored(train_x, train_y, test_x, test_y, num_classes, config).0
}

/// [`linear_probe`], with the refitted model's test scores: the logits (M, C), float64 on the
/// CPU, whose row argmax gives [`LinearProbeResult::test_accuracy`] and from which
/// [`classification_metrics`](crate::classification::classification_metrics) computes `acc1`,
/// `acc5` and `mean_per_class_recall`. Their softmax is the class probabilities.
///
/// # Panics
/// As [`linear_probe`].
pub fn linear_probe_scored(
    train_x: &Tensor,
    train_y: &[i64],
    test_x: &Tensor,
    test_y: &[i64],
    num_classes: usize,
    config: &LinearProbeConfig,
) -> (LinearProbeResult, Tensor) {
    assert!(
        !config.l2_grid.is_empty() && config.l2_grid.iter().all(|&l2| l2 >= 0.0),
        "the L2 grid must hold at least one non-negative value, got {:?}",
        config.l2_grid
    );
    assert!(
        config.validation_fraction > 0.0 && config.validation_fraction < 1.0,
        "the validation fraction must lie in (0, 1), got {}",
        config.validation_fraction
    );
    assert!(
        config.iterations > 0,
        "the linear probe needs at least one iteration"
    );
    let train_x = as_f64_matrix(train_x, Some(train_y.len()), "training features");
    let test_x = as_f64_matrix(test_x, Some(test_y.len()), "test features");

    let (fit_idx, val_idx) = validation_split(train_y, config.validation_fraction, config.seed);
    assert!(
        !val_idx.is_empty(),
        "the validation split is empty: no class has enough training examples for a {} fraction",
        config.validation_fraction
    );
    let (fit_x, fit_y) = select(&train_x, train_y, &fit_idx);
    let (val_x, val_y) = select(&train_x, train_y, &val_idx);
    let grid: Vec<GridPoint> = config
        .l2_grid
        .iter()
        .map(|&l2| {
            let model = Logistic::fit(
                &fit_x,
                &fit_y,
                num_classes,
                l2,
                Stop::Iterations(config.iterations),
            )
            .model;
            GridPoint {
                l2,
                validation_accuracy: accuracy(&model.predict(&val_x), &val_y),
            }
        })
        .collect();
    let best = grid
        .iter()
        .max_by(|a, b| {
            a.validation_accuracy
                .total_cmp(&b.validation_accuracy)
                .then(a.l2.total_cmp(&b.l2))
        })
        .expect("the grid is not empty")
        .clone();
    let model = Logistic::fit(
        &train_x,
        train_y,
        num_classes,
        best.l2,
        Stop::Iterations(config.iterations),
    )
    .model;
    let test_scores = model.scores(&test_x);
    let result = LinearProbeResult {
        l2: best.l2,
        validation_accuracy: best.validation_accuracy,
        test_accuracy: accuracy(&argmax_rows(&test_scores), test_y),
        grid,
    };
    (result, test_scores)
}

/// The fixed-L2 probe ([`linear_probe_fixed`]) stops once no entry of the objective's gradient
/// exceeds this in absolute value (scikit-learn's lbfgs `tol` is the same kind of bound).
pub const FIXED_L2_TOLERANCE: f64 = 1e-9;

/// Most gradient steps [`linear_probe_fixed`] takes before giving up on [`FIXED_L2_TOLERANCE`].
pub const FIXED_L2_MAX_ITERATIONS: usize = 20_000;

/// Outcome of [`linear_probe_fixed`]: the test-set scores of multinomial logistic regression
/// fitted on the whole training set with a given L2 strength, and how the fit converged.
#[derive(Debug)]
pub struct FixedLinearProbe {
    /// The L2 strength (coefficient of `½‖W‖²` added to the mean cross-entropy).
    pub l2: f64,
    /// Accuracy (fraction in `[0, 1]`) of the argmax of [`test_scores`](Self::test_scores), the
    /// first class on ties.
    pub test_accuracy: f64,
    /// Test logits (M, C), float64 on the CPU: standardised features times the weights, plus the
    /// bias. [`classification_metrics`](crate::classification::classification_metrics) takes them.
    pub test_scores: Tensor,
    /// Test class probabilities (M, C), float64 on the CPU: the row softmax of
    /// [`test_scores`](Self::test_scores), scikit-learn's `predict_proba`.
    pub test_probabilities: Tensor,
    /// Gradient steps taken.
    pub iterations: usize,
    /// Largest absolute entry of the objective's gradient at the fitted weights.
    pub max_gradient: f64,
    /// Whether [`max_gradient`](Self::max_gradient) reached [`FIXED_L2_TOLERANCE`] within
    /// [`FIXED_L2_MAX_ITERATIONS`] steps; when false the scores are those of the last step.
    pub converged: bool,
}

/// Full linear probe with a fixed L2 strength `l2` (see the module documentation): multinomial
/// logistic regression fitted on the whole training set until the gradient falls to
/// [`FIXED_L2_TOLERANCE`] (at most [`FIXED_L2_MAX_ITERATIONS`] steps), scored on the test set.
///
/// This is scikit-learn's `LogisticRegression(C=1 / (N · l2))` (multinomial, lbfgs, intercept
/// unpenalised) on the same standardised features, N the number of training examples.
///
/// # Panics
/// If `l2` is negative or not finite, if the features are not (N, D) and (M, D) matching their
/// labels with N, M ≥ 1, or if a training label is outside `0..num_classes`.
pub fn linear_probe_fixed(
    train_x: &Tensor,
    train_y: &[i64],
    test_x: &Tensor,
    test_y: &[i64],
    num_classes: usize,
    l2: f64,
) -> FixedLinearProbe {
    assert!(
        l2.is_finite() && l2 >= 0.0,
        "the L2 strength must be finite and non-negative, got {l2}"
    );
    let train_x = as_f64_matrix(train_x, Some(train_y.len()), "training features");
    let test_x = as_f64_matrix(test_x, Some(test_y.len()), "test features");
    let stop = Stop::Converged {
        tolerance: FIXED_L2_TOLERANCE,
        max_iterations: FIXED_L2_MAX_ITERATIONS,
    };
    let fit = Logistic::fit(&train_x, train_y, num_classes, l2, stop);
    let test_scores = fit.model.scores(&test_x);
    FixedLinearProbe {
        l2,
        test_accuracy: accuracy(&argmax_rows(&test_scores), test_y),
        test_probabilities: test_scores.softmax(1, Kind::Double),
        test_scores,
        iterations: fit.iterations,
        max_gradient: fit.max_gradient,
        converged: fit.converged,
    }
}

/// Cached features and labels for a probe, as [`load_features`] reads them.
#[derive(Debug)]
pub struct FeatureSet {
    /// Training features (N, D), as stored.
    pub train_features: Tensor,
    /// Training labels, N of them, in `0..num_classes`.
    pub train_labels: Vec<i64>,
    /// Test features (M, D), as stored.
    pub test_features: Tensor,
    /// Test labels, M of them, in `0..num_classes`.
    pub test_labels: Vec<i64>,
    /// One more than the largest label of either split.
    pub num_classes: usize,
}

/// Why a feature file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be read or parsed.
    #[error("cannot read the feature file `{}`: {source}; check that it exists and is a valid file of its type", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What tch reported.
        source: tch::TchError,
    },
    /// The file name has neither extension that is understood.
    #[error("`{}` is not a feature file this tool reads: save the features as .safetensors or .npz", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// A required array is missing.
    #[error(
        "`{}` has no array `{array}` (it holds: {found}); a feature file needs train_features (N, D) float, \
         train_labels (N) integer, test_features (M, D) float and test_labels (M) integer",
        path.display()
    )]
    MissingArray {
        /// The file.
        path: PathBuf,
        /// The missing array.
        array: &'static str,
        /// Names of the arrays the file does hold, comma-separated.
        found: String,
    },
    /// A required array has the wrong shape, kind or values.
    #[error("`{}`: array `{array}` {problem}", path.display())]
    InvalidArray {
        /// The file.
        path: PathBuf,
        /// The offending array.
        array: &'static str,
        /// What is wrong and how to fix it (part of this message, so not a source).
        problem: ArrayProblem,
    },
}

/// What is wrong with an array of a feature file (the message continues "array `NAME` …").
#[derive(Debug, thiserror::Error)]
pub enum ArrayProblem {
    /// Features are not a non-empty (examples, features) matrix.
    #[error("has shape {shape:?}; it must be a non-empty 2-D array (examples, features)")]
    NotAMatrix { shape: Vec<i64> },
    /// Features are not floating point.
    #[error("has kind {kind:?}; store {array} as float32 or float64")]
    NotFloat { kind: Kind, array: &'static str },
    /// Features hold NaN or infinite values.
    #[error("contains NaN or infinite values; recompute or clean the features")]
    NotFinite,
    /// The test features' width differs from the training features'.
    #[error(
        "has {width} columns but train_features has {train_width}; both splits need the same \
         feature width"
    )]
    WidthMismatch { width: i64, train_width: i64 },
    /// Labels are not 1-D with one per row of their features.
    #[error("has shape {shape:?}; it must be 1-D with one label per row of {features} ({rows})")]
    LabelShape {
        shape: Vec<i64>,
        features: &'static str,
        rows: i64,
    },
    /// Labels are not integers.
    #[error("has kind {kind:?}; labels must be integers 0..C, stored as int64 or int32")]
    LabelKind { kind: Kind },
    /// Labels could not be read as int64.
    #[error("cannot be read as int64 labels: {0}")]
    LabelValues(tch::TchError),
    /// A label is negative.
    #[error("holds {label} at index {index}; labels must be integers 0..C")]
    NegativeLabel { label: i64, index: usize },
}

/// Reads the features and labels of a probe from a `.safetensors` or `.npz` file (chosen by the
/// extension) holding `train_features` (N, D) float, `train_labels` (N) integer, `test_features`
/// (M, D) float and `test_labels` (M) integer. Other arrays are ignored.
///
/// # Errors
/// [`ProbeError`] when the file cannot be read, an array is missing, features are not 2-D
/// floating point, finite and of equal width, labels are not 1-D integers in `0..C` matching
/// their features' rows, or a split is empty.
pub fn load_features(path: &Path) -> Result<FeatureSet, ProbeError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let arrays = match extension.as_deref() {
        Some("safetensors") => Tensor::read_safetensors(path),
        Some("npz") => Tensor::read_npz(path),
        _ => {
            return Err(ProbeError::UnsupportedFormat {
                path: path.to_path_buf(),
            })
        }
    }
    .map_err(|source| ProbeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut arrays: HashMap<String, Tensor> = arrays.into_iter().collect();
    let mut names: Vec<&str> = arrays.keys().map(String::as_str).collect();
    names.sort_unstable();
    let found = if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    };
    let mut take = |array: &'static str| {
        arrays
            .remove(array)
            .ok_or_else(|| ProbeError::MissingArray {
                path: path.to_path_buf(),
                array,
                found: found.clone(),
            })
    };
    let (train_x, train_y, test_x, test_y) = (
        take("train_features")?,
        take("train_labels")?,
        take("test_features")?,
        take("test_labels")?,
    );

    let invalid = |array: &'static str, problem: ArrayProblem| ProbeError::InvalidArray {
        path: path.to_path_buf(),
        array,
        problem,
    };
    check_features(&train_x, "train_features").map_err(|p| invalid("train_features", p))?;
    check_features(&test_x, "test_features").map_err(|p| invalid("test_features", p))?;
    let (train_width, width) = (train_x.size()[1], test_x.size()[1]);
    if train_width != width {
        let problem = ArrayProblem::WidthMismatch { width, train_width };
        return Err(invalid("test_features", problem));
    }
    let train_labels = read_labels(&train_y, train_x.size()[0], "train_features")
        .map_err(|p| invalid("train_labels", p))?;
    let test_labels = read_labels(&test_y, test_x.size()[0], "test_features")
        .map_err(|p| invalid("test_labels", p))?;
    let num_classes = train_labels
        .iter()
        .chain(&test_labels)
        .max()
        .map_or(0, |&c| c as usize + 1);
    Ok(FeatureSet {
        train_features: train_x,
        train_labels,
        test_features: test_x,
        test_labels,
        num_classes,
    })
}

/// Checks that a feature array is a non-empty 2-D floating-point matrix of finite values.
fn check_features(x: &Tensor, array: &'static str) -> Result<(), ArrayProblem> {
    let shape = x.size();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
        return Err(ArrayProblem::NotAMatrix { shape });
    }
    let kind = x.kind();
    if !matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    ) {
        return Err(ArrayProblem::NotFloat { kind, array });
    }
    if x.isfinite().all().int64_value(&[]) == 0 {
        return Err(ArrayProblem::NotFinite);
    }
    Ok(())
}

/// Reads a label array: 1-D, integer kind, one label per row of the features named
/// `features`, all non-negative.
fn read_labels(y: &Tensor, rows: i64, features: &'static str) -> Result<Vec<i64>, ArrayProblem> {
    let shape = y.size();
    if shape.len() != 1 || shape[0] != rows {
        return Err(ArrayProblem::LabelShape {
            shape,
            features,
            rows,
        });
    }
    let kind = y.kind();
    if !matches!(
        kind,
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64
    ) {
        return Err(ArrayProblem::LabelKind { kind });
    }
    let labels = Vec::<i64>::try_from(y.to_kind(Kind::Int64)).map_err(ArrayProblem::LabelValues)?;
    match labels.iter().position(|&l| l < 0) {
        Some(index) => Err(ArrayProblem::NegativeLabel {
            label: labels[index],
            index,
        }),
        None => Ok(labels),
    }
}

/// `x` as a float64 CPU matrix, checking that it is 2-D with `rows` rows when given.
fn as_f64_matrix(x: &Tensor, rows: Option<usize>, what: &str) -> Tensor {
    let size = x.size();
    assert_eq!(
        size.len(),
        2,
        "{what} must be a 2-D (examples, features) tensor, got shape {size:?}"
    );
    if let Some(rows) = rows {
        assert_eq!(
            size[0], rows as i64,
            "{what} have {} rows but there are {rows} labels",
            size[0]
        );
    }
    assert!(size[0] > 0, "{what} are empty");
    x.to_device(Device::Cpu).to_kind(Kind::Double)
}

/// Per-column mean and population standard deviation plus [`STD_EPSILON`], both (1, D).
fn standardisation(x: &Tensor) -> (Tensor, Tensor) {
    let mean = x.mean_dim(0, true, Kind::Double);
    let std = x.std_dim(0, false, true) + STD_EPSILON;
    (mean, std)
}

/// `x` (N, D) with a column of `value` appended: (N, D + 1).
fn with_constant_column(x: &Tensor, value: f64) -> Tensor {
    let column = Tensor::full([x.size()[0], 1], value, (Kind::Double, Device::Cpu));
    Tensor::cat(&[x, &column], 1)
}

/// Float64 one-hot matrix (N, C) of `labels`.
///
/// # Panics
/// If a label is outside `0..num_classes`.
fn one_hot(labels: &[i64], num_classes: usize) -> Tensor {
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= num_classes as i64) {
        panic!("label {bad} is outside 0..{num_classes}");
    }
    Tensor::from_slice(labels)
        .one_hot(num_classes as i64)
        .to_kind(Kind::Double)
}

/// Solves the symmetric positive-definite system `a · w = b` by Cholesky factorisation.
fn solve_spd(a: &Tensor, b: &Tensor) -> Tensor {
    b.cholesky_solve(&a.linalg_cholesky(false), false)
}

/// Ridge weights `(ZᵀZ + λI)⁻¹ZᵀY`, the form for N ≥ D.
fn ridge_primal(z: &Tensor, y: &Tensor, l2: f64) -> Tensor {
    let dim = z.size()[1];
    let gram = z.tr().matmul(z) + Tensor::eye(dim, (Kind::Double, Device::Cpu)) * l2;
    solve_spd(&gram, &z.tr().matmul(y))
}

/// Ridge weights `Zᵀ(ZZᵀ + λI)⁻¹Y`, the form for N < D.
fn ridge_dual(z: &Tensor, y: &Tensor, l2: f64) -> Tensor {
    let rows = z.size()[0];
    let gram = z.matmul(&z.tr()) + Tensor::eye(rows, (Kind::Double, Device::Cpu)) * l2;
    z.tr().matmul(&solve_spd(&gram, y))
}

/// Index of the largest entry of every row (the first on ties).
fn argmax_rows(scores: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(scores.argmax(1, false)).expect("argmax gives int64 indices")
}

/// Fraction of `predictions` equal to `labels`.
fn accuracy(predictions: &[i64], labels: &[i64]) -> f64 {
    assert_eq!(predictions.len(), labels.len());
    assert!(!labels.is_empty(), "accuracy of an empty set");
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    correct as f64 / labels.len() as f64
}

/// Indices of every label value, by ascending label.
fn indices_by_class(labels: &[i64]) -> BTreeMap<i64, Vec<usize>> {
    let mut classes: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &label) in labels.iter().enumerate() {
        classes.entry(label).or_default().push(i);
    }
    classes
}

/// Rows `indices` of `x` and the matching labels.
fn select(x: &Tensor, labels: &[i64], indices: &[usize]) -> (Tensor, Vec<i64>) {
    let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    (
        x.index_select(0, &Tensor::from_slice(&index)),
        indices.iter().map(|&i| labels[i]).collect(),
    )
}

/// Whether [`linear_probe`] can carve a validation split from `labels` at `fraction` (some
/// class must give at least one example while keeping one for training).
pub fn has_validation_split(labels: &[i64], fraction: f64) -> bool {
    !validation_split(labels, fraction, 0).1.is_empty()
}

/// Stratified split of the training indices into (fit, validation), both ascending: every class
/// is shuffled (ChaCha8, `seed`) and gives `round(fraction · n)` examples to validation, at most
/// `n − 1`.
fn validation_split(labels: &[i64], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut fit, mut validation) = (Vec::new(), Vec::new());
    for mut indices in indices_by_class(labels).into_values() {
        indices.shuffle(&mut rng);
        let held_out = ((fraction * indices.len() as f64).round() as usize).min(indices.len() - 1);
        validation.extend_from_slice(&indices[..held_out]);
        fit.extend_from_slice(&indices[held_out..]);
    }
    fit.sort_unstable();
    validation.sort_unstable();
    (fit, validation)
}

/// When [`Logistic::fit`] stops.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After exactly this many steps (the validated probe).
    Iterations(usize),
    /// At the first point whose gradient has no entry larger than `tolerance` in absolute value,
    /// or after `max_iterations` steps.
    Converged {
        tolerance: f64,
        max_iterations: usize,
    },
}

/// A fitted [`Logistic`] and how the fit ended.
#[derive(Debug)]
struct LogisticFit {
    model: Logistic,
    /// Gradient steps taken.
    iterations: usize,
    /// Largest absolute entry of the objective's gradient at the returned weights.
    max_gradient: f64,
    /// Whether `max_gradient` is within the tolerance of a [`Stop::Converged`] fit (false for
    /// [`Stop::Iterations`]).
    converged: bool,
}

/// Multinomial logistic regression on standardised features (see the module documentation).
#[derive(Debug)]
struct Logistic {
    /// Training feature mean, (1, D).
    mean: Tensor,
    /// Training feature population standard deviation plus [`STD_EPSILON`], (1, D).
    std: Tensor,
    /// Weights (D + 1, C); row D multiplies the constant-one bias feature.
    weights: Tensor,
}

impl Logistic {
    /// Fits the model to float64 features `x` (N, D) and `labels` with L2 strength `l2`, running
    /// accelerated gradient steps from zero weights until `stop`.
    fn fit(x: &Tensor, labels: &[i64], num_classes: usize, l2: f64, stop: Stop) -> LogisticFit {
        let (mean, std) = standardisation(x);
        let z = with_constant_column(&((x - &mean) / &std), 1.0);
        let targets = one_hot(labels, num_classes);
        let (rows, cols) = (z.size()[0], z.size()[1]);
        // 1 for weight rows, 0 for the bias row: the penalty skips the bias.
        let penalised = Tensor::ones([cols, 1], (Kind::Double, Device::Cpu)).index_fill(
            0,
            &Tensor::from_slice(&[cols - 1]),
            0.0,
        );
        let gram = if rows >= cols {
            z.tr().matmul(&z)
        } else {
            z.matmul(&z.tr())
        } / rows as f64;
        let curvature = 0.5 * gram.linalg_eigvalsh("L").max().double_value(&[]) + l2;
        let step = 1.0 / curvature;

        let (max_iterations, tolerance) = match stop {
            Stop::Iterations(iterations) => (iterations, None),
            Stop::Converged {
                tolerance,
                max_iterations,
            } => (max_iterations, Some(tolerance)),
        };
        let mut weights = Tensor::zeros([cols, num_classes as i64], (Kind::Double, Device::Cpu));
        let mut lookahead = weights.shallow_clone();
        let mut momentum = 1.0_f64;
        let mut iterations = 0;
        let mut converged = false;
        while iterations < max_iterations {
            let gradient = logistic_gradient(&z, &targets, &lookahead, &penalised, l2);
            if let Some(tolerance) = tolerance {
                if gradient.abs().max().double_value(&[]) <= tolerance {
                    // The point the gradient was taken at is the answer.
                    weights = lookahead;
                    converged = true;
                    break;
                }
            }
            let next = &lookahead - &gradient * step;
            let progress = &next - &weights;
            if (&gradient * &progress).sum(Kind::Double).double_value(&[]) > 0.0 {
                // The momentum points uphill: restart it (O'Donoghue & Candès, 2015).
                momentum = 1.0;
                lookahead = next.shallow_clone();
            } else {
                let next_momentum = (1.0 + (1.0 + 4.0 * momentum * momentum).sqrt()) / 2.0;
                lookahead = &next + progress * ((momentum - 1.0) / next_momentum);
                momentum = next_momentum;
            }
            weights = next;
            iterations += 1;
        }
        let max_gradient = logistic_gradient(&z, &targets, &weights, &penalised, l2)
            .abs()
            .max()
            .double_value(&[]);
        LogisticFit {
            model: Self { mean, std, weights },
            iterations,
            max_gradient,
            converged: converged || tolerance.is_some_and(|t| max_gradient <= t),
        }
    }

    /// Class scores (logits) of float64 features `x` (N, D), shape (N, C).
    fn scores(&self, x: &Tensor) -> Tensor {
        let z = with_constant_column(&((x - &self.mean) / &self.std), 1.0);
        z.matmul(&self.weights)
    }

    /// Predicted class of every row of float64 features `x` (N, D): the argmax of the scores,
    /// the first class on ties.
    fn predict(&self, x: &Tensor) -> Vec<i64> {
        argmax_rows(&self.scores(x))
    }
}

/// Gradient of `mean cross-entropy(softmax(z·w), targets) + l2/2 · ‖penalised ⊙ w‖²` with respect
/// to `w`.
fn logistic_gradient(
    z: &Tensor,
    targets: &Tensor,
    w: &Tensor,
    penalised: &Tensor,
    l2: f64,
) -> Tensor {
    let rows = z.size()[0] as f64;
    let residual = z.matmul(w).softmax(1, Kind::Double) - targets;
    z.tr().matmul(&residual) / rows + w * penalised * l2
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    /// Gaussian-ish features: `centers[label] · separation + noise`, from a seeded generator.
    fn blobs(labels: &[i64], dim: usize, separation: f64, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut center_rng = ChaCha8Rng::seed_from_u64(1234);
        let num_classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
        let centers: Vec<Vec<f64>> = (0..num_classes)
            .map(|_| {
                (0..dim)
                    .map(|_| center_rng.random_range(-1.0..1.0))
                    .collect()
            })
            .collect();
        let values: Vec<f64> = labels
            .iter()
            .flat_map(|&l| {
                let center = &centers[l as usize];
                (0..dim)
                    .map(|j| center[j] * separation + rng.random_range(-1.0..1.0))
                    .collect::<Vec<_>>()
            })
            .collect();
        Tensor::from_slice(&values).reshape([labels.len() as i64, dim as i64])
    }

    fn balanced_labels(per_class: usize, num_classes: usize) -> Vec<i64> {
        (0..per_class * num_classes)
            .map(|i| (i % num_classes) as i64)
            .collect()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn ridge_matches_hand_worked_two_point_case() {
        // x = [1, -1], labels [0, 1]: mean 0, std 1 (+ eps) so z = ±s with s = 1 / (1 + eps);
        // the bias column is [100, 100]. N = 2 = D + 1, the primal form:
        // ZᵀZ = diag(2s², 2·100²), ZᵀY = [[2s, -2s], [0, 0]], so
        // W = [[2s / (2s² + λ), -2s / (2s² + λ)], [0, 0]].
        let l2 = 3.0;
        let ridge = ridge_fit(
            &Tensor::from_slice(&[1.0f32, -1.0]).reshape([2, 1]),
            &[0, 1],
            2,
            l2,
        );
        let s = 1.0 / (1.0 + STD_EPSILON);
        let w = 2.0 * s / (2.0 * s * s + l2);
        let expected = Tensor::from_slice(&[w, -w, 0.0, 0.0]).reshape([2, 2]);
        assert!(
            max_abs_diff(&ridge.weights, &expected) < 1e-12,
            "{:?}",
            ridge.weights
        );
        assert_eq!(
            Vec::<f64>::try_from(ridge.mean.flatten(0, -1)).unwrap(),
            vec![0.0]
        );
        assert!((ridge.std.double_value(&[0, 0]) - (1.0 + STD_EPSILON)).abs() < 1e-15);
        assert_eq!(
            ridge.predict(&Tensor::from_slice(&[0.5f64, -2.0, 3.0]).reshape([3, 1])),
            vec![0, 1, 0]
        );
    }

    #[test]
    fn primal_and_dual_forms_agree() {
        for (rows, dim) in [(7, 12), (30, 5)] {
            let z = Tensor::randn([rows, dim], (Kind::Double, Device::Cpu));
            let y = Tensor::randn([rows, 3], (Kind::Double, Device::Cpu));
            let primal = ridge_primal(&z, &y, 2.5);
            let dual = ridge_dual(&z, &y, 2.5);
            assert!(max_abs_diff(&primal, &dual) < 1e-10, "{rows}x{dim}");
            // The primal weights satisfy the normal equations.
            let residual = z.tr().matmul(&(z.matmul(&primal) - &y)) + &primal * 2.5;
            assert!(residual.abs().max().double_value(&[]) < 1e-10);
        }
    }

    #[test]
    fn perfect_features_give_full_accuracy() {
        let train_y = balanced_labels(20, 4);
        let test_y = balanced_labels(25, 4);
        let train_x = one_hot(&train_y, 4) * 10.0;
        let test_x = one_hot(&test_y, 4) * 10.0;
        assert_eq!(
            ridge_accuracy(&train_x, &train_y, &test_x, &test_y, 4, FEW_SHOT_L2),
            1.0
        );
        let results = few_shot(
            &train_x,
            &train_y,
            &test_x,
            &test_y,
            4,
            &FewShotConfig::default(),
        );
        assert_eq!(
            results.iter().map(|r| r.shots).collect::<Vec<_>>(),
            vec![1, 5, 10, 25]
        );
        for result in results {
            assert_eq!(result.accuracies, vec![1.0; 3]);
            assert_eq!(result.mean_accuracy, 1.0);
        }
    }

    #[test]
    fn shuffled_labels_give_near_chance() {
        let train_y = balanced_labels(100, 4);
        let test_y = balanced_labels(250, 4);
        let train_x = blobs(&train_y, 16, 3.0, 1);
        let test_x = blobs(&test_y, 16, 3.0, 2);
        // The features separate the classes ...
        let informed = ridge_accuracy(&train_x, &train_y, &test_x, &test_y, 4, FEW_SHOT_L2);
        assert!(informed > 0.9, "{informed}");
        // ... but not once the labels of both splits are shuffled.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut shuffled_train, mut shuffled_test) = (train_y.clone(), test_y.clone());
        shuffled_train.shuffle(&mut rng);
        shuffled_test.shuffle(&mut rng);
        let chance = ridge_accuracy(
            &train_x,
            &shuffled_train,
            &test_x,
            &shuffled_test,
            4,
            FEW_SHOT_L2,
        );
        assert!((chance - 0.25).abs() < 0.06, "{chance}");
    }

    #[test]
    fn sample_shots_takes_shots_per_class_deterministically() {
        let labels: Vec<i64> = (0..50).map(|i| i % 4).chain([4, 4]).collect();
        let counts = |support: &[usize]| {
            let mut counts = [0usize; 5];
            for &i in support {
                counts[labels[i] as usize] += 1;
            }
            counts
        };
        let five = sample_shots(&labels, 5, 0);
        // Class 4 has only two examples and contributes both.
        assert_eq!(counts(&five), [5, 5, 5, 5, 2]);
        let mut distinct = five.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), five.len());
        assert_eq!(sample_shots(&labels, 5, 0), five);
        assert_ne!(sample_shots(&labels, 5, 1), five);
        // Smaller support sets of a seed are prefixes of the larger ones, class by class.
        let one = sample_shots(&labels, 1, 0);
        assert_eq!(counts(&one), [1; 5]);
        for (class, &index) in one.iter().enumerate() {
            assert_eq!(labels[index], class as i64);
            assert_eq!(
                five[five
                    .iter()
                    .position(|&i| labels[i] == class as i64)
                    .unwrap()],
                index
            );
        }
    }

    #[test]
    fn few_shot_seeds_differ_and_average() {
        let train_y = balanced_labels(30, 5);
        let test_y = balanced_labels(40, 5);
        let train_x = blobs(&train_y, 32, 0.8, 3);
        let test_x = blobs(&test_y, 32, 0.8, 4);
        let config = FewShotConfig {
            shots: vec![2, 10],
            seeds: 4,
            l2: FEW_SHOT_L2,
        };
        let results = few_shot(&train_x, &train_y, &test_x, &test_y, 5, &config);
        assert_eq!(results.len(), 2);
        for result in &results {
            assert_eq!(result.accuracies.len(), 4);
            let mean = result.accuracies.iter().sum::<f64>() / 4.0;
            assert!((result.mean_accuracy - mean).abs() < 1e-15);
        }
        assert!(
            results[1].mean_accuracy > results[0].mean_accuracy,
            "{results:?}"
        );
        let first = &results[0].accuracies;
        assert!(
            first.iter().any(|a| a != &first[0]),
            "seeds gave identical support sets: {first:?}"
        );
        assert_eq!(
            few_shot(&train_x, &train_y, &test_x, &test_y, 5, &config),
            results
        );
    }

    #[test]
    fn logistic_gradient_matches_autograd() {
        let z = with_constant_column(&Tensor::randn([9, 4], (Kind::Double, Device::Cpu)), 1.0);
        let targets = one_hot(&[0, 1, 2, 0, 1, 2, 2, 1, 0], 3);
        let penalised = Tensor::from_slice(&[1.0, 1.0, 1.0, 1.0, 0.0]).reshape([5, 1]);
        let w = Tensor::randn([5, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let loss = -(z.matmul(&w).log_softmax(1, Kind::Double) * &targets).sum(Kind::Double) / 9.0
            + (&w * &penalised).square().sum(Kind::Double) * (0.3 / 2.0);
        loss.backward();
        let manual = tch::no_grad(|| logistic_gradient(&z, &targets, &w.detach(), &penalised, 0.3));
        assert!(max_abs_diff(&manual, &w.grad()) < 1e-12);
    }

    #[test]
    fn validation_split_is_stratified_and_deterministic() {
        let labels: Vec<i64> = (0..43).map(|i| i % 4).chain([9]).collect();
        let (fit, validation) = validation_split(&labels, 0.2, 5);
        assert_eq!(
            validation_split(&labels, 0.2, 5),
            (fit.clone(), validation.clone())
        );
        assert_ne!(validation_split(&labels, 0.2, 6).1, validation);
        let mut all: Vec<usize> = fit.iter().chain(&validation).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
        // Classes of 11, 11, 11 and 10 examples give 2 each; the single class-9 example stays in fit.
        for class in 0..4 {
            assert_eq!(
                validation.iter().filter(|&&i| labels[i] == class).count(),
                2
            );
        }
        assert!(fit.contains(&43));
    }

    #[test]
    fn logistic_probe_separates_separable_data_and_picks_a_grid_value() {
        let train_y = balanced_labels(40, 3);
        let test_y = balanced_labels(30, 3);
        let train_x = blobs(&train_y, 8, 4.0, 5);
        let test_x = blobs(&test_y, 8, 4.0, 6);
        let config = LinearProbeConfig {
            iterations: 200,
            ..LinearProbeConfig::default()
        };
        let result = linear_probe(&train_x, &train_y, &test_x, &test_y, 3, &config);
        assert!(config.l2_grid.contains(&result.l2), "{result:?}");
        assert_eq!(result.grid.len(), config.l2_grid.len());
        assert_eq!(result.test_accuracy, 1.0, "{result:?}");
        assert_eq!(result.validation_accuracy, 1.0, "{result:?}");
        // Ties go to the strongest regularisation.
        let tied = result
            .grid
            .iter()
            .filter(|p| p.validation_accuracy == 1.0)
            .map(|p| p.l2);
        assert!(tied.clone().count() > 1, "{result:?}");
        assert_eq!(result.l2, tied.fold(0.0, f64::max));
    }

    #[test]
    fn logistic_probe_picks_the_best_validation_accuracy() {
        // Few noisy examples in many dimensions.
        let train_y = balanced_labels(20, 4);
        let test_y = balanced_labels(100, 4);
        let train_x = blobs(&train_y, 64, 0.2, 7);
        let test_x = blobs(&test_y, 64, 0.2, 8);
        let config = LinearProbeConfig {
            l2_grid: vec![1e-4, 1.0, 1e3],
            ..LinearProbeConfig::default()
        };
        let result = linear_probe(&train_x, &train_y, &test_x, &test_y, 4, &config);
        let best = result
            .grid
            .iter()
            .map(|p| p.validation_accuracy)
            .fold(0.0, f64::max);
        assert_eq!(result.validation_accuracy, best);
        assert!(
            result.grid.iter().any(|p| p.validation_accuracy < best),
            "{result:?}"
        );
        assert!(result.test_accuracy > 0.4, "{result:?}");
        assert_eq!(
            linear_probe(&train_x, &train_y, &test_x, &test_y, 4, &config),
            result
        );
    }

    #[test]
    fn logistic_fit_reaches_the_optimum() {
        // With a strong penalty the objective is well conditioned: the gradient must vanish.
        let labels = balanced_labels(30, 3);
        let x = blobs(&labels, 6, 1.0, 9).to_kind(Kind::Double);
        let model = Logistic::fit(&x, &labels, 3, 0.1, Stop::Iterations(300)).model;
        let z = with_constant_column(&((&x - &model.mean) / &model.std), 1.0);
        let penalised = Tensor::from_slice(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]).reshape([7, 1]);
        let gradient = logistic_gradient(&z, &one_hot(&labels, 3), &model.weights, &penalised, 0.1);
        assert!(
            gradient.abs().max().double_value(&[]) < 1e-8,
            "{gradient:?}"
        );
    }

    #[test]
    fn fixed_probe_stops_at_the_tolerance() {
        let train_y = balanced_labels(25, 3);
        let test_y = balanced_labels(10, 3);
        let train_x = blobs(&train_y, 6, 0.7, 10).to_kind(Kind::Float);
        let test_x = blobs(&test_y, 6, 0.7, 11);
        let fixed = linear_probe_fixed(&train_x, &train_y, &test_x, &test_y, 3, 1e-2);
        assert!(fixed.converged, "{fixed:?}");
        assert!(fixed.max_gradient <= FIXED_L2_TOLERANCE, "{fixed:?}");
        assert!(
            fixed.iterations > 0 && fixed.iterations < FIXED_L2_MAX_ITERATIONS,
            "{fixed:?}"
        );
        assert_eq!(fixed.test_scores.size(), vec![30, 3]);
        assert_eq!(fixed.test_scores.kind(), Kind::Double);
        let rows = fixed
            .test_probabilities
            .sum_dim_intlist(1, false, Kind::Double);
        assert!(max_abs_diff(&rows, &Tensor::ones([30], (Kind::Double, Device::Cpu))) < 1e-12);
        assert_eq!(
            accuracy(&argmax_rows(&fixed.test_probabilities), &test_y),
            fixed.test_accuracy
        );
        // Deterministic, bit for bit.
        let again = linear_probe_fixed(&train_x, &train_y, &test_x, &test_y, 3, 1e-2);
        assert!(again.test_scores.equal(&fixed.test_scores));
        assert_eq!(again.iterations, fixed.iterations);
    }

    #[test]
    fn a_fit_that_cannot_converge_stops_at_the_cap() {
        // Separable data without a penalty has no finite optimum: the gradient never vanishes.
        let labels = balanced_labels(10, 2);
        let x = one_hot(&labels, 2) * 3.0;
        let stop = Stop::Converged {
            tolerance: 1e-12,
            max_iterations: 50,
        };
        let fit = Logistic::fit(&x, &labels, 2, 0.0, stop);
        assert_eq!(fit.iterations, 50);
        assert!(!fit.converged);
        assert!(fit.max_gradient > 1e-12);
        // A fixed number of steps is never reported as converged.
        assert!(!Logistic::fit(&x, &labels, 2, 0.1, Stop::Iterations(50)).converged);
    }

    #[test]
    fn scored_probe_returns_the_refitted_model_s_test_scores() {
        let train_y = balanced_labels(20, 4);
        let test_y = balanced_labels(15, 4);
        let train_x = blobs(&train_y, 8, 0.5, 12);
        let test_x = blobs(&test_y, 8, 0.5, 13);
        let config = LinearProbeConfig {
            iterations: 100,
            ..LinearProbeConfig::default()
        };
        let (result, scores) =
            linear_probe_scored(&train_x, &train_y, &test_x, &test_y, 4, &config);
        assert_eq!(
            linear_probe(&train_x, &train_y, &test_x, &test_y, 4, &config),
            result
        );
        assert_eq!(scores.size(), vec![60, 4]);
        assert_eq!(
            accuracy(&argmax_rows(&scores), &test_y),
            result.test_accuracy
        );
        let metrics = crate::classification::classification_metrics(&scores, &test_y);
        assert_eq!(metrics.acc1, result.test_accuracy);
        // The scores are the chosen L2's refit: the same as a refit by hand.
        let model = Logistic::fit(
            &train_x.to_kind(Kind::Double),
            &train_y,
            4,
            result.l2,
            Stop::Iterations(config.iterations),
        )
        .model;
        assert!(model.scores(&test_x.to_kind(Kind::Double)).equal(&scores));
    }
}
