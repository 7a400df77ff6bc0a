//! The training loop shared by every objective (CLIP, SigLIP, Cap, CapPa): AdamW over a flat
//! parameter buffer with weight-decay groups, learning-rate schedules, global-norm clipping,
//! gradient accumulation, atomic checkpoints with exact resume, compute budgets in steps,
//! examples or FLOPs, JSONL metrics, progress and in-loop evaluation.
//!
//! Boundaries: consumes models from `cappa-models`, losses from `cappa-objectives` and batches
//! from `cappa-data`; bf16 autocast and data parallelism over c10d (Gloo/NCCL, see
//! [`parallel`]) through `cappa-torch-ext`.
//!
//! Gradient accumulation is exact for Cap/CapPa (per-caption losses). For the contrastive
//! losses each micro-batch's negatives are its own: accumulating k micro-batches of b is not
//! the same objective as one batch of k·b.
//!
//! Where things are: [`Trainer::step_on`] is one update (`trainer.rs`); the loss of each
//! objective is in `objective.rs`, the data sources and the tokenizer in `data.rs`, the
//! in-loop validation in `validation.rs`, the data-parallel exchange in [`parallel`], every
//! random stream in `random.rs`, checkpoint files, resume and verification in [`checkpoint`],
//! the metrics log and progress in [`metrics`].
//!
//! ```no_run
//! use cappa_trainer::{config, Trainer, TrainerOptions};
//!
//! // The defaults (tiny CapPa on the scene world), with two overrides.
//! let config = config::resolve(None, &["budget.steps=50".into(), "objective=clip".into()])?;
//! let mut trainer = Trainer::start(config, "runs/demo".as_ref(), TrainerOptions::default())?;
//! let summary = trainer.run()?;
//! println!("loss {:?} after {} examples", summary.final_loss, summary.examples_seen);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
pub mod config;
mod data;
mod error;
pub mod metrics;
mod objective;
pub mod optim;
pub mod parallel;
mod random;
pub mod schedule;
pub mod tokens;
mod trainer;
mod validation;

pub use checkpoint::{
    verify_checkpoints, CheckpointReport, VerifyTargetError, EXPERIMENT_FILE, TOKENIZER_FILE,
};
pub use config::{Budget, ConfigError, ExperimentConfig, Objective};
pub use error::{ResumeError, TrainError};
pub use metrics::{peak_flops_for, ProgressMode, METRICS_FILE};
pub use objective::LossSplit;
pub use optim::{AdamW, AdamWConfig, OptimizerStateError, WeightDecay};
pub use schedule::{lr_factor, ScheduleConfig, ScheduleKind};
pub use trainer::{Resume, RunSummary, StepOutcome, Trainer, TrainerOptions, SUMMARY_FILE};
pub use validation::{nearest_mean_accuracy, EvalHook, EvalHookError};
