//! Training checkpoints: `RUN/checkpoints/step-NNNNNNNN/` holding
//! - `model.safetensors` + `config.json` (a model checkpoint `cappa_models` loads on its own),
//! - `optimizer.safetensors` (AdamW's two moment buffers) and `optimizer.json` (its layout),
//! - `state.json` ([`TrainState`]: step, examples and FLOPs seen, the data cursor),
//! - `experiment.json` (the resolved run configuration) and `tokenizer.json`,
//! - `manifest.json`: the size and XXH3-128 digest of each of those files
//!   ([`cappa_models::checkpoint::Manifest`]), written last.
//!
//! A checkpoint is written into a hidden temporary directory, every file fsynced, and renamed
//! into place in one step (then the parent directory is fsynced and the `latest` pointer
//! rewritten atomically). A crash at any point leaves either the complete new checkpoint or
//! none, and the previous ones intact; leftover temporary directories are removed the next
//! time the run is opened. Only the newest `keep` checkpoints are kept.
//!
//! Damage after the write (a truncated copy, a flipped bit, a deleted file) is found by the
//! manifest. Resuming verifies the newest checkpoint first and falls back to older ones: a
//! damaged checkpoint is reported on stderr, never deleted, and once the run is set up it is
//! renamed `step-NNNNNNNN.damaged` (out of the way of the resumed run, which writes that step
//! again; pruning does not count or remove it) and `latest` is pointed at the checkpoint the
//! run continues from. [`verify_checkpoints`] checks a run's or one checkpoint's files.
//!
//! Randomness needs no saved generator state (see `random.rs`): the step and the data
//! cursor determine all of it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use cappa_data::loader::LoaderCursor;
use cappa_data::tokenizer::Tokenizer;
use cappa_io::io_error;
use cappa_models::checkpoint::{
    load_config, save_weights, verify, write_json, write_manifest, CheckpointError, Manifest,
    VerifyError, CONFIG_FILE, MANIFEST_FILE, MODEL_FILES, WEIGHTS_FILE,
};
use cappa_models::ModelConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::config::{differing_fields, ConfigError, ExperimentConfig};
use crate::error::{ResumeError, TrainError};
use crate::optim::{AdamW, AdamWConfig, Slot};
use crate::trainer::Resume;

pub const STATE_FILE: &str = "state.json";
pub const LATEST_FILE: &str = "latest";
pub const EXPERIMENT_FILE: &str = "experiment.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const OPTIMIZER_LAYOUT_FILE: &str = "optimizer.json";
/// The files of a training checkpoint, which its manifest must list.
pub const TRAINING_FILES: [&str; 7] = [
    WEIGHTS_FILE,
    CONFIG_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_LAYOUT_FILE,
    STATE_FILE,
    EXPERIMENT_FILE,
    TOKENIZER_FILE,
];
const PREFIX: &str = "step-";
/// Appended to the name of a damaged checkpoint that a resumed run stepped over.
pub const DAMAGED_SUFFIX: &str = ".damaged";

/// Config fields a resumed run may change: reporting, and the budget (to train longer; with a
/// cosine schedule the learning rate then follows the longer schedule from the resumed step).
const RESUMABLE_CHANGES: &[&str] = &[
    "budget",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval",
    "data.threads",
    "data.prefetch",
    "peak_flops",
];

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

/// `optimizer.json`: what `optimizer.safetensors`' flat buffers hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerLayout {
    pub config: AdamWConfig,
    /// Each variable's place in the flat buffers.
    pub slots: Vec<Slot>,
    /// Updates done, for the bias corrections.
    pub steps: u64,
}

/// The checkpoint directory of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

/// The checkpoints of a run, newest first, up to the first that passed verification.
#[derive(Debug)]
pub struct Scan {
    /// The newest intact checkpoint, as (step, directory).
    pub intact: Option<(u64, PathBuf)>,
    /// The newer checkpoints that failed verification, newest first.
    pub damaged: Vec<VerifyError>,
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

    /// The checkpoint directories (`step-NNNNNNNN`, intact or not), oldest first, as (step,
    /// directory). Directories set aside as damaged do not count.
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
                path.is_dir().then_some((step, path))
            })
            .collect();
        found.sort();
        found
    }

    /// The newest checkpoint, intact or not. A crash between the rename and the `latest`
    /// update leaves a newer complete directory than `latest` names; that one is used.
    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        self.list().pop()
    }

    /// Verifies the checkpoints newest first (each must list `required` in its manifest)
    /// until one is intact. Nothing is changed on disk.
    pub fn newest_intact(&self, required: &[&str]) -> Scan {
        let mut damaged = Vec::new();
        for (step, dir) in self.list().into_iter().rev() {
            match verify(&dir, required) {
                Ok(_) => {
                    return Scan {
                        intact: Some((step, dir)),
                        damaged,
                    }
                }
                Err(error) => damaged.push(error),
            }
        }
        Scan {
            intact: None,
            damaged,
        }
    }

    /// Renames a damaged checkpoint directory to `NAME.damaged` (or `NAME.damaged-2`, … if
    /// taken), where listing, pruning and new checkpoints leave it alone.
    pub fn set_aside(&self, checkpoint: &Path) -> Result<PathBuf, CheckpointError> {
        let name = checkpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut aside = self.dir.join(format!("{name}{DAMAGED_SUFFIX}"));
        let mut copy = 1;
        while aside.exists() {
            copy += 1;
            aside = self.dir.join(format!("{name}{DAMAGED_SUFFIX}-{copy}"));
        }
        fs::rename(checkpoint, &aside).map_err(io_error(&aside))?;
        cappa_io::sync_dir(&self.dir)?;
        Ok(aside)
    }

    /// Points `latest` at the checkpoint of `step`.
    pub fn point_latest_at(&self, step: u64) -> Result<(), CheckpointError> {
        let line = format!("{}\n", Self::name(step));
        Ok(cappa_io::write_atomically(
            &self.dir.join(LATEST_FILE),
            line.as_bytes(),
        )?)
    }

    /// Removes temporary directories left by a crash during a write.
    pub fn remove_stale(&self) -> Result<usize, CheckpointError> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                fs::remove_dir_all(entry.path()).map_err(io_error(&entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts writing the checkpoint of `step` into a temporary directory.
    pub fn stage(&self, step: u64) -> Result<Staged, CheckpointError> {
        fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let temp = self
            .dir
            .join(format!(".tmp-{}-{}", Self::name(step), std::process::id()));
        if temp.exists() {
            fs::remove_dir_all(&temp).map_err(io_error(&temp))?;
        }
        fs::create_dir(&temp).map_err(io_error(&temp))?;
        Ok(Staged {
            checkpoints: self.clone(),
            step,
            temp,
        })
    }

    /// Writes a checkpoint with `write` filling the directory (it must write [`STATE_FILE`];
    /// the manifest of every file it wrote is added when it is done).
    pub fn save<E: From<CheckpointError>>(
        &self,
        step: u64,
        write: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        let staged = self.stage(step)?;
        if let Err(error) = write(staged.path()) {
            let _ = fs::remove_dir_all(staged.path());
            return Err(error);
        }
        Ok(staged.commit()?)
    }

    fn prune(&self) -> Result<(), CheckpointError> {
        let all = self.list();
        let excess = all.len().saturating_sub(self.keep);
        for (_, path) in &all[..excess] {
            fs::remove_dir_all(path).map_err(io_error(path))?;
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

    /// Writes the manifest of the directory's files, renames the directory into place,
    /// updates `latest` and drops old checkpoints.
    pub fn commit(self) -> Result<PathBuf, CheckpointError> {
        let dir = &self.checkpoints.dir;
        let target = dir.join(Checkpoints::name(self.step));
        if !self.temp.join(STATE_FILE).is_file() {
            return Err(CheckpointError::Io {
                path: self.temp.join(STATE_FILE),
                source: std::io::Error::other("a checkpoint needs its state file"),
            });
        }
        let names = written_files(&self.temp)?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        write_manifest(&self.temp, &names)?;
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io_error(&target))?;
        }
        fs::rename(&self.temp, &target).map_err(io_error(&target))?;
        cappa_io::sync_dir(dir)?;
        self.checkpoints.point_latest_at(self.step)?;
        self.checkpoints.prune()?;
        Ok(target)
    }
}

/// The plain files of a staged checkpoint (not hidden temporaries, not the manifest), sorted.
fn written_files(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry
            .file_type()
            .map_err(io_error(&entry.path()))?
            .is_file();
        if is_file && !name.starts_with('.') && name != MANIFEST_FILE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Writes `state.json` (atomically, fsynced).
pub fn write_state(dir: &Path, state: &TrainState) -> Result<(), CheckpointError> {
    write_json(&dir.join(STATE_FILE), state)
}

/// Reads `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    Ok(cappa_io::read_json(&dir.join(STATE_FILE))?)
}

/// Everything a training checkpoint holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Contents<'a> {
    pub vs: &'a VarStore,
    pub model_config: &'a ModelConfig,
    pub optimizer: &'a AdamW,
    pub config: &'a ExperimentConfig,
    pub tokenizer: &'a Tokenizer,
    pub state: &'a TrainState,
}

/// Writes the files of a training checkpoint into `dir`, each atomically, `state.json` last.
pub(crate) fn write_contents(dir: &Path, contents: Contents<'_>) -> Result<(), TrainError> {
    save_weights(contents.vs, &dir.join(WEIGHTS_FILE))?;
    write_json(&dir.join(CONFIG_FILE), contents.model_config)?;
    let (m, v, steps) = contents.optimizer.state();
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    cappa_io::write_atomically_with(&optimizer_path, |temp| {
        Tensor::write_safetensors(&[("exp_avg", m), ("exp_avg_sq", v)], temp)
            .map_err(torch_error(&optimizer_path))
    })?;
    let layout = OptimizerLayout {
        config: *contents.optimizer.config(),
        slots: contents.optimizer.slots().to_vec(),
        steps,
    };
    write_json(&dir.join(OPTIMIZER_LAYOUT_FILE), &layout)?;
    write_json(&dir.join(EXPERIMENT_FILE), contents.config)?;
    cappa_io::write_atomically_with(&dir.join(TOKENIZER_FILE), |temp| {
        contents.tokenizer.save(temp).map_err(TrainError::from)
    })?;
    Ok(write_state(dir, contents.state)?)
}

/// Loads the weights into `vs` and the moments into `optimizer` from the verified checkpoint
/// `dir` of `step`, and returns its state — with `rank`'s data cursor in a data-parallel run.
pub(crate) fn load_contents(
    dir: &Path,
    step: u64,
    vs: &mut VarStore,
    optimizer: &mut AdamW,
    device: Device,
    rank: Option<usize>,
) -> Result<TrainState, TrainError> {
    let weights = dir.join(WEIGHTS_FILE);
    vs.load(&weights).map_err(torch_error(&weights))?;
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    let named = Tensor::read_safetensors(&optimizer_path).map_err(torch_error(&optimizer_path))?;
    let find = |name: &'static str| {
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.to_device(device))
            .ok_or_else(|| ResumeError::MissingTensor {
                path: optimizer_path.clone(),
                name,
            })
    };
    let (m, v) = (find("exp_avg")?, find("exp_avg_sq")?);
    let mut state = read_state(dir)?;
    if let Some(cursor) = rank.and_then(|rank| state.rank_cursors.get(rank)) {
        // Each rank continues its own slice of the data.
        state.cursor = cursor.clone();
    }
    let layout: OptimizerLayout = cappa_io::read_json(&dir.join(OPTIMIZER_LAYOUT_FILE))?;
    optimizer
        .restore(&m, &v, layout.steps)
        .map_err(|source| ResumeError::OptimizerState {
            path: optimizer_path.clone(),
            source,
        })?;
    if state.step != step {
        return Err(ResumeError::StepMismatch {
            dir: dir.to_path_buf(),
            holds: state.step,
            named: step,
        }
        .into());
    }
    Ok(state)
}

fn torch_error(path: &Path) -> impl FnOnce(tch::TchError) -> CheckpointError + '_ {
    move |source| CheckpointError::Torch {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoint a run continues from.
#[derive(Debug)]
pub(crate) struct ResumePoint {
    pub step: u64,
    pub dir: PathBuf,
    /// Newer checkpoints that failed verification.
    damaged: Vec<PathBuf>,
}

/// The newest intact checkpoint of the run to continue, `None` for a new run. Refuses a run
/// with checkpoints under [`Resume::Never`], a configuration that changes the computation, and
/// a run none of whose checkpoints is intact. With `report`, damaged checkpoints are named on
/// stderr. Nothing is written.
pub(crate) fn find_resume_point(
    checkpoints: &Checkpoints,
    run_dir: &Path,
    config: &ExperimentConfig,
    resume: Resume,
    report: bool,
) -> Result<Option<ResumePoint>, TrainError> {
    let Some((newest, _)) = checkpoints.latest() else {
        return Ok(None);
    };
    if resume == Resume::Never {
        return Err(TrainError::RunExists {
            dir: run_dir.to_path_buf(),
            step: newest,
        });
    }
    check_resumable(run_dir, config)?;
    let scan = checkpoints.newest_intact(&TRAINING_FILES);
    let Some((step, dir)) = scan.intact else {
        return Err(ResumeError::NoIntactCheckpoint {
            dir: checkpoints.dir().to_path_buf(),
            failures: scan.damaged,
        }
        .into());
    };
    if report {
        for error in &scan.damaged {
            eprintln!("skipping a damaged checkpoint: {error}");
        }
        if !scan.damaged.is_empty() {
            eprintln!(
                "resuming from {}, the newest intact checkpoint",
                dir.display()
            );
        }
    }
    Ok(Some(ResumePoint {
        step,
        dir,
        damaged: scan.damaged.iter().map(|e| e.dir().to_path_buf()).collect(),
    }))
}

impl ResumePoint {
    /// Refuses a checkpoint whose `tokenizer.json` is not the one its `config.json` was built
    /// for.
    pub(crate) fn check_tokenizer(&self, tokenizer: &Tokenizer) -> Result<(), TrainError> {
        let saved = load_config(&self.dir)?;
        crate::tokens::check_tokenizer(
            &saved,
            &self.dir.join(CONFIG_FILE),
            tokenizer,
            &self.dir.join(TOKENIZER_FILE),
        )?;
        Ok(())
    }

    /// Sets the damaged newer checkpoints aside (see the module documentation) and points
    /// `latest` at this one. For rank 0, once everything is checked.
    pub(crate) fn set_damaged_aside(&self, checkpoints: &Checkpoints) -> Result<(), TrainError> {
        for dir in &self.damaged {
            let aside = checkpoints.set_aside(dir)?;
            eprintln!(
                "kept the damaged checkpoint as {} (cappa never deletes it; remove it once \
                 inspected)",
                aside.display()
            );
        }
        if !self.damaged.is_empty() {
            checkpoints.point_latest_at(self.step)?;
        }
        Ok(())
    }
}

/// Refuses to resume with a config that changes the computation.
fn check_resumable(run_dir: &Path, config: &ExperimentConfig) -> Result<(), TrainError> {
    let path = run_dir.join(EXPERIMENT_FILE);
    let saved: Value = cappa_io::read_json(&path)?;
    // Through text, so that floats compare as they were written (an f32 0.15 reads back as
    // the f64 0.15, not as 0.15000000596…).
    let given: Value =
        serde_json::from_str(&serde_json::to_string(config).expect("configs serialise"))
            .expect("serde_json reads its own output");
    let mut changed = Vec::new();
    differing_fields(&saved, &given, "", &mut changed);
    changed.retain(|field| {
        !RESUMABLE_CHANGES
            .iter()
            .any(|ok| field == ok || field.starts_with(&format!("{ok}.")))
    });
    match changed.first() {
        None => Ok(()),
        Some(field) => Err(ConfigError::new(
            field.clone(),
            format!(
                "differs from the run being resumed ({}); a resumed run keeps its configuration \
                 (only {} may change): start a new run directory instead",
                path.display(),
                RESUMABLE_CHANGES.join(", ")
            ),
        )
        .into()),
    }
}

/// The verification of one checkpoint directory by [`verify_checkpoints`].
#[derive(Debug)]
pub struct CheckpointReport {
    pub dir: PathBuf,
    /// The verified manifest, or which files failed and why.
    pub result: Result<Manifest, VerifyError>,
}

impl CheckpointReport {
    pub fn is_intact(&self) -> bool {
        self.result.is_ok()
    }
}

impl fmt::Display for CheckpointReport {
    /// `intact  DIR (7 files, 123456 bytes)`, `damaged  DIR: FILE has …` or
    /// `unverifiable  DIR: has no manifest.json …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(manifest) => write!(
                f,
                "intact  {} ({} files, {} bytes)",
                self.dir.display(),
                manifest.files.len(),
                manifest.total_size()
            ),
            Err(error @ VerifyError::NoManifest { .. }) => write!(f, "unverifiable  {error}"),
            Err(error) => write!(f, "damaged  {error}"),
        }
    }
}

/// A path that [`verify_checkpoints`] cannot check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyTargetError {
    #[error("{}: no such directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "{}: neither a checkpoint (no {MANIFEST_FILE}, {CONFIG_FILE} or {STATE_FILE}) nor a run \
         directory with checkpoints (nothing in checkpoints/)",
        path.display()
    )]
    NoCheckpoints { path: PathBuf },
}

/// Verifies every file of the checkpoints under `path` against their manifests (for
/// `cappa checkpoint verify`): `path` is a run directory (every checkpoint in
/// `checkpoints/`, oldest first), its `checkpoints/` directory, or one checkpoint directory
/// (a training checkpoint, which must hold [`TRAINING_FILES`], or a model checkpoint, which
/// must hold [`MODEL_FILES`]). Damaged checkpoints set aside by a resumed run are not checked.
pub fn verify_checkpoints(path: &Path) -> Result<Vec<CheckpointReport>, VerifyTargetError> {
    if !path.is_dir() {
        return Err(VerifyTargetError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let is_checkpoint = [MANIFEST_FILE, CONFIG_FILE, STATE_FILE]
        .iter()
        .any(|name| path.join(name).exists());
    if is_checkpoint {
        return Ok(vec![verify_one(path)]);
    }
    let run_dir = match path.file_name() {
        Some(name) if name == "checkpoints" && !path.join("checkpoints").is_dir() => {
            path.parent().unwrap_or(path)
        }
        _ => path,
    };
    let found = Checkpoints::new(run_dir, 1).list();
    if found.is_empty() {
        return Err(VerifyTargetError::NoCheckpoints {
            path: path.to_path_buf(),
        });
    }
    Ok(found.iter().map(|(_, dir)| verify_one(dir)).collect())
}

fn verify_one(dir: &Path) -> CheckpointReport {
    let training = dir.join(STATE_FILE).exists()
        || (dir.file_name()).is_some_and(|name| name.to_string_lossy().starts_with(PREFIX));
    let required: &[&str] = if training {
        &TRAINING_FILES
    } else {
        &MODEL_FILES
    };
    CheckpointReport {
        dir: dir.to_path_buf(),
        result: verify(dir, required),
    }
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
    fn a_directory_without_state_is_not_committed() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 3);
        let staged = checkpoints.stage(5).unwrap();
        assert!(staged.commit().is_err());
        assert!(checkpoints.latest().is_none());
    }

    #[test]
    fn the_manifest_lists_every_written_file() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 3);
        let dir = write_step(&checkpoints, 3);
        let manifest = verify(&dir, &["payload", STATE_FILE]).unwrap();
        let names: Vec<&String> = manifest.files.keys().collect();
        assert_eq!(names, ["payload", STATE_FILE]);
        assert_eq!(manifest.files["payload"].size, 1);
    }

    #[test]
    fn the_newest_intact_checkpoint_is_found_and_the_damaged_one_set_aside() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 2);
        for step in [2, 4, 6] {
            write_step(&checkpoints, step);
        }
        let newest = checkpoints.latest().unwrap().1;
        fs::write(newest.join("payload"), "7").unwrap(); // same size, other bytes
        let scan = checkpoints.newest_intact(&["payload"]);
        assert_eq!(scan.intact.as_ref().unwrap().0, 4);
        assert_eq!(scan.damaged.len(), 1);
        let message = scan.damaged[0].to_string();
        assert!(
            message.contains("step-00000006: payload has the size"),
            "{message}"
        );

        let aside = checkpoints.set_aside(&newest).unwrap();
        assert!(aside.ends_with("step-00000006.damaged"));
        assert_eq!(fs::read_to_string(aside.join("payload")).unwrap(), "7");
        checkpoints.point_latest_at(4).unwrap();
        let latest = fs::read_to_string(checkpoints.dir().join(LATEST_FILE)).unwrap();
        assert_eq!(latest, "step-00000004\n");
        // The set-aside directory is neither listed nor pruned, and step 6 can be written again.
        write_step(&checkpoints, 6);
        write_step(&checkpoints, 8);
        let steps: Vec<u64> = checkpoints.list().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [6, 8]);
        assert!(aside.is_dir());
        // A second damaged step 6 does not overwrite the first.
        let again = checkpoints
            .set_aside(&checkpoints.dir().join("step-00000006"))
            .unwrap();
        assert!(again.ends_with("step-00000006.damaged-2"));
    }

    #[test]
    fn verifying_a_run_reports_each_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(run.path(), 3);
        for step in [1, 2] {
            write_step(&checkpoints, step);
        }
        let second = checkpoints.latest().unwrap().1;
        fs::remove_file(second.join("payload")).unwrap();
        let reports = verify_checkpoints(run.path()).unwrap();
        assert_eq!(reports.len(), 2);
        // A run's checkpoints must hold the training files.
        let first = reports[0].to_string();
        assert!(first.starts_with("damaged  "), "{first}");
        assert!(first.contains("model.safetensors is not listed"), "{first}");
        let second_report = reports[1].to_string();
        assert!(
            second_report.contains("payload is missing"),
            "{second_report}"
        );

        // One model checkpoint.
        let model = run.path().join("model");
        fs::create_dir(&model).unwrap();
        for name in MODEL_FILES {
            fs::write(model.join(name), name).unwrap();
        }
        let reports = verify_checkpoints(&model).unwrap();
        assert!(reports[0].to_string().contains("unverifiable  "));
        write_manifest(&model, &MODEL_FILES).unwrap();
        let reports = verify_checkpoints(&model).unwrap();
        assert!(reports[0].is_intact());
        let expected = format!("intact  {} (2 files, 28 bytes)", model.display());
        assert_eq!(reports[0].to_string(), expected);

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify_checkpoints(empty.path()),
            Err(VerifyTargetError::NoCheckpoints { .. })
        ));
        assert!(matches!(
            verify_checkpoints(&empty.path().join("none")),
            Err(VerifyTargetError::NotADirectory { .. })
        ));
    }
}
