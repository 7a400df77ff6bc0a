//! Training objectives as pure functions over tensors: the contrastive losses (softmax/CLIP
//! and sigmoid/SigLIP, with the global-batch form for data parallel), the captioning loss,
//! the decoder inputs for CapPa's parallel prediction, and a few in-batch metrics.
//!
//! Boundaries: no model code and no state. A loss takes embeddings or logits and targets and
//! returns a scalar tensor; learnable scalars (`log_scale`, `bias`) are passed in by the model
//! that owns them. Models live in `cappa-models`, the training loop (and the collectives that
//! fill a [`Gathered`]) in `cappa-trainer`. Depends on `tch` and, for CapPa's coin flips, on
//! `rand`: the draws come from a Rust generator, not libtorch's, so they are reproducible.
//!
//! Dimension letters: `B` batch, `N` global batch over all ranks, `D` embedding width,
//! `L` caption length, `V` vocabulary.
//!
//! ```
//! use cappa_objectives::{caption_loss, contrastive_softmax_loss, parallel_prediction_inputs,
//!     ParallelPrediction};
//! use tch::{Kind, Tensor};
//!
//! // CLIP: L2-normalised (B, D) embeddings and the learnable log scale t = ln(1/0.07).
//! let image = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu));
//! let image = &image / image.norm_scalaropt_dim(2, [1], true);
//! let log_scale = Tensor::from((1.0f32 / 0.07).ln());
//! let loss = contrastive_softmax_loss(&image, &image, &log_scale);
//! assert!(loss.double_value(&[]) < 4f64.ln()); // matched pairs beat chance
//!
//! // CapPa: (B, L) captions with pad id 0 in a vocabulary of 10; the mask token is 10.
//! let targets = Tensor::from_slice2(&[[5i64, 6, 2, 0], [7, 2, 0, 0]]);
//! let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
//! let decoder = parallel_prediction_inputs(&targets, &ParallelPrediction::cap_pa(10), &mut rng)?;
//! assert_eq!(decoder.inputs.size(), [2, 4]);
//! let logits = Tensor::zeros([2, 4, 10], (Kind::Float, tch::Device::Cpu)); // from the decoder
//! let loss = caption_loss(&logits, &targets, 0, 0.0);
//! assert!((loss.double_value(&[]) - 10f64.ln()).abs() < 1e-5); // uniform logits: ln V
//! # Ok::<(), cappa_objectives::ParallelPredictionError>(())
//! ```

mod caption;
mod contrastive;
mod metrics;
mod parallel;

pub use caption::{caption_loss, caption_losses};
pub use contrastive::{
    contrastive_sigmoid_loss, contrastive_sigmoid_loss_global, contrastive_softmax_loss,
    contrastive_softmax_loss_global, splice_local, Gathered, MAX_LOGIT_SCALE,
};
pub use metrics::{in_batch_retrieval_accuracy, token_accuracy};
pub use parallel::{
    parallel_prediction_inputs, DecoderInputs, ParallelPrediction, ParallelPredictionError,
};
