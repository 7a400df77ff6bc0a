//! What evaluators need from a model, as small traits, and their implementations for the
//! models cappa trains. Evaluators take `&dyn …` of these traits, never a concrete model type,
//! so encoders from elsewhere can be evaluated by implementing them.
//!
//! - [`ImageEncoder`]: the representation probes and transfer decoders read.
//! - [`TextScorer`]: scores of images against candidate texts, the one path zero-shot
//!   classification, retrieval and compositional preference run on (see [`crate::scoring`]).
//! - [`Captioner`]: a text scorer whose scores are log-likelihoods and that also writes
//!   captions.
//!
//! Every method runs without gradient and in evaluation mode.

use cappa_models::{CapModel, Clip, GenerateConfig, Model};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

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

/// What the scores of a [`TextScorer`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoreKind {
    /// Dot products of L2-normalised image and text embeddings (two-tower models). Both sides
    /// are small, so every image's side is kept and a whole matrix is one product.
    Similarity,
    /// The candidate's summed token log-likelihood given the image (captioners). Every
    /// (image, candidate) pair is a decoder pass, so images are scored batch by batch.
    LogLikelihood,
}

/// Scores candidate texts against images: a (B, C) matrix of B images against C candidates.
///
/// Scoring has two sides, prepared separately so that each image and each candidate is
/// encoded once however many pairs it takes part in:
/// 1. [`prepare_images`](Self::prepare_images): images (B, 3, H, W) → image side (B, …);
/// 2. [`prepare_texts`](Self::prepare_texts): token rows (C, L) → text side (C, …);
/// 3. [`score_prepared`](Self::score_prepared): image side against a text side shared by all
///    images (C, …) or one per image (B, C, …) → scores (B, C).
///
/// [`crate::scoring`] batches these calls; the tasks in [`crate::tasks`] are functions of the
/// resulting matrices.
pub trait TextScorer: ImageEncoder {
    /// What the scores are; decides how the scoring path batches and which task options apply.
    fn score_kind(&self) -> ScoreKind;
    /// The image side: CLIP's L2-normalised embeddings (B, E); a captioner's encoder tokens
    /// (B, N, D), from which the decoder's keys and values are computed once per image and
    /// scoring call, shared by all of that call's candidates.
    fn prepare_images(&self, images: &Tensor) -> Tensor;
    /// The text side of token rows (C, L): CLIP's L2-normalised embeddings (C, E); a
    /// captioner's token rows themselves. A [`ScoreKind::Similarity`] scorer's rows must be
    /// L2-normalised (zero-shot prompt ensembles average and renormalise them).
    fn prepare_texts(&self, tokens: &Tensor) -> Tensor;
    /// Scores (B, C) of an image side (B, …) against a text side shared by every image (C, …)
    /// or one per image (B, C, …), on the device of the inputs.
    fn score_prepared(&self, images: &Tensor, texts: &Tensor) -> Tensor;
    /// The image side and the probe features (B, D) of the same images, from one encoder
    /// pass where the model allows.
    fn prepare_images_and_probe(&self, images: &Tensor) -> (Tensor, Tensor) {
        (self.prepare_images(images), self.probe_features(images))
    }
}

/// A captioner: a [`TextScorer`] whose scores are summed log-likelihoods
/// ([`ScoreKind::LogLikelihood`]), which also generates captions.
pub trait Captioner: TextScorer {
    /// Generates token ids per image (greedy or beam search, KV-cached), without BOS and EOS.
    fn generate(&self, images: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>>;
}

/// Similarity of L2-normalised embeddings: images (B, E) against texts shared (C, E), as a
/// float matrix product, or per image (B, C, E), as float products summed in float64 — the
/// [`TextScorer::score_prepared`] of two-tower models.
///
/// # Panics
/// If `texts` is neither 2-D nor 3-D.
pub fn embedding_similarity(images: &Tensor, texts: &Tensor) -> Tensor {
    match texts.dim() {
        2 => images.matmul(&texts.tr()),
        // (B, 1, E) · (B, C, E) summed over E: (B, C).
        3 => (images.unsqueeze(1) * texts).sum_dim_intlist(2, false, Kind::Double),
        _ => panic!(
            "text embeddings must be (C, E) or (B, C, E), got {:?}",
            texts.size()
        ),
    }
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

impl TextScorer for Clip {
    fn score_kind(&self) -> ScoreKind {
        ScoreKind::Similarity
    }
    fn prepare_images(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.encode_image(images, false))
    }
    fn prepare_texts(&self, tokens: &Tensor) -> Tensor {
        tch::no_grad(|| self.encode_text(tokens, false))
    }
    fn score_prepared(&self, images: &Tensor, texts: &Tensor) -> Tensor {
        embedding_similarity(images, texts)
    }
    fn prepare_images_and_probe(&self, images: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let encoded = self.visual.encode_image(images, false);
            (
                cappa_models::layers::l2_normalize(&encoded.pooled),
                gap(&encoded.tokens),
            )
        })
    }
}

impl TextScorer for CapModel {
    fn score_kind(&self) -> ScoreKind {
        ScoreKind::LogLikelihood
    }
    fn prepare_images(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.encode_image(images, false).tokens)
    }
    fn prepare_texts(&self, tokens: &Tensor) -> Tensor {
        tokens.shallow_clone()
    }
    /// [`CapModel::score`] after its encoder pass: the decoder's summed log-likelihood, with
    /// each image's keys and values computed once for all of its candidates.
    fn score_prepared(&self, images: &Tensor, texts: &Tensor) -> Tensor {
        tch::no_grad(|| self.decoder.score(images, texts))
    }
    fn prepare_images_and_probe(&self, images: &Tensor) -> (Tensor, Tensor) {
        let tokens = self.prepare_images(images);
        let probe = gap(&tokens);
        (tokens, probe)
    }
}

impl Captioner for CapModel {
    fn generate(&self, images: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        CapModel::generate(self, images, config)
    }
}

/// The kind of model a report is about; serialised as `contrastive` or `captioner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A two-tower model scoring by embedding similarity (CLIP, SigLIP).
    Contrastive,
    /// A captioner scoring by likelihood and writing captions (Cap, CapPa).
    Captioner,
}

impl ModelKind {
    /// The name in reports: `contrastive` or `captioner`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Contrastive => "contrastive",
            ModelKind::Captioner => "captioner",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A loaded model seen through the traits that fit it.
#[derive(Debug, Clone, Copy)]
pub enum Evaluable<'a> {
    Contrastive(&'a dyn TextScorer),
    Captioner(&'a dyn Captioner),
}

impl<'a> Evaluable<'a> {
    pub fn of(model: &'a Model) -> Self {
        match model {
            Model::Clip(clip) => Evaluable::Contrastive(clip),
            Model::Cap(cap) => Evaluable::Captioner(cap),
        }
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Evaluable::Contrastive(_) => ModelKind::Contrastive,
            Evaluable::Captioner(_) => ModelKind::Captioner,
        }
    }

    pub fn encoder(&self) -> &'a dyn ImageEncoder {
        match *self {
            Evaluable::Contrastive(m) => m,
            Evaluable::Captioner(m) => m,
        }
    }

    pub fn scorer(&self) -> &'a dyn TextScorer {
        match *self {
            Evaluable::Contrastive(m) => m,
            Evaluable::Captioner(m) => m,
        }
    }

    /// The model as a captioner, if it is one.
    pub fn captioner(&self) -> Option<&'a dyn Captioner> {
        match *self {
            Evaluable::Contrastive(_) => None,
            Evaluable::Captioner(m) => Some(m),
        }
    }
}

impl std::fmt::Debug for dyn TextScorer + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextScorer({:?})", self.score_kind())
    }
}

impl std::fmt::Debug for dyn Captioner + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Captioner")
    }
}
