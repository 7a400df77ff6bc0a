//! The captioning loss of Cap and CapPa: token cross-entropy where every caption weighs the
//! same, whatever its length.
//!
//! Reference: Tschannen et al. 2023, "Image Captioners Are Scalable Vision Learners Too",
//! <https://arxiv.org/abs/2306.07915>; big_vision `trainers/proj/cappa/train.py`.
//!
//! Dimension letters: `B` batch, `L` caption length, `V` vocabulary (logit) width.

use tch::{Reduction, Tensor};

use crate::contrastive::upcast;

/// Token cross-entropy of a batch of captions, each caption weighted equally.
///
/// `logits` is `(B, L, V)`, `targets` is `(B, L)` of `i64` token ids. Positions whose target is
/// `pad_id` weigh 0 (their logits are never read). Each caption's summed loss is divided by its
/// own number of non-pad tokens (at least 1, so an all-pad caption contributes 0), and the
/// result is the mean over the `B` captions. `label_smoothing` is torch's: with `ε` the loss of
/// a token is `(1 − ε)·(−log p_target) + ε·mean over the V classes of (−log p_class)`; CapPa
/// uses 0. Half-precision logits are upcast to `f32`. Returns a scalar (shape `[]`).
///
/// # Panics
/// If `logits` is not 3-D, `targets` is not `(B, L)` with `logits`'s `B` and `L`, or
/// `label_smoothing` lies outside `[0, 1]`.
pub fn caption_loss(
    logits: &Tensor,
    targets: &Tensor,
    pad_id: i64,
    label_smoothing: f64,
) -> Tensor {
    let per_caption = caption_losses(logits, targets, pad_id, label_smoothing);
    per_caption.mean(per_caption.kind())
}

/// Each caption's own loss `(B)`: its summed token cross-entropy over its non-pad tokens, as
/// [`caption_loss`] averages them (same arguments and panics). CapPa's training reports the
/// parallel and the causal examples' means from it.
pub fn caption_losses(
    logits: &Tensor,
    targets: &Tensor,
    pad_id: i64,
    label_smoothing: f64,
) -> Tensor {
    let (logits_size, targets_size) = (logits.size(), targets.size());
    assert!(
        logits_size.len() == 3 && targets_size[..] == logits_size[..2],
        "caption_loss: logits {logits_size:?} must be (B, L, V) and targets {targets_size:?} \
         must be (B, L)"
    );
    assert!(
        (0.0..=1.0).contains(&label_smoothing),
        "caption_loss: label_smoothing must lie in [0, 1], got {label_smoothing}"
    );
    let (batch, length, vocab) = (logits_size[0], logits_size[1], logits_size[2]);
    // (B, L, V) → (B·L, V): one row per token.
    let flat_logits = upcast(logits.reshape([batch * length, vocab]));
    // (B, L) → (B·L).
    let flat_targets = targets.reshape([batch * length]);
    // Torch's ignore_index gives pad positions a loss of exactly 0, label smoothing included.
    let token_loss = flat_logits
        .cross_entropy_loss::<Tensor>(
            &flat_targets,
            None,
            Reduction::None,
            pad_id,
            label_smoothing,
        )
        .reshape([batch, length]); // (B·L) → (B, L)
    let kind = token_loss.kind();
    let not_pad = targets.ne(pad_id).to_kind(kind); // (B, L)
    let token_count = not_pad
        .sum_dim_intlist(&[1i64][..], false, kind)
        .clamp_min(1.0); // (B)
    token_loss.sum_dim_intlist(&[1i64][..], false, kind) / token_count // (B)
}
