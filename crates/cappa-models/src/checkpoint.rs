//! Model checkpoints: the VarStore as `model.safetensors` plus the model's configuration as
//! `config.json` beside it, so that a checkpoint rebuilds its own model. Both files are written
//! atomically (temporary file, fsync, rename): a crash never leaves a half-written checkpoint.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;

use crate::cap::{CapConfig, CapModel};
use crate::clip::{Clip, ClipConfig};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// Any model cappa trains, as stored in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    Clip(ClipConfig),
    Cap(CapConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), String> {
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
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model configuration: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid model configuration: {why}")]
    InvalidConfig { path: PathBuf, why: String },
    #[error("{path}: {source} (was this checkpoint written for another model configuration?)")]
    Torch {
        path: PathBuf,
        source: tch::TchError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced and
/// renamed into place, then fsyncs the directory.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&temp).and_then(|()| {
        File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&temp))?;
        fs::rename(&temp, path).map_err(io_error(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Writes the VarStore's variables to a `.safetensors` file atomically.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<(), CheckpointError> {
    write_atomically(path, |temp| {
        // tch picks the format from the extension, so the temporary name keeps it.
        let temp_st = temp.with_extension("safetensors");
        vs.save(&temp_st).map_err(|source| CheckpointError::Torch {
            path: path.to_path_buf(),
            source,
        })?;
        fs::rename(&temp_st, temp).map_err(io_error(temp))
    })
}

/// Writes a value as pretty JSON atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), CheckpointError> {
    write_atomically(path, |temp| {
        let text = serde_json::to_string_pretty(value).expect("configs serialise");
        File::create(temp)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(io_error(temp))
    })
}

/// Saves the weights and configuration into `dir` (created if missing).
pub fn save(vs: &VarStore, config: &ModelConfig, dir: &Path) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    save_weights(vs, &dir.join(WEIGHTS_FILE))?;
    write_json(&dir.join(CONFIG_FILE), config)
}

/// Reads a checkpoint's configuration.
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
        .map_err(|why| CheckpointError::InvalidConfig { path, why })?;
    Ok(config)
}

/// Rebuilds the model stored in `dir` on `device` and loads its weights.
pub fn load(dir: &Path, device: Device) -> Result<(VarStore, Model, ModelConfig), CheckpointError> {
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
