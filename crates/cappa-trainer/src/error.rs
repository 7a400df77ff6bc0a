//! What can stop a training run.

use std::path::PathBuf;

use cappa_data::error::DataError;
use cappa_data::tokenizer::TokenizerError;
use cappa_io::FileError;
use cappa_models::checkpoint::VerifyError;
use cappa_models::CheckpointError;
use cappa_torch_ext::autocast::AutocastError;
use cappa_torch_ext::dist::DistError;

use crate::config::ConfigError;
use crate::optim::OptimizerStateError;
use crate::tokens::TokenizerMismatch;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "{}: this run directory already has checkpoints (the newest after step {step}): pass \
         `--resume auto` to continue it, or choose another output directory",
        dir.display()
    )]
    RunExists { dir: PathBuf, step: u64 },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    TokenizerMismatch(#[from] TokenizerMismatch),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "step {step}: the {what} is not finite ({value}); stopped with the last good weights in \
         {}. Lower optim.lr, tighten optim.clip_grad_norm, check the data, or set max_bad_steps \
         to skip such steps",
        checkpoint.display()
    )]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
        checkpoint: PathBuf,
    },
    #[error("the training data ran out at step {step}")]
    DataExhausted { step: u64 },
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("bf16 autocast: {0}")]
    Autocast(#[from] AutocastError),
}

impl TrainError {
    /// Bad configurations exit with status 2.
    pub fn is_config(&self) -> bool {
        matches!(self, TrainError::Config(_) | TrainError::RunExists { .. })
    }
}

/// A checkpoint that cannot be continued from.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{}: has no tensor `{name}`", path.display())]
    MissingTensor { path: PathBuf, name: &'static str },
    #[error("{}: {source}", path.display())]
    OptimizerState {
        path: PathBuf,
        source: OptimizerStateError,
    },
    #[error("{}: holds step {holds} but is named for step {named}", dir.display())]
    StepMismatch {
        dir: PathBuf,
        holds: u64,
        named: u64,
    },
    /// Every checkpoint of the run failed verification (newest first); none was changed.
    #[error(
        "{}: no checkpoint is intact, so the run cannot continue (check the disk, or start a \
         new run directory): {}",
        dir.display(),
        join(failures)
    )]
    NoIntactCheckpoint {
        dir: PathBuf,
        failures: Vec<VerifyError>,
    },
}

fn join(failures: &[VerifyError]) -> String {
    let parts: Vec<String> = failures.iter().map(VerifyError::to_string).collect();
    parts.join("; ")
}
