//! Parameter and FLOP accounting, used by the experiments to match compute across objectives.
//!
//! FLOPs are forward FLOPs per example with a multiply-add counted as 2, over the matrix
//! multiplications and attention (≈ 2·N·T + 4·L·T²·D for a transformer); norms, softmax and
//! activations are left out, as in the literature's figures. Training ≈ 3 × forward.

use tch::nn::VarStore;

use crate::cap::CapConfig;
use crate::checkpoint::ModelConfig;
use crate::clip::ClipConfig;
use crate::decoder::DecoderConfig;
use crate::text::TextConfig;
use crate::vit::{Pooling, VitConfig};

/// Trainable parameters in a VarStore.
pub fn num_params(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// FLOPs of one pre-LN encoder block on `t` tokens of width `d` with MLP width `m`.
fn block_flops(t: i64, d: i64, m: i64) -> f64 {
    let (t, d, m) = (t as f64, d as f64, m as f64);
    2.0 * t * (4.0 * d * d + 2.0 * d * m) + 4.0 * t * t * d
}

impl VitConfig {
    /// Forward FLOPs per image.
    pub fn forward_flops(&self) -> f64 {
        let (n, d) = (self.num_patches() as f64, self.width as f64);
        let patch = 2.0 * n * (3 * self.patch_size * self.patch_size) as f64 * d;
        let blocks = self.depth as f64 * block_flops(self.seq_len(), self.width, self.mlp_dim);
        let map = match self.pooling {
            // Probe query and output, patch keys/values, attention, MLP on one token.
            Pooling::Map => {
                2.0 * 2.0 * d * d
                    + 2.0 * n * d * 2.0 * d
                    + 4.0 * n * d
                    + 4.0 * d * self.mlp_dim as f64
            }
            Pooling::Gap | Pooling::Cls => 0.0,
        };
        let proj = self.output_dim.map_or(0.0, |e| 2.0 * d * e as f64);
        patch + blocks + map + proj
    }
}

impl TextConfig {
    /// Forward FLOPs per caption of `seq_len` tokens.
    pub fn forward_flops(&self, seq_len: i64) -> f64 {
        self.depth as f64 * block_flops(seq_len, self.width, self.mlp_dim)
            + 2.0 * (self.width * self.output_dim) as f64
    }
}

impl DecoderConfig {
    /// Forward FLOPs per caption of `seq_len` tokens attending to `memory_tokens` image tokens,
    /// including the image's keys/values and the output projection over the vocabulary.
    pub fn forward_flops(&self, seq_len: i64, memory_tokens: i64) -> f64 {
        let (t, n, d, e, m) = (
            seq_len as f64,
            memory_tokens as f64,
            self.width as f64,
            self.memory_width as f64,
            self.mlp_dim as f64,
        );
        let self_attention = 2.0 * t * 4.0 * d * d + 4.0 * t * t * d;
        let cross_attention = 2.0 * t * 2.0 * d * d + 2.0 * n * e * 2.0 * d + 4.0 * t * n * d;
        let mlp = 4.0 * t * d * m;
        let head = 2.0 * t * d * self.vocab_size as f64;
        self.depth as f64 * (self_attention + cross_attention + mlp) + head
    }
}

impl ClipConfig {
    /// Forward FLOPs per image–caption pair (both towers) at the text context length.
    pub fn forward_flops(&self) -> f64 {
        self.vision.forward_flops() + self.text.forward_flops(self.text.context_length)
    }
}

impl CapConfig {
    /// Forward FLOPs per image–caption pair at the decoder's `max_len`.
    pub fn forward_flops(&self) -> f64 {
        self.forward_flops_at(self.decoder.max_len)
    }

    /// Forward FLOPs per image–caption pair for captions of `seq_len` tokens.
    pub fn forward_flops_at(&self, seq_len: i64) -> f64 {
        self.vision.forward_flops()
            + self
                .decoder
                .forward_flops(seq_len, self.vision.num_patches())
    }
}

impl ModelConfig {
    /// Forward FLOPs per image–caption pair of either kind of model.
    pub fn forward_flops(&self) -> f64 {
        match self {
            ModelConfig::Clip(c) => c.forward_flops(),
            ModelConfig::Cap(c) => c.forward_flops(),
        }
    }
}

/// Training FLOPs from forward FLOPs (forward + backward ≈ 3 × forward).
pub fn train_flops(forward: f64) -> f64 {
    3.0 * forward
}
