//! Cheap training-time metrics computed from the same tensors as the losses.
//!
//! Dimension letters: `B` batch, `L` caption length, `V` vocabulary, `D` embedding width.

use tch::{Kind, Tensor};

/// Fraction of non-pad positions whose most likely token (argmax over `V`) equals the target.
///
/// `logits` is `(B, L, V)`, `targets` `(B, L)` `i64`. Returns 0 when every target is `pad_id`.
///
/// # Panics
/// If `logits` is not 3-D or `targets` is not `(B, L)` with `logits`'s `B` and `L`.
pub fn token_accuracy(logits: &Tensor, targets: &Tensor, pad_id: i64) -> f64 {
    let (logits_size, targets_size) = (logits.size(), targets.size());
    assert!(
        logits_size.len() == 3 && targets_size[..] == logits_size[..2],
        "token_accuracy: logits {logits_size:?} must be (B, L, V) and targets {targets_size:?} \
         must be (B, L)"
    );
    tch::no_grad(|| {
        let predicted = logits.argmax(-1, false); // (B, L, V) → (B, L)
        let not_pad = targets.ne(pad_id); // (B, L)
        let correct = predicted.eq_tensor(targets).logical_and(&not_pad);
        let correct = correct.sum(Kind::Int64).int64_value(&[]);
        let counted = not_pad.sum(Kind::Int64).int64_value(&[]);
        if counted == 0 {
            0.0
        } else {
            correct as f64 / counted as f64
        }
    })
}

/// Top-1 retrieval accuracy within a batch of paired `(B, D)` embeddings, as
/// `(image_to_text, text_to_image)`.
///
/// Image `i` counts as correct when, of all `B` texts, text `i` has the largest dot product
/// with it; likewise for text `i` over the images. Pass L2-normalised embeddings to rank by
/// cosine similarity. Ties go to whichever index `argmax` returns.
///
/// # Panics
/// If `image` and `text` are not 2-D with equal shapes.
pub fn in_batch_retrieval_accuracy(image: &Tensor, text: &Tensor) -> (f64, f64) {
    let (image_size, text_size) = (image.size(), text.size());
    assert!(
        image_size.len() == 2 && image_size == text_size,
        "in_batch_retrieval_accuracy: image embeddings {image_size:?} and text embeddings \
         {text_size:?} must both be (B, D) with equal shapes"
    );
    let batch = image_size[0];
    if batch == 0 {
        return (0.0, 0.0);
    }
    tch::no_grad(|| {
        // (B, D) · (D, B) → (B, B): entry (i, j) scores image i against text j.
        let similarity = image.matmul(&text.tr());
        let labels = Tensor::arange(batch, (Kind::Int64, image.device()));
        let fraction = |dim: i64| {
            let best = similarity.argmax(dim, false); // (B)
            let correct = best.eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
            correct as f64 / batch as f64
        };
        (fraction(1), fraction(0))
    })
}
