//! Training objectives as pure functions over tensors: the contrastive losses (softmax/CLIP
//! and sigmoid/SigLIP, with the global-batch form for data parallel) and the captioning loss
//! with the inputs for CapPa's parallel prediction.
//!
//! Boundaries: no model code and no state. A loss takes embeddings or logits and targets and
//! returns a scalar tensor; models live in `cappa-models`, the loop in `cappa-trainer`.
//!
//! The code arrives with the "Models and objectives" issue; a usage example will stand here
//! with it.
