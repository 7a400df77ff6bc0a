//! `cappa checkpoint verify`: checks every file of a run's checkpoints (or of one checkpoint)
//! against the sizes and digests its manifest recorded when it was written.

use std::path::PathBuf;

use anyhow::Result;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CheckpointCommand {
    /// Verify a run directory's checkpoints, its `checkpoints/` folder, or one checkpoint:
    /// each file's size and XXH3-128 digest against the checkpoint's `manifest.json`. Exits
    /// with status 1 if any checkpoint is damaged or unverifiable.
    Verify {
        /// A run directory, its `checkpoints/` folder, or one checkpoint directory.
        path: PathBuf,
    },
}

/// Prints one line per checkpoint; an error (exit status 1) if any failed.
pub(crate) fn run(command: &CheckpointCommand) -> Result<()> {
    match command {
        CheckpointCommand::Verify { path } => {
            let reports = cappa_trainer::verify_checkpoints(path)?;
            for report in &reports {
                println!("{report}");
            }
            let damaged = reports.iter().filter(|r| !r.is_intact()).count();
            anyhow::ensure!(
                damaged == 0,
                "{damaged} of {} checkpoint(s) failed verification; `cappa train --resume auto` \
                 resumes from the newest intact one",
                reports.len()
            );
            Ok(())
        }
    }
}
