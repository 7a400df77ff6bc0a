//! Decoder inputs for CapPa's parallel prediction.
//!
//! During CapPa training each example is, with probability `prob` (0.75 in the paper), fed a
//! decoder input made of mask tokens and decoded with fully bidirectional self-attention;
//! otherwise it is fed the caption shifted right and decoded causally. The targets are the
//! unshifted caption in both cases. Evaluation and captioning are always autoregressive.
//!
//! Reference: big_vision `models/proj/cappa/cappa.py` (`masked_pred_prob`, `masking_ratio`).
//!
//! Dimension letters: `B` batch, `L` caption length.

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a CapPa batch mixes parallel (masked, bidirectional) and causal examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelPrediction {
    /// Probability that an example uses parallel prediction: 0.75 in CapPa, 0 gives plain Cap.
    pub prob: f64,
    /// The mask token's id: the vocabulary size, so the decoder's embedding table has
    /// `vocab_size + 1` rows.
    pub mask_id: i64,
    /// The first decoder input of a causal example; the reference uses the pad id 0.
    pub bos_id: i64,
    /// Fraction of a parallel example's positions that hold the mask token: 1.0 (every
    /// position) in CapPa. Below 1, `round(masking_ratio · L)` positions (at least one) are
    /// masked and the others hold the unshifted target token.
    pub masking_ratio: f64,
}

impl ParallelPrediction {
    /// CapPa as the paper trains it: 75 % of the examples parallel, every position masked,
    /// mask id = `vocab_size`, BOS = pad id 0.
    pub fn cap_pa(vocab_size: i64) -> Self {
        Self {
            prob: 0.75,
            mask_id: vocab_size,
            bos_id: 0,
            masking_ratio: 1.0,
        }
    }

    /// Plain Cap: every example causal (probability 0), otherwise as [`Self::cap_pa`].
    pub fn cap(vocab_size: i64) -> Self {
        Self {
            prob: 0.0,
            ..Self::cap_pa(vocab_size)
        }
    }

    /// Checks that the probabilities lie in `[0, 1]` and the ids are usable.
    ///
    /// # Errors
    /// The first field that is out of range, as a [`ParallelPredictionError`].
    pub fn validate(&self) -> Result<(), ParallelPredictionError> {
        if !(0.0..=1.0).contains(&self.prob) {
            return Err(ParallelPredictionError::Probability(self.prob));
        }
        if !(0.0..=1.0).contains(&self.masking_ratio) {
            return Err(ParallelPredictionError::MaskingRatio(self.masking_ratio));
        }
        if self.mask_id < 0 {
            return Err(ParallelPredictionError::NegativeId {
                which: "mask_id",
                id: self.mask_id,
            });
        }
        if self.bos_id < 0 {
            return Err(ParallelPredictionError::NegativeId {
                which: "bos_id",
                id: self.bos_id,
            });
        }
        if self.mask_id == self.bos_id {
            return Err(ParallelPredictionError::MaskIsBos(self.mask_id));
        }
        Ok(())
    }
}

/// A [`ParallelPrediction`] that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParallelPredictionError {
    /// `prob` lies outside `[0, 1]` (or is NaN).
    #[error(
        "parallel prediction probability `prob` must lie in [0, 1] (0.75 for CapPa, 0 for \
         Cap), got {0}"
    )]
    Probability(f64),
    /// `masking_ratio` lies outside `[0, 1]` (or is NaN).
    #[error("`masking_ratio` must lie in [0, 1] (1.0 masks every position, as CapPa), got {0}")]
    MaskingRatio(f64),
    /// A token id is negative.
    #[error("`{which}` must be a non-negative token id, got {id}")]
    NegativeId {
        /// The field's name.
        which: &'static str,
        /// Its value.
        id: i64,
    },
    /// The mask token and the BOS token share an id.
    #[error(
        "`mask_id` and `bos_id` are both {0}; the mask token needs its own id (the vocabulary \
         size)"
    )]
    MaskIsBos(i64),
}

/// The decoder inputs of one training batch; the targets stay the unshifted caption.
#[derive(Debug)]
pub struct DecoderInputs {
    /// `(B, L)` `i64` decoder input tokens.
    pub inputs: Tensor,
    /// `(B)` bool: true where the example uses parallel prediction, so the decoder's
    /// self-attention must be bidirectional; false where it is causal.
    pub parallel: Tensor,
    /// `(B, L)` bool: true at the positions that hold the mask token. All false for causal
    /// examples; all true for parallel ones when `masking_ratio` is 1.
    pub masked: Tensor,
}

/// Builds CapPa's decoder inputs for a batch of `(B, L)` `i64` target captions.
///
/// Each example is drawn parallel with probability `config.prob`:
/// - a causal example gets the caption shifted right, `bos_id` first:
///   `[bos, targets[0], …, targets[L − 2]]`;
/// - a parallel example gets `mask_id` at `round(masking_ratio · L)` positions (at least one),
///   a uniformly random subset, and the **unshifted** target token everywhere else. With
///   `masking_ratio = 1` (CapPa) every position is `mask_id`. With a ratio below 1 the decoder
///   could copy the visible tokens, so the caller should weight the loss of parallel examples
///   on the masked positions only (`masked`, and not pad); the chosen positions may include
///   padding.
///
/// The coin flips and the subsets come from `rng`, one flip per example in batch order, so a
/// seeded generator (e.g. `rand_chacha::ChaCha8Rng`) gives the same inputs on any machine and
/// thread count; libtorch's generator is not used. The tensors land on `targets`'s device.
///
/// # Errors
/// When `config` fails [`ParallelPrediction::validate`].
///
/// # Panics
/// If `targets` is not a 2-D `i64` tensor with `L ≥ 1`.
pub fn parallel_prediction_inputs(
    targets: &Tensor,
    config: &ParallelPrediction,
    rng: &mut (impl Rng + ?Sized),
) -> Result<DecoderInputs, ParallelPredictionError> {
    config.validate()?;
    let size = targets.size();
    assert!(
        size.len() == 2 && size[1] >= 1 && targets.kind() == Kind::Int64,
        "parallel_prediction_inputs: targets must be (B, L) i64 with L ≥ 1, got {size:?} {:?}",
        targets.kind()
    );
    let (batch, length) = (size[0], size[1]);
    let device = targets.device();

    let positions = length as usize;
    let masked_count =
        ((config.masking_ratio * length as f64).round() as usize).clamp(1, positions);
    let mut parallel = Vec::with_capacity(batch as usize);
    let mut masked = vec![false; batch as usize * positions];
    for row in masked.chunks_mut(positions) {
        let is_parallel = rng.random::<f64>() < config.prob;
        parallel.push(is_parallel);
        if !is_parallel {
            continue;
        }
        if masked_count == positions {
            row.fill(true);
        } else {
            for position in rand::seq::index::sample(rng, positions, masked_count) {
                row[position] = true;
            }
        }
    }
    let parallel = Tensor::from_slice(&parallel).to_device(device); // (B)
    let masked = Tensor::from_slice(&masked)
        .reshape([batch, length])
        .to_device(device); // (B·L) → (B, L)

    let bos = Tensor::full([batch, 1], config.bos_id, (Kind::Int64, device)); // (B, 1)
                                                                              // (B, 1) ++ (B, L − 1) → (B, L): the caption shifted right.
    let shifted = Tensor::cat(&[bos, targets.narrow(1, 0, length - 1)], 1);
    // (B, L): parallel rows keep the unshifted caption, causal rows the shifted one.
    let unmasked = targets.where_self(&parallel.unsqueeze(1), &shifted);
    let inputs = unmasked.masked_fill(&masked, config.mask_id);
    Ok(DecoderInputs {
        inputs,
        parallel,
        masked,
    })
}
