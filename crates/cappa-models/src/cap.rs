//! `CapModel`: a ViT encoder (no class token, GAP for probes) and the caption decoder that
//! cross-attends to all of its patch tokens — the Cap and CapPa models of the paper. Whether a
//! model is trained as Cap or CapPa is a property of the training inputs (see
//! `cappa-objectives`), not of the architecture.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use crate::decoder::{CapDecoder, DecoderConfig, Decoding, GenerateConfig};
use crate::tokens::SpecialTokens;
use crate::validate::ConfigError;
use crate::vit::{ImageEncoding, Vit, VitConfig};

/// Configuration of a [`CapModel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    pub vision: VitConfig,
    pub decoder: DecoderConfig,
}

impl CapConfig {
    /// The paper's layout for an encoder: decoder of half its depth with the same width, heads
    /// and MLP, attending to the encoder's patch tokens, for a tokenizer's ids.
    pub fn new(vision: VitConfig, tokens: SpecialTokens, max_len: i64) -> Self {
        let decoder = DecoderConfig::new(
            tokens,
            max_len,
            vision.width,
            vision.depth,
            vision.num_heads,
            vision.mlp_dim,
        );
        Self { vision, decoder }
    }

    /// Tiny test preset: [`VitConfig::tiny`], the built-in tokenizer's ids for a 512-token
    /// vocabulary, 64 positions.
    pub fn tiny() -> Self {
        Self::new(VitConfig::tiny(), SpecialTokens::built_in(512), 64)
    }

    /// Small CPU preset: [`VitConfig::small`], the built-in tokenizer's ids for a 512-token
    /// vocabulary, 64 positions.
    pub fn small() -> Self {
        Self::new(VitConfig::small(), SpecialTokens::built_in(512), 64)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.vision.validate()?;
        self.decoder.validate()?;
        if self.decoder.memory_width != self.vision.width {
            return Err(ConfigError::new(
                "decoder",
                "memory_width",
                format!(
                    "{} must equal vision.width {}",
                    self.decoder.memory_width, self.vision.width
                ),
            ));
        }
        Ok(())
    }
}

/// Encoder + caption decoder.
#[derive(Debug)]
pub struct CapModel {
    config: CapConfig,
    pub visual: Vit,
    pub decoder: CapDecoder,
}

impl CapModel {
    pub fn new(p: nn::Path<'_>, config: &CapConfig) -> Self {
        if let Err(why) = config.validate() {
            panic!("invalid Cap config: {why}");
        }
        Self {
            visual: Vit::new(&p / "visual", &config.vision),
            decoder: CapDecoder::new(&p / "decoder", &config.decoder),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &CapConfig {
        &self.config
    }

    /// Patch tokens (B, N, D) for the decoder and the GAP representation (B, D) for probes.
    pub fn encode_image(&self, images: &Tensor, train: bool) -> ImageEncoding {
        self.visual.encode_image(images, train)
    }

    /// Teacher-forced logits (B, L, V); see [`CapDecoder::decode`].
    pub fn decode(
        &self,
        image_tokens: &Tensor,
        inputs: &Tensor,
        decoding: Decoding<'_>,
        train: bool,
    ) -> Tensor {
        self.decoder.decode(image_tokens, inputs, decoding, train)
    }

    /// Captions for images (B, 3, H, W); see [`CapDecoder::generate`].
    pub fn generate(&self, images: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        let tokens = tch::no_grad(|| self.encode_image(images, false).tokens);
        self.decoder.generate(&tokens, config)
    }

    /// Summed log-likelihood (B, C) of candidates (C, L) or (B, C, L) for images (B, 3, H, W),
    /// with one encoder pass per image.
    pub fn score(&self, images: &Tensor, candidates: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let tokens = self.encode_image(images, false).tokens;
            self.decoder.score(&tokens, candidates)
        })
    }
}
