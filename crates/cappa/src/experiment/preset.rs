//! Experiment presets: JSON documents (built in from `data/compare/` and `data/scale/`, or any
//! file) that say which objectives to train, the training configuration they share, how the
//! text tower is sized against the decoder, and which evaluations to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cappa_models::{train_flops, ModelConfig};
use cappa_trainer::config::{self, ConfigError};
use cappa_trainer::{ExperimentConfig, Objective, TrainError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint_eval::EvalPlan;

/// A bad preset, `--set` or data path: the command exits with status 2 before training.
#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    /// No built-in preset has this name and no file has this path.
    #[error(
        "no {kind} preset `{name}`: use one of {} or the path of a preset JSON file",
        known.join(", ")
    )]
    Unknown {
        /// `compare` or `scale`.
        kind: &'static str,
        name: String,
        /// The built-in presets' names.
        known: Vec<&'static str>,
    },
    /// A preset file that cannot be read, is not JSON or has a field of the wrong shape (the
    /// error names the file and the field).
    #[error("{kind} preset {error}")]
    File {
        kind: &'static str,
        error: cappa_io::FileError,
    },
    /// A preset that parses but says something that cannot be run.
    #[error("{kind} preset `{preset}`: {field} {why}")]
    Invalid {
        kind: &'static str,
        preset: String,
        /// The offending field, e.g. `objective_overrides.cap`.
        field: String,
        why: &'static str,
    },
    /// One model's training config (the preset, its objective's overrides and `--set`) is
    /// invalid; the error names the field.
    #[error("{run}: {error}")]
    Config { run: String, error: ConfigError },
    /// Matching a text tower's depth was asked of a model without one.
    #[error("{run}: only contrastive models have a text tower")]
    NoTextTower { run: String },
    /// A run directory's saved `experiment.json` cannot be read or is not JSON.
    #[error("{error}")]
    UnreadableRun { error: cappa_io::FileError },
    /// A run directory's saved `experiment.json` is no training config of this version.
    #[error("{}: {error}", path.display())]
    SavedConfig { path: PathBuf, error: ConfigError },
    /// A run directory holds a run of another experiment.
    #[error(
        "{} holds a run of a different experiment (it differs in {}): choose another \
         directory with --out, or delete that one to start over",
        dir.display(),
        fields.join(", ")
    )]
    OtherExperiment {
        dir: PathBuf,
        /// The config fields that differ, e.g. `optim.lr`.
        fields: Vec<String>,
    },
    /// The trainer refused a run's configuration when it started.
    #[error("{error}")]
    Refused { dir: PathBuf, error: TrainError },
    /// Command-line options that do not go together.
    #[error("{option} {why}")]
    CommandLine {
        /// The option, e.g. `--data`.
        option: &'static str,
        why: String,
    },
}

impl PresetError {
    /// Wraps a config error of the run named `run`.
    pub(crate) fn config(run: &str) -> impl FnOnce(ConfigError) -> PresetError + '_ {
        move |error| PresetError::Config {
            run: run.to_string(),
            error,
        }
    }
}

/// A `compare` preset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Objectives to train and compare (`clip`, `sigmoid`, `cap`, `cap_pa`).
    pub objectives: Vec<Objective>,
    /// Seeds when `--seeds` is not given (seeds are 0..N).
    #[serde(default = "one")]
    pub seeds: u64,
    /// Give the contrastive text tower the depth whose training FLOPs per example come closest
    /// to the captioner's (same encoder, same examples): the paper's matched-compute setup.
    #[serde(default = "yes")]
    pub match_text_tower: bool,
    /// The training configuration every model shares (any fields of `cappa train`'s config).
    #[serde(default)]
    pub train: Value,
    /// Per-objective changes on top of `train`, by objective name.
    #[serde(default)]
    pub objective_overrides: BTreeMap<String, Value>,
    #[serde(default)]
    pub eval: EvalPlan,
    /// A suite of real benchmarks every model is also evaluated on (`paper` or a suite file;
    /// `--suite` overrides it); its paths are checked before training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
}

fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}

/// The built-in `compare` presets: name, JSON.
pub const COMPARE_PRESETS: [(&str, &str); 4] = [
    (
        "default",
        include_str!("../../../../data/compare/default.json"),
    ),
    (
        "cpu-quick",
        include_str!("../../../../data/compare/cpu-quick.json"),
    ),
    ("test", include_str!("../../../../data/compare/test.json")),
    (
        "cc3m-b16",
        include_str!("../../../../data/compare/cc3m-b16.json"),
    ),
];

/// Reads a built-in preset by name (`data/KIND/NAME.json`, compiled in), or a preset file by
/// path.
pub(crate) fn read_named<T: serde::de::DeserializeOwned>(
    name: &str,
    builtin: &[(&'static str, &'static str)],
    kind: &'static str,
) -> Result<T, PresetError> {
    let file_error = |error| PresetError::File { kind, error };
    match builtin.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => {
            let source = PathBuf::from(format!("data/{kind}/{name}.json"));
            cappa_io::parse_json(text, &source).map_err(file_error)
        }
        None if Path::new(name).is_file() => {
            cappa_io::read_json(Path::new(name)).map_err(file_error)
        }
        None => Err(PresetError::Unknown {
            kind,
            name: name.to_string(),
            known: builtin.iter().map(|(n, _)| *n).collect(),
        }),
    }
}

impl Preset {
    /// A built-in preset (`default`, `cpu-quick`, `test`, `cc3m-b16`) or a preset file.
    pub fn named(name: &str) -> Result<Self, PresetError> {
        let preset: Preset = read_named(name, &COMPARE_PRESETS, "compare")?;
        let invalid = |field: String, why| PresetError::Invalid {
            kind: "compare",
            preset: name.to_string(),
            field,
            why,
        };
        if preset.objectives.is_empty() {
            return Err(invalid("objectives".into(), "is empty"));
        }
        for key in preset.objective_overrides.keys() {
            if !preset.objectives.iter().any(|o| o.name() == key) {
                return Err(invalid(
                    format!("objective_overrides.{key}"),
                    "names no objective of the preset",
                ));
            }
        }
        Ok(preset)
    }
}

/// Recursively merges `patch` into `base` (objects key by key; anything else replaces).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (key, value) in p {
                merge(b.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Merges a partial training config into `base` like [`merge`], except that the one-of
/// fields (`budget`, `data.crop`) are replaced whole: `{"examples": N}` replaces a budget in
/// steps instead of sitting beside it.
pub fn merge_config(base: &mut Value, patch: &Value) {
    merge(base, patch);
    if let Some(budget) = patch.get("budget") {
        base["budget"] = budget.clone();
    }
    if let Some(crop) = patch.get("data").and_then(|d| d.get("crop")) {
        base["data"]["crop"] = crop.clone();
    }
}

/// What every run of an experiment shares beyond its preset: command-line changes.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Training data instead of the preset's: webdataset shard paths or globs.
    pub data: Vec<String>,
    /// `key.path=value` assignments applied to every model's config.
    pub sets: Vec<String>,
}

/// Builds one model's training config: `train`, then the objective's overrides, then the
/// command line, then the objective, seed and name. Checks it (including data paths).
pub fn run_config(
    train: &Value,
    objective_override: Option<&Value>,
    overrides: &Overrides,
    objective: Objective,
    seed: u64,
    name: String,
) -> Result<ExperimentConfig, PresetError> {
    let mut value = serde_json::to_value(ExperimentConfig::default()).expect("config serialises");
    merge_config(&mut value, train);
    if let Some(patch) = objective_override {
        merge_config(&mut value, patch);
    }
    if !overrides.data.is_empty() {
        merge(
            &mut value,
            &serde_json::json!({"data": {"kind": "shards", "shards": overrides.data}}),
        );
    }
    for assignment in &overrides.sets {
        config::apply_override(&mut value, assignment).map_err(PresetError::config(&name))?;
    }
    merge(
        &mut value,
        &serde_json::json!({"objective": objective, "seed": seed, "name": name}),
    );
    let config = config::from_value(value).map_err(PresetError::config(&name))?;
    config.validate().map_err(PresetError::config(&name))?;
    Ok(config)
}

/// Training FLOPs per example of `config`, with a tokenizer of `data.vocab_size` entries.
pub fn train_flops_per_example(config: &ExperimentConfig) -> Result<f64, ConfigError> {
    let tokens = cappa_models::SpecialTokens::built_in(config.data.vocab_size as i64);
    let model: ModelConfig = config.model_config(tokens)?;
    Ok(train_flops(model.forward_flops()))
}

/// The deepest text tower [`match_text_depth`] considers.
pub const MAX_MATCHED_TEXT_DEPTH: i64 = 24;

/// Sets the contrastive text tower's depth to the one whose training FLOPs per example come
/// closest to `target` (from 1 to [`MAX_MATCHED_TEXT_DEPTH`] layers); returns the chosen depth.
pub fn match_text_depth(config: &mut ExperimentConfig, target: f64) -> Result<i64, PresetError> {
    let vocab = config.data.vocab_size as i64;
    let model = config
        .model_config(cappa_models::SpecialTokens::built_in(vocab))
        .map_err(PresetError::config(&config.name))?;
    let ModelConfig::Clip(clip) = model else {
        return Err(PresetError::NoTextTower {
            run: config.name.clone(),
        });
    };
    let mut text = clip.text.clone();
    let mut best = (f64::INFINITY, text.depth);
    for depth in 1..=MAX_MATCHED_TEXT_DEPTH {
        text.depth = depth;
        let mut candidate = clip.clone();
        candidate.text = text.clone();
        let gap = (train_flops(candidate.forward_flops()) - target).abs();
        if gap < best.0 {
            best = (gap, depth);
        }
    }
    text.depth = best.1;
    config.model.text = Some(text);
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_preset_parses_and_builds_valid_configs() {
        for (name, _) in COMPARE_PRESETS {
            let preset = Preset::named(name).expect(name);
            assert_eq!(preset.name, name);
            for objective in &preset.objectives {
                let result = run_config(
                    &preset.train,
                    preset.objective_overrides.get(objective.name()),
                    &Overrides::default(),
                    *objective,
                    0,
                    "x".into(),
                );
                // The real-data preset names shards that are not here: it must say so.
                match (name, result) {
                    ("cc3m-b16", Err(e @ PresetError::Config { .. })) => {
                        assert!(e.to_string().contains("data.shards"), "{e}")
                    }
                    (_, Ok(_)) => {}
                    (_, Err(e)) => panic!("{name}: {e}"),
                }
            }
        }
    }

    #[test]
    fn unknown_presets_and_fields_are_named() {
        let e = Preset::named("nope").unwrap_err();
        assert!(matches!(&e, PresetError::Unknown { known, .. } if known.contains(&"cpu-quick")));
        assert!(e
            .to_string()
            .starts_with("no compare preset `nope`: use one of default, "));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"name": "p", "objectives": ["clip"], "eval": {"tset": 1}}"#,
        )
        .expect("write");
        let e = Preset::named(path.to_str().expect("utf-8")).unwrap_err();
        let PresetError::File { error, .. } = &e else {
            panic!("not a file error: {e}");
        };
        assert_eq!(error.path(), path);
        let message = e.to_string();
        assert!(
            message.contains("p.json") && message.contains("`eval"),
            "{message}"
        );
        assert!(message.contains("unknown field `tset`"), "{message}");
    }

    #[test]
    fn merge_is_recursive_and_overrides_are_applied_in_order() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut base, &serde_json::json!({"a": {"c": 3}, "d": [2, 3]}));
        assert_eq!(
            base,
            serde_json::json!({"a": {"b": 1, "c": 3}, "d": [2, 3]})
        );
        let mut config = serde_json::json!({"budget": {"steps": 5}, "data": {"crop": "resize"}});
        merge_config(
            &mut config,
            &serde_json::json!({"budget": {"examples": 64}}),
        );
        assert_eq!(config["budget"], serde_json::json!({"examples": 64}));
        let overrides = Overrides {
            data: vec![],
            sets: vec!["optim.lr=0.002".into()],
        };
        let train = serde_json::json!({"optim": {"lr": 0.001}, "batch_size": 16});
        let config =
            run_config(&train, None, &overrides, Objective::Cap, 3, "n".into()).expect("valid");
        assert_eq!(config.optim.lr, 0.002);
        assert_eq!((config.batch_size, config.seed), (16, 3));
        assert_eq!(config.objective, Objective::Cap);
        let bad = Overrides {
            data: vec![],
            sets: vec!["optim.lrr=1".into()],
        };
        let e = run_config(&train, None, &bad, Objective::Cap, 0, "n".into()).unwrap_err();
        let PresetError::Config { run, error } = &e else {
            panic!("not a config error: {e}");
        };
        assert_eq!(run, "n");
        assert!(error.field.contains("optim.lrr"), "{e}");
    }

    #[test]
    fn the_matched_text_tower_is_the_closest_in_flops() {
        let train = serde_json::json!({});
        let cap = run_config(
            &train,
            None,
            &Overrides::default(),
            Objective::Cap,
            0,
            "c".into(),
        )
        .expect("valid");
        let target = train_flops_per_example(&cap).expect("flops");
        let mut clip = run_config(
            &train,
            None,
            &Overrides::default(),
            Objective::Clip,
            0,
            "c".into(),
        )
        .expect("valid");
        let depth = match_text_depth(&mut clip, target).expect("matches");
        let gap = |d: i64| {
            let mut c = clip.clone();
            c.model.text.as_mut().expect("set").depth = d;
            (train_flops_per_example(&c).expect("flops") - target).abs()
        };
        assert!(gap(depth) <= gap(depth + 1) && (depth == 1 || gap(depth) <= gap(depth - 1)));
        assert!(
            gap(depth) / target < 0.25,
            "within a layer's worth of FLOPs"
        );
    }
}
