//! Token accuracy and in-batch retrieval accuracy on hand-built cases.

use cappa_objectives::{in_batch_retrieval_accuracy, token_accuracy};
use tch::{Device, Kind, Tensor};

fn matrix(rows: &[[f64; 3]]) -> Tensor {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, 3])
}

#[test]
fn identical_embeddings_retrieve_perfectly() {
    tch::manual_seed(3);
    let x = Tensor::randn([6, 4], (Kind::Double, Device::Cpu));
    let x = &x / x.norm_scalaropt_dim(2, [1], true);
    assert_eq!(in_batch_retrieval_accuracy(&x, &x), (1.0, 1.0));
}

#[test]
fn one_swapped_pair_costs_two_of_three_in_both_directions() {
    // Texts 0 and 1 swapped: image 0 finds text 1, image 1 finds text 0, image 2 text 2.
    let image = matrix(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    let text = matrix(&[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);
    let (image_to_text, text_to_image) = in_batch_retrieval_accuracy(&image, &text);
    assert!((image_to_text - 1.0 / 3.0).abs() < 1e-12);
    assert!((text_to_image - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn the_two_directions_are_counted_separately() {
    // Similarity (i, j) = text_j[i]: [[0.6, 0, 0], [0.8, 1, 0], [0, 0, 1]].
    // Rows (image→text): argmax 0, 1, 2 — all correct. Columns (text→image): text 0's best
    // image is 1 (0.8 > 0.6), texts 1 and 2 are correct: 2/3.
    let image = matrix(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    let text = matrix(&[[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    let (image_to_text, text_to_image) = in_batch_retrieval_accuracy(&image, &text);
    assert_eq!(image_to_text, 1.0);
    assert!((text_to_image - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn token_accuracy_counts_non_pad_positions_only() {
    // Targets [2, 1, pad, 1], [3, pad, pad, pad]; argmax [2, 0, 1, 1], [3, 2, 2, 2]:
    // correct at (0, 0), (0, 3), (1, 0); wrong at (0, 1); pads ignored: 3/4.
    let logits = Tensor::from_slice(&[
        0.0f32, 0.0, 5.0, 0.0, // → 2
        4.0, 1.0, 0.0, 0.0, // → 0
        0.0, 3.0, 0.0, 0.0, // → 1 (pad)
        0.0, 2.0, 1.0, 0.0, // → 1
        0.0, 0.0, 0.0, 9.0, // → 3
        0.0, 0.0, 1.0, 0.0, // → 2 (pad)
        0.0, 0.0, 1.0, 0.0, // → 2 (pad)
        0.0, 0.0, 1.0, 0.0, // → 2 (pad)
    ])
    .reshape([2, 4, 4]);
    let targets = Tensor::from_slice2(&[[2i64, 1, 0, 1], [3, 0, 0, 0]]);
    assert_eq!(token_accuracy(&logits, &targets, 0), 0.75);
    let all_pad = Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
    assert_eq!(token_accuracy(&logits, &all_pad, 0), 0.0);
}
