//! The one text-scoring path: score matrices of images against candidate texts through a
//! [`TextScorer`], batched. Zero-shot classification, retrieval and compositional preference
//! ([`crate::tasks`]) are functions of these matrices, for every kind of scorer.
//!
//! Inputs are evaluation images (N, 3, H, W) on the CPU, moved to the scorer's device batch by
//! batch; results come back on the CPU.
//!
//! Batching is part of the result: a float matrix product rounds differently depending on how
//! many rows it takes, so each function documents how it batches, and changing that changes
//! scores in their last bits.

use cappa_data::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

use crate::model::{ScoreKind, TextScorer};

/// Images (or texts) per model call where a task is not told otherwise.
pub const DEFAULT_BATCH: i64 = 64;

/// A likelihood scorer's image batch holds at most `batch × LIKELIHOOD_PAIRS_PER_IMAGE`
/// (image, candidate) pairs, each a decoder pass, so memory stays near that of a training
/// batch whatever the number of candidates (at least one image per batch).
pub const LIKELIHOOD_PAIRS_PER_IMAGE: i64 = 16;

/// Runs `f` over consecutive row ranges `(start, len)` of `n` rows, `batch` at a time,
/// concatenating the (CPU) results along dimension 0.
pub fn batched(n: i64, batch: i64, mut f: impl FnMut(i64, i64) -> Tensor) -> Tensor {
    let batch = batch.max(1);
    let parts: Vec<Tensor> = (0..n)
        .step_by(batch as usize)
        .map(|start| f(start, batch.min(n - start)).to_device(Device::Cpu))
        .collect();
    Tensor::cat(&parts, 0)
}

/// Token rows (T, L) for texts, as the model was trained to read them.
pub fn tokens(tokenizer: &Tokenizer, texts: &[String], seq_len: usize) -> Tensor {
    tokenizer.encode_batch(texts, seq_len)
}

/// Image sides (N, …) of images (N, 3, H, W), `batch` images per call, on the CPU.
pub fn prepare_images(scorer: &dyn TextScorer, images: &Tensor, batch: i64) -> Tensor {
    let device = scorer.device();
    batched(images.size()[0], batch, |start, len| {
        scorer.prepare_images(&images.narrow(0, start, len).to_device(device))
    })
}

/// Text sides (C, …) of token rows (C, L), `batch` rows per call, on the CPU.
pub fn prepare_texts(scorer: &dyn TextScorer, tokens: &Tensor, batch: i64) -> Tensor {
    let device = scorer.device();
    batched(tokens.size()[0], batch, |start, len| {
        scorer.prepare_texts(&tokens.narrow(0, start, len).to_device(device))
    })
}

/// How [`score_streamed`] batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batches {
    /// Images prepared and scored per call.
    pub images: i64,
    /// Candidates scored per call against a prepared image batch (its image side is reused);
    /// `None`: all of them in one call.
    pub candidates: Option<i64>,
}

impl Batches {
    /// `images` images per call, each scored against all candidates at once.
    pub fn of_images(images: i64) -> Self {
        Batches {
            images,
            candidates: None,
        }
    }
}

/// Scores (N, C) of images against a text side shared by all (C, …), streaming: each batch of
/// images is prepared, then scored (against candidate chunks when `batches.candidates` says
/// so), before the next is prepared. On the CPU.
pub fn score_streamed(
    scorer: &dyn TextScorer,
    images: &Tensor,
    texts: &Tensor,
    batches: Batches,
) -> Tensor {
    let device = scorer.device();
    let texts = texts.to_device(device);
    let candidates = texts.size()[0];
    let chunk = batches.candidates.unwrap_or(candidates).max(1);
    batched(images.size()[0], batches.images, |start, len| {
        let image_side = scorer.prepare_images(&images.narrow(0, start, len).to_device(device));
        if chunk >= candidates {
            return scorer.score_prepared(&image_side, &texts);
        }
        let parts: Vec<Tensor> = (0..candidates)
            .step_by(chunk as usize)
            .map(|first| {
                let count = chunk.min(candidates - first);
                scorer.score_prepared(&image_side, &texts.narrow(0, first, count))
            })
            .collect();
        Tensor::cat(&parts, 1)
    })
}

/// Images per call for a likelihood scorer facing `candidates` candidates: `batch` images at
/// most, fewer so that a call holds about `batch ×` [`LIKELIHOOD_PAIRS_PER_IMAGE`] pairs, and
/// at least one.
pub fn likelihood_images_per_batch(batch: i64, candidates: usize) -> i64 {
    (batch * LIKELIHOOD_PAIRS_PER_IMAGE / candidates.max(1) as i64).clamp(1, batch.max(1))
}

/// Scores (N, C) of every image against a text side shared by all (C, …), batched as suits
/// the scorer (on the CPU):
/// - [`ScoreKind::Similarity`]: image sides `batch` at a time, all kept, then one product;
/// - [`ScoreKind::LogLikelihood`]: [`score_streamed`] with
///   [`likelihood_images_per_batch`] images per call.
pub fn score_matrix(
    scorer: &dyn TextScorer,
    images: &Tensor,
    texts: &Tensor,
    batch: i64,
) -> Tensor {
    match scorer.score_kind() {
        ScoreKind::Similarity => {
            let image_sides = prepare_images(scorer, images, batch);
            scorer.score_prepared(&image_sides, &texts.to_device(Device::Cpu))
        }
        ScoreKind::LogLikelihood => {
            let per_batch = likelihood_images_per_batch(batch, texts.size()[0] as usize);
            score_streamed(scorer, images, texts, Batches::of_images(per_batch))
        }
    }
}

/// Scores (K, J) of paired candidates: row k scores `columns[j]`'s token row k (each column
/// (K, L)) against image `image_of[k]` alone, as float64 on the CPU.
/// - [`ScoreKind::Similarity`]: image sides of all images `batch` at a time, kept and gathered
///   per row; each column's text sides `batch` rows at a time; one product per column.
/// - [`ScoreKind::LogLikelihood`]: rows `batch` at a time: their images gathered and prepared
///   once, then each column scored against them, one candidate per image.
///
/// # Panics
/// If a column's row count differs from `image_of`'s length, or `columns` is empty.
pub fn paired_scores(
    scorer: &dyn TextScorer,
    images: &Tensor,
    image_of: &[usize],
    columns: &[Tensor],
    batch: i64,
) -> Tensor {
    assert!(
        !columns.is_empty(),
        "paired scoring needs at least one column"
    );
    for column in columns {
        assert_eq!(
            column.size()[0] as usize,
            image_of.len(),
            "every column needs one token row per image index"
        );
    }
    let index = Tensor::from_slice(&image_of.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let scores = match scorer.score_kind() {
        ScoreKind::Similarity => {
            let image_sides = prepare_images(scorer, images, batch).index_select(0, &index);
            let scored: Vec<Tensor> = columns
                .iter()
                .map(|column| {
                    let texts = prepare_texts(scorer, column, batch).unsqueeze(1); // (K, 1, …)
                    scorer.score_prepared(&image_sides, &texts)
                })
                .collect();
            Tensor::cat(&scored, 1)
        }
        ScoreKind::LogLikelihood => {
            let device = scorer.device();
            batched(image_of.len() as i64, batch, |start, len| {
                let paired_images = images
                    .index_select(0, &index.narrow(0, start, len))
                    .to_device(device);
                let image_side = scorer.prepare_images(&paired_images);
                let scored: Vec<Tensor> = columns
                    .iter()
                    .map(|column| {
                        let token_rows = column.narrow(0, start, len).to_device(device);
                        // (len, 1, …): one candidate per image.
                        let texts = scorer.prepare_texts(&token_rows).unsqueeze(1);
                        scorer.score_prepared(&image_side, &texts)
                    })
                    .collect();
                Tensor::cat(&scored, 1)
            })
        }
    };
    scores.to_device(Device::Cpu).to_kind(Kind::Double)
}
