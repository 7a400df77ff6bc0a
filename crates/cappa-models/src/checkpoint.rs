//! Model checkpoints: the VarStore as `model.safetensors` plus the model's configuration as
//! `config.json` beside it, so that a checkpoint rebuilds its own model, and `manifest.json`
//! recording the size and XXH3-128 digest of every file of the directory. Every file is written
//! atomically (temporary file, fsync, rename, through `cappa_io`): a crash never leaves a
//! half-written file.
//!
//! [`load`] verifies the manifest before it reads anything, so a truncated, altered or missing
//! file is refused with a [`VerifyError`] that names the file and what is wrong, instead of
//! loading silently wrong weights or failing with a misleading parse error. A training
//! checkpoint (`cappa-trainer`) is a model checkpoint with more files, all in the same
//! manifest. A directory without a manifest is refused too ([`VerifyError::NoManifest`]): it
//! is incomplete, or was written by a cappa older than manifests, and nothing tells whether
//! its files are intact.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cappa_io::{FileDigest, FileError};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;

use crate::cap::{CapConfig, CapModel};
use crate::clip::{Clip, ClipConfig};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
/// The digests of every other file of a checkpoint directory, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The files of a model checkpoint, which every checkpoint's manifest must list.
pub const MODEL_FILES: [&str; 2] = [WEIGHTS_FILE, CONFIG_FILE];
/// The manifest format [`write_manifest`] writes and [`verify`] reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Any model cappa trains, as stored in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    Clip(ClipConfig),
    Cap(CapConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        match self {
            ModelConfig::Clip(c) => c.validate(),
            ModelConfig::Cap(c) => c.validate(),
        }
    }

    /// Creates the model's variables under the root of `vs`.
    pub fn build(&self, vs: &VarStore) -> Model {
        match self {
            ModelConfig::Clip(c) => Model::Clip(Clip::new(vs.root(), c)),
            ModelConfig::Cap(c) => Model::Cap(CapModel::new(vs.root(), c)),
        }
    }
}

/// A model built from a [`ModelConfig`].
#[derive(Debug)]
pub enum Model {
    Clip(Clip),
    Cap(CapModel),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid model configuration: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid model configuration: {source}")]
    InvalidConfig {
        path: PathBuf,
        source: crate::ConfigError,
    },
    #[error("{path}: {source} (was this checkpoint written for another model configuration?)")]
    Torch {
        path: PathBuf,
        source: tch::TchError,
    },
    /// A file that could not be written or read (see `cappa_io`).
    #[error(transparent)]
    File(#[from] FileError),
    /// The checkpoint's files do not match its manifest.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// A checkpoint's `manifest.json`: the size and content digest of each of its files, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    pub files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// The number of bytes of the files the manifest lists.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|digest| digest.size).sum()
    }
}

/// What is wrong with one file of a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("is missing")]
    Missing,
    #[error("is not listed in {MANIFEST_FILE}")]
    NotInManifest,
    #[error("is listed in {MANIFEST_FILE} but is not a plain file name of the checkpoint")]
    NotAFileName,
    #[error("has {found} bytes but {expected} were written (truncated or overwritten)")]
    Size { expected: u64, found: u64 },
    #[error(
        "has the size that was written but other bytes (XXH3-128 {found}, written {expected}): its content \
         was altered"
    )]
    Digest { expected: String, found: String },
    #[error("cannot be read: {0}")]
    Unreadable(io::Error),
}

/// One file that failed verification.
#[derive(Debug, thiserror::Error)]
#[error("{file} {problem}")]
pub struct FileFault {
    /// The file's name inside the checkpoint directory.
    pub file: String,
    pub problem: FileProblem,
}

/// Why a checkpoint directory failed [`verify`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "{}: has no {MANIFEST_FILE}, so its files cannot be verified: the checkpoint is          incomplete, or was written by a cappa older than checkpoint manifests; use another          checkpoint, or train it again",
        dir.display()
    )]
    NoManifest { dir: PathBuf },
    #[error("{}: its {MANIFEST_FILE} is damaged: {source}", dir.display())]
    Manifest { dir: PathBuf, source: FileError },
    #[error(
        "{}: {MANIFEST_FILE} has format version {version}; this cappa reads version          {MANIFEST_VERSION}",
        dir.display()
    )]
    Version { dir: PathBuf, version: u32 },
    #[error("{}: {}", dir.display(), join_faults(faults))]
    Files {
        dir: PathBuf,
        faults: Vec<FileFault>,
    },
}

fn join_faults(faults: &[FileFault]) -> String {
    let parts: Vec<String> = faults.iter().map(FileFault::to_string).collect();
    parts.join("; ")
}

impl VerifyError {
    /// The checkpoint directory that failed.
    pub fn dir(&self) -> &Path {
        match self {
            VerifyError::NoManifest { dir }
            | VerifyError::Manifest { dir, .. }
            | VerifyError::Version { dir, .. }
            | VerifyError::Files { dir, .. } => dir,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the VarStore's variables to a `.safetensors` file atomically.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<(), CheckpointError> {
    // tch picks the format from the extension, which the temporary name keeps.
    cappa_io::write_atomically_with(path, |temp| {
        vs.save(temp).map_err(|source| CheckpointError::Torch {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Writes a value as pretty JSON atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), CheckpointError> {
    Ok(cappa_io::write_json(path, value)?)
}

/// Records the size and digest of the named files of `dir` in its `manifest.json` (written
/// atomically, last: a directory whose manifest exists has all its files).
pub fn write_manifest(dir: &Path, names: &[&str]) -> Result<Manifest, CheckpointError> {
    let mut files = BTreeMap::new();
    for name in names {
        files.insert(name.to_string(), FileDigest::of(&dir.join(name))?);
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        files,
    };
    write_json(&dir.join(MANIFEST_FILE), &manifest)?;
    Ok(manifest)
}

/// Checks every file `dir`'s manifest lists against its recorded size and digest, and that the
/// manifest lists each of `required`. Sizes are checked first (cheap), digests only of files
/// whose size is right. The error lists every file that failed.
pub fn verify(dir: &Path, required: &[&str]) -> Result<Manifest, VerifyError> {
    let manifest = read_manifest(dir)?;
    let mut faults: Vec<FileFault> = required
        .iter()
        .filter(|name| !manifest.files.contains_key(**name))
        .map(|name| FileFault {
            file: name.to_string(),
            problem: FileProblem::NotInManifest,
        })
        .collect();
    let mut sized = Vec::new();
    for (name, expected) in &manifest.files {
        let fault = |problem| FileFault {
            file: name.clone(),
            problem,
        };
        if Path::new(name).file_name() != Some(name.as_ref()) {
            faults.push(fault(FileProblem::NotAFileName));
            continue;
        }
        match fs::metadata(dir.join(name)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                faults.push(fault(FileProblem::Missing))
            }
            Err(error) => faults.push(fault(FileProblem::Unreadable(error))),
            Ok(found) if found.len() != expected.size => faults.push(fault(FileProblem::Size {
                expected: expected.size,
                found: found.len(),
            })),
            Ok(_) => sized.push((name, expected)),
        }
    }
    for (name, expected) in sized {
        let problem = match FileDigest::of(&dir.join(name)) {
            Ok(found) if found.xxh3 == expected.xxh3 => continue,
            Ok(found) => FileProblem::Digest {
                expected: expected.xxh3.clone(),
                found: found.xxh3,
            },
            Err(FileError::Io { source, .. }) => FileProblem::Unreadable(source),
            Err(error) => FileProblem::Unreadable(io::Error::other(error.to_string())),
        };
        faults.push(FileFault {
            file: name.clone(),
            problem,
        });
    }
    if faults.is_empty() {
        Ok(manifest)
    } else {
        Err(VerifyError::Files {
            dir: dir.to_path_buf(),
            faults,
        })
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, VerifyError> {
    let manifest: Manifest = match cappa_io::read_json(&dir.join(MANIFEST_FILE)) {
        Ok(manifest) => manifest,
        Err(error) if error.is_not_found() => {
            return Err(VerifyError::NoManifest {
                dir: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(VerifyError::Manifest {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    if manifest.version != MANIFEST_VERSION {
        return Err(VerifyError::Version {
            dir: dir.to_path_buf(),
            version: manifest.version,
        });
    }
    Ok(manifest)
}

/// Saves the weights and configuration into `dir` (created if missing), then its manifest.
pub fn save(vs: &VarStore, config: &ModelConfig, dir: &Path) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    save_weights(vs, &dir.join(WEIGHTS_FILE))?;
    write_json(&dir.join(CONFIG_FILE), config)?;
    write_manifest(dir, &MODEL_FILES)?;
    Ok(())
}

/// Reads a checkpoint's configuration (without verifying the checkpoint: [`load`] does).
pub fn load_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(io_error(&path))?;
    let config: ModelConfig =
        serde_json::from_str(&text).map_err(|source| CheckpointError::Json {
            path: path.clone(),
            source,
        })?;
    config
        .validate()
        .map_err(|source| CheckpointError::InvalidConfig { path, source })?;
    Ok(config)
}

/// Verifies the checkpoint in `dir` (every file of its manifest, see [`verify`]), rebuilds its
/// model on `device` and loads its weights.
pub fn load(dir: &Path, device: Device) -> Result<(VarStore, Model, ModelConfig), CheckpointError> {
    verify(dir, &MODEL_FILES)?;
    load_verified(dir, device)
}

/// [`load`] without the verification, for a caller that has just verified `dir`.
pub fn load_verified(
    dir: &Path,
    device: Device,
) -> Result<(VarStore, Model, ModelConfig), CheckpointError> {
    let config = load_config(dir)?;
    let mut vs = VarStore::new(device);
    let model = config.build(&vs);
    let weights = dir.join(WEIGHTS_FILE);
    vs.load(&weights).map_err(|source| CheckpointError::Torch {
        path: weights,
        source,
    })?;
    Ok((vs, model, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saved tiny captioner and the error `load` gives after `damage` is done to its weights.
    fn load_after(damage: impl FnOnce(&Path)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig::Cap(CapConfig::tiny());
        let vs = VarStore::new(Device::Cpu);
        config.build(&vs);
        save(&vs, &config, dir.path()).unwrap();
        let manifest = verify(dir.path(), &MODEL_FILES).unwrap();
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            [CONFIG_FILE, WEIGHTS_FILE]
        );
        let weights = dir.path().join(WEIGHTS_FILE);
        assert_eq!(
            manifest.files[WEIGHTS_FILE].size,
            fs::metadata(&weights).unwrap().len()
        );
        damage(&weights);
        load(dir.path(), Device::Cpu).unwrap_err().to_string()
    }

    #[test]
    fn load_refuses_a_damaged_file_and_says_what_is_wrong() {
        let truncated = load_after(|weights| {
            let bytes = fs::read(weights).unwrap();
            fs::write(weights, &bytes[..bytes.len() / 2]).unwrap();
        });
        assert!(truncated.contains("model.safetensors has"), "{truncated}");
        assert!(
            truncated.contains("(truncated or overwritten)"),
            "{truncated}"
        );

        let flipped = load_after(|weights| {
            let mut bytes = fs::read(weights).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            fs::write(weights, bytes).unwrap();
        });
        assert!(
            flipped.contains("model.safetensors has the size that was written but other bytes"),
            "{flipped}"
        );

        let missing = load_after(|weights| fs::remove_file(weights).unwrap());
        assert!(
            missing.contains("model.safetensors is missing"),
            "{missing}"
        );

        let unverifiable =
            load_after(|weights| fs::remove_file(weights.with_file_name(MANIFEST_FILE)).unwrap());
        assert!(
            unverifiable.contains("has no manifest.json"),
            "{unverifiable}"
        );
    }

    #[test]
    fn verification_lists_every_faulty_file_and_unlisted_required_ones() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("a", "alpha"), ("b", "beta"), ("c", "gamma")] {
            fs::write(dir.path().join(name), text).unwrap();
        }
        write_manifest(dir.path(), &["a", "b", "c"]).unwrap();
        fs::write(dir.path().join("a"), "alphA").unwrap();
        fs::remove_file(dir.path().join("c")).unwrap();
        let error = verify(dir.path(), &["b", "d"]).unwrap_err();
        let VerifyError::Files { faults, .. } = &error else {
            panic!("{error}")
        };
        let found: Vec<(&str, String)> = faults
            .iter()
            .map(|f| (f.file.as_str(), f.problem.to_string()))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0], ("d", "is not listed in manifest.json".into()));
        assert_eq!(found[1], ("c", "is missing".into()));
        assert_eq!(found[2].0, "a");
        assert!(found[2].1.contains("its content was altered"));
        assert_eq!(error.dir(), dir.path());
    }
}
