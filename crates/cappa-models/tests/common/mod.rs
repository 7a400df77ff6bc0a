//! Helpers shared by the model tests.
#![allow(dead_code, unreachable_pub)]

use tch::{Device, Kind, Tensor};

pub fn images(batch: i64, size: i64) -> Tensor {
    Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu))
}

/// Random token ids in [3, vocab) — no pad (0), BOS or EOS (2).
pub fn tokens(batch: i64, len: i64, vocab: i64) -> Tensor {
    Tensor::randint_low(3, vocab, [batch, len], (Kind::Int64, Device::Cpu))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Summed caption cross-entropy over non-pad targets, normalised per caption, batch mean.
pub fn caption_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = *logits.size().last().unwrap();
    let per_token = logits
        .view([-1, v])
        .cross_entropy_loss::<Tensor>(&targets.view([-1]), None, tch::Reduction::None, -100, 0.0)
        .view_as(targets);
    let keep = targets.ne(0).to_kind(Kind::Float);
    ((per_token * &keep).sum_dim_intlist(1, false, Kind::Float)
        / keep.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0))
    .mean(Kind::Float)
}

/// CLIP's symmetric InfoNCE on normalised embeddings.
pub fn clip_loss(image: &Tensor, text: &Tensor, log_scale: &Tensor) -> Tensor {
    let logits = image.matmul(&text.tr()) * log_scale.exp().clamp_max(100.0);
    let labels = Tensor::arange(image.size()[0], (Kind::Int64, Device::Cpu));
    (logits.cross_entropy_for_logits(&labels) + logits.tr().cross_entropy_for_logits(&labels)) / 2.0
}
