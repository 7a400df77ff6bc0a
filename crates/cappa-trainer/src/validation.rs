//! Evaluation inside the training loop: the validation loss and accuracies on held-out
//! batches, a nearest-class-mean probe of the image features on the scene world's labels, and
//! [`EvalHook`]s that run any other evaluation.

use std::sync::Arc;

use cappa_data::loader::{Loader, LoaderConfig};
use cappa_data::scene::LabelSet;
use cappa_data::tokenizer::Tokenizer;
use cappa_models::{shift_right, Decoding, Model};
use cappa_objectives::{caption_loss, in_batch_retrieval_accuracy, token_accuracy};
use tch::{Device, Kind, Tensor};

use crate::config::ExperimentConfig;
use crate::error::TrainError;
use crate::objective::contrastive_loss;

/// An evaluation run inside the training loop, every `eval.every` steps and at the end.
pub trait EvalHook {
    fn name(&self) -> &str;
    /// Named results, logged under `NAME/KEY`. A failure is reported and training goes on.
    fn evaluate(&mut self, model: &Model, step: u64) -> Result<Vec<(String, f64)>, EvalHookError>;
}

/// Why an [`EvalHook`] failed: any error (a typed one, an `anyhow::Error`, a message).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EvalHookError(#[from] pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl EvalHookError {
    /// Wraps `error`: `EvalHookError::new(io_error)`, `EvalHookError::new("no images")`.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        EvalHookError(error.into())
    }
}

/// Held-out batches for the in-loop validation.
#[derive(Debug)]
pub(crate) struct Validation {
    batches: Vec<(Tensor, Tensor)>,
    /// Scene labels (shape of the largest object) of every example, for the probe.
    labels: Option<Vec<i64>>,
}

impl Validation {
    /// The first `eval.batches` batches of the held-out data (see
    /// [`crate::data::validation_source`]), or `None` without held-out data.
    pub(crate) fn load(
        config: &ExperimentConfig,
        tokenizer: &Arc<Tokenizer>,
        loader_config: LoaderConfig,
    ) -> Result<Option<Self>, TrainError> {
        let Some(crate::data::HeldOut { source, world }) = crate::data::validation_source(config)?
        else {
            return Ok(None);
        };
        let loader = Loader::start(source, Arc::clone(tokenizer), loader_config, None)?;
        let mut batches = Vec::new();
        let mut labels = world.as_ref().map(|_| Vec::new());
        for batch in loader.take(config.eval.batches) {
            let batch = batch?;
            if let (Some(world), Some(labels)) = (&world, labels.as_mut()) {
                for key in &batch.keys {
                    let index: u64 = key.parse().expect("scene keys are indices");
                    let scene = world.scene(index);
                    labels.push(world.label(&scene, LabelSet::Shape) as i64);
                }
            }
            batches.push((batch.images, batch.tokens));
        }
        Ok(Some(Validation { batches, labels }))
    }

    /// The validation loss, the accuracies (CLIP: in-batch retrieval both ways; Cap: next
    /// token) and the probe's accuracy, averaged over the batches. Call under `no_grad`.
    pub(crate) fn run(&self, model: &Model, device: Device) -> Vec<(String, f64)> {
        let n = self.batches.len().max(1) as f64;
        let mut totals = Totals::default();
        for (images, tokens) in &self.batches {
            let (images, tokens) = (images.to_device(device), tokens.to_device(device));
            totals.add(model, &images, &tokens);
        }
        let mut results = vec![("val_loss".to_string(), totals.loss / n)];
        match model {
            Model::Clip(_) => {
                results.push(("val_i2t_accuracy".into(), totals.first / n));
                results.push(("val_t2i_accuracy".into(), totals.second / n));
            }
            Model::Cap(_) => results.push(("val_token_accuracy".into(), totals.first / n)),
        }
        if let Some(labels) = &self.labels {
            if !totals.features.is_empty() {
                let features = Tensor::cat(&totals.features, 0);
                results.push((
                    "probe_shape_accuracy".into(),
                    nearest_mean_accuracy(&features, labels),
                ));
            }
        }
        results
    }
}

/// Sums over the validation batches.
#[derive(Debug, Default)]
struct Totals {
    loss: f64,
    /// CLIP: image-to-text accuracy; Cap: token accuracy.
    first: f64,
    /// CLIP: text-to-image accuracy.
    second: f64,
    /// The pooled image features, for the probe.
    features: Vec<Tensor>,
}

impl Totals {
    fn add(&mut self, model: &Model, images: &Tensor, tokens: &Tensor) {
        match model {
            Model::Clip(clip) => {
                let encoded = clip.visual.encode_image(images, false);
                let image = cappa_models::layers::l2_normalize(&encoded.pooled);
                let text = clip.encode_text(tokens, false);
                self.loss += contrastive_loss(clip, &image, &text).double_value(&[]);
                let (i2t, t2i) = in_batch_retrieval_accuracy(&image, &text);
                self.first += i2t;
                self.second += t2i;
                self.features.push(encoded.pooled);
            }
            Model::Cap(cap) => {
                let decoder = &cap.config().decoder;
                let encoded = cap.encode_image(images, false);
                let inputs = shift_right(tokens, decoder.bos_id);
                let logits = cap.decode(&encoded.tokens, &inputs, Decoding::Causal, false);
                self.loss += caption_loss(&logits, tokens, decoder.pad_id, 0.0).double_value(&[]);
                self.first += token_accuracy(&logits, tokens, decoder.pad_id);
                self.features.push(encoded.pooled);
            }
        }
    }
}

/// Accuracy of a nearest-class-mean probe (cosine): class means from the first half of the
/// examples, predictions for the second half. Cheap enough to run inside the training loop.
pub fn nearest_mean_accuracy(features: &Tensor, labels: &[i64]) -> f64 {
    let n = labels.len();
    let half = n / 2;
    if half == 0 || features.size()[0] as usize != n {
        return 0.0;
    }
    let features =
        cappa_models::layers::l2_normalize(&features.to_kind(Kind::Float).to_device(Device::Cpu));
    let classes = labels.iter().copied().max().unwrap_or(0) + 1;
    let train = features.narrow(0, 0, half as i64);
    let test = features.narrow(0, half as i64, (n - half) as i64);
    let train_labels = Tensor::from_slice(&labels[..half]);
    let one_hot = train_labels.one_hot(classes).to_kind(Kind::Float); // (h, C)
    let sums = one_hot.tr().matmul(&train); // (C, D)
    let present = one_hot
        .sum_dim_intlist(&[0i64][..], false, Kind::Float)
        .gt(0.0); // (C)
    let means = cappa_models::layers::l2_normalize(&sums);
    let scores = test.matmul(&means.tr()); // (n − h, C)
    let scores = scores.masked_fill(&present.logical_not().unsqueeze(0), f64::NEG_INFINITY);
    let predicted = scores.argmax(1, false);
    let truth = Tensor::from_slice(&labels[half..]);
    predicted
        .eq_tensor(&truth)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_mean_probe_by_hand() {
        // Two classes along two axes; the second half is classified by the first half's means.
        let features = Tensor::from_slice(&[
            1.0f32, 0.1, 0.1, 1.0, 0.9, 0.0, 0.0, 0.8, // train: 0, 1, 0, 1
            1.0, 0.2, 0.2, 1.0, 0.3, 1.0, 1.0, 0.0, // test: 0, 1, 1, 1 (last is wrong)
        ])
        .view([8, 2]);
        let labels = [0, 1, 0, 1, 0, 1, 1, 1];
        assert_eq!(nearest_mean_accuracy(&features, &labels), 0.75);
    }

    #[test]
    fn hook_errors_keep_their_message() {
        let error = EvalHookError::new("no images in the folder");
        assert_eq!(error.to_string(), "no images in the folder");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let error = EvalHookError::new(io);
        assert_eq!(error.to_string(), "gone");
    }
}
