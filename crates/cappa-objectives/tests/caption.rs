//! The captioning loss against plain `f64` cross-entropy, its padding invariance and its
//! per-caption normalisation.

use cappa_objectives::caption_loss;
use tch::{Device, Kind, Tensor};

const PAD: i64 = 0;

/// A `(B, L, V)` f64 tensor from nested values.
fn logits_tensor(logits: &[Vec<Vec<f64>>]) -> Tensor {
    let (batch, length, vocab) = (logits.len(), logits[0].len(), logits[0][0].len());
    let flat: Vec<f64> = logits.iter().flatten().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([batch as i64, length as i64, vocab as i64])
}

fn targets_tensor(targets: &[Vec<i64>]) -> Tensor {
    let (batch, length) = (targets.len(), targets[0].len());
    let flat: Vec<i64> = targets.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([batch as i64, length as i64])
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// −log softmax(row)[target] in plain f64.
fn token_cross_entropy(row: &[f64], target: usize) -> f64 {
    let log_normaliser = row.iter().map(|x| x.exp()).sum::<f64>().ln();
    log_normaliser - row[target]
}

/// Torch's label smoothing in plain f64: (1 − ε)·(−log p_target) + ε·mean_c(−log p_c).
fn smoothed_token_cross_entropy(row: &[f64], target: usize, smoothing: f64) -> f64 {
    let mean_over_classes = (0..row.len())
        .map(|c| token_cross_entropy(row, c))
        .sum::<f64>()
        / row.len() as f64;
    (1.0 - smoothing) * token_cross_entropy(row, target) + smoothing * mean_over_classes
}

/// The loss as specified, in plain f64: per caption, the mean over its non-pad tokens; then the
/// mean over captions.
fn caption_reference(logits: &[Vec<Vec<f64>>], targets: &[Vec<i64>], smoothing: f64) -> f64 {
    let mut total = 0.0;
    for (caption_logits, caption_targets) in logits.iter().zip(targets) {
        let mut sum = 0.0;
        let mut count = 0;
        for (row, &target) in caption_logits.iter().zip(caption_targets) {
            if target != PAD {
                sum += smoothed_token_cross_entropy(row, target as usize, smoothing);
                count += 1;
            }
        }
        total += sum / count.max(1) as f64;
    }
    total / logits.len() as f64
}

/// Deterministic pseudo-random logits in [−2, 2) without libtorch's generator.
fn some_logits(batch: usize, length: usize, vocab: usize, seed: u64) -> Vec<Vec<Vec<f64>>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
    };
    (0..batch)
        .map(|_| {
            (0..length)
                .map(|_| (0..vocab).map(|_| next()).collect())
                .collect()
        })
        .collect()
}

#[test]
fn caption_loss_without_padding_or_smoothing_is_plain_token_cross_entropy() {
    // Equal lengths and no padding: the per-caption mean is the token mean, so the loss is
    // plain cross-entropy, checked against f64 arithmetic and against tch's own.
    let logits = some_logits(2, 3, 5, 1);
    let targets = vec![vec![1, 4, 2], vec![3, 3, 1]];
    let mut expected = 0.0;
    for (caption_logits, caption_targets) in logits.iter().zip(&targets) {
        for (row, &target) in caption_logits.iter().zip(caption_targets) {
            expected += token_cross_entropy(row, target as usize);
        }
    }
    expected /= 6.0;
    let (logits, targets) = (logits_tensor(&logits), targets_tensor(&targets));
    let loss = value(&caption_loss(&logits, &targets, PAD, 0.0));
    assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
    let plain = logits
        .reshape([6, 5])
        .log_softmax(-1, Kind::Double)
        .nll_loss(&targets.reshape([6]));
    assert!((loss - value(&plain)).abs() < 1e-12);
}

#[test]
fn caption_loss_matches_reference_with_padding_and_label_smoothing() {
    let logits = some_logits(3, 4, 6, 2);
    let targets = vec![vec![5, 2, 1, PAD], vec![3, PAD, PAD, PAD], vec![1, 1, 4, 2]];
    for smoothing in [0.0, 0.1, 0.5] {
        let expected = caption_reference(&logits, &targets, smoothing);
        let loss = caption_loss(
            &logits_tensor(&logits),
            &targets_tensor(&targets),
            PAD,
            smoothing,
        );
        assert!((value(&loss) - expected).abs() < 1e-12, "ε = {smoothing}");
    }
    // Smoothing changes the value, so the comparison above could tell ε apart.
    let plain = caption_reference(&logits, &targets, 0.0);
    assert!((caption_reference(&logits, &targets, 0.1) - plain).abs() > 1e-3);
}

#[test]
fn each_caption_weighs_the_same_whatever_its_length() {
    // V = 2, pad 0, real token 1. Caption A = [1, pad, pad] with logits [0, 0] at position 0:
    // cost ln 2. Caption B = [1, 1, 1] with logits [0, ln 3] (p = 3/4, cost ln 4/3),
    // [ln 3, 0] (p = 1/4, cost ln 4) and [ln 7, 0] (p = 1/8, cost ln 8):
    // mean (ln 4/3 + ln 4 + ln 8) / 3 = ln(128/3) / 3 ≈ 1.2511.
    // Loss = (ln 2 + ln(128/3) / 3) / 2 ≈ 0.9721, not the token mean
    // (ln 2 + ln(128/3)) / 4 ≈ 1.1116.
    let (ln3, ln7) = (3f64.ln(), 7f64.ln());
    let logits = vec![
        vec![vec![0.0, 0.0], vec![5.0, -5.0], vec![-1.0, 7.0]],
        vec![vec![0.0, ln3], vec![ln3, 0.0], vec![ln7, 0.0]],
    ];
    let targets = vec![vec![1, PAD, PAD], vec![1, 1, 1]];
    let caption_b = ((4.0f64 / 3.0).ln() + 4f64.ln() + 8f64.ln()) / 3.0;
    let expected = (2f64.ln() + caption_b) / 2.0;
    let token_mean = (2f64.ln() + (4.0f64 / 3.0).ln() + 4f64.ln() + 8f64.ln()) / 4.0;
    assert!((expected - 0.9721).abs() < 1e-4 && (token_mean - 1.1116).abs() < 1e-4);
    let loss = caption_loss(&logits_tensor(&logits), &targets_tensor(&targets), PAD, 0.0);
    assert!(
        (value(&loss) - expected).abs() < 1e-12,
        "{} vs {expected}",
        value(&loss)
    );
}

#[test]
fn an_all_pad_caption_contributes_zero() {
    // Caption A costs ln 2 (uniform logits over V = 2); caption B is all padding, its token
    // count is clamped to 1 and its loss is 0: the batch mean is ln 2 / 2, not NaN.
    let logits = vec![vec![vec![0.0, 0.0]; 2]; 2];
    let targets = vec![vec![1, PAD], vec![PAD, PAD]];
    let loss = caption_loss(&logits_tensor(&logits), &targets_tensor(&targets), PAD, 0.0);
    assert!((value(&loss) - 2f64.ln() / 2.0).abs() < 1e-12);
}

#[test]
fn padding_positions_neither_change_the_loss_nor_receive_gradient() {
    let logits = some_logits(3, 4, 6, 3);
    let targets = vec![vec![5, 2, 1, PAD], vec![3, PAD, PAD, PAD], vec![1, 1, 4, 2]];
    let base = value(&caption_loss(
        &logits_tensor(&logits),
        &targets_tensor(&targets),
        PAD,
        0.1,
    ));

    // Append three pad positions with arbitrary (large) logits.
    let extra = some_logits(3, 3, 6, 4);
    let longer_logits: Vec<Vec<Vec<f64>>> = logits
        .iter()
        .zip(&extra)
        .map(|(caption, more)| {
            caption
                .iter()
                .chain(more)
                .map(|row| row.iter().map(|x| x * 50.0).collect())
                .collect()
        })
        .collect();
    // Scale only the appended rows: keep the original ones as they were.
    let longer_logits: Vec<Vec<Vec<f64>>> = longer_logits
        .into_iter()
        .zip(&logits)
        .map(|(mut caption, original)| {
            caption[..4].clone_from_slice(original);
            caption
        })
        .collect();
    let longer_targets: Vec<Vec<i64>> = targets
        .iter()
        .map(|t| t.iter().copied().chain([PAD; 3]).collect())
        .collect();
    let longer = caption_loss(
        &logits_tensor(&longer_logits),
        &targets_tensor(&longer_targets),
        PAD,
        0.1,
    );
    assert!((value(&longer) - base).abs() < 1e-12);

    // Change the logits at the existing pad positions.
    let mut changed = logits.clone();
    changed[0][3] = vec![100.0, -3.0, 0.0, 8.0, 1.0, 2.0];
    changed[1][2] = vec![-40.0; 6];
    let loss = caption_loss(
        &logits_tensor(&changed),
        &targets_tensor(&targets),
        PAD,
        0.1,
    );
    assert!((value(&loss) - base).abs() < 1e-12);

    // And the gradient at pad positions is exactly zero, elsewhere not.
    let leaf = logits_tensor(&logits).set_requires_grad(true);
    caption_loss(&leaf, &targets_tensor(&targets), PAD, 0.1).backward();
    let gradient_norm = leaf
        .grad()
        .abs()
        .sum_dim_intlist(&[2i64][..], false, Kind::Double); // (B, L)
    let is_pad = targets_tensor(&targets).eq(PAD);
    assert_eq!(
        value(&gradient_norm.masked_select(&is_pad).sum(Kind::Double)),
        0.0
    );
    let min_elsewhere = gradient_norm.masked_select(&is_pad.logical_not()).min();
    assert!(value(&min_elsewhere) > 0.0);
}

#[test]
fn half_precision_logits_are_upcast() {
    let logits = Tensor::zeros([2, 3, 4], (Kind::BFloat16, Device::Cpu));
    let targets = Tensor::from_slice(&[1i64, 2, 3, 3, 0, 0]).reshape([2, 3]);
    let loss = caption_loss(&logits, &targets, PAD, 0.0);
    assert_eq!(loss.kind(), Kind::Float);
    assert!((value(&loss) - 4f64.ln()).abs() < 1e-6);
}

#[test]
#[should_panic(expected = "must be (B, L)")]
fn mismatched_targets_panic_naming_both_shapes() {
    let logits = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
    let targets = Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
    let _ = caption_loss(&logits, &targets, PAD, 0.0);
}
