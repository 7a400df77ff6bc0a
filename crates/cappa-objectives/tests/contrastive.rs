//! The contrastive losses against values worked out with plain `f64` arithmetic, their
//! invariants, and the global-batch form simulated with several ranks in one process.

use cappa_objectives::{
    contrastive_sigmoid_loss, contrastive_sigmoid_loss_global, contrastive_softmax_loss,
    contrastive_softmax_loss_global, splice_local, Gathered,
};
use tch::{Device, Kind, Tensor};

/// A `(rows, columns)` f64 tensor from nested rows.
fn matrix(rows: &[&[f64]]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flat_map(|row| row.iter().copied()).collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
}

/// A learnable f64 scalar.
fn parameter(value: f64) -> Tensor {
    Tensor::from(value).set_requires_grad(true)
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.flatten(0, -1)).expect("f64 tensor")
}

/// L2-normalised random `(rows, width)` f64 embeddings.
fn random_embeddings(rows: i64, width: i64) -> Tensor {
    let x = Tensor::randn([rows, width], (Kind::Double, Device::Cpu));
    &x / x.norm_scalaropt_dim(2, [1], true)
}

fn softplus(x: f64) -> f64 {
    x.exp().ln_1p()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Plain f64 CLIP loss: with logits zᵢⱼ = s·imageᵢ·textⱼ, row i of the image→text direction
/// costs ln Σⱼ exp(zᵢⱼ) − zᵢᵢ and column j of the text→image direction ln Σᵢ exp(zᵢⱼ) − zⱼⱼ;
/// the loss is the mean of the two directions' means.
fn softmax_reference(image: &[&[f64]], text: &[&[f64]], scale: f64) -> f64 {
    let n = image.len();
    let z = |i: usize, j: usize| scale * dot(image[i], text[j]);
    let mut total = 0.0;
    for k in 0..n {
        let row: f64 = (0..n).map(|j| z(k, j).exp()).sum();
        let column: f64 = (0..n).map(|i| z(i, k).exp()).sum();
        total += row.ln() - z(k, k) + column.ln() - z(k, k);
    }
    total / (2.0 * n as f64)
}

/// Plain f64 SigLIP loss: Σᵢⱼ softplus(−yᵢⱼ·zᵢⱼ) / n with zᵢⱼ = s·imageᵢ·textⱼ + b,
/// yᵢᵢ = +1, yᵢⱼ = −1 (i ≠ j); softplus(−x) = −log σ(x).
fn sigmoid_reference(image: &[&[f64]], text: &[&[f64]], scale: f64, bias: f64) -> f64 {
    let mut total = 0.0;
    for (i, image_row) in image.iter().enumerate() {
        for (j, text_row) in text.iter().enumerate() {
            let z = scale * dot(image_row, text_row) + bias;
            let y = if i == j { 1.0 } else { -1.0 };
            total += softplus(-y * z);
        }
    }
    total / image.len() as f64
}

const IDENTITY_2: [&[f64]; 2] = [&[1.0, 0.0], &[0.0, 1.0]];
const TEXT_2: [&[f64]; 2] = [&[1.0, 0.0], &[0.6, 0.8]];

#[test]
fn softmax_loss_matches_hand_value_2x2() {
    // image = I, text = [[1, 0], [0.6, 0.8]], t = ln 2 so the scale is 2.
    // Similarities S = image·textᵀ = [[1, 0.6], [0, 0.8]]; logits 2S = [[2, 1.2], [0, 1.6]].
    // Image→text rows: −log softmax picks ln(1 + e^(1.2−2)) and ln(1 + e^(0−1.6)).
    // Text→image columns: [2, 0] → ln(1 + e^(0−2)); [1.2, 1.6] → ln(1 + e^(1.2−1.6)).
    // Loss = the mean of the two directions' means = (sum of the four) / 4.
    let expected = (softplus(-0.8) + softplus(-1.6) + softplus(-2.0) + softplus(-0.4)) / 4.0;
    let loss = contrastive_softmax_loss(
        &matrix(&IDENTITY_2),
        &matrix(&TEXT_2),
        &parameter(2f64.ln()),
    );
    assert!(
        (value(&loss) - expected).abs() < 1e-12,
        "{} vs {expected}",
        value(&loss)
    );
    assert_eq!(loss.size(), Vec::<i64>::new());
    assert!((expected - softmax_reference(&IDENTITY_2, &TEXT_2, 2.0)).abs() < 1e-15);
}

#[test]
fn softmax_loss_matches_hand_value_3x3() {
    // image = I₃, so Sᵢⱼ = textⱼ[i]:
    // S = [[0.6, 0, 0.8], [0.8, 0.6, 0], [0, 0.8, 0.6]] and t = 0 (scale 1).
    // Row 0 costs ln(e^0.6 + e^0 + e^0.8) − 0.6, column 0 ln(e^0.6 + e^0.8 + e^0) − 0.6, and so
    // on cyclically: every row and column holds {0.6, 0.8, 0} with 0.6 on the diagonal.
    let image: [&[f64]; 3] = [&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], &[0.0, 0.0, 1.0]];
    let text: [&[f64]; 3] = [&[0.6, 0.8, 0.0], &[0.0, 0.6, 0.8], &[0.8, 0.0, 0.6]];
    let expected = (0.6f64.exp() + 1.0 + 0.8f64.exp()).ln() - 0.6;
    assert!((expected - softmax_reference(&image, &text, 1.0)).abs() < 1e-15);
    let loss = contrastive_softmax_loss(&matrix(&image), &matrix(&text), &parameter(0.0));
    assert!((value(&loss) - expected).abs() < 1e-12);

    // A non-cyclic case through the f64 reference: scale e^1.5, the third text tilted.
    let text: [&[f64]; 3] = [&[0.6, 0.8, 0.0], &[0.0, 0.6, 0.8], &[0.48, 0.64, 0.6]];
    let expected = softmax_reference(&image, &text, 1.5f64.exp());
    let loss = contrastive_softmax_loss(&matrix(&image), &matrix(&text), &parameter(1.5));
    assert!((value(&loss) - expected).abs() < 1e-12);
}

#[test]
fn softmax_loss_clamps_the_scale_at_100() {
    // Two embeddings 0.01 rad apart: every logit gap is s·(1 − cos 0.01) ≈ s·5e-5, so the loss
    // ln(1 + e^(−s(1 − cos 0.01))) in each of the four rows/columns tells s = 100 from 1000.
    let (sin, cos) = 0.01f64.sin_cos();
    let rows: [&[f64]; 2] = [&[1.0, 0.0], &[cos, sin]];
    let expected = softplus(-100.0 * (1.0 - cos));
    let log_scale = parameter(1000f64.ln());
    let loss = contrastive_softmax_loss(&matrix(&rows), &matrix(&rows), &log_scale);
    assert!((value(&loss) - expected).abs() < 1e-12);
    assert!((value(&loss) - softplus(-1000.0 * (1.0 - cos))).abs() > 1e-3);
    // Past the clamp the log scale receives no gradient, as with torch.clamp.
    loss.backward();
    assert_eq!(value(&log_scale.grad()), 0.0);
}

#[test]
fn softmax_loss_is_symmetric_in_image_and_text() {
    tch::manual_seed(1);
    let (image, text) = (random_embeddings(5, 8), random_embeddings(5, 8));
    let log_scale = parameter((1.0f64 / 0.07).ln());
    let forward = value(&contrastive_softmax_loss(&image, &text, &log_scale));
    let swapped = value(&contrastive_softmax_loss(&text, &image, &log_scale));
    assert!((forward - swapped).abs() < 1e-12, "{forward} vs {swapped}");
}

#[test]
fn softmax_loss_is_ln_batch_at_uniform_logits() {
    // Equal embeddings give equal logits everywhere: each cross-entropy is ln B, whatever t.
    let image = Tensor::ones([5, 4], (Kind::Double, Device::Cpu)) / 2.0;
    for t in [0.0, 1.0, (1.0f64 / 0.07).ln()] {
        let loss = contrastive_softmax_loss(&image, &image, &parameter(t));
        assert!((value(&loss) - 5f64.ln()).abs() < 1e-12);
    }
}

#[test]
fn sigmoid_loss_matches_hand_value() {
    // image = I, text = [[1, 0], [0.6, 0.8]], t = ln 2 (scale 2), b = −1.
    // Logits z = 2S − 1 = [[1, 0.2], [−1, 0.6]] with S = [[1, 0.6], [0, 0.8]].
    // Diagonal (y = +1): −log σ(1) = softplus(−1), −log σ(0.6) = softplus(−0.6).
    // Off-diagonal (y = −1): −log σ(−0.2) = softplus(0.2), −log σ(1) = softplus(−1).
    // Loss = sum / B with B = 2.
    let expected = (softplus(-1.0) + softplus(-0.6) + softplus(0.2) + softplus(-1.0)) / 2.0;
    assert!((expected - sigmoid_reference(&IDENTITY_2, &TEXT_2, 2.0, -1.0)).abs() < 1e-15);
    let loss = contrastive_sigmoid_loss(
        &matrix(&IDENTITY_2),
        &matrix(&TEXT_2),
        &parameter(2f64.ln()),
        &parameter(-1.0),
    );
    assert!(
        (value(&loss) - expected).abs() < 1e-12,
        "{} vs {expected}",
        value(&loss)
    );
    assert_eq!(loss.size(), Vec::<i64>::new());
}

#[test]
fn sigmoid_loss_matches_reference_3x3_at_siglip_init() {
    // SigLIP's initialisation t = ln 10, b = −10, on a 3×3 case through the f64 reference.
    let image: [&[f64]; 3] = [&[1.0, 0.0, 0.0], &[0.0, 0.6, 0.8], &[0.0, 0.8, -0.6]];
    let text: [&[f64]; 3] = [&[0.8, 0.6, 0.0], &[0.0, 0.0, 1.0], &[0.0, 1.0, 0.0]];
    let expected = sigmoid_reference(&image, &text, 10.0, -10.0);
    let loss = contrastive_sigmoid_loss(
        &matrix(&image),
        &matrix(&text),
        &parameter(10f64.ln()),
        &parameter(-10.0),
    );
    assert!((value(&loss) - expected).abs() < 1e-12);
}

#[test]
fn gradients_reach_log_scale_and_bias_and_match_finite_differences() {
    let step = 1e-6;
    let t = 0.3;
    let log_scale = parameter(t);
    contrastive_softmax_loss(&matrix(&IDENTITY_2), &matrix(&TEXT_2), &log_scale).backward();
    let numeric = (softmax_reference(&IDENTITY_2, &TEXT_2, (t + step).exp())
        - softmax_reference(&IDENTITY_2, &TEXT_2, (t - step).exp()))
        / (2.0 * step);
    let analytic = value(&log_scale.grad());
    assert!(analytic.abs() > 1e-3);
    assert!((analytic - numeric).abs() < 1e-6, "{analytic} vs {numeric}");

    let (t, b) = (0.5, -2.0);
    let (log_scale, bias) = (parameter(t), parameter(b));
    contrastive_sigmoid_loss(&matrix(&IDENTITY_2), &matrix(&TEXT_2), &log_scale, &bias).backward();
    let reference = |t: f64, b: f64| sigmoid_reference(&IDENTITY_2, &TEXT_2, t.exp(), b);
    let numeric_t = (reference(t + step, b) - reference(t - step, b)) / (2.0 * step);
    let numeric_b = (reference(t, b + step) - reference(t, b - step)) / (2.0 * step);
    let (analytic_t, analytic_b) = (value(&log_scale.grad()), value(&bias.grad()));
    assert!(analytic_t.abs() > 1e-3 && analytic_b.abs() > 1e-3);
    assert!(
        (analytic_t - numeric_t).abs() < 1e-6,
        "{analytic_t} vs {numeric_t}"
    );
    assert!(
        (analytic_b - numeric_b).abs() < 1e-6,
        "{analytic_b} vs {numeric_b}"
    );
}

#[test]
fn splice_local_puts_the_local_rows_in_their_slot_with_gradient() {
    let gathered = Tensor::arange(12, (Kind::Double, Device::Cpu)).reshape([6, 2]);
    let local = (Tensor::ones([2, 2], (Kind::Double, Device::Cpu)) * -1.0).set_requires_grad(true);
    let spliced = splice_local(&gathered, &local, 1); // rows 2..4 of (6, 2)
    assert_eq!(
        values(&spliced),
        [0.0, 1.0, 2.0, 3.0, -1.0, -1.0, -1.0, -1.0, 8.0, 9.0, 10.0, 11.0]
    );
    (spliced * Tensor::arange(12, (Kind::Double, Device::Cpu)).reshape([6, 2]))
        .sum(Kind::Double)
        .backward();
    assert_eq!(values(&local.grad()), [4.0, 5.0, 6.0, 7.0]);
}

#[test]
#[should_panic(expected = "rank 3 lies outside 0..3")]
fn splice_local_rejects_a_rank_outside_the_world() {
    let gathered = Tensor::zeros([6, 2], (Kind::Double, Device::Cpu));
    let local = Tensor::zeros([2, 2], (Kind::Double, Device::Cpu));
    let _ = splice_local(&gathered, &local, 3);
}

#[test]
#[should_panic(expected = "whole number of local batches")]
fn splice_local_rejects_a_global_batch_that_is_not_a_multiple() {
    let gathered = Tensor::zeros([5, 2], (Kind::Double, Device::Cpu));
    let local = Tensor::zeros([2, 2], (Kind::Double, Device::Cpu));
    let _ = splice_local(&gathered, &local, 0);
}

/// Gradients of `loss` with respect to `inputs`.
fn gradients(loss: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[loss], inputs, false, false)
}

fn assert_close(actual: &Tensor, expected: &Tensor, tolerance: f64, what: &str) {
    let difference = value(&(actual - expected).abs().max());
    assert!(
        difference <= tolerance,
        "{what}: max difference {difference}"
    );
}

/// Simulates `world_size` ranks in one process: rank r holds rows r·B..(r+1)·B of the
/// global batch, the gathered tensors are the detached global batch. Checks that every rank's
/// loss equals the single-process loss and that the ranks' gradients sum to its gradient.
fn check_global_form(sigmoid: bool, world_size: i64, batch: i64) {
    tch::manual_seed(7 + world_size);
    let global = world_size * batch;
    let image = random_embeddings(global, 5).set_requires_grad(true);
    let text = random_embeddings(global, 5).set_requires_grad(true);
    let log_scale = parameter(if sigmoid {
        10f64.ln()
    } else {
        (1.0f64 / 0.07).ln()
    });
    let bias = parameter(-10.0);
    let inputs = [&image, &text, &log_scale, &bias];

    let single = if sigmoid {
        contrastive_sigmoid_loss(&image, &text, &log_scale, &bias)
    } else {
        // Add 0·bias so that every input is part of the graph.
        contrastive_softmax_loss(&image, &text, &log_scale) + &bias * 0.0
    };
    let single_gradients = gradients(&single, &inputs);

    let (image_gathered, text_gathered) = (image.detach(), text.detach());
    let mut summed: Vec<Tensor> = single_gradients.iter().map(Tensor::zeros_like).collect();
    for rank in 0..world_size {
        let local_image = image.narrow(0, rank * batch, batch); // (B, D)
        let local_text = text.narrow(0, rank * batch, batch); // (B, D)
        let gathered = Gathered {
            image: &image_gathered,
            text: &text_gathered,
            rank,
        };
        let loss = if sigmoid {
            contrastive_sigmoid_loss_global(&local_image, &local_text, &gathered, &log_scale, &bias)
        } else {
            contrastive_softmax_loss_global(&local_image, &local_text, &gathered, &log_scale)
                + &bias * 0.0
        };
        assert!(
            (value(&loss) - value(&single)).abs() < 1e-12,
            "rank {rank}: loss {} vs single-process {}",
            value(&loss),
            value(&single)
        );
        let rank_gradients = gradients(&loss, &inputs);
        // Outside its own slot, a rank's embedding gradient is zero.
        let outside = rank_gradients[0].copy();
        let _ = outside.narrow(0, rank * batch, batch).fill_(0.0);
        assert_eq!(
            value(&outside.abs().max()),
            0.0,
            "rank {rank} leaks gradient"
        );
        for (sum, gradient) in summed.iter_mut().zip(&rank_gradients) {
            *sum = &*sum + gradient;
        }
    }
    for ((sum, single), what) in
        summed
            .iter()
            .zip(&single_gradients)
            .zip(["image", "text", "log_scale", "bias"])
    {
        // Only the softmax loss leaves the bias without gradient.
        if sigmoid || what != "bias" {
            assert!(value(&single.abs().max()) > 1e-6, "{what}: no gradient");
        }
        assert_close(sum, single, 1e-6, what);
    }
}

#[test]
fn global_softmax_loss_with_two_ranks_equals_single_process() {
    check_global_form(false, 2, 2);
}

#[test]
fn global_sigmoid_loss_with_two_ranks_equals_single_process() {
    check_global_form(true, 2, 2);
}

#[test]
fn global_losses_with_one_and_four_ranks_equal_single_process() {
    for sigmoid in [false, true] {
        check_global_form(sigmoid, 1, 3);
        check_global_form(sigmoid, 4, 3);
    }
}
