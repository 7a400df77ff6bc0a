//! The training loop shared by every objective (CLIP, SigLIP, Cap, CapPa): AdamW with
//! decoupled weight-decay groups, learning-rate schedules, gradient clipping and accumulation,
//! mixed precision, atomic checkpoints with exact resume, compute budgets, metrics and progress.
//!
//! Boundaries: consumes models from `cappa-models`, losses from `cappa-objectives` and batches
//! from `cappa-data`; distributed collectives and bf16 autocast come from `cappa-torch-ext`.
//!
//! The code arrives with the "Trainer" issue; a usage example will stand here with it.
