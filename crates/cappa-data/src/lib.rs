//! Samples and batches: the built-in synthetic scene world, readers for the datasets users
//! already have (webdataset tar shards, CSV/TSV, COCO, Karpathy splits, ImageFolder,
//! SugarCrepe/ARO, VQA), the image pipeline, the tokenizer, and the shuffling, sharding and
//! prefetching loader.
//!
//! Boundaries: no neural-network code. Batches leave this crate as tensors ready for a model;
//! what a model does with them belongs to `cappa-models`, `cappa-objectives` and
//! `cappa-trainer`.
//!
//! The code arrives with the "Data" issue; a usage example will stand here with it.
