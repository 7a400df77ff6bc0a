//! The CLIP text tower: token and position embeddings, causal pre-LN blocks, a final
//! LayerNorm, pooling at the EOS token and a linear projection. Variable names follow
//! open_clip's `CLIP` state dict (`token_embedding`, `positional_embedding`,
//! `transformer.resblocks.{i}`, `ln_final`, `text_projection`).
//!
//! Dimension letters: B batch, L tokens, V vocabulary, D width, E output width.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use crate::layers::{dropout, eos_positions, normal, AttentionMask, LayerNorm, Transformer};
use crate::tokens::SpecialTokens;
use crate::validate::{self, ConfigError};

/// Configuration of a [`TextEncoder`]. `vocab_size`, `eos_id` and `pad_id` are the
/// tokenizer's ([`TextConfig::with_special_tokens`]); the presets carry the built-in
/// tokenizer's until then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub context_length: i64,
    pub width: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_dim: i64,
    /// Width of the projected embedding (`text_projection`).
    pub output_dim: i64,
    /// The token whose position is pooled; rows without it pool their last non-pad token.
    pub eos_id: i64,
    pub pad_id: i64,
    pub dropout: f64,
}

impl TextConfig {
    /// A text tower of the given size for a tokenizer's ids, with MLP 4·width.
    pub fn new(
        tokens: SpecialTokens,
        context_length: i64,
        width: i64,
        depth: i64,
        num_heads: i64,
        output_dim: i64,
    ) -> Self {
        Self {
            vocab_size: tokens.vocab_size,
            context_length,
            width,
            depth,
            num_heads,
            mlp_dim: 4 * width,
            output_dim,
            eos_id: tokens.eos_id,
            pad_id: tokens.pad_id,
            dropout: 0.0,
        }
    }

    /// This tower for a tokenizer's vocabulary and ids.
    pub fn with_special_tokens(self, tokens: SpecialTokens) -> Self {
        Self {
            vocab_size: tokens.vocab_size,
            eos_id: tokens.eos_id,
            pad_id: tokens.pad_id,
            ..self
        }
    }

    /// The vocabulary and ids this tower was configured for.
    pub fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            vocab_size: self.vocab_size,
            pad_id: self.pad_id,
            eos_id: self.eos_id,
        }
    }

    /// Test preset matching [`crate::VitConfig::tiny`]: width 64, 2 layers, 16 tokens.
    pub fn tiny() -> Self {
        Self::new(SpecialTokens::built_in(512), 16, 64, 2, 4, 64)
    }
    /// Small CPU preset matching [`crate::VitConfig::small`]: width 192, 6 layers, 32 tokens.
    pub fn small() -> Self {
        Self::new(SpecialTokens::built_in(512), 32, 192, 6, 3, 192)
    }
    /// The paper's CLIP* text tower at B/16: width 768, 12 layers, 64 tokens, 32k vocabulary.
    pub fn b16() -> Self {
        Self::new(SpecialTokens::built_in(32_000), 64, 768, 12, 12, 768)
    }
    /// open_clip's ViT-B/16 text tower: width 512, 12 layers, 77 tokens.
    pub fn open_clip_b16() -> Self {
        Self::new(SpecialTokens::built_in(49_408), 77, 512, 12, 8, 512)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::positive(
            "text",
            &[
                ("vocab_size", self.vocab_size),
                ("context_length", self.context_length),
                ("width", self.width),
                ("depth", self.depth),
                ("num_heads", self.num_heads),
                ("mlp_dim", self.mlp_dim),
                ("output_dim", self.output_dim),
            ],
        )?;
        validate::heads_divide_width("text", self.width, self.num_heads)?;
        validate::ids_in_vocabulary(
            "text",
            self.vocab_size,
            &[("eos_id", self.eos_id), ("pad_id", self.pad_id)],
        )?;
        validate::dropout("text", self.dropout)?;
        Ok(())
    }
}

/// The CLIP text encoder.
#[derive(Debug)]
pub struct TextEncoder {
    config: TextConfig,
    token_embedding: nn::Embedding,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
}

impl TextEncoder {
    /// Creates the tower's variables directly under `p` (open_clip keeps them at the top level).
    pub fn new(p: nn::Path<'_>, config: &TextConfig) -> Self {
        if let Err(why) = config.validate() {
            panic!("invalid text config: {why}");
        }
        let c = config;
        Self {
            token_embedding: nn::embedding(
                &p / "token_embedding",
                c.vocab_size,
                c.width,
                nn::EmbeddingConfig {
                    ws_init: normal(0.02),
                    ..Default::default()
                },
            ),
            positional_embedding: p.var(
                "positional_embedding",
                &[c.context_length, c.width],
                normal(0.01),
            ),
            transformer: Transformer::new(
                &p / "transformer",
                c.depth,
                c.width,
                c.num_heads,
                c.mlp_dim,
                c.dropout,
            ),
            ln_final: LayerNorm::new(&p / "ln_final", c.width, true),
            text_projection: p.var(
                "text_projection",
                &[c.width, c.output_dim],
                normal((c.width as f64).powf(-0.5)),
            ),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Encodes token ids (B, L) with L ≤ context_length into projected features (B, E),
    /// not normalised.
    pub fn encode_text(&self, tokens: &Tensor, train: bool) -> Tensor {
        let (b, len) = tokens.size2().expect("tokens must be (B, L)");
        assert!(
            len <= self.config.context_length,
            "{len} tokens exceed the text context length {}",
            self.config.context_length
        );
        let x = tokens.apply(&self.token_embedding) + self.positional_embedding.narrow(0, 0, len);
        let x = dropout(x, self.config.dropout, train);
        let x = self
            .transformer
            .forward(&x, AttentionMask::Causal, train)
            .apply(&self.ln_final); // (B, L, D)
        let pos = eos_positions(tokens, self.config.eos_id, self.config.pad_id); // (B)
        let index = pos.view([b, 1, 1]).expand([b, 1, self.config.width], false);
        x.gather(1, &index, false)
            .squeeze_dim(1)
            .matmul(&self.text_projection)
    }
}
