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
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod schedule;
mod trainer;

pub use config::{Budget, ConfigError, ExperimentConfig, Objective};
pub use metrics::ProgressMode;
pub use optim::{AdamW, AdamWConfig, WeightDecay};
pub use schedule::{lr_factor, ScheduleConfig, ScheduleKind};
pub use trainer::{
    nearest_mean_accuracy, peak_flops_for, EvalHook, Resume, RunSummary, StepOutcome, TrainError,
    Trainer, TrainerOptions, EXPERIMENT_FILE, METRICS_FILE, SUMMARY_FILE, TOKENIZER_FILE,
};
