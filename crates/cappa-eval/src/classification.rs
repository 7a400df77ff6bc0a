//! Single-label classification metrics as CLIP_benchmark (github.com/LAION-AI/CLIP_benchmark)
//! names and computes them: `acc1`, `acc5` and `mean_per_class_recall`, from a matrix of class
//! scores and the true labels. Zero-shot classification and the linear probes report these, so
//! their numbers read like CLIP_benchmark's result files.
//!
//! Definitions (`clip_benchmark/metrics/zeroshot_classification.py`, and the same three in
//! `linear_probe.py`):
//!
//! - **acc1**: fraction of examples whose top-1 class is the label. The top-1 class is the first
//!   maximal score of the row, as `argmax` gives it.
//! - **acc5**: fraction of examples whose label is among the top `k = min(5, C)` classes
//!   (`accuracy(logits, target, topk=(1, 5))`). *Deviation*: CLIP_benchmark reports `acc5` as
//!   NaN when there are fewer than 5 classes; here `k` clamps to `C`, so `acc5` is then 1 (NaN
//!   has no JSON form).
//! - **mean_per_class_recall**: scikit-learn's `balanced_accuracy_score(target, pred)` on the
//!   top-1 predictions — for every class that occurs among the labels, the fraction of its
//!   examples predicted as it, averaged over those classes. A class that never occurs among the
//!   labels is not counted, even when it is predicted (scikit-learn drops its undefined recall).
//!
//! **Ties.** Classes are ranked by descending score, equal scores by ascending class index (a
//! stable order), so the top-1 class is `argmax`'s and every top-k list is deterministic.
//! `torch.topk`, which CLIP_benchmark uses, leaves the order of ties unspecified; the metrics can
//! differ only where the label ties with the k-th class. NaN scores are refused.
//!
//! ```
//! use cappa_eval::classification::classification_metrics;
//! use tch::Tensor;
//!
//! // Three images, two classes: the first two are right, the third is wrong.
//! let scores = Tensor::from_slice(&[0.9f32, 0.1, 0.2, 0.8, 0.7, 0.3]).reshape([3, 2]);
//! let metrics = classification_metrics(&scores, &[0, 1, 1]);
//! assert_eq!((metrics.acc1, metrics.acc5), (2.0 / 3.0, 1.0));
//! assert_eq!(metrics.mean_per_class_recall, (1.0 + 0.5) / 2.0);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The `k` of `acc5` (clamped to the number of classes).
pub const TOP_K: usize = 5;

/// Score entries converted to float64 on the CPU at a time by [`top_k_predictions`].
const CHUNK_ELEMENTS: i64 = 1 << 20;

/// CLIP_benchmark's classification metrics (see the module documentation), all fractions in
/// `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Fraction of examples whose top-1 class is the label.
    pub acc1: f64,
    /// Fraction of examples whose label is among the top `min(5, C)` classes.
    pub acc5: f64,
    /// Mean, over the classes that occur among the labels, of the fraction of a class's examples
    /// whose top-1 class is that class (scikit-learn's `balanced_accuracy_score`).
    pub mean_per_class_recall: f64,
}

/// `acc1`, `acc5` and `mean_per_class_recall` of class `scores` (N, C), of any floating-point
/// kind and on any device (higher is more likely), against `labels` in `0..C`.
///
/// # Panics
/// If `scores` is not (N, C) with N = `labels.len()` ≥ 1 and C ≥ 1, if it holds a NaN, or if a
/// label is outside `0..C`.
pub fn classification_metrics(scores: &Tensor, labels: &[i64]) -> ClassificationMetrics {
    let num_classes = check_labels(scores, labels);
    let ranked = top_k_predictions(scores, TOP_K.min(num_classes));
    let mut top1_hits = 0usize;
    let mut topk_hits = 0usize;
    // Per class that occurs among the labels: (examples, examples predicted as it).
    let mut per_class: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for (top, &label) in ranked.iter().zip(labels) {
        let hit = top[0] == label;
        top1_hits += usize::from(hit);
        topk_hits += usize::from(top.contains(&label));
        let class = per_class.entry(label).or_default();
        class.0 += 1;
        class.1 += usize::from(hit);
    }
    let examples = labels.len() as f64;
    let recall_sum: f64 = per_class
        .values()
        .map(|&(count, hits)| hits as f64 / count as f64)
        .sum();
    ClassificationMetrics {
        acc1: top1_hits as f64 / examples,
        acc5: topk_hits as f64 / examples,
        mean_per_class_recall: recall_sum / per_class.len() as f64,
    }
}

/// The `k` highest-scoring classes of every row of `scores` (N, C), of any floating-point kind
/// and on any device, best first; `k` clamps to C. Equal scores rank by ascending class index, so
/// the first entry is the row's `argmax`.
///
/// # Panics
/// If `scores` is not a 2-D tensor with C ≥ 1, if `k` is 0, or if `scores` holds a NaN.
pub fn top_k_predictions(scores: &Tensor, k: usize) -> Vec<Vec<i64>> {
    let size = scores.size();
    assert!(
        size.len() == 2 && size[1] > 0,
        "class scores must be a 2-D (examples, classes) tensor with at least one class, got shape {size:?}"
    );
    assert!(k > 0, "top-k predictions need k of at least 1");
    let (rows, num_classes) = (size[0], size[1] as usize);
    let k = k.min(num_classes);
    let chunk_rows = (CHUNK_ELEMENTS / size[1]).max(1);
    let mut ranked = Vec::with_capacity(rows as usize);
    let mut start = 0;
    while start < rows {
        let length = chunk_rows.min(rows - start);
        let chunk = scores
            .narrow(0, start, length)
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous();
        let values = Vec::<f64>::try_from(chunk.flatten(0, -1)).expect("float64 scores");
        for (offset, row) in values.chunks(num_classes).enumerate() {
            ranked.push(top_k_row(row, k, start + offset as i64));
        }
        start += length;
    }
    ranked
}

/// Indices of the `k` largest entries of `row`, best first, equal entries by ascending index.
/// `row_index` names the row in the NaN panic.
fn top_k_row(row: &[f64], k: usize, row_index: i64) -> Vec<i64> {
    // (score, class), sorted by descending score then ascending class.
    let mut best: Vec<(f64, i64)> = Vec::with_capacity(k + 1);
    for (class, &score) in row.iter().enumerate() {
        assert!(
            !score.is_nan(),
            "class scores hold NaN (row {row_index}, class {class}); the model produced \
             non-finite outputs"
        );
        if best.len() == k && score <= best[k - 1].0 {
            continue;
        }
        // After every kept entry with a score at least as high: earlier classes win ties.
        let position = best.partition_point(|&(kept, _)| kept >= score);
        best.insert(position, (score, class as i64));
        best.truncate(k);
    }
    best.into_iter().map(|(_, class)| class).collect()
}

/// Checks that `scores` is (N, C) with N = `labels.len()` ≥ 1 and every label in `0..C`;
/// returns C.
fn check_labels(scores: &Tensor, labels: &[i64]) -> usize {
    let size = scores.size();
    assert!(
        size.len() == 2 && size[1] > 0,
        "class scores must be a 2-D (examples, classes) tensor with at least one class, got shape {size:?}"
    );
    assert_eq!(
        size[0],
        labels.len() as i64,
        "class scores have {} rows but there are {} labels",
        size[0],
        labels.len()
    );
    assert!(!labels.is_empty(), "classification metrics of an empty set");
    let num_classes = size[1];
    if let Some((index, label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l >= num_classes)
    {
        panic!("label {label} at index {index} is outside 0..{num_classes} (the score columns)");
    }
    num_classes as usize
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn matrix(rows: &[&[f64]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
    }

    /// Scores (N, C) whose row `i` ranks the classes in the order `rankings[i]`, best first.
    fn ranked_scores(rankings: &[Vec<i64>]) -> Tensor {
        let num_classes = rankings[0].len();
        let rows: Vec<Vec<f64>> = rankings
            .iter()
            .map(|ranking| {
                let mut row = vec![0.0; num_classes];
                for (rank, &class) in ranking.iter().enumerate() {
                    row[class as usize] = (num_classes - rank) as f64;
                }
                row
            })
            .collect();
        let rows: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        matrix(&rows)
    }

    #[test]
    fn acc5_counts_the_top_five_of_seven_classes() {
        // The label ranks 1st, 3rd, 5th and 6th.
        let scores = ranked_scores(&[
            vec![2, 0, 1, 3, 4, 5, 6],
            vec![0, 1, 2, 3, 4, 5, 6],
            vec![6, 5, 4, 3, 2, 1, 0],
            vec![0, 1, 2, 3, 4, 5, 6],
        ]);
        let labels = [2, 2, 2, 5];
        let metrics = classification_metrics(&scores, &labels);
        assert_eq!(metrics.acc1, 0.25);
        assert_eq!(metrics.acc5, 0.75);
        // One class occurs; one of its three examples is right, the class-5 example is not.
        assert_eq!(metrics.mean_per_class_recall, (1.0 / 3.0 + 0.0) / 2.0);
        assert_eq!(
            top_k_predictions(&scores, 5),
            vec![
                vec![2, 0, 1, 3, 4],
                vec![0, 1, 2, 3, 4],
                vec![6, 5, 4, 3, 2],
                vec![0, 1, 2, 3, 4],
            ]
        );
    }

    #[test]
    fn k_clamps_to_the_number_of_classes() {
        // Three classes: top-5 is top-3, which always holds the label.
        let scores = matrix(&[&[0.1, 0.5, 0.4], &[3.0, 2.0, 1.0]]);
        let metrics = classification_metrics(&scores, &[2, 2]);
        assert_eq!(metrics.acc1, 0.0);
        assert_eq!(metrics.acc5, 1.0);
        assert_eq!(
            top_k_predictions(&scores, 5),
            vec![vec![1, 2, 0], vec![0, 1, 2]]
        );
    }

    #[test]
    fn mean_per_class_recall_weighs_classes_equally_and_skips_absent_ones() {
        // Four classes; labels 0, 0, 0, 0, 1, 2 (class 3 never occurs but is predicted once).
        // Predictions 0, 0, 0, 3, 0, 2: recalls 3/4 (class 0), 0 (class 1), 1 (class 2).
        let labels = [0, 0, 0, 0, 1, 2];
        let predictions = [0, 0, 0, 3, 0, 2];
        let rows: Vec<Vec<f64>> = predictions
            .iter()
            .map(|&p| (0..4).map(|c| if c == p { 1.0 } else { 0.0 }).collect())
            .collect();
        let rows: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let metrics = classification_metrics(&matrix(&rows), &labels);
        assert_eq!(metrics.acc1, 4.0 / 6.0);
        assert_eq!(metrics.mean_per_class_recall, (0.75 + 0.0 + 1.0) / 3.0);
        assert_ne!(metrics.mean_per_class_recall, metrics.acc1);
        // Four classes: k = 4, every label is in the top 4.
        assert_eq!(metrics.acc5, 1.0);
    }

    #[test]
    fn ties_rank_by_class_index_and_top1_is_argmax() {
        let scores = matrix(&[&[1.0, 3.0, 3.0, 2.0, 3.0], &[0.0; 5]]);
        assert_eq!(
            top_k_predictions(&scores, 3),
            vec![vec![1, 2, 4], vec![0, 1, 2]]
        );
        // Random small integers tie often; the first entry must be tch's argmax (the first
        // maximal index) and the lists must be a stable descending sort.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let values: Vec<f64> = (0..200 * 9)
            .map(|_| f64::from(rng.random_range(0..4)))
            .collect();
        let scores = Tensor::from_slice(&values).reshape([200, 9]);
        let ranked = top_k_predictions(&scores, 5);
        let argmax = Vec::<i64>::try_from(scores.argmax(1, false)).unwrap();
        for ((row, top), argmax) in values.chunks(9).zip(&ranked).zip(argmax) {
            let mut order: Vec<i64> = (0..9).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            assert_eq!(top, &order[..5]);
            assert_eq!(top[0], argmax);
        }
    }

    #[test]
    fn rows_spanning_several_chunks_and_any_float_kind() {
        // 3000 × 700 scores are converted in three chunks.
        let scores = Tensor::randn([3000, 700], (Kind::Float, Device::Cpu));
        let ranked = top_k_predictions(&scores, 5);
        let (_, indices) = scores.to_kind(Kind::Double).topk(5, 1, true, true);
        let expected: Vec<i64> = Vec::try_from(indices.flatten(0, -1)).unwrap();
        assert_eq!(ranked.concat(), expected);

        let labels: Vec<i64> = (0..3000).map(|i| i % 700).collect();
        let metrics = classification_metrics(&scores, &labels);
        assert_eq!(
            classification_metrics(&scores.to_kind(Kind::Double), &labels),
            metrics
        );
        // Half precision holds small integers exactly: same ranking.
        let integers = matrix(&[&[1.0, 4.0, 2.0, 8.0], &[16.0, 2.0, 32.0, 0.5]]);
        for kind in [Kind::Half, Kind::BFloat16, Kind::Float] {
            assert_eq!(
                classification_metrics(&integers.to_kind(kind), &[3, 0]),
                classification_metrics(&integers, &[3, 0]),
                "{kind:?}"
            );
        }
        // Infinities are ordinary scores.
        let infinite = matrix(&[&[f64::NEG_INFINITY, 0.0, f64::INFINITY]]);
        assert_eq!(top_k_predictions(&infinite, 2), vec![vec![2, 1]]);
    }

    #[test]
    #[should_panic(expected = "label 3 at index 1 is outside 0..3")]
    fn labels_outside_the_score_columns_are_refused() {
        classification_metrics(&matrix(&[&[0.0, 1.0, 2.0], &[2.0, 1.0, 0.0]]), &[0, 3]);
    }

    #[test]
    #[should_panic(expected = "class scores have 2 rows but there are 3 labels")]
    fn label_count_must_match_the_rows() {
        classification_metrics(&matrix(&[&[0.0, 1.0], &[2.0, 1.0]]), &[0, 1, 1]);
    }

    #[test]
    #[should_panic(expected = "class scores hold NaN (row 1, class 0)")]
    fn nan_scores_are_refused() {
        top_k_predictions(&matrix(&[&[0.0, 1.0], &[f64::NAN, 1.0]]), 1);
    }
}
