//! Models on `tch` for contrastive and captioning pretraining: the ViT image encoder, the CLIP
//! text tower and two-tower [`Clip`], the Cap/CapPa [`CapDecoder`] with its KV cache, named
//! presets, parameter and FLOP counts, and checkpoints whose variable names follow open_clip's.
//!
//! Boundaries: models expose task methods (`encode_image`, `encode_text`, `decode`,
//! `generate`, `score`) and compute no loss; losses live in `cappa-objectives`, training in
//! `cappa-trainer`. Depends on `tch` (libtorch 2.11.0), serde and `cappa-io` (atomic writes).
//!
//! The tokenizer's vocabulary size and special ids reach the models as [`SpecialTokens`]
//! ([`TextConfig::new`], [`DecoderConfig::new`], [`CapConfig::new`]); the presets carry the
//! built-in tokenizer's (pad 0, EOS 2). Invalid configurations are a [`ConfigError`] naming
//! the field.
//!
//! ```
//! use cappa_models::{CapConfig, CapModel, Decoding, GenerateConfig};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//!
//! let vs = VarStore::new(Device::Cpu);
//! let model = CapModel::new(vs.root(), &CapConfig::tiny());
//! let images = Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu));
//! let encoded = model.encode_image(&images, false); // tokens (2, 16, 64), pooled (2, 64)
//! let inputs = Tensor::zeros([2, 8], (Kind::Int64, Device::Cpu));
//! let logits = model.decode(&encoded.tokens, &inputs, Decoding::Causal, false);
//! assert_eq!(logits.size(), [2, 8, 512]);
//! let captions = model.generate(&images, &GenerateConfig::greedy(5));
//! assert_eq!(captions.len(), 2);
//! ```

mod cap;
pub mod checkpoint;
mod clip;
mod cost;
mod decoder;
pub mod export;
pub mod layers;
mod text;
mod tokens;
mod validate;
mod vit;

pub use cap::{CapConfig, CapModel};
pub use checkpoint::{CheckpointError, Model, ModelConfig};
pub use clip::{Clip, ClipConfig, ContrastiveLoss};
pub use cost::{num_params, train_flops};
pub use decoder::{
    shift_right, CapDecoder, DecoderConfig, DecoderInit, Decoding, GenerateConfig, KvCache,
};
pub use text::{TextConfig, TextEncoder};
pub use tokens::SpecialTokens;
pub use validate::ConfigError;
pub use vit::{sincos_2d, ImageEncoding, Pooling, PositionEmbedding, Vit, VitConfig};
