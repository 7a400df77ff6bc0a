//! Samples and batches: the built-in synthetic scene world, readers for the datasets users
//! already have (webdataset tar shards, CSV/TSV, COCO, Karpathy splits, ImageFolder,
//! SugarCrepe/ARO, VQA), the image pipeline, the tokenizer, and the shuffling, sharding and
//! prefetching loader.
//!
//! Boundaries: no neural-network code. Batches leave this crate as tensors ready for a model;
//! what a model does with them belongs to `cappa-models`, `cappa-objectives` and
//! `cappa-trainer`. Depends on `tch` only to hand batches over as tensors.
//!
//! ```
//! use std::sync::Arc;
//! use cappa_data::loader::{Loader, LoaderConfig, SceneSource};
//! use cappa_data::pipeline::TrainTransform;
//! use cappa_data::scene::{SceneConfig, SceneWorld};
//! use cappa_data::tokenizer::Tokenizer;
//!
//! let world = SceneWorld::new(SceneConfig { image_size: 32, ..SceneConfig::default() }, 0)?;
//! let captions = (0..200).map(|i| world.sample(i).captions.join(" "));
//! let tokenizer = Arc::new(Tokenizer::train_bpe(captions, 400, true)?);
//! let config = LoaderConfig {
//!     batch_size: 8, seq_len: 16, transform: TrainTransform::cappa(32), threads: 2,
//!     ..LoaderConfig::default()
//! };
//! let mut loader = Loader::start(Box::new(SceneSource::new(world, 0, 1)), tokenizer, config, None)?;
//! let batch = loader.next().unwrap()?;
//! assert_eq!(batch.images.size(), [8, 3, 32, 32]); // normalised to [-1, 1]
//! assert_eq!(batch.tokens.size(), [8, 16]);        // pad 0, EOS kept
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod inspect;
pub mod loader;
pub mod pipeline;
pub mod readers;
pub mod sample;
pub mod scene;
pub mod tokenizer;

pub use sample::{BadSample, ImageData, Sample, SkipCounts, SkipReason};
