//! The training loop: one loop for every objective.
//!
//! [`Trainer::start`] checks everything, then sets up (or continues) the run directory;
//! [`Trainer::run_until`] drives the loader and calls [`Trainer::step_on`], which is one
//! update: the loss of each micro-batch ([`crate::objective`]) and its backward, the ranks'
//! agreement on the loss and the gradient exchange ([`crate::parallel`]), the AdamW step
//! ([`crate::optim`]). Between steps the loop logs ([`crate::metrics`]), evaluates
//! ([`crate::validation`]) and checkpoints ([`crate::checkpoint`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cappa_data::loader::{Loader, LoaderConfig, LoaderCursor};
use cappa_data::tokenizer::Tokenizer;
use cappa_models::{num_params, train_flops, Model, ModelConfig};
use cappa_torch_ext::autocast::{Autocast, AutocastDtype};
use cappa_torch_ext::dist::ProcessGroup;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::checkpoint::{
    self, Checkpoints, Contents, ResumePoint, TrainState, EXPERIMENT_FILE, TOKENIZER_FILE,
};
use crate::config::{ConfigError, ExperimentConfig, Objective, Precision};
use crate::error::TrainError;
use crate::metrics::{self, MetricsLog, Progress, ProgressMode, StepContext, Window, METRICS_FILE};
use crate::objective::{self, LossContext, LossSplit};
use crate::optim::{AdamW, StepReport};
use crate::random;
use crate::schedule::lr_factor;
use crate::validation::{EvalHook, Validation};

pub const SUMMARY_FILE: &str = "summary.json";

/// Whether to continue a run directory that already has checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Refuse a directory with checkpoints.
    Never,
    /// Continue from its newest intact checkpoint, or start fresh if it has none.
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
    /// CapPa: the mean training loss of the parallel-prediction examples and of the causal
    /// ones over the last log window (this rank's examples); absent for other objectives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss_parallel: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss_causal: Option<f64>,
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
    /// CapPa: this rank's loss by kind of example (parallel or causal).
    pub split: Option<LossSplit>,
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
    /// CapPa: the parallel and causal losses of the last logged window.
    last_split: Option<LossSplit>,
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

impl Trainer {
    /// Checks the configuration and the data, builds (or trains) the tokenizer and the model —
    /// all before anything is written — then creates the run directory, or continues it from
    /// its newest intact checkpoint with [`Resume::Auto`].
    pub fn start(
        config: ExperimentConfig,
        run_dir: &Path,
        options: TrainerOptions,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        check_world_size(&config, &options)?;
        let main_rank = options.dist.as_ref().is_none_or(|pg| pg.rank() == 0);
        let checkpoints = Checkpoints::new(run_dir, config.keep_checkpoints);
        let resume = checkpoint::find_resume_point(
            &checkpoints,
            run_dir,
            &config,
            options.resume,
            main_rank,
        )?;
        let resume_dir = resume.as_ref().map(|point| point.dir.as_path());
        let tokenizer = crate::data::run_tokenizer(&config, resume_dir, options.dist.as_deref())?;
        if let Some(point) = &resume {
            point.check_tokenizer(&tokenizer)?;
        }
        let model_config = config.model_config(crate::tokens::special_tokens(&tokenizer))?;
        let flops_per_example = train_flops(model_config.forward_flops());
        let total_steps = config.total_steps(flops_per_example)?;

        // Everything is checked: from here on the run directory is written (by rank 0 only).
        if main_rank {
            prepare_run_dir(run_dir, &checkpoints, &config, &tokenizer, resume.as_ref())?;
        }
        let Built {
            vs,
            model,
            optimizer,
            state,
        } = build(&config, &model_config, &options, resume.as_ref())?;
        let checkpointed_step = resume.as_ref().map(|point| point.step);
        let metrics_path = run_dir.join(METRICS_FILE);
        let metrics = match main_rank {
            true => Some(MetricsLog::open(&metrics_path, checkpointed_step)?),
            false => None,
        };
        let seconds_before = (checkpointed_step)
            .and_then(|_| metrics::last_elapsed(&metrics_path))
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
            last_split: None,
            stop_agreed: false,
        };
        if trainer.config.eval.every > 0 && main_rank {
            let batch_size = trainer.config.batch_size / trainer.config.world_size;
            let loader_config = trainer.loader_config(batch_size, 0);
            let validation = Validation::load(&trainer.config, &trainer.tokenizer, loader_config)?;
            trainer.validation = validation;
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
        let image_size = self.vision_image_size();
        let device = self.options.device;
        crate::data::loader_config(&self.config, image_size, device, batch_size, seed)
    }

    fn micro_batch_size(&self) -> usize {
        self.config.batch_size / self.config.world_size / self.config.accumulation
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
            random::seed_torch(random::dropout_seed(self.config.seed, step));
        }
        let (local_loss, split) = self.backward(micro_batches, step)?;
        let loss = self.agree_on_loss(local_loss)?;
        let report = self.update(loss, lr, factor)?;
        if !report.applied {
            self.count_bad_step(step, loss, report.grad_norm)?;
        }
        self.state.step += 1;
        self.state.last_loss = loss.is_finite().then_some(loss);
        Ok(StepOutcome {
            loss,
            grad_norm: report.grad_norm,
            lr,
            applied: report.applied,
            split,
        })
    }

    /// Accumulates the gradient of the micro-batches' mean loss and returns that mean (this
    /// rank's), and CapPa's loss by kind of example.
    fn backward(
        &self,
        micro_batches: &[(Tensor, Tensor)],
        step: u64,
    ) -> Result<(f64, Option<LossSplit>), TrainError> {
        let parts = micro_batches.len() as f64;
        // Data parallel: the ranks' gradients are summed (see `objective::rank_share`).
        let share = objective::rank_share(&self.model, self.world_size());
        let mut loss_sum = 0.0;
        let mut split: Option<LossSplit> = None;
        let device = self.options.device;
        // Pinned batches (CUDA) copy asynchronously; the copy orders before the forward on
        // the same stream.
        let non_blocking = matches!(device, Device::Cuda(_));
        for (micro, (images, tokens)) in micro_batches.iter().enumerate() {
            let images = images.to_device_(device, images.kind(), non_blocking, false);
            let tokens = tokens.to_device_(device, tokens.kind(), non_blocking, false);
            let (loss, micro_split) = self.micro_loss(&images, &tokens, step, micro as u64)?;
            (&loss / (parts * share)).backward();
            loss_sum += loss.double_value(&[]);
            if let Some(s) = micro_split {
                split.get_or_insert_with(LossSplit::default).add(&s);
            }
        }
        Ok((loss_sum / parts, split))
    }

    /// The loss of one micro-batch, under bf16 autocast when the config asks for it.
    fn micro_loss(
        &self,
        images: &Tensor,
        tokens: &Tensor,
        step: u64,
        micro: u64,
    ) -> Result<(Tensor, Option<LossSplit>), TrainError> {
        let context = LossContext {
            config: &self.config,
            device: self.options.device,
            dist: self.options.dist.as_deref(),
        };
        match self.config.precision {
            Precision::Fp32 => {
                objective::micro_loss(&self.model, context, images, tokens, step, micro)
            }
            Precision::Bf16 => {
                let _autocast = Autocast::new(self.options.device, AutocastDtype::BFloat16)?;
                objective::micro_loss(&self.model, context, images, tokens, step, micro)
            }
        }
    }

    /// Data parallel: one small collective, so that every rank sees the same (mean) loss and
    /// takes the same skip-or-step decision, and learns whether any rank was asked to stop.
    fn agree_on_loss(&mut self, loss: f64) -> Result<f64, TrainError> {
        let Some(pg) = &self.options.dist else {
            return Ok(loss);
        };
        let asked = self.interrupt_requested();
        let (mean, stop) = crate::parallel::mean_and_any(pg, loss, asked)?;
        self.stop_agreed = stop;
        Ok(mean)
    }

    /// The AdamW step with this rank's gradient, or the ranks' summed one; none for a
    /// non-finite loss.
    fn update(&mut self, loss: f64, lr: f64, factor: f64) -> Result<StepReport, TrainError> {
        if !loss.is_finite() {
            self.optimizer.zero_grad();
            return Ok(StepReport {
                grad_norm: f64::NAN,
                applied: false,
            });
        }
        Ok(match &self.options.dist {
            None => self.optimizer.step(lr, factor),
            Some(pg) => {
                let grad = crate::parallel::summed_gradient(pg, &self.optimizer)?;
                self.optimizer.step_with_grad(grad, lr, factor)
            }
        })
    }

    /// Counts a skipped step, or stops with [`TrainError::NonFinite`] once `max_bad_steps`
    /// were skipped (after checkpointing the last good weights).
    fn count_bad_step(&mut self, step: u64, loss: f64, grad_norm: f64) -> Result<(), TrainError> {
        let (what, value) = if loss.is_finite() {
            ("gradient norm", grad_norm)
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
        Ok(())
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
            let seed = random::loader_seed(self.config.seed, self.rank());
            let config = self.loader_config(self.micro_batch_size(), seed);
            let mut loader = Loader::start(
                crate::data::training_source(&self.config, self.rank(), self.world_size())?,
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
            cappa_io::write_json(&self.run_dir.join(SUMMARY_FILE), &summary)?;
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
        let mut window = Window::default();
        let peak = metrics::total_peak_flops(
            self.config.peak_flops,
            self.options.device,
            self.options.device_name.as_deref(),
            self.world_size(),
        );
        while self.state.step < stop_at {
            let step_started = Instant::now();
            let StepBatches {
                micro_batches,
                cursor,
                wait,
            } = self.next_micro_batches(loader)?;
            let local: u64 = micro_batches.iter().map(|(i, _)| i.size()[0] as u64).sum();
            let examples = local * self.world_size() as u64;
            let outcome = self.step_on(&micro_batches)?;
            self.state.examples_seen += examples;
            self.state.flops_seen += examples as f64 * self.flops_per_example;
            self.state.cursor = cursor;
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
                self.log_step(&outcome, &window, peak, started, progress)?;
                self.last_split = window.split();
                window = Window::default();
            }
            let every = self.config.eval.every;
            let eval_step = step.is_multiple_of(every.max(1)) || step == self.total_steps;
            if every > 0 && eval_step && self.is_main_rank() {
                self.log_evaluation(progress)?;
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

    /// The `accumulation` micro-batches of the next step.
    fn next_micro_batches(&self, loader: &mut Loader) -> Result<StepBatches, TrainError> {
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
        Ok(StepBatches {
            micro_batches,
            cursor: cursor.expect("accumulation is at least 1"),
            wait,
        })
    }

    /// Writes the metrics record of a log step and shows its progress line.
    fn log_step(
        &mut self,
        outcome: &StepOutcome,
        window: &Window,
        peak_flops: Option<f64>,
        started: Instant,
        progress: &Progress,
    ) -> Result<(), TrainError> {
        let step = self.state.step;
        let context = StepContext {
            state: &self.state,
            outcome,
            flops_per_example: self.flops_per_example,
            param_norm: self.optimizer.param_norm(),
            peak_flops,
            elapsed: self.seconds_before + started.elapsed().as_secs_f64(),
        };
        let record = metrics::step_record(context, window);
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&record)?;
        }
        let eta = window
            .mean_step_seconds()
            .map(|s| Duration::from_secs_f64(s * (self.total_steps - step) as f64));
        progress.log(step, &window.summary_line(outcome), eta);
        Ok(())
    }

    /// Evaluates, then logs and shows the results.
    fn log_evaluation(&mut self, progress: &Progress) -> Result<(), TrainError> {
        let results = self.evaluate();
        let (record, line) = metrics::eval_record(self.state.step, &results);
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&record)?;
        }
        progress.println(&line);
        Ok(())
    }

    /// Validation loss and probes on the held-out batches, then every hook.
    pub fn evaluate(&mut self) -> Vec<(String, f64)> {
        let mut results = Vec::new();
        if let Some(validation) = &self.validation {
            let device = self.options.device;
            results.extend(tch::no_grad(|| validation.run(&self.model, device)));
        }
        for hook in &mut self.hooks {
            match hook.evaluate(&self.model, self.state.step) {
                Ok(values) => results.extend(
                    values
                        .into_iter()
                        .map(|(k, v)| (format!("{}/{k}", hook.name()), v)),
                ),
                Err(error) => eprintln!("evaluation `{}` failed: {error}", hook.name()),
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
        let contents = Contents {
            vs: &self.vs,
            model_config: &self.model_config,
            optimizer: &self.optimizer,
            config: &self.config,
            tokenizer: &self.tokenizer,
            state: &state,
        };
        let path =
            (self.checkpoints).save(step, |dir| checkpoint::write_contents(dir, contents))?;
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
            final_loss_parallel: self.last_split.and_then(|s| s.means().0),
            final_loss_causal: self.last_split.and_then(|s| s.means().1),
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

/// A run's model and optimizer, and the state they are at.
struct Built {
    vs: VarStore,
    model: Model,
    optimizer: AdamW,
    state: TrainState,
}

/// Initialises the model from the run seed and its optimizer, loads both from the checkpoint
/// when resuming, and makes every rank's parameters rank 0's.
fn build(
    config: &ExperimentConfig,
    model_config: &ModelConfig,
    options: &TrainerOptions,
    resume: Option<&ResumePoint>,
) -> Result<Built, TrainError> {
    if let Device::Cuda(_) = options.device {
        tch::Cuda::cudnn_set_benchmark(true);
        cappa_torch_ext::backends::set_tf32(config.tf32);
    }
    let mut vs = VarStore::new(options.device);
    let model = random::with_torch_seed(random::init_seed(config.seed), || model_config.build(&vs));
    let mut optimizer = AdamW::new(&vs, config.optim);
    let state = match resume {
        Some(point) => {
            let rank = options.dist.as_ref().map(|pg| pg.rank());
            let device = options.device;
            let (dir, step) = (&point.dir, point.step);
            checkpoint::load_contents(dir, step, &mut vs, &mut optimizer, device, rank)?
        }
        None => TrainState::default(),
    };
    if let Some(pg) = &options.dist {
        crate::parallel::broadcast_parameters(pg, &optimizer)?;
    }
    Ok(Built {
        vs,
        model,
        optimizer,
        state,
    })
}

/// The batches of one step.
#[derive(Debug)]
struct StepBatches {
    /// `accumulation` pairs of images `(b, 3, H, W)` and tokens `(b, L)`.
    micro_batches: Vec<(Tensor, Tensor)>,
    /// Where the data continues after them.
    cursor: LoaderCursor,
    /// The time spent waiting for them.
    wait: Duration,
}

/// Refuses a config whose `world_size` is not the number of processes that run it.
fn check_world_size(config: &ExperimentConfig, options: &TrainerOptions) -> Result<(), TrainError> {
    let processes = options.dist.as_ref().map_or(1, |pg| pg.world_size());
    if config.world_size == processes {
        return Ok(());
    }
    Err(ConfigError::new(
        "world_size",
        format!(
            "is {} but {processes} process(es) run this training: start {} processes with \
             `cappa launch --nproc {}` (or torchrun), or set world_size={processes}",
            config.world_size, config.world_size, config.world_size
        ),
    )
    .into())
}

/// Creates (or continues) the run directory: removes temporary leftovers, sets damaged
/// checkpoints aside, writes the configuration and, for a new run, the tokenizer.
fn prepare_run_dir(
    run_dir: &Path,
    checkpoints: &Checkpoints,
    config: &ExperimentConfig,
    tokenizer: &Tokenizer,
    resume: Option<&ResumePoint>,
) -> Result<(), TrainError> {
    fs::create_dir_all(run_dir).map_err(cappa_io::io_error(run_dir))?;
    checkpoints.remove_stale()?;
    if let Some(point) = resume {
        point.set_damaged_aside(checkpoints)?;
    }
    cappa_io::write_json(&run_dir.join(EXPERIMENT_FILE), config)?;
    if resume.is_none() {
        tokenizer.save(run_dir.join(TOKENIZER_FILE))?;
    }
    Ok(())
}
