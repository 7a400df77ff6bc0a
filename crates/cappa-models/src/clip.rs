//! CLIP (Radford et al., 2021): an image tower and a text tower mapped into one embedding
//! space, with a learnable temperature — and SigLIP's learnable bias for the sigmoid loss
//! (Zhai et al., 2023). The model computes embeddings; the losses live in `cappa-objectives`.
//!
//! Variables follow open_clip's `CLIP` state dict: the image tower under `visual.`, the text
//! tower at the top level, `logit_scale` (and `logit_bias`) as scalars.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use crate::layers::l2_normalize;
use crate::text::{TextConfig, TextEncoder};
use crate::validate::ConfigError;
use crate::vit::{Vit, VitConfig};

/// Which contrastive loss the temperature (and bias) are initialised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContrastiveLoss {
    /// CLIP's InfoNCE: `logit_scale` starts at ln(1/0.07), no bias.
    Softmax,
    /// SigLIP: `logit_scale` starts at ln 10 and `logit_bias` at −10.
    Sigmoid,
}

/// Configuration of a [`Clip`] model. The vision tower's `output_dim` must equal the text
/// tower's; [`ClipConfig::new`] sets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub vision: VitConfig,
    pub text: TextConfig,
    pub loss: ContrastiveLoss,
}

impl ClipConfig {
    /// Joins two towers, giving the image tower a projection to the text tower's output width.
    pub fn new(vision: VitConfig, text: TextConfig, loss: ContrastiveLoss) -> Self {
        let vision = VitConfig {
            output_dim: Some(text.output_dim),
            ..vision
        };
        Self { vision, text, loss }
    }

    /// Tiny test preset: [`VitConfig::tiny`] + [`TextConfig::tiny`].
    pub fn tiny() -> Self {
        Self::new(
            VitConfig::tiny(),
            TextConfig::tiny(),
            ContrastiveLoss::Softmax,
        )
    }

    /// Small CPU preset: [`VitConfig::small`] + [`TextConfig::small`].
    pub fn small() -> Self {
        Self::new(
            VitConfig::small(),
            TextConfig::small(),
            ContrastiveLoss::Softmax,
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.vision.validate()?;
        self.text.validate()?;
        if self.vision.output_dim != Some(self.text.output_dim) {
            return Err(ConfigError::new(
                "vision",
                "output_dim",
                format!(
                    "{:?} must equal text.output_dim {} so the embeddings share a space",
                    self.vision.output_dim, self.text.output_dim
                ),
            ));
        }
        Ok(())
    }
}

/// The two-tower contrastive model.
#[derive(Debug)]
pub struct Clip {
    config: ClipConfig,
    pub visual: Vit,
    pub text: TextEncoder,
    /// Learnable log-temperature t (logits are scaled by exp(t)).
    pub logit_scale: Tensor,
    /// Learnable logit bias (sigmoid loss only).
    pub logit_bias: Option<Tensor>,
}

impl Clip {
    pub fn new(p: nn::Path<'_>, config: &ClipConfig) -> Self {
        if let Err(why) = config.validate() {
            panic!("invalid CLIP config: {why}");
        }
        let (scale, bias) = match config.loss {
            ContrastiveLoss::Softmax => ((1.0f64 / 0.07).ln(), None),
            ContrastiveLoss::Sigmoid => (10f64.ln(), Some(-10.0)),
        };
        Self {
            visual: Vit::new(&p / "visual", &config.vision),
            text: TextEncoder::new(p.clone(), &config.text),
            logit_scale: p.var("logit_scale", &[], nn::Init::Const(scale)),
            logit_bias: bias.map(|b| p.var("logit_bias", &[], nn::Init::Const(b))),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// L2-normalised image embeddings (B, E).
    pub fn encode_image(&self, images: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.visual.encode_image(images, train).pooled)
    }

    /// L2-normalised text embeddings (B, E).
    pub fn encode_text(&self, tokens: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.text.encode_text(tokens, train))
    }
}
