//! Training checkpoints: `RUN/checkpoints/step-NNNNNNNN/` holding
//! - `model.safetensors` + `config.json` (a model checkpoint `cappa_models` loads on its own),
//! - `optimizer.safetensors` (AdamW's two moment buffers) and `optimizer.json` (its layout),
//! - `state.json` ([`TrainState`]: step, examples and FLOPs seen, the data cursor),
//! - `experiment.json` (the resolved run configuration) and `tokenizer.json`.
//!
//! A checkpoint is written into a hidden temporary directory, every file fsynced, and renamed
//! into place in one step (then the parent directory is fsynced and the `latest` pointer
//! rewritten atomically). A crash at any point leaves either the complete new checkpoint or
//! none, and the previous ones intact; leftover temporary directories are removed the next
//! time the run is opened. Only the newest `keep` checkpoints are kept.
//!
//! Randomness needs no saved generator state: every random draw of a step (parallel-prediction
//! masks, libtorch's dropout generator) is seeded from (run seed, step), and the loader's from
//! (seed, sample position), so the step and the data cursor determine all of it.

use std::fs;
use std::path::{Path, PathBuf};

use cappa_data::loader::LoaderCursor;
use cappa_models::checkpoint::{write_atomically, write_json, CheckpointError};
use serde::{Deserialize, Serialize};

/// Progress of a run, saved in every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Updates done (including skipped non-finite ones).
    pub step: u64,
    pub examples_seen: u64,
    pub flops_seen: f64,
    /// Non-finite steps skipped so far.
    pub bad_steps: u64,
    /// Where the data stream continues.
    pub cursor: LoaderCursor,
    /// Loss of the last step (for the record).
    pub last_loss: Option<f64>,
    /// Every rank's data cursor in a data-parallel run (rank 0's is also `cursor`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_cursors: Vec<LoaderCursor>,
}

pub const STATE_FILE: &str = "state.json";
pub const LATEST_FILE: &str = "latest";
const PREFIX: &str = "step-";

/// The checkpoint directory of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Checkpoints {
    /// `RUN/checkpoints`, keeping the newest `keep`.
    pub fn new(run_dir: &Path, keep: usize) -> Self {
        Checkpoints {
            dir: run_dir.join("checkpoints"),
            keep: keep.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory name of the checkpoint after `step` updates.
    pub fn name(step: u64) -> String {
        format!("{PREFIX}{step:08}")
    }

    /// Complete checkpoints, oldest first, as (step, directory).
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix(PREFIX)?.parse().ok()?;
                let path = e.path();
                path.join(STATE_FILE).is_file().then_some((step, path))
            })
            .collect();
        found.sort();
        found
    }

    /// The newest complete checkpoint. A crash between the rename and the `latest` update
    /// leaves a newer complete directory than `latest` names; that one is used.
    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        self.list().pop()
    }

    /// Removes temporary directories left by a crash during a write.
    pub fn remove_stale(&self) -> Result<usize, CheckpointError> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts writing the checkpoint of `step` into a temporary directory.
    pub fn stage(&self, step: u64) -> Result<Staged, CheckpointError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let temp = self
            .dir
            .join(format!(".tmp-{}-{}", Self::name(step), std::process::id()));
        if temp.exists() {
            fs::remove_dir_all(&temp).map_err(io(&temp))?;
        }
        fs::create_dir(&temp).map_err(io(&temp))?;
        Ok(Staged {
            checkpoints: self.clone(),
            step,
            temp,
        })
    }

    /// Writes a checkpoint with `write` filling the directory (it must write [`STATE_FILE`]
    /// last or at all; a directory without it does not count as a checkpoint).
    pub fn save(
        &self,
        step: u64,
        write: impl FnOnce(&Path) -> Result<(), CheckpointError>,
    ) -> Result<PathBuf, CheckpointError> {
        let staged = self.stage(step)?;
        if let Err(error) = write(staged.path()) {
            let _ = fs::remove_dir_all(staged.path());
            return Err(error);
        }
        staged.commit()
    }

    fn prune(&self) -> Result<(), CheckpointError> {
        let all = self.list();
        let excess = all.len().saturating_sub(self.keep);
        for (_, path) in &all[..excess] {
            fs::remove_dir_all(path).map_err(io(path))?;
        }
        Ok(())
    }
}

/// A checkpoint being written; [`Staged::commit`] publishes it. Dropped without a commit it
/// stays behind as a crash would leave it, and [`Checkpoints::remove_stale`] removes it.
#[derive(Debug)]
pub struct Staged {
    checkpoints: Checkpoints,
    step: u64,
    temp: PathBuf,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Renames the directory into place, updates `latest` and drops old checkpoints.
    pub fn commit(self) -> Result<PathBuf, CheckpointError> {
        let dir = &self.checkpoints.dir;
        let name = Checkpoints::name(self.step);
        let target = dir.join(&name);
        if !self.temp.join(STATE_FILE).is_file() {
            return Err(CheckpointError::Io {
                path: self.temp.join(STATE_FILE),
                source: std::io::Error::other("a checkpoint needs its state file"),
            });
        }
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        fs::rename(&self.temp, &target).map_err(io(&target))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        let latest = dir.join(LATEST_FILE);
        write_atomically(&latest, |temp| {
            fs::write(temp, format!("{name}\n")).map_err(io(temp))
        })?;
        self.checkpoints.prune()?;
        Ok(target)
    }
}

/// Writes `state.json` (atomically, fsynced).
pub fn write_state(dir: &Path, state: &TrainState) -> Result<(), CheckpointError> {
    write_json(&dir.join(STATE_FILE), state)
}

/// Reads `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::Json { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_step(checkpoints: &Checkpoints, step: u64) -> PathBuf {
        checkpoints
            .save(step, |dir| {
                fs::write(dir.join("payload"), step.to_string()).unwrap();
                write_state(
                    dir,
                    &TrainState {
                        step,
                        ..TrainState::default()
                    },
                )
            })
            .unwrap()
    }

    #[test]
    fn keeps_the_newest_and_points_latest_at_it() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 2);
        for step in [2, 4, 6] {
            write_step(&checkpoints, step);
        }
        let steps: Vec<u64> = checkpoints.list().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [4, 6]);
        let latest = fs::read_to_string(checkpoints.dir().join(LATEST_FILE)).unwrap();
        assert_eq!(latest.trim(), "step-00000006");
        assert_eq!(
            read_state(&checkpoints.latest().unwrap().1).unwrap().step,
            6
        );
    }

    #[test]
    fn a_crash_mid_write_leaves_the_previous_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 3);
        write_step(&checkpoints, 10);
        // The process dies half-way through step 20's files: the staged directory is never
        // committed.
        let staged = checkpoints.stage(20).unwrap();
        fs::write(staged.path().join("model.safetensors"), b"half a tens").unwrap();
        drop(staged);
        let (step, dir) = checkpoints.latest().unwrap();
        assert_eq!(step, 10);
        assert_eq!(fs::read_to_string(dir.join("payload")).unwrap(), "10");
        assert_eq!(checkpoints.remove_stale().unwrap(), 1);
        assert_eq!(fs::read_dir(checkpoints.dir()).unwrap().count(), 2); // step-10 + latest

        // A failing writer removes its own temporary directory and reports the error.
        let error = checkpoints
            .save(30, |dir| {
                Err(CheckpointError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other("disk full"),
                })
            })
            .unwrap_err();
        assert!(error.to_string().contains("disk full"));
        assert_eq!(checkpoints.latest().unwrap().0, 10);
        assert_eq!(checkpoints.remove_stale().unwrap(), 0);
    }

    #[test]
    fn a_directory_without_state_is_not_a_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 3);
        let staged = checkpoints.stage(5).unwrap();
        assert!(staged.commit().is_err());
        assert!(checkpoints.latest().is_none());
    }
}
