//! The training loop: one loop for every objective.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cappa_data::error::DataError;
use cappa_data::loader::{Loader, LoaderConfig, SampleSource, SceneSource, ShardSource};
use cappa_data::pipeline::DecodeLimits;
use cappa_data::readers::{expand_paths, WebDataset};
use cappa_data::scene::{LabelSet, SceneWorld};
use cappa_data::tokenizer::{Tokenizer, TokenizerError};
use cappa_models::checkpoint::{
    save_weights, write_json, CheckpointError, CONFIG_FILE, WEIGHTS_FILE,
};
use cappa_models::{num_params, shift_right, train_flops, Decoding, Model, ModelConfig};
use cappa_objectives::{
    caption_loss, contrastive_sigmoid_loss, contrastive_softmax_loss, in_batch_retrieval_accuracy,
    parallel_prediction_inputs, token_accuracy, ParallelPrediction,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use cappa_torch_ext::autocast::{Autocast, AutocastDtype};
use cappa_torch_ext::dist::{DistError, ProcessGroup, ReduceOp};

use crate::checkpoint::{read_state, write_state, Checkpoints, TrainState};
use crate::config::{
    differing_fields, ConfigError, DataKind, ExperimentConfig, Objective, Precision,
};
use crate::metrics::{MetricsLog, Progress, ProgressMode};
use crate::optim::AdamW;
use crate::schedule::lr_factor;

pub const EXPERIMENT_FILE: &str = "experiment.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const OPTIMIZER_LAYOUT_FILE: &str = "optimizer.json";

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

/// Whether to continue a run directory that already has checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Refuse a directory with checkpoints.
    Never,
    /// Continue from its newest checkpoint, or start fresh if it has none.
    Auto,
}

/// How a trainer runs.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    pub device: Device,
    /// The accelerator's name (for the MFU estimate's peak FLOP/s).
    pub device_name: Option<String>,
    pub progress: ProgressMode,
    pub resume: Resume,
    /// Set from elsewhere (a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The data-parallel process group (see [`crate::parallel`]); its size must equal the
    /// config's `world_size`. `None`: one process.
    pub dist: Option<Arc<ProcessGroup>>,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            device: Device::Cpu,
            device_name: None,
            progress: ProgressMode::Auto,
            resume: Resume::Never,
            interrupt: None,
            dist: None,
        }
    }
}

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
    Checkpoint(#[from] CheckpointError),
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
    #[error("{what}: {message}")]
    Resume { what: String, message: String },
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("bf16 autocast: {0}")]
    Autocast(String),
}

impl TrainError {
    /// Bad configurations exit with status 2.
    pub fn is_config(&self) -> bool {
        matches!(self, TrainError::Config(_) | TrainError::RunExists { .. })
    }
}

/// An evaluation run inside the training loop, every `eval.every` steps and at the end.
pub trait EvalHook {
    fn name(&self) -> &str;
    /// Named results, logged under `NAME/KEY`.
    fn evaluate(&mut self, model: &Model, step: u64) -> Result<Vec<(String, f64)>, String>;
}

/// What a finished (or interrupted) run reports; also written to `summary.json` at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub name: String,
    pub objective: Objective,
    pub steps: u64,
    pub total_steps: u64,
    pub examples_seen: u64,
    pub train_flops_seen: f64,
    pub train_flops_per_example: f64,
    pub params: i64,
    pub final_loss: Option<f64>,
    pub seconds: f64,
    pub examples_per_second: f64,
    pub bad_samples: u64,
    pub bad_steps: u64,
    pub checkpoint: PathBuf,
    pub finished: bool,
}

/// One step's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// False when the step was skipped as non-finite.
    pub applied: bool,
}

/// Held-out batches for the in-loop validation.
#[derive(Debug)]
struct Validation {
    batches: Vec<(Tensor, Tensor)>,
    /// Scene labels (shape of the largest object) of every example, for the probe.
    labels: Option<Vec<i64>>,
}

/// A training run.
pub struct Trainer {
    config: ExperimentConfig,
    options: TrainerOptions,
    run_dir: PathBuf,
    vs: VarStore,
    model: Model,
    model_config: ModelConfig,
    optimizer: AdamW,
    tokenizer: Arc<Tokenizer>,
    state: TrainState,
    total_steps: u64,
    flops_per_example: f64,
    checkpoints: Checkpoints,
    /// Rank 0's metrics log; `None` on the other ranks.
    metrics: Option<MetricsLog>,
    validation: Option<Validation>,
    hooks: Vec<Box<dyn EvalHook>>,
    checkpointed_step: Option<u64>,
    seconds_before: f64,
    /// Data parallel: whether some rank was asked to stop (Ctrl-C), as of the last step.
    stop_agreed: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run_dir", &self.run_dir)
            .field("objective", &self.config.objective)
            .field("step", &self.state.step)
            .field("total_steps", &self.total_steps)
            .finish_non_exhaustive()
    }
}

/// Guards libtorch's process-wide random generator while it is seeded and used.
static TORCH_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A well-mixed 64-bit seed from a run seed and two counters (SplitMix64).
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Peak dense bf16 FLOP/s of known accelerators, by name.
pub fn peak_flops_for(device_name: &str) -> Option<f64> {
    let name = device_name.to_ascii_uppercase();
    let table: [(&str, f64); 7] = [
        ("H200", 989e12),
        ("H100", 989e12),
        ("A100", 312e12),
        ("L40S", 362e12),
        ("L4", 121e12),
        ("A10", 125e12),
        ("V100", 125e12),
    ];
    table
        .iter()
        .find(|(key, _)| name.contains(key))
        .map(|&(_, peak)| peak)
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn torch_error(path: &Path) -> impl FnOnce(tch::TchError) -> CheckpointError + '_ {
    move |source| CheckpointError::Torch {
        path: path.to_path_buf(),
        source,
    }
}

impl Trainer {
    /// Checks the configuration and the data, builds (or trains) the tokenizer and the model —
    /// all before anything is written — then creates the run directory, or continues it from
    /// its newest checkpoint with [`Resume::Auto`].
    pub fn start(
        config: ExperimentConfig,
        run_dir: &Path,
        options: TrainerOptions,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let processes = options.dist.as_ref().map_or(1, |pg| pg.world_size());
        if config.world_size != processes {
            return Err(ConfigError::new(
                "world_size",
                format!(
                    "is {} but {processes} process(es) run this training: start {} processes \
                     with `cappa launch --nproc {}` (or torchrun), or set world_size={processes}",
                    config.world_size, config.world_size, config.world_size
                ),
            )
            .into());
        }
        let main_rank = options.dist.as_ref().is_none_or(|pg| pg.rank() == 0);
        let checkpoints = Checkpoints::new(run_dir, config.keep_checkpoints);
        let latest = checkpoints.latest();
        if let Some((step, _)) = &latest {
            if options.resume == Resume::Never {
                return Err(TrainError::RunExists {
                    dir: run_dir.to_path_buf(),
                    step: *step,
                });
            }
            check_resumable(run_dir, &config)?;
        }
        let tokenizer = match (&latest, &config.data.tokenizer, &options.dist) {
            (Some(_), _, _) => Tokenizer::load(run_dir.join(TOKENIZER_FILE))?,
            // A new data-parallel run: every rank uses rank 0's tokenizer, sent to it.
            (None, _, Some(pg)) if pg.rank() != 0 => {
                let text = crate::parallel::broadcast_text(pg, None)?;
                Tokenizer::from_json(&text, Path::new("<rank 0's tokenizer>"))?
            }
            (None, given, dist) => {
                let tokenizer = match given {
                    Some(path) => Tokenizer::load(path)?,
                    None => train_tokenizer(&config)?,
                };
                if let Some(pg) = dist {
                    crate::parallel::broadcast_text(pg, Some(tokenizer.to_json()?))?;
                }
                tokenizer
            }
        };
        let model_config = config.model_config(tokenizer.vocab_size() as i64)?;
        let flops_per_example = train_flops(model_config.forward_flops());
        let total_steps = config.total_steps(flops_per_example)?;

        // Everything is checked: from here on the run directory is written (by rank 0 only).
        if main_rank {
            fs::create_dir_all(run_dir).map_err(|source| CheckpointError::Io {
                path: run_dir.to_path_buf(),
                source,
            })?;
            checkpoints.remove_stale()?;
            write_json(&run_dir.join(EXPERIMENT_FILE), &config)?;
            if latest.is_none() {
                let path = run_dir.join(TOKENIZER_FILE);
                tokenizer.save(&path)?;
            }
        }

        if let Device::Cuda(_) = options.device {
            tch::Cuda::cudnn_set_benchmark(true);
            cappa_torch_ext::backends::set_tf32(config.tf32);
        }
        let vs = VarStore::new(options.device);
        let model = {
            // libtorch's generator is process-wide: hold it while seeding and initialising so
            // that trainers started side by side (tests, sweeps) initialise reproducibly.
            let _generator = TORCH_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(mix(config.seed, u64::MAX, 0) as i64);
            model_config.build(&vs)
        };
        let mut optimizer = AdamW::new(&vs, config.optim);
        let mut vs = vs;
        let (state, checkpointed_step) = match &latest {
            Some((step, dir)) => {
                let weights = dir.join(WEIGHTS_FILE);
                vs.load(&weights).map_err(torch_error(&weights))?;
                let optimizer_path = dir.join(OPTIMIZER_FILE);
                let named = Tensor::read_safetensors(&optimizer_path)
                    .map_err(torch_error(&optimizer_path))?;
                let find = |name: &str| {
                    named
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, t)| t.to_device(options.device))
                        .ok_or_else(|| TrainError::Resume {
                            what: optimizer_path.display().to_string(),
                            message: format!("has no tensor `{name}`"),
                        })
                };
                let (m, v) = (find("exp_avg")?, find("exp_avg_sq")?);
                let mut state = read_state(dir)?;
                if let Some(cursor) = options
                    .dist
                    .as_ref()
                    .and_then(|pg| state.rank_cursors.get(pg.rank()))
                {
                    // Each rank continues its own slice of the data.
                    state.cursor = cursor.clone();
                }
                let steps = read_optimizer_steps(dir)?;
                optimizer
                    .restore(&m, &v, steps)
                    .map_err(|message| TrainError::Resume {
                        what: optimizer_path.display().to_string(),
                        message,
                    })?;
                if state.step != *step {
                    return Err(TrainError::Resume {
                        what: dir.display().to_string(),
                        message: format!("holds step {} but is named for step {step}", state.step),
                    });
                }
                (state, Some(*step))
            }
            None => (TrainState::default(), None),
        };
        if let Some(pg) = &options.dist {
            // Identical seeds give identical weights already; broadcasting makes it a guarantee.
            let mut params = optimizer.params().shallow_clone();
            tch::no_grad(|| pg.broadcast(&mut params, 0))?;
        }
        let metrics = if main_rank {
            Some(MetricsLog::open(
                &run_dir.join(METRICS_FILE),
                latest.as_ref().map(|(step, _)| *step),
            )?)
        } else {
            None
        };
        let seconds_before = latest
            .as_ref()
            .and_then(|_| last_elapsed(&run_dir.join(METRICS_FILE)))
            .unwrap_or(0.0);
        let mut trainer = Trainer {
            config,
            options,
            run_dir: run_dir.to_path_buf(),
            vs,
            model,
            model_config,
            optimizer,
            tokenizer: Arc::new(tokenizer),
            state,
            total_steps,
            flops_per_example,
            checkpoints,
            metrics,
            validation: None,
            hooks: Vec::new(),
            checkpointed_step,
            seconds_before,
            stop_agreed: false,
        };
        if trainer.config.eval.every > 0 && main_rank {
            trainer.validation = trainer.validation_batches()?;
        }
        Ok(trainer)
    }

    pub fn config(&self) -> &ExperimentConfig {
        &self.config
    }
    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    pub fn state(&self) -> &TrainState {
        &self.state
    }
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }
    pub fn train_flops_per_example(&self) -> f64 {
        self.flops_per_example
    }
    /// The side of the square images the model takes.
    pub fn vision_image_size(&self) -> i64 {
        match &self.model_config {
            ModelConfig::Clip(c) => c.vision.image_size,
            ModelConfig::Cap(c) => c.vision.image_size,
        }
    }
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// This process's rank (0 without a process group).
    pub fn rank(&self) -> usize {
        self.options.dist.as_ref().map_or(0, |pg| pg.rank())
    }

    /// Whether this process writes the run directory and reports progress (rank 0).
    pub fn is_main_rank(&self) -> bool {
        self.rank() == 0
    }

    fn world_size(&self) -> usize {
        self.config.world_size
    }

    /// Adds an evaluation run every `eval.every` steps.
    pub fn add_eval_hook(&mut self, hook: Box<dyn EvalHook>) {
        self.hooks.push(hook);
    }

    fn loader_config(&self, batch_size: usize, seed: u64) -> LoaderConfig {
        let d = &self.config.data;
        let image_size = self.vision_image_size();
        let threads = if d.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            d.threads
        };
        LoaderConfig {
            batch_size,
            seq_len: d.seq_len,
            transform: self.config.train_transform(image_size),
            normalize: d.normalize,
            limits: DecodeLimits {
                max_pixels: d.max_pixels,
            },
            seed,
            threads,
            prefetch: d.prefetch,
            max_bad_fraction: d.max_bad_fraction,
            min_samples_for_bad_check: 1000,
            pin_memory: matches!(self.options.device, Device::Cuda(_)),
        }
    }

    fn micro_batch_size(&self) -> usize {
        self.config.batch_size / self.config.world_size / self.config.accumulation
    }

    fn training_source(&self) -> Result<Box<dyn SampleSource>, TrainError> {
        let d = &self.config.data;
        Ok(match d.kind {
            DataKind::Scene => Box::new(SceneSource::new(
                scene_world(&self.config, false)?,
                self.rank(),
                self.world_size(),
            )),
            DataKind::Shards => Box::new(ShardSource::new(
                expand_paths(&d.shards)?,
                self.rank(),
                self.world_size(),
                self.config.seed,
            )?),
        })
    }

    /// The held-out batches: the scene world's evaluation split, or `data.validation_shards`.
    fn validation_batches(&self) -> Result<Option<Validation>, TrainError> {
        let d = &self.config.data;
        let (source, world): (Box<dyn SampleSource>, Option<SceneWorld>) = match d.kind {
            DataKind::Scene => {
                let world = scene_world(&self.config, true)?;
                (Box::new(SceneSource::new(world.clone(), 0, 1)), Some(world))
            }
            DataKind::Shards if !d.validation_shards.is_empty() => (
                Box::new(ShardSource::new(
                    expand_paths(&d.validation_shards)?,
                    0,
                    1,
                    0,
                )?),
                None,
            ),
            DataKind::Shards => return Ok(None),
        };
        let config = self.loader_config(self.config.batch_size / self.config.world_size, 0);
        let loader = Loader::start(source, Arc::clone(&self.tokenizer), config, None)?;
        let mut batches = Vec::new();
        let mut labels = world.as_ref().map(|_| Vec::new());
        for batch in loader.take(self.config.eval.batches) {
            let batch = batch?;
            if let (Some(world), Some(labels)) = (&world, labels.as_mut()) {
                for key in &batch.keys {
                    let index: u64 = key.parse().expect("scene keys are indices");
                    let scene = world.scene(index);
                    labels.push(world.label(&scene, LabelSet::Shape) as i64);
                }
            }
            batches.push((batch.images, batch.tokens));
        }
        Ok(Some(Validation { batches, labels }))
    }

    /// The training loss of one micro-batch. `micro` numbers the micro-batches of a step, so
    /// that CapPa's random masks depend only on (seed, step, micro-batch).
    fn micro_loss(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        step: u64,
        micro: u64,
    ) -> Result<Tensor, TrainError> {
        Ok(match &self.model {
            Model::Clip(clip) => {
                let mut image = clip.encode_image(images, true).to_kind(Kind::Float);
                let mut text = clip.encode_text(tokens, true).to_kind(Kind::Float);
                // The similarity matrix and the loss in fp32, whatever the towers ran in.
                let _fp32 = match self.config.precision {
                    Precision::Bf16 => {
                        Some(Autocast::off(self.options.device).map_err(TrainError::Autocast)?)
                    }
                    Precision::Fp32 => None,
                };
                match &self.options.dist {
                    None => contrastive_loss(clip, &image, &text),
                    Some(pg) => {
                        image = pg.gather_rows_with_local_grad(&image)?;
                        text = pg.gather_rows_with_local_grad(&text)?;
                        // Every rank computes the same global loss from the temperature (and
                        // bias): give each rank 1/world of their gradient, so that the sum
                        // over ranks is theirs once.
                        let world = pg.world_size() as f64;
                        let share = |p: &Tensor| p.detach() + (p - p.detach()) / world;
                        let bias = clip.logit_bias.as_ref().map(share);
                        contrastive_loss_of(&image, &text, &share(&clip.logit_scale), bias.as_ref())
                    }
                }
            }
            Model::Cap(cap) => {
                let decoder = &cap.config().decoder;
                let memory = cap.encode_image(images, true).tokens;
                let logits = if self.config.objective == Objective::CapPa {
                    let pp = ParallelPrediction {
                        prob: self.config.parallel_prediction.prob,
                        mask_id: decoder.mask_id(),
                        bos_id: decoder.bos_id,
                        masking_ratio: self.config.parallel_prediction.masking_ratio,
                    };
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(self.config.seed, step, micro));
                    let inputs = parallel_prediction_inputs(tokens, &pp, &mut rng)
                        .expect("parallel prediction settings were validated");
                    cap.decode(
                        &memory,
                        &inputs.inputs,
                        Decoding::PerExample(&inputs.parallel),
                        true,
                    )
                } else {
                    let inputs = shift_right(tokens, decoder.bos_id);
                    cap.decode(&memory, &inputs, Decoding::Causal, true)
                };
                caption_loss(&logits, tokens, decoder.pad_id, 0.0)
            }
        })
    }

    /// One update from the given micro-batches (images `(b, 3, H, W)`, tokens `(b, L)`; equal
    /// sizes): each micro-batch's loss is divided by their number, so k micro-batches give
    /// the gradient of their union for per-example losses such as Cap's. Non-finite losses or
    /// gradients skip the update (up to `max_bad_steps`) or stop the run with
    /// [`TrainError::NonFinite`] after saving the last good weights.
    pub fn step_on(
        &mut self,
        micro_batches: &[(Tensor, Tensor)],
    ) -> Result<StepOutcome, TrainError> {
        let step = self.state.step;
        let factor = lr_factor(&self.config.schedule, step, self.total_steps);
        let lr = self.config.optim.lr * factor;
        // Dropout's generator: a function of the step, so resuming reproduces it.
        if self.uses_dropout() {
            let _generator = TORCH_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(mix(self.config.seed, step, u64::MAX) as i64);
        }
        let parts = micro_batches.len() as f64;
        // Data parallel: a per-example loss (Cap) is this rank's share of the global mean, so
        // its gradient is divided by the world size; a contrastive loss is already the global
        // batch's (see `crate::parallel`). Either way the ranks' gradients are then summed.
        let share = match self.model {
            Model::Cap(_) => self.world_size() as f64,
            Model::Clip(_) => 1.0,
        };
        let mut loss_sum = 0.0;
        let device = self.options.device;
        // Pinned batches (CUDA) copy asynchronously; the copy orders before the forward on
        // the same stream.
        let non_blocking = matches!(device, Device::Cuda(_));
        for (micro, (images, tokens)) in micro_batches.iter().enumerate() {
            let images = images.to_device_(device, images.kind(), non_blocking, false);
            let tokens = tokens.to_device_(device, tokens.kind(), non_blocking, false);
            let loss = match self.config.precision {
                Precision::Fp32 => self.micro_loss(&images, &tokens, step, micro as u64)?,
                Precision::Bf16 => {
                    let _autocast = Autocast::new(self.options.device, AutocastDtype::BFloat16)
                        .map_err(TrainError::Autocast)?;
                    self.micro_loss(&images, &tokens, step, micro as u64)?
                }
            };
            (&loss / (parts * share)).backward();
            loss_sum += loss.double_value(&[]);
        }
        let mut loss = loss_sum / parts;
        if let Some(pg) = &self.options.dist {
            // One small collective: every rank sees the same loss, so all take the same
            // skip-or-step decision, and learns whether any rank was asked to stop.
            let asked = self.interrupt_requested();
            (loss, self.stop_agreed) = crate::parallel::mean_and_any(pg, loss, asked)?;
        }
        let report = if loss.is_finite() {
            match &self.options.dist {
                None => self.optimizer.step(lr, factor),
                Some(pg) => {
                    let mut grad = self.optimizer.flat_grad();
                    let bucket = crate::parallel::bucket_elements(grad.kind());
                    tch::no_grad(|| pg.all_reduce_buckets(&mut grad, ReduceOp::Sum, bucket))?;
                    self.optimizer.step_with_grad(grad, lr, factor)
                }
            }
        } else {
            self.optimizer.zero_grad();
            crate::optim::StepReport {
                grad_norm: f64::NAN,
                applied: false,
            }
        };
        if !report.applied {
            let (what, value) = if loss.is_finite() {
                ("gradient norm", report.grad_norm)
            } else {
                ("loss", loss)
            };
            if self.state.bad_steps >= self.config.max_bad_steps {
                let checkpoint = self.save_checkpoint()?;
                return Err(TrainError::NonFinite {
                    step,
                    what,
                    value,
                    checkpoint,
                });
            }
            self.state.bad_steps += 1;
        }
        self.state.step += 1;
        self.state.last_loss = loss.is_finite().then_some(loss);
        Ok(StepOutcome {
            loss,
            grad_norm: report.grad_norm,
            lr,
            applied: report.applied,
        })
    }

    /// Whether this process was asked to stop (the interrupt flag of the options).
    fn interrupt_requested(&self) -> bool {
        (self.options.interrupt.as_ref()).is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    fn uses_dropout(&self) -> bool {
        match &self.model_config {
            ModelConfig::Clip(c) => c.vision.dropout > 0.0 || c.text.dropout > 0.0,
            ModelConfig::Cap(c) => c.vision.dropout > 0.0 || c.decoder.dropout > 0.0,
        }
    }

    /// Trains to the end of the budget.
    pub fn run(&mut self) -> Result<RunSummary, TrainError> {
        self.run_until(self.total_steps)
    }

    /// Trains until `stop_at` updates (at most the budget), or until the interrupt flag of the
    /// options is set, then checkpoints — an interruption that a later [`Trainer::start`] with
    /// [`Resume::Auto`] continues exactly.
    pub fn run_until(&mut self, stop_at: u64) -> Result<RunSummary, TrainError> {
        let stop_at = stop_at.min(self.total_steps);
        let started = Instant::now();
        let mode = if self.is_main_rank() {
            self.options.progress
        } else {
            ProgressMode::Quiet
        };
        let progress = Progress::new(mode, self.state.step, self.total_steps);
        if self.state.step < stop_at {
            // Rank r > 0 draws its augmentations from its own stream.
            let seed = match self.rank() {
                0 => self.config.seed,
                rank => mix(self.config.seed, rank as u64, u64::MAX - 1),
            };
            let config = self.loader_config(self.micro_batch_size(), seed);
            let mut loader = Loader::start(
                self.training_source()?,
                Arc::clone(&self.tokenizer),
                config,
                Some(self.state.cursor.clone()),
            )?;
            let result = self.train_loop(&mut loader, stop_at, &progress, started);
            progress.finish();
            result?;
        }
        if self.checkpointed_step != Some(self.state.step) {
            let path = self.save_checkpoint()?;
            progress.println(&format!("checkpoint {}", path.display()));
        }
        let summary = self.summary(started);
        if summary.finished && self.is_main_rank() {
            write_json(&self.run_dir.join(SUMMARY_FILE), &summary)?;
        }
        Ok(summary)
    }

    fn train_loop(
        &mut self,
        loader: &mut Loader,
        stop_at: u64,
        progress: &Progress,
        started: Instant,
    ) -> Result<(), TrainError> {
        let mut window = Window::new();
        // The MFU's denominator: every rank's device.
        let peak = self
            .config
            .peak_flops
            .or_else(|| {
                matches!(self.options.device, Device::Cuda(_))
                    .then(|| self.options.device_name.as_deref().and_then(peak_flops_for))
                    .flatten()
            })
            .map(|peak| peak * self.world_size() as f64);
        while self.state.step < stop_at {
            let step_started = Instant::now();
            let mut micro_batches = Vec::with_capacity(self.config.accumulation);
            let mut cursor = None;
            let mut wait = Duration::ZERO;
            for _ in 0..self.config.accumulation {
                let waited = Instant::now();
                let batch = loader.next().ok_or(TrainError::DataExhausted {
                    step: self.state.step,
                })??;
                wait += waited.elapsed();
                cursor = Some(batch.cursor);
                micro_batches.push((batch.images, batch.tokens));
            }
            let local: u64 = micro_batches.iter().map(|(i, _)| i.size()[0] as u64).sum();
            let examples = local * self.world_size() as u64;
            let outcome = self.step_on(&micro_batches)?;
            self.state.examples_seen += examples;
            self.state.flops_seen += examples as f64 * self.flops_per_example;
            self.state.cursor = cursor.expect("accumulation is at least 1");
            window.add(&outcome, examples, step_started.elapsed(), wait);
            progress.step(self.state.step);
            if !outcome.applied {
                progress.println(&format!(
                    "step {}: non-finite loss or gradient, update skipped ({} of at most {})",
                    self.state.step, self.state.bad_steps, self.config.max_bad_steps
                ));
            }

            let step = self.state.step;
            if step.is_multiple_of(self.config.log_every) || step == self.total_steps {
                let elapsed = self.seconds_before + started.elapsed().as_secs_f64();
                let record = self.log_record(&outcome, &window, peak, elapsed);
                if let Some(metrics) = &mut self.metrics {
                    metrics.write(&record)?;
                }
                let eta = window
                    .mean_step_seconds()
                    .map(|s| Duration::from_secs_f64(s * (self.total_steps - step) as f64));
                progress.log(
                    step,
                    &format!(
                        "loss {:.4}  lr {:.2e}  {:.0} ex/s  data wait {:.0}%",
                        outcome.loss,
                        outcome.lr,
                        window.examples_per_second(),
                        100.0 * window.data_wait_fraction()
                    ),
                    eta,
                );
                window = Window::new();
            }
            let every = self.config.eval.every;
            let eval_step = step.is_multiple_of(every.max(1)) || step == self.total_steps;
            if every > 0 && eval_step && self.is_main_rank() {
                let results = self.evaluate();
                let mut record = json!({"step": step, "event": "eval"});
                let mut line = format!("eval at step {step}:");
                for (key, value) in &results {
                    record[key] = json!(value);
                    line.push_str(&format!(" {key} {value:.4}"));
                }
                if let Some(metrics) = &mut self.metrics {
                    metrics.write(&record)?;
                }
                progress.println(&line);
            }
            if step.is_multiple_of(self.config.checkpoint_every) && step < stop_at {
                self.save_checkpoint()?;
            }
            // Data parallel: all ranks stop after the same step, as agreed in `step_on`.
            let interrupted = match self.options.dist {
                Some(_) => self.stop_agreed,
                None => self.interrupt_requested(),
            };
            if interrupted {
                progress.println(&format!("interrupted after step {step}"));
                break;
            }
        }
        Ok(())
    }

    fn log_record(
        &self,
        outcome: &StepOutcome,
        window: &Window,
        peak: Option<f64>,
        elapsed: f64,
    ) -> Value {
        let s = &self.state;
        let flops_per_second = window.examples_per_second() * self.flops_per_example;
        json!({
            "step": s.step,
            "examples": s.examples_seen,
            "train_flops": s.flops_seen,
            "epoch": s.cursor.source.epoch,
            "loss": outcome.loss,
            "loss_mean": window.mean_loss(),
            "lr": outcome.lr,
            "grad_norm": outcome.grad_norm,
            "param_norm": self.optimizer.param_norm(),
            "examples_per_s": window.examples_per_second(),
            "step_time_s": window.mean_step_seconds(),
            "data_wait_fraction": window.data_wait_fraction(),
            "mfu": peak.map(|p| flops_per_second / p),
            "bad_samples": s.cursor.skipped.total(),
            "skipped": s.cursor.skipped,
            "bad_steps": s.bad_steps,
            "elapsed_s": elapsed,
        })
    }

    /// Validation loss and probes on the held-out batches, then every hook.
    pub fn evaluate(&mut self) -> Vec<(String, f64)> {
        let mut results = Vec::new();
        if let Some(validation) = &self.validation {
            results.extend(tch::no_grad(|| self.validate(validation)));
        }
        for hook in &mut self.hooks {
            match hook.evaluate(&self.model, self.state.step) {
                Ok(values) => results.extend(
                    values
                        .into_iter()
                        .map(|(k, v)| (format!("{}/{k}", hook.name()), v)),
                ),
                Err(message) => eprintln!("evaluation `{}` failed: {message}", hook.name()),
            }
        }
        results
    }

    fn validate(&self, validation: &Validation) -> Vec<(String, f64)> {
        let device = self.options.device;
        let n = validation.batches.len().max(1) as f64;
        let (mut loss, mut a, mut b) = (0.0, 0.0, 0.0);
        let mut features = Vec::new();
        for (images, tokens) in &validation.batches {
            let (images, tokens) = (images.to_device(device), tokens.to_device(device));
            match &self.model {
                Model::Clip(clip) => {
                    let encoded = clip.visual.encode_image(&images, false);
                    let image = cappa_models::layers::l2_normalize(&encoded.pooled);
                    let text = clip.encode_text(&tokens, false);
                    loss += contrastive_loss(clip, &image, &text).double_value(&[]);
                    let (i2t, t2i) = in_batch_retrieval_accuracy(&image, &text);
                    a += i2t;
                    b += t2i;
                    features.push(encoded.pooled);
                }
                Model::Cap(cap) => {
                    let decoder = &cap.config().decoder;
                    let encoded = cap.encode_image(&images, false);
                    let inputs = shift_right(&tokens, decoder.bos_id);
                    let logits = cap.decode(&encoded.tokens, &inputs, Decoding::Causal, false);
                    loss += caption_loss(&logits, &tokens, decoder.pad_id, 0.0).double_value(&[]);
                    a += token_accuracy(&logits, &tokens, decoder.pad_id);
                    features.push(encoded.pooled);
                }
            }
        }
        let mut results = vec![("val_loss".to_string(), loss / n)];
        match &self.model {
            Model::Clip(_) => {
                results.push(("val_i2t_accuracy".into(), a / n));
                results.push(("val_t2i_accuracy".into(), b / n));
            }
            Model::Cap(_) => results.push(("val_token_accuracy".into(), a / n)),
        }
        if let Some(labels) = &validation.labels {
            if !features.is_empty() {
                let features = Tensor::cat(&features, 0);
                results.push((
                    "probe_shape_accuracy".into(),
                    nearest_mean_accuracy(&features, labels),
                ));
            }
        }
        results
    }

    /// Writes a checkpoint of the current state (see [`crate::checkpoint`]).
    /// Data parallel: every rank calls it (the ranks' data cursors are gathered into the
    /// checkpoint), rank 0 writes, and all return once the checkpoint exists.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let step = self.state.step;
        let mut state = self.state.clone();
        if let Some(pg) = &self.options.dist {
            let cursors = crate::parallel::gather_json(pg, &self.state.cursor)?;
            state.cursor = cursors[0].clone();
            state.rank_cursors = cursors.clone();
            self.state.rank_cursors = cursors;
            if pg.rank() != 0 {
                pg.barrier()?;
                self.checkpointed_step = Some(step);
                return Ok(self.checkpoints.dir().join(Checkpoints::name(step)));
            }
        }
        let path = self.checkpoints.save(step, |dir| {
            save_weights(&self.vs, &dir.join(WEIGHTS_FILE))?;
            write_json(&dir.join(CONFIG_FILE), &self.model_config)?;
            let (m, v, steps) = self.optimizer.state();
            let optimizer_path = dir.join(OPTIMIZER_FILE);
            Tensor::write_safetensors(&[("exp_avg", m), ("exp_avg_sq", v)], &optimizer_path)
                .map_err(torch_error(&optimizer_path))?;
            sync_file(&optimizer_path)?;
            write_json(
                &dir.join(OPTIMIZER_LAYOUT_FILE),
                &json!({"steps": steps, "config": self.optimizer.config(), "slots": self.optimizer.slots()}),
            )?;
            write_json(&dir.join(EXPERIMENT_FILE), &self.config)?;
            let tokenizer_path = dir.join(TOKENIZER_FILE);
            self.tokenizer
                .save(&tokenizer_path)
                .map_err(|e| CheckpointError::Io {
                    path: tokenizer_path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            sync_file(&tokenizer_path)?;
            write_state(dir, &state)
        })?;
        if let Some(pg) = &self.options.dist {
            pg.barrier()?;
        }
        self.checkpointed_step = Some(step);
        Ok(path)
    }

    /// Bad samples skipped by every rank (as of the last checkpoint for the other ranks).
    fn bad_samples(&self) -> u64 {
        let others: u64 = (self.state.rank_cursors.iter().skip(1))
            .map(|c| c.skipped.total())
            .sum();
        self.state.cursor.skipped.total() + others
    }

    fn summary(&self, started: Instant) -> RunSummary {
        let seconds = self.seconds_before + started.elapsed().as_secs_f64();
        RunSummary {
            name: self.config.name.clone(),
            objective: self.config.objective,
            steps: self.state.step,
            total_steps: self.total_steps,
            examples_seen: self.state.examples_seen,
            train_flops_seen: self.state.flops_seen,
            train_flops_per_example: self.flops_per_example,
            params: num_params(&self.vs),
            final_loss: self.state.last_loss,
            seconds,
            examples_per_second: self.state.examples_seen as f64 / seconds.max(1e-9),
            bad_samples: self.bad_samples(),
            bad_steps: self.state.bad_steps,
            checkpoint: self
                .checkpoints
                .latest()
                .map(|(_, p)| p)
                .unwrap_or_default(),
            finished: self.state.step >= self.total_steps,
        }
    }
}

/// The loss the CLIP model was configured for: sigmoid when it has a logit bias, else softmax.
fn contrastive_loss(clip: &cappa_models::Clip, image: &Tensor, text: &Tensor) -> Tensor {
    contrastive_loss_of(image, text, &clip.logit_scale, clip.logit_bias.as_ref())
}

/// Sigmoid loss with a logit bias, softmax without.
fn contrastive_loss_of(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Tensor {
    match bias {
        Some(bias) => contrastive_sigmoid_loss(image, text, scale, bias),
        None => contrastive_softmax_loss(image, text, scale),
    }
}

/// Accuracy of a nearest-class-mean probe (cosine): class means from the first half of the
/// examples, predictions for the second half. Cheap enough to run inside the training loop.
pub fn nearest_mean_accuracy(features: &Tensor, labels: &[i64]) -> f64 {
    let n = labels.len();
    let half = n / 2;
    if half == 0 || features.size()[0] as usize != n {
        return 0.0;
    }
    let features =
        cappa_models::layers::l2_normalize(&features.to_kind(Kind::Float).to_device(Device::Cpu));
    let classes = labels.iter().copied().max().unwrap_or(0) + 1;
    let train = features.narrow(0, 0, half as i64);
    let test = features.narrow(0, half as i64, (n - half) as i64);
    let train_labels = Tensor::from_slice(&labels[..half]);
    let one_hot = train_labels.one_hot(classes).to_kind(Kind::Float); // (h, C)
    let sums = one_hot.tr().matmul(&train); // (C, D)
    let present = one_hot
        .sum_dim_intlist(&[0i64][..], false, Kind::Float)
        .gt(0.0); // (C)
    let means = cappa_models::layers::l2_normalize(&sums);
    let scores = test.matmul(&means.tr()); // (n − h, C)
    let scores = scores.masked_fill(&present.logical_not().unsqueeze(0), f64::NEG_INFINITY);
    let predicted = scores.argmax(1, false);
    let truth = Tensor::from_slice(&labels[half..]);
    predicted
        .eq_tensor(&truth)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

/// Step statistics between two log lines.
#[derive(Debug)]
struct Window {
    steps: u64,
    examples: u64,
    loss_sum: f64,
    finite_steps: u64,
    seconds: f64,
    wait_seconds: f64,
}

impl Window {
    fn new() -> Self {
        Window {
            steps: 0,
            examples: 0,
            loss_sum: 0.0,
            finite_steps: 0,
            seconds: 0.0,
            wait_seconds: 0.0,
        }
    }

    fn add(&mut self, outcome: &StepOutcome, examples: u64, time: Duration, wait: Duration) {
        self.steps += 1;
        self.examples += examples;
        if outcome.loss.is_finite() {
            self.loss_sum += outcome.loss;
            self.finite_steps += 1;
        }
        self.seconds += time.as_secs_f64();
        self.wait_seconds += wait.as_secs_f64();
    }

    fn mean_loss(&self) -> Option<f64> {
        (self.finite_steps > 0).then(|| self.loss_sum / self.finite_steps as f64)
    }

    fn mean_step_seconds(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.seconds / self.steps as f64)
    }

    fn examples_per_second(&self) -> f64 {
        self.examples as f64 / self.seconds.max(1e-9)
    }

    fn data_wait_fraction(&self) -> f64 {
        self.wait_seconds / self.seconds.max(1e-9)
    }
}

/// The scene world of a config: training split, or the held-out evaluation split.
fn scene_world(config: &ExperimentConfig, eval: bool) -> Result<SceneWorld, TrainError> {
    let scene = config.data.scene.clone();
    let world = if eval {
        SceneWorld::eval(scene, config.seed)
    } else {
        SceneWorld::new(scene, config.seed)
    };
    world.map_err(|e| ConfigError::new("data.scene", e.to_string()).into())
}

/// Trains the byte-level BPE on the first `data.tokenizer_captions` training captions.
fn train_tokenizer(config: &ExperimentConfig) -> Result<Tokenizer, TrainError> {
    let d = &config.data;
    let count = d.tokenizer_captions;
    let captions: Vec<String> = match d.kind {
        DataKind::Scene => {
            let world = scene_world(config, false)?;
            (0..count as u64)
                .flat_map(|i| {
                    let scene = world.scene(i);
                    let mut captions = world.captions(&scene, i);
                    captions.push(world.training_caption(&scene, i));
                    captions
                })
                .collect()
        }
        DataKind::Shards => WebDataset::new(expand_paths(&d.shards)?)
            .filter_map(Result::ok)
            .flat_map(|sample| sample.captions)
            .take(count)
            .collect(),
    };
    if captions.is_empty() {
        return Err(ConfigError::new(
            "data.shards",
            "no readable caption to train the tokenizer on; give data.tokenizer or check the shards",
        )
        .into());
    }
    Ok(Tokenizer::train_bpe(
        captions.into_iter(),
        d.vocab_size,
        d.lowercase,
    )?)
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses to resume with a config that changes the computation.
fn check_resumable(run_dir: &Path, config: &ExperimentConfig) -> Result<(), TrainError> {
    let path = run_dir.join(EXPERIMENT_FILE);
    let saved = read_json(&path)?;
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

fn read_optimizer_steps(dir: &Path) -> Result<u64, TrainError> {
    let path = dir.join(OPTIMIZER_LAYOUT_FILE);
    let value = read_json(&path)?;
    value["steps"].as_u64().ok_or_else(|| TrainError::Resume {
        what: path.display().to_string(),
        message: "has no `steps`".into(),
    })
}

/// Wall time logged by the last metrics line (to continue the clock on resume).
fn last_elapsed(path: &Path) -> Option<f64> {
    crate::metrics::read_metrics(path)
        .ok()?
        .iter()
        .rev()
        .find_map(|v| v.get("elapsed_s").and_then(Value::as_f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_separates_streams() {
        assert_ne!(mix(0, 1, 0), mix(0, 0, 1));
        assert_ne!(mix(0, 1, 0), mix(1, 1, 0));
        assert_eq!(mix(7, 3, 2), mix(7, 3, 2));
    }

    #[test]
    fn peaks_by_device_name() {
        assert_eq!(peak_flops_for("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_flops_for("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_flops_for("Some CPU"), None);
    }

    #[test]
    fn nearest_mean_probe_by_hand() {
        // Two classes along two axes; the second half is classified by the first half's means.
        let features = Tensor::from_slice(&[
            1.0f32, 0.1, 0.1, 1.0, 0.9, 0.0, 0.0, 0.8, // train: 0, 1, 0, 1
            1.0, 0.2, 0.2, 1.0, 0.3, 1.0, 1.0, 0.0, // test: 0, 1, 1, 1 (last is wrong)
        ])
        .view([8, 2]);
        let labels = [0, 1, 0, 1, 0, 1, 1, 1];
        assert_eq!(nearest_mean_accuracy(&features, &labels), 0.75);
    }
}
