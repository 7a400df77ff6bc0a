//! What evaluators need from a model, as small traits, and their implementations for the
//! models cappa trains. Evaluators take `&dyn …` or generic parameters of these traits, never a
//! concrete model type, so encoders from elsewhere can be evaluated by implementing them.
//!
//! Every method runs without gradient and in evaluation mode.

use cappa_models::{CapModel, Clip, GenerateConfig, Model};
use tch::{Device, Tensor};

/// An image encoder: the representation probes use.
pub trait ImageEncoder {
    /// Where the model's tensors live.
    fn device(&self) -> Device;
    /// Side of the square images it takes.
    fn image_size(&self) -> i64;
    /// Global-average-pooled encoder output (B, D) for images (B, 3, H, W) — the paper's probe
    /// representation, for contrastive and captioning encoders alike.
    fn probe_features(&self, images: &Tensor) -> Tensor;
    /// The encoder's full token sequence (B, N, D) (for decoders trained on a frozen encoder).
    fn image_tokens(&self, images: &Tensor) -> Tensor;
}

/// A two-tower model that embeds images and texts in one space (CLIP, SigLIP).
pub trait ContrastiveScorer: ImageEncoder {
    /// L2-normalised image embeddings (B, E).
    fn embed_images(&self, images: &Tensor) -> Tensor;
    /// L2-normalised text embeddings (T, E) of token rows (T, L).
    fn embed_texts(&self, tokens: &Tensor) -> Tensor;
}

/// A captioner that scores captions: summed token log-likelihoods.
pub trait LikelihoodScorer: ImageEncoder {
    /// Summed log-likelihood (B, C) of candidates (C, L) shared by all images, or (B, C, L).
    fn log_likelihood(&self, images: &Tensor, candidates: &Tensor) -> Tensor;
    /// Generates token ids per image (greedy or beam search, KV-cached), without BOS and EOS.
    fn generate(&self, images: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>>;
}

fn gap(tokens: &Tensor) -> Tensor {
    tokens.mean_dim(1, false, tokens.kind())
}

/// Both model kinds keep their ViT in `visual`.
macro_rules! vit_image_encoder {
    ($model:ty) => {
        impl ImageEncoder for $model {
            fn device(&self) -> Device {
                self.visual.device()
            }
            fn image_size(&self) -> i64 {
                self.visual.config().image_size
            }
            fn probe_features(&self, images: &Tensor) -> Tensor {
                gap(&self.image_tokens(images))
            }
            fn image_tokens(&self, images: &Tensor) -> Tensor {
                tch::no_grad(|| self.visual.encode_image(images, false).tokens)
            }
        }
    };
}

vit_image_encoder!(Clip);
vit_image_encoder!(CapModel);

impl ContrastiveScorer for Clip {
    fn embed_images(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.encode_image(images, false))
    }
    fn embed_texts(&self, tokens: &Tensor) -> Tensor {
        tch::no_grad(|| self.encode_text(tokens, false))
    }
}

impl LikelihoodScorer for CapModel {
    fn log_likelihood(&self, images: &Tensor, candidates: &Tensor) -> Tensor {
        self.score(images, candidates)
    }
    fn generate(&self, images: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        CapModel::generate(self, images, config)
    }
}

/// A loaded model seen through the traits that fit it.
#[derive(Debug, Clone, Copy)]
pub enum Evaluable<'a> {
    Contrastive(&'a dyn ContrastiveScorer),
    Captioner(&'a dyn LikelihoodScorer),
}

impl<'a> Evaluable<'a> {
    pub fn of(model: &'a Model) -> Self {
        match model {
            Model::Clip(clip) => Evaluable::Contrastive(clip),
            Model::Cap(cap) => Evaluable::Captioner(cap),
        }
    }

    pub fn encoder(&self) -> &'a dyn ImageEncoder {
        match *self {
            Evaluable::Contrastive(m) => m,
            Evaluable::Captioner(m) => m,
        }
    }
}

impl std::fmt::Debug for dyn ContrastiveScorer + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContrastiveScorer")
    }
}

impl std::fmt::Debug for dyn LikelihoodScorer + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LikelihoodScorer")
    }
}
