//! The experiment configuration: one JSON document (serde structs that reject unknown
//! fields; every field has a default), `--set key.path=value` overrides, and checks that name
//! the offending field. [`resolve`] reads, overrides, parses and checks; nothing is written.
//! `model.vision` and `model.text` may set only some fields: the preset gives the others.

use std::path::{Path, PathBuf};

use cappa_data::pipeline::{Crop, DecodeLimits, Normalize, TrainTransform};
use cappa_data::scene::SceneConfig;
use cappa_models::{
    CapConfig, ClipConfig, ContrastiveLoss, DecoderInit, ModelConfig, SpecialTokens, TextConfig,
    VitConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::optim::AdamWConfig;
use crate::schedule::ScheduleConfig;

/// What the encoder is pretrained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// CLIP's softmax contrastive loss.
    Clip,
    /// SigLIP's sigmoid contrastive loss.
    Sigmoid,
    /// Autoregressive captioning.
    Cap,
    /// Captioning with parallel prediction (CapPa).
    CapPa,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::Clip => "clip",
            Objective::Sigmoid => "sigmoid",
            Objective::Cap => "cap",
            Objective::CapPa => "cap_pa",
        }
    }

    pub fn is_contrastive(self) -> bool {
        matches!(self, Objective::Clip | Objective::Sigmoid)
    }
}

/// The model: a named preset, optionally with its towers changed field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Encoder preset: tiny, small, s16, b16, b32, l14, l16, so400m14.
    pub preset: String,
    /// CLIP text tower preset (tiny, small, b16, open_clip_b16); default: tiny/small for those
    /// encoder presets, b16 (the paper's CLIP*) otherwise.
    pub text_preset: Option<String>,
    /// Input resolution; default: the preset's.
    pub image_size: Option<i64>,
    /// The encoder, used instead of the preset's. In a config file or `--set` it may name
    /// only some fields (`model.vision.patch_size=4`): [`from_value`] takes the others from
    /// `preset`.
    pub vision: Option<VitConfig>,
    /// The text tower, used instead of the text preset's; as `vision`, it may name only some
    /// fields. Vocabulary, special ids and context are set from the data.
    pub text: Option<TextConfig>,
    /// The caption decoder's initialisation (Cap and CapPa): `reference` (big_vision's, the
    /// default) or `legacy` (cappa's first, open_clip conventions).
    pub decoder_init: DecoderInit,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            preset: "tiny".into(),
            text_preset: None,
            image_size: None,
            vision: None,
            text: None,
            decoder_init: DecoderInit::Reference,
        }
    }
}

/// Where training data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// The built-in scene world, generated on the fly.
    Scene,
    /// webdataset tar shards (`data.shards`).
    Shards,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub kind: DataKind,
    /// Scene world settings (`kind = scene`).
    pub scene: SceneConfig,
    /// Shard files, globs or brace ranges (`kind = shards`).
    pub shards: Vec<String>,
    /// Validation shards for the in-loop validation loss (`kind = shards`; optional).
    pub validation_shards: Vec<String>,
    /// A HF tokenizer.json; without it a byte-level BPE is trained on the training captions.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary of the trained BPE.
    pub vocab_size: usize,
    /// Captions the BPE is trained on.
    pub tokenizer_captions: usize,
    pub lowercase: bool,
    /// Caption tokens per example (EOS included).
    pub seq_len: usize,
    pub crop: Crop,
    pub hflip: bool,
    pub normalize: Normalize,
    /// Decoding threads; 0 = one per core.
    pub threads: usize,
    pub prefetch: usize,
    pub max_bad_fraction: f64,
    pub max_pixels: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            kind: DataKind::Scene,
            scene: SceneConfig::default(),
            shards: Vec::new(),
            validation_shards: Vec::new(),
            tokenizer: None,
            vocab_size: 512,
            tokenizer_captions: 4000,
            lowercase: true,
            seq_len: 24,
            crop: Crop::Resize,
            hflip: false,
            normalize: Normalize::MinusOneToOne,
            threads: 0,
            prefetch: 4,
            max_bad_fraction: 0.1,
            max_pixels: DecodeLimits::default().max_pixels,
        }
    }
}

/// CapPa's parallel prediction (objective `cap_pa` only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    pub prob: f64,
    pub masking_ratio: f64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            prob: 0.75,
            masking_ratio: 1.0,
        }
    }
}

/// How long to train: a number of updates, of examples seen, or of training FLOPs (the
/// models' FLOP counts × examples) — the way experiments match compute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Budget {
    Steps(u64),
    Examples(u64),
    Flops(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    /// bf16 autocast for the forward pass (matmuls, convolutions and attention in bf16;
    /// norms, softmax and the losses in fp32; fp32 weights and optimizer state). On CUDA, or
    /// on CPUs with bf16 units (slower than fp32 on CPUs without them).
    Bf16,
}

/// In-loop evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0: never).
    pub every: u64,
    /// Held-out batches (of `batch_size`) for the validation loss and probes.
    pub batches: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: 0,
            batches: 2,
        }
    }
}

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub name: String,
    pub objective: Objective,
    pub model: ModelSpec,
    pub data: DataConfig,
    pub optim: AdamWConfig,
    pub schedule: ScheduleConfig,
    pub parallel_prediction: ParallelConfig,
    pub budget: Budget,
    /// Examples per update (over all ranks and micro-batches).
    pub batch_size: usize,
    /// Micro-batches per update (gradient accumulation).
    pub accumulation: usize,
    pub precision: Precision,
    /// CUDA only: fp32 matmuls and convolutions in TF32 (outside bf16 autocast regions).
    pub tf32: bool,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Non-finite steps to skip before stopping (0: stop at the first).
    pub max_bad_steps: u64,
    pub eval: EvalConfig,
    /// Data-parallel processes.
    pub world_size: usize,
    /// Peak FLOP/s of one device for the MFU estimate; default from the device name.
    pub peak_flops: Option<f64>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            name: "run".into(),
            objective: Objective::CapPa,
            model: ModelSpec::default(),
            data: DataConfig::default(),
            optim: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            parallel_prediction: ParallelConfig::default(),
            budget: Budget::Steps(200),
            batch_size: 32,
            accumulation: 1,
            precision: Precision::Fp32,
            tf32: true,
            seed: 0,
            log_every: 10,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            max_bad_steps: 0,
            eval: EvalConfig::default(),
            world_size: 1,
            peak_flops: None,
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Reads a config file (or starts from the defaults), applies `key.path=value` overrides and
/// parses the result. Values are JSON (`3`, `true`, `[1,2]`, `{"steps":5}`); anything that is
/// not valid JSON is taken as a string. Setting a member of `budget` replaces the budget.
pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<ExperimentConfig, ConfigError> {
    let mut value = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
            })?;
            serde_json::from_str(&text).map_err(|e| {
                ConfigError::new(path.display().to_string(), format!("not valid JSON: {e}"))
            })?
        }
        None => serde_json::to_value(ExperimentConfig::default()).expect("defaults serialise"),
    };
    for assignment in overrides {
        apply_override(&mut value, assignment)?;
    }
    from_value(value)
}

/// Parses a JSON value into a config; the error names the field's path. A `model.vision` or
/// `model.text` that names only some fields gets the others from the presets.
pub fn from_value(mut value: Value) -> Result<ExperimentConfig, ConfigError> {
    complete_towers(&mut value)?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "config".into() } else { path };
        ConfigError::new(field, error.into_inner().to_string())
    })
}

/// Fills the fields a `model.vision` / `model.text` object leaves out with the preset's values
/// (`model.preset`, and `model.text_preset` for the text tower), so that overriding one field
/// of a tower keeps the rest of it, whatever the order of the overrides.
fn complete_towers(root: &mut Value) -> Result<(), ConfigError> {
    let Some(Value::Object(model)) = root.get_mut("model") else {
        return Ok(());
    };
    let name = |key: &str| model.get(key).and_then(Value::as_str).map(str::to_owned);
    let preset = name("preset").unwrap_or_else(|| ModelSpec::default().preset);
    let text_preset_name = name("text_preset");
    if let Some(Value::Object(fields)) = model.get_mut("vision") {
        overlay_on(fields, &vision_preset(&preset)?);
    }
    if let Some(Value::Object(fields)) = model.get_mut("text") {
        overlay_on(
            fields,
            &base_text_tower(&preset, text_preset_name.as_deref())?,
        );
    }
    Ok(())
}

/// Adds each field of `base` that `fields` lacks.
fn overlay_on(fields: &mut Map<String, Value>, base: &impl Serialize) {
    let Value::Object(base) = serde_json::to_value(base).expect("tower configs serialise") else {
        unreachable!("a tower config serialises to an object")
    };
    for (key, value) in base {
        fields.entry(key).or_insert(value);
    }
}

/// The encoder preset `name`.
fn vision_preset(name: &str) -> Result<VitConfig, ConfigError> {
    VitConfig::preset(name).ok_or_else(|| {
        ConfigError::new(
            "model.preset",
            format!(
                "unknown preset `{name}`: use tiny, small, s16, b16, b32, l14, l16 or so400m14"
            ),
        )
    })
}

/// The text tower a contrastive model starts from: `text_preset`, else the encoder preset's
/// namesake (tiny, small), else the paper's CLIP* tower (b16).
fn base_text_tower(
    preset: &str,
    text_preset_name: Option<&str>,
) -> Result<TextConfig, ConfigError> {
    match text_preset_name {
        Some(name) => text_preset(name).ok_or_else(|| {
            ConfigError::new(
                "model.text_preset",
                format!("unknown text preset `{name}`: use tiny, small, b16 or open_clip_b16"),
            )
        }),
        None => Ok(text_preset(preset).unwrap_or_else(TextConfig::b16)),
    }
}

/// A model-config error as an experiment-config one: the tower's field under `model.`.
fn model_field_error(error: cappa_models::ConfigError) -> ConfigError {
    ConfigError::new(format!("model.{}", error.path()), error.why)
}

/// Stands in for the tokenizer's ids when the text tower is checked before the tokenizer
/// exists ([`ExperimentConfig::validate`]): the built-in tokenizer's ids in a vocabulary of 512.
/// Only the ids' range depends on it, and they lie inside any real vocabulary; the tower's
/// real ids are checked when the model is built ([`ExperimentConfig::model_config`]).
pub const PLACEHOLDER_TOKENS: SpecialTokens = SpecialTokens::built_in(512);

/// Applies one `key.path=value` assignment to a JSON document.
pub fn apply_override(root: &mut Value, assignment: &str) -> Result<(), ConfigError> {
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        ConfigError::new(
            assignment,
            "an override is `key.path=value`, for example `optim.lr=3e-4`",
        )
    })?;
    let path = path.trim();
    let new: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::new(path, "empty key in the override path"));
    }
    if keys[0] == "budget" && keys.len() == 2 {
        // The budget is one of steps | examples | flops: setting one replaces the others.
        root["budget"] = serde_json::json!({ keys[1]: new });
        return Ok(());
    }
    let mut node = root;
    for (depth, key) in keys.iter().enumerate() {
        if node.is_null() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(map) = node else {
            return Err(ConfigError::new(
                keys[..depth].join("."),
                format!("is not an object, so it has no field `{key}`"),
            ));
        };
        node = map.entry(key.to_string()).or_insert(Value::Null);
    }
    *node = new;
    Ok(())
}

fn check(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(field, message()))
    }
}

impl ExperimentConfig {
    /// Checks every value that does not need the data; see also [`ExperimentConfig::total_steps`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "name",
            || {
                format!("`{}` must be non-empty letters, digits, `-`, `_` or `.` (it names the run directory)", self.name)
            },
        )?;
        self.validate_optimisation()?;
        self.validate_batching()?;
        check(self.log_every > 0, "log_every", || {
            "must be positive".into()
        })?;
        check(self.checkpoint_every > 0, "checkpoint_every", || {
            "must be positive (a checkpoint is also written at the end)".into()
        })?;
        check(self.keep_checkpoints > 0, "keep_checkpoints", || {
            "must be at least 1".into()
        })?;
        if let Some(peak) = self.peak_flops {
            check(peak > 0.0, "peak_flops", || "must be positive".into())?;
        }
        self.validate_data()?;
        self.validate_model()
    }

    /// The optimiser, the schedule, parallel prediction and the budget.
    fn validate_optimisation(&self) -> Result<(), ConfigError> {
        let o = &self.optim;
        check(o.lr.is_finite() && o.lr > 0.0, "optim.lr", || {
            format!("must be a positive number, got {}", o.lr)
        })?;
        for (field, beta) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            check((0.0..1.0).contains(&beta), field, || {
                format!("must lie in [0, 1), got {beta}")
            })?;
        }
        check(o.eps > 0.0, "optim.eps", || {
            format!("must be positive, got {}", o.eps)
        })?;
        check(
            o.weight_decay.is_finite() && o.weight_decay >= 0.0,
            "optim.weight_decay",
            || format!("must be ≥ 0, got {}", o.weight_decay),
        )?;
        if let Some(clip) = o.clip_grad_norm {
            check(clip > 0.0, "optim.clip_grad_norm", || {
                format!("must be positive (or null to disable clipping), got {clip}")
            })?;
        }
        let s = &self.schedule;
        check(
            (0.0..=1.0).contains(&s.end_factor),
            "schedule.end_factor",
            || format!("must lie in [0, 1], got {}", s.end_factor),
        )?;
        check(s.timescale > 0, "schedule.timescale", || {
            "must be positive".into()
        })?;
        let p = &self.parallel_prediction;
        check(
            (0.0..=1.0).contains(&p.prob),
            "parallel_prediction.prob",
            || format!("must lie in [0, 1], got {}", p.prob),
        )?;
        check(
            p.masking_ratio > 0.0 && p.masking_ratio <= 1.0,
            "parallel_prediction.masking_ratio",
            || format!("must lie in (0, 1], got {}", p.masking_ratio),
        )?;
        match self.budget {
            Budget::Steps(n) | Budget::Examples(n) => {
                check(n > 0, "budget", || "must be positive".into())?
            }
            Budget::Flops(f) => check(f.is_finite() && f > 0.0, "budget.flops", || {
                format!("must be a positive number, got {f}")
            })?,
        }
        Ok(())
    }

    /// The batch, its split over ranks and into micro-batches.
    fn validate_batching(&self) -> Result<(), ConfigError> {
        check(self.batch_size > 0, "batch_size", || {
            "must be positive".into()
        })?;
        check(self.accumulation > 0, "accumulation", || {
            "must be positive".into()
        })?;
        check(self.world_size > 0, "world_size", || {
            "must be positive".into()
        })?;
        check(
            self.batch_size.is_multiple_of(self.world_size),
            "batch_size",
            || {
                format!(
                    "{} is not divisible by world_size {}: every rank needs the same share",
                    self.batch_size, self.world_size
                )
            },
        )?;
        let per_rank = self.batch_size / self.world_size;
        check(
            per_rank.is_multiple_of(self.accumulation),
            "accumulation",
            || {
                format!(
                    "the per-rank batch {per_rank} is not divisible into {} equal micro-batches",
                    self.accumulation
                )
            },
        )
    }

    fn validate_data(&self) -> Result<(), ConfigError> {
        let d = &self.data;
        check(d.seq_len >= 2, "data.seq_len", || {
            format!("must be at least 2 (a token and EOS), got {}", d.seq_len)
        })?;
        check(d.prefetch > 0, "data.prefetch", || {
            "must be positive".into()
        })?;
        check(
            (0.0..=1.0).contains(&d.max_bad_fraction),
            "data.max_bad_fraction",
            || format!("must lie in [0, 1], got {}", d.max_bad_fraction),
        )?;
        check(d.max_pixels > 0, "data.max_pixels", || {
            "must be positive".into()
        })?;
        if let Crop::RandomResizedCrop { scale, ratio } = d.crop {
            check(
                0.0 < scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0,
                "data.crop.random_resized_crop.scale",
                || format!("must satisfy 0 < min ≤ max ≤ 1, got {scale:?}"),
            )?;
            check(
                0.0 < ratio.0 && ratio.0 <= ratio.1,
                "data.crop.random_resized_crop.ratio",
                || format!("must satisfy 0 < min ≤ max, got {ratio:?}"),
            )?;
        }
        d.scene.validate().map_err(|e| match e {
            cappa_data::scene::SceneError::InvalidConfig { field, message } => {
                ConfigError::new(format!("data.scene.{field}"), message)
            }
            other => ConfigError::new("data.scene", other.to_string()),
        })?;
        match d.kind {
            DataKind::Scene => check(d.shards.is_empty(), "data.shards", || {
                "is set but data.kind is \"scene\": set data.kind to \"shards\"".into()
            })?,
            DataKind::Shards => {
                check(!d.shards.is_empty(), "data.shards", || {
                    "data.kind is \"shards\" but no shard is given: list files, globs or brace \
                     ranges such as \"shards/{00000..00099}.tar\""
                        .into()
                })?;
                cappa_data::readers::expand_paths(&d.shards)
                    .map_err(|e| ConfigError::new("data.shards", e.to_string()))?;
                if !d.validation_shards.is_empty() {
                    cappa_data::readers::expand_paths(&d.validation_shards)
                        .map_err(|e| ConfigError::new("data.validation_shards", e.to_string()))?;
                }
            }
        }
        if let Some(path) = &d.tokenizer {
            check(path.is_file(), "data.tokenizer", || {
                format!("{} does not exist or is not a file", path.display())
            })?;
        }
        if d.tokenizer.is_none() {
            check(d.vocab_size > 260, "data.vocab_size", || {
                format!(
                    "a byte-level BPE needs more than 260 entries (256 bytes and 4 specials), got {}",
                    d.vocab_size
                )
            })?;
            check(d.tokenizer_captions > 0, "data.tokenizer_captions", || {
                "must be positive".into()
            })?;
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), ConfigError> {
        self.vision()?;
        if self.objective.is_contrastive() {
            self.text_tower(PLACEHOLDER_TOKENS)?;
        }
        Ok(())
    }

    /// The encoder configuration: the preset (or `model.vision`) at `model.image_size`.
    pub fn vision(&self) -> Result<VitConfig, ConfigError> {
        let mut vision = match &self.model.vision {
            Some(v) => v.clone(),
            None => vision_preset(&self.model.preset)?,
        };
        if let Some(size) = self.model.image_size {
            vision.image_size = size;
        }
        vision.validate().map_err(model_field_error)?;
        Ok(vision)
    }

    /// The contrastive text tower for a tokenizer's ids, with the data's caption length.
    fn text_tower(&self, tokens: SpecialTokens) -> Result<TextConfig, ConfigError> {
        let base = match &self.model.text {
            Some(t) => t.clone(),
            None => base_text_tower(&self.model.preset, self.model.text_preset.as_deref())?,
        };
        let text = TextConfig {
            context_length: self.data.seq_len as i64,
            ..base.with_special_tokens(tokens)
        };
        text.validate().map_err(model_field_error)?;
        Ok(text)
    }

    /// The model for a tokenizer's vocabulary and special ids
    /// ([`crate::tokens::special_tokens`]); they are stored in every tower's configuration,
    /// hence in the checkpoint's `config.json`. A checkpoint is checked against its
    /// `tokenizer.json` with [`crate::tokens::check_tokenizer`].
    pub fn model_config(&self, tokens: SpecialTokens) -> Result<ModelConfig, ConfigError> {
        let vision = self.vision()?;
        let seq_len = self.data.seq_len as i64;
        Ok(match self.objective {
            Objective::Clip | Objective::Sigmoid => {
                let loss = if self.objective == Objective::Clip {
                    ContrastiveLoss::Softmax
                } else {
                    ContrastiveLoss::Sigmoid
                };
                ModelConfig::Clip(ClipConfig::new(vision, self.text_tower(tokens)?, loss))
            }
            Objective::Cap | Objective::CapPa => {
                let mut cap = CapConfig::new(vision, tokens, seq_len);
                cap.decoder.init = self.model.decoder_init;
                cap.validate().map_err(model_field_error)?;
                ModelConfig::Cap(cap)
            }
        })
    }

    /// The image transform of training.
    pub fn train_transform(&self, image_size: i64) -> TrainTransform {
        TrainTransform {
            size: image_size as u32,
            crop: self.data.crop,
            hflip: self.data.hflip,
        }
    }

    /// Updates in the run, from the budget and the model's training FLOPs per example.
    pub fn total_steps(&self, train_flops_per_example: f64) -> Result<u64, ConfigError> {
        let batch = self.batch_size as u64;
        let steps = match self.budget {
            Budget::Steps(n) => n,
            Budget::Examples(n) => n.div_ceil(batch),
            Budget::Flops(f) => (f / (train_flops_per_example * batch as f64)).floor() as u64,
        };
        check(steps > 0, "budget", || {
            format!(
                "{:?} is less than one update of {batch} examples ({:.3e} training FLOPs)",
                self.budget,
                train_flops_per_example * batch as f64
            )
        })?;
        check(
            self.schedule.warmup_steps <= steps,
            "schedule.warmup_steps",
            || {
                format!(
                    "{} is longer than the whole run ({steps} steps)",
                    self.schedule.warmup_steps
                )
            },
        )?;
        Ok(steps)
    }
}

/// Text-tower presets by name.
pub fn text_preset(name: &str) -> Option<TextConfig> {
    Some(match name {
        "tiny" => TextConfig::tiny(),
        "small" => TextConfig::small(),
        "b16" => TextConfig::b16(),
        "open_clip_b16" => TextConfig::open_clip_b16(),
        _ => return None,
    })
}

/// Paths in a config that changing would make a resumed run a different run.
pub fn differing_fields(saved: &Value, given: &Value, prefix: &str, out: &mut Vec<String>) {
    match (saved, given) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                differing_fields(
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(overrides: &[&str]) -> Result<ExperimentConfig, ConfigError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let config = resolve(None, &overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn field_of(overrides: &[&str]) -> String {
        with(overrides).unwrap_err().field
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config = with(&[]).unwrap();
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(from_value(value).unwrap(), config);
    }

    #[test]
    fn overrides_set_nested_values_and_replace_the_budget() {
        let config = with(&[
            "optim.lr=3e-4",
            "objective=clip",
            "data.scene.image_size=32",
            "budget.examples=1000",
            "name=my-run",
        ])
        .unwrap();
        assert_eq!(config.optim.lr, 3e-4);
        assert_eq!(config.objective, Objective::Clip);
        assert_eq!(config.data.scene.image_size, 32);
        assert_eq!(config.budget, Budget::Examples(1000));
        assert_eq!(config.name, "my-run");
        assert_eq!(config.total_steps(1.0).unwrap(), 1000u64.div_ceil(32));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(&["optim.lr=-1"]), "optim.lr");
        assert_eq!(field_of(&["optim.lrr=1"]), "optim.lrr");
        assert!(with(&["optim.lrr=1"]).unwrap_err().message.contains("lrr"));
        assert_eq!(field_of(&["optim.lr=\"fast\""]), "optim.lr");
        assert_eq!(field_of(&["batch_size=10", "world_size=4"]), "batch_size");
        assert_eq!(
            field_of(&["batch_size=12", "accumulation=5"]),
            "accumulation"
        );
        assert_eq!(field_of(&["precision=fp16"]), "precision");
        assert_eq!(field_of(&["model.preset=huge"]), "model.preset");
        assert_eq!(
            field_of(&["data.scene.max_objects=0"]),
            "data.scene.max_objects"
        );
        assert_eq!(
            field_of(&["data.kind=shards", "data.shards=[\"/nonexistent/*.tar\"]"]),
            "data.shards"
        );
        assert_eq!(
            field_of(&["data.tokenizer=/nonexistent.json"]),
            "data.tokenizer"
        );
        let config = with(&["schedule.warmup_steps=500", "budget.steps=100"]).unwrap();
        assert_eq!(
            config.total_steps(1.0).unwrap_err().field,
            "schedule.warmup_steps"
        );
        assert_eq!(field_of(&["lr"]), "lr");
    }

    #[test]
    fn flops_budget_counts_whole_updates() {
        let config = with(&["budget.flops=1e9", "batch_size=10"]).unwrap();
        // 1e9 FLOPs at 1e6 per example and 10 examples per update.
        assert_eq!(config.total_steps(1e6).unwrap(), 100);
        assert_eq!(config.total_steps(1e9).unwrap_err().field, "budget");
    }

    #[test]
    fn model_configs_follow_the_objective_and_the_data() {
        let cap = with(&["objective=cap_pa", "data.seq_len=20"]).unwrap();
        let ModelConfig::Cap(c) = cap.model_config(SpecialTokens::built_in(300)).unwrap() else {
            panic!("cap_pa builds a captioner")
        };
        assert_eq!((c.decoder.vocab_size, c.decoder.max_len), (300, 20));
        let clip = with(&["objective=sigmoid", "model.image_size=48"]).unwrap();
        let ModelConfig::Clip(c) = clip.model_config(SpecialTokens::built_in(300)).unwrap() else {
            panic!("sigmoid builds CLIP")
        };
        assert_eq!(c.loss, ContrastiveLoss::Sigmoid);
        assert_eq!((c.text.vocab_size, c.text.context_length), (300, 24));
        assert_eq!(c.vision.image_size, 48);
    }

    #[test]
    fn the_tokenizer_ids_reach_every_tower() {
        // A T5-like tokenizer: pad 0, EOS 1; and one with every special far from 0/1/2.
        for (pad_id, eos_id) in [(0, 1), (297, 5)] {
            let tokens = SpecialTokens {
                vocab_size: 300,
                pad_id,
                eos_id,
            };
            let clip = with(&["objective=clip", "model.text_preset=small"]).unwrap();
            let ModelConfig::Clip(c) = clip.model_config(tokens).unwrap() else {
                panic!("clip builds CLIP")
            };
            assert_eq!(
                (c.text.vocab_size, c.text.pad_id, c.text.eos_id),
                (300, pad_id, eos_id)
            );
            assert_eq!(
                c.text.width,
                TextConfig::small().width,
                "the rest is the preset's"
            );
            let cap = with(&["objective=cap"]).unwrap();
            let ModelConfig::Cap(c) = cap.model_config(tokens).unwrap() else {
                panic!("cap builds a captioner")
            };
            let d = &c.decoder;
            assert_eq!((d.vocab_size, d.pad_id, d.eos_id), (300, pad_id, eos_id));
            assert_eq!(d.bos_id, pad_id, "the decoder starts from the pad id");
        }
        // The built-in tokenizer's ids give the decoder the 0 it always started from.
        let cap = with(&["objective=cap"]).unwrap();
        let ModelConfig::Cap(c) = cap.model_config(SpecialTokens::built_in(300)).unwrap() else {
            panic!("cap builds a captioner")
        };
        assert_eq!(
            (c.decoder.bos_id, c.decoder.pad_id, c.decoder.eos_id),
            (0, 0, 2)
        );
    }

    #[test]
    fn ids_outside_the_vocabulary_name_the_tower_field() {
        let tokens = SpecialTokens {
            vocab_size: 300,
            pad_id: 0,
            eos_id: 300,
        };
        let clip = with(&["objective=clip"]).unwrap();
        let error = clip.model_config(tokens).unwrap_err();
        assert_eq!(error.field, "model.text.eos_id");
        assert!(
            error
                .message
                .contains("300 is outside the vocabulary 0..300"),
            "{error}"
        );
        let cap = with(&["objective=cap"]).unwrap();
        assert_eq!(
            cap.model_config(tokens).unwrap_err().field,
            "model.decoder.eos_id"
        );
    }

    #[test]
    fn overriding_one_field_of_a_tower_keeps_the_presets_other_fields() {
        let config = with(&["model.vision.patch_size=4"]).unwrap();
        let expected = VitConfig {
            patch_size: 4,
            ..VitConfig::tiny()
        };
        assert_eq!(config.vision().unwrap(), expected);
        // The preset may be named after the tower's fields: the merge is order-independent.
        let config = with(&["model.vision.width=96", "model.preset=small"]).unwrap();
        let expected = VitConfig {
            width: 96,
            ..VitConfig::small()
        };
        assert_eq!(config.vision().unwrap(), expected);
        let clip = with(&[
            "objective=clip",
            "model.text.depth=3",
            "model.text_preset=small",
        ])
        .unwrap();
        let ModelConfig::Clip(c) = clip.model_config(SpecialTokens::built_in(300)).unwrap() else {
            panic!("clip builds CLIP")
        };
        let expected = TextConfig {
            depth: 3,
            vocab_size: 300,
            context_length: 24,
            ..TextConfig::small()
        };
        assert_eq!(c.text, expected);
        // A mistyped field is named with its whole path.
        assert_eq!(
            field_of(&["model.vision.patchsize=4"]),
            "model.vision.patchsize"
        );
        assert_eq!(field_of(&["model.vision.width=62"]), "model.vision.width");
        // The completed tower is what is saved, and it reads back as itself.
        let config = with(&["model.vision.patch_size=4"]).unwrap();
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(value["model"]["vision"]["image_size"], 32);
        assert_eq!(from_value(value).unwrap(), config);
    }

    #[test]
    fn a_partial_tower_in_a_config_file_is_completed_from_its_preset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let text = r#"{"objective": "clip", "model": {"preset": "small", "vision": {"depth": 2},
                       "text": {"num_heads": 6}}}"#;
        std::fs::write(&path, text).unwrap();
        let config = resolve(Some(&path), &[]).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.vision().unwrap(),
            VitConfig {
                depth: 2,
                ..VitConfig::small()
            }
        );
        let text = config.model.text.as_ref().unwrap();
        assert_eq!((text.num_heads, text.width), (6, TextConfig::small().width));
        // An unknown preset cannot complete a tower and is named.
        std::fs::write(
            &path,
            r#"{"model": {"preset": "huge", "vision": {"depth": 2}}}"#,
        )
        .unwrap();
        assert_eq!(resolve(Some(&path), &[]).unwrap_err().field, "model.preset");
    }

    #[test]
    fn differing_fields_lists_paths() {
        let a = serde_json::json!({"optim": {"lr": 1, "eps": 2}, "seed": 0});
        let b = serde_json::json!({"optim": {"lr": 2, "eps": 2}, "seed": 0, "x": 1});
        let mut out = Vec::new();
        differing_fields(&a, &b, "", &mut out);
        assert_eq!(out, ["optim.lr", "x"]);
    }
}
