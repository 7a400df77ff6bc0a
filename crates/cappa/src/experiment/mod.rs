//! Experiments: presets, the stage runner shared by `compare` and `scale`, and their results.
//!
//! A run directory holds one trainer run per (seed, objective) — `seed-S/OBJECTIVE/`, with the
//! trainer's checkpoints, metrics and summary — and the evaluation of its final checkpoint in
//! `CHECKPOINT/eval/`. Every stage that finished is reused by a rerun; an interrupted training
//! stage continues from its newest checkpoint.

mod preset;
mod results;
mod scale;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cappa_trainer::config::differing_fields;
use cappa_trainer::{
    ExperimentConfig, Objective, ProgressMode, Resume, RunSummary, Trainer, TrainerOptions,
    EXPERIMENT_FILE, SUMMARY_FILE,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::Device;

use cappa_eval::report::EvalReport;

use crate::checkpoint_eval::{EvalPlan, LoadedCheckpoint, OpenedSuite};
use cappa_eval::benchmarks::SuiteReport;

pub use preset::{
    match_text_depth, merge, merge_config, run_config, train_flops_per_example, Overrides, Preset,
    PresetError, COMPARE_PRESETS, MAX_MATCHED_TEXT_DEPTH,
};
pub use results::{
    objective_colour, objective_label, ByObjective, CompareResults, Finding, GroupWinner,
    MetricRow, ModelRow, Spread, TaskGroup, CLEAR_LEAD_WITH_ONE_SEED, FAR_AHEAD_ON_COMPOSITIONAL,
    TABLE_SHOTS,
};
pub use scale::{scale, ScaleModel, ScalePoint, ScalePreset, ScaleResults, SCALE_PRESETS};

/// A training stage stopped on Ctrl-C with a checkpoint; rerunning continues it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// How to run an experiment: where, on what, and what the command line changed.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The experiment's directory (`runs/NAME` by default).
    pub out: PathBuf,
    pub device: Device,
    /// The accelerator's name (for MFU).
    pub device_name: Option<String>,
    /// Seeds 0..N instead of the preset's count.
    pub seeds: Option<u64>,
    pub overrides: Overrides,
    pub progress: ProgressMode,
    /// Set (by a Ctrl-C handler) to stop the current training stage with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// A suite of real benchmarks to evaluate every model on, instead of the preset's.
    pub suite: Option<String>,
}

impl CompareOptions {
    pub fn new(out: PathBuf, device: Device) -> Self {
        CompareOptions {
            out,
            device,
            device_name: None,
            seeds: None,
            overrides: Overrides::default(),
            progress: ProgressMode::Auto,
            interrupt: None,
            suite: None,
        }
    }
}

/// One model to train and evaluate.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub objective: Objective,
    pub seed: u64,
    pub config: ExperimentConfig,
    pub dir: PathBuf,
    /// The contrastive text tower's depth when it was matched to the captioner's FLOPs.
    pub matched_text_depth: Option<i64>,
}

/// A trained and evaluated model.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub run: PlannedRun,
    pub summary: RunSummary,
    /// The evaluation report (`results.json`).
    pub report: EvalReport,
    pub eval_dir: PathBuf,
    /// The model's results on the experiment's suite of real benchmarks, if it has one.
    pub suite: Option<SuiteReport>,
}

/// The models of one experiment point: objectives × seeds sharing training settings.
#[derive(Debug, Clone, Copy)]
pub struct RunSet<'a> {
    pub train: &'a Value,
    pub objective_overrides: &'a std::collections::BTreeMap<String, Value>,
    pub objectives: &'a [Objective],
    pub seeds: u64,
    /// Size contrastive text towers to the first captioner's FLOPs.
    pub match_text_tower: bool,
}

/// Plans the runs of a [`RunSet`] in `dir` (`seed-S/OBJECTIVE/`), checking every config.
pub fn plan_runs(
    set: &RunSet<'_>,
    overrides: &Overrides,
    dir: &Path,
    name: &str,
) -> Result<Vec<PlannedRun>, PresetError> {
    let RunSet {
        train,
        objective_overrides,
        objectives,
        seeds,
        match_text_tower,
    } = *set;
    let mut runs = Vec::new();
    for seed in 0..seeds {
        let config_of = |objective: &Objective| {
            run_config(
                train,
                objective_overrides.get(objective.name()),
                overrides,
                *objective,
                seed,
                format!("{name}-{}-seed{seed}", objective.name()),
            )
        };
        // Captioners first: the first one's FLOPs are what contrastive text towers match.
        let mut target = None;
        for objective in objectives.iter().filter(|o| !o.is_contrastive()) {
            let config = config_of(objective)?;
            let flops =
                train_flops_per_example(&config).map_err(PresetError::config(&config.name))?;
            target.get_or_insert(flops);
            runs.push((*objective, config, None));
        }
        for objective in objectives.iter().filter(|o| o.is_contrastive()) {
            let mut config = config_of(objective)?;
            let depth = match (match_text_tower, target) {
                (true, Some(target)) => Some(match_text_depth(&mut config, target)?),
                _ => None,
            };
            runs.push((*objective, config, depth));
        }
    }
    // Keep the preset's order of objectives within each seed.
    let order = |o: &Objective| objectives.iter().position(|x| x == o).unwrap_or(0);
    runs.sort_by_key(|(o, config, _)| (config.seed, order(o)));
    Ok(runs
        .into_iter()
        .map(|(objective, config, matched_text_depth)| PlannedRun {
            dir: dir
                .join(format!("seed-{}", config.seed))
                .join(objective.name()),
            objective,
            seed: config.seed,
            config,
            matched_text_depth,
        })
        .collect())
}

/// Config fields in which a run may differ from the one saved in its directory: the trainer
/// continues such a run (a larger budget) or they do not change its results.
const CONTINUABLE_FIELDS: [&str; 4] = [
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval.every",
];

/// Refuses to mix runs: a directory that holds another experiment's run is named with the
/// fields that differ (the budget may grow: the trainer continues such a run).
fn check_existing(run: &PlannedRun) -> Result<(), PresetError> {
    let path = run.dir.join(EXPERIMENT_FILE);
    let saved: Value = match cappa_io::read_json(&path) {
        Ok(saved) => saved,
        Err(error) if error.is_not_found() => return Ok(()),
        Err(error) => return Err(PresetError::UnreadableRun { error }),
    };
    // Through the config type and back, so that both sides round floats the same way.
    let saved = cappa_trainer::config::from_value(saved)
        .map_err(|error| PresetError::SavedConfig { path, error })?;
    let saved = serde_json::to_value(&saved).expect("config serialises");
    let given = serde_json::to_value(&run.config).expect("config serialises");
    let mut fields = Vec::new();
    differing_fields(&saved, &given, "", &mut fields);
    fields.retain(|f| !f.starts_with("budget") && !CONTINUABLE_FIELDS.contains(&f.as_str()));
    if fields.is_empty() {
        Ok(())
    } else {
        Err(PresetError::OtherExperiment {
            dir: run.dir.clone(),
            fields,
        })
    }
}

/// The run's summary, if it has a readable one.
fn read_summary(dir: &Path) -> Option<RunSummary> {
    cappa_io::read_json(&dir.join(SUMMARY_FILE)).ok()
}

/// Reports stage progress on stderr with an estimate of the time left.
#[derive(Debug)]
pub(crate) struct StageClock {
    started: Instant,
    stages: usize,
    done: usize,
    /// Seconds per training FLOP and per evaluation, measured on finished stages.
    train_rate: Option<f64>,
    eval_seconds: Vec<f64>,
    quiet: bool,
}

impl StageClock {
    pub(crate) fn new(stages: usize, progress: ProgressMode) -> Self {
        StageClock {
            started: Instant::now(),
            stages,
            done: 0,
            train_rate: None,
            eval_seconds: Vec::new(),
            quiet: progress == ProgressMode::Quiet,
        }
    }

    fn announce(&self, what: &str, remaining_train_flops: f64, remaining_evals: usize) {
        if self.quiet {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = match self.train_rate {
            Some(rate) => {
                let eval = if self.eval_seconds.is_empty() {
                    0.0
                } else {
                    self.eval_seconds.iter().sum::<f64>() / self.eval_seconds.len() as f64
                };
                format!(
                    ", ≈{} left",
                    minutes(rate * remaining_train_flops + eval * remaining_evals as f64)
                )
            }
            None => String::new(),
        };
        eprintln!(
            "[stage {}/{} · {} elapsed{eta}] {what}",
            self.done + 1,
            self.stages,
            minutes(elapsed)
        );
    }

    fn finish_train(&mut self, flops: f64, seconds: f64) {
        self.done += 1;
        if flops > 0.0 && seconds > 0.0 {
            self.train_rate = Some(seconds / flops);
        }
    }

    fn finish_eval(&mut self, seconds: Option<f64>) {
        self.done += 1;
        self.eval_seconds.extend(seconds);
    }

    pub(crate) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

fn minutes(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0}s")
    } else {
        format!(
            "{}m{:02}s",
            (seconds / 60.0) as u64,
            (seconds % 60.0) as u64
        )
    }
}

/// Training FLOPs the run's budget plans (0 when they cannot be computed).
fn planned_flops(run: &PlannedRun) -> f64 {
    let per_example = train_flops_per_example(&run.config).unwrap_or(0.0);
    let examples = match run.config.budget {
        cappa_trainer::Budget::Steps(n) => (n * run.config.batch_size as u64) as f64,
        cappa_trainer::Budget::Examples(n) => n as f64,
        cappa_trainer::Budget::Flops(f) => f / per_example.max(1.0),
    };
    per_example * examples
}

/// Trains (or reuses) and evaluates (or reuses) every planned run, in order.
pub(crate) fn run_stages(
    runs: &[PlannedRun],
    plan: &EvalPlan,
    suite: Option<&OpenedSuite>,
    options: &CompareOptions,
) -> Result<(Vec<FinishedRun>, StageClock)> {
    for run in runs {
        check_existing(run)?;
    }
    let mut clock = StageClock::new(2 * runs.len(), options.progress);
    let mut finished = Vec::new();
    for (k, run) in runs.iter().enumerate() {
        let label = format!(
            "{} (seed {}) in {}",
            objective_label(run.objective),
            run.seed,
            run.dir.display()
        );
        let left = Remaining {
            train_flops: runs[k..].iter().map(planned_flops).sum(),
            evals: runs.len() - k,
        };
        let summary = train_stage(run, &label, left, &mut clock, options)?;
        let left = Remaining {
            train_flops: runs[k + 1..].iter().map(planned_flops).sum(),
            ..left
        };
        let (report, eval_dir) = eval_stage(&summary, &label, left, &mut clock, plan, options)?;
        let suite = suite
            .map(|suite| suite_stage(&summary, &label, suite, plan, options))
            .transpose()?;
        finished.push(FinishedRun {
            run: run.clone(),
            summary,
            report,
            eval_dir,
            suite,
        });
    }
    Ok((finished, clock))
}

/// The work left when a stage starts, for the time estimate.
#[derive(Debug, Clone, Copy)]
struct Remaining {
    train_flops: f64,
    evals: usize,
}

/// Reuses the run's finished training, or trains it (continuing from a checkpoint).
fn train_stage(
    run: &PlannedRun,
    label: &str,
    left: Remaining,
    clock: &mut StageClock,
    options: &CompareOptions,
) -> Result<RunSummary> {
    match read_summary(&run.dir).filter(|s| s.finished) {
        Some(summary) if within_budget(&summary, &run.config) => {
            clock.announce(
                &format!("train {label}: done before, reused"),
                left.train_flops,
                left.evals,
            );
            clock.finish_train(0.0, 0.0);
            Ok(summary)
        }
        _ => {
            clock.announce(&format!("train {label}"), left.train_flops, left.evals);
            let summary = train(run, options)?;
            clock.finish_train(planned_flops(run), summary.seconds);
            Ok(summary)
        }
    }
}

/// Reuses the evaluation of the run's final checkpoint (in `CHECKPOINT/eval/`) when it was
/// made with `plan`, or evaluates that checkpoint; the report and its directory.
fn eval_stage(
    summary: &RunSummary,
    label: &str,
    left: Remaining,
    clock: &mut StageClock,
    plan: &EvalPlan,
    options: &CompareOptions,
) -> Result<(EvalReport, PathBuf)> {
    let eval_dir = summary.checkpoint.join("eval");
    let (report, seconds) = match reusable_eval(&eval_dir, plan) {
        Some(report) => {
            clock.announce(
                &format!("evaluate {label}: done before, reused"),
                left.train_flops,
                left.evals,
            );
            (report, None)
        }
        None => {
            clock.announce(&format!("evaluate {label}"), left.train_flops, left.evals);
            let started = Instant::now();
            let report = evaluate(&summary.checkpoint, &eval_dir, plan, options.device)?;
            (report, Some(started.elapsed().as_secs_f64()))
        }
    };
    clock.finish_eval(seconds);
    Ok((report, eval_dir))
}

/// The suite of real benchmarks an experiment evaluates on (`--suite`, else the preset's),
/// opened (every path and annotation file checked) before anything is trained. The scene
/// benchmark is left out: every run is evaluated on the scene world anyway.
pub fn open_suite(
    preset_suite: Option<&str>,
    options: &CompareOptions,
) -> Result<Option<OpenedSuite>> {
    let Some(name) = options.suite.as_deref().or(preset_suite) else {
        return Ok(None);
    };
    let mut suite = OpenedSuite::open(name, &[])
        .with_context(|| format!("the evaluation suite `{name}` (fix it before training)"))?;
    suite.benchmarks.retain(|b| !b.is_scene());
    Ok((!suite.benchmarks.is_empty()).then_some(suite))
}

/// Where a checkpoint's suite results live: `CHECKPOINT/eval/SUITE/`.
fn suite_dir(checkpoint: &Path, suite: &OpenedSuite) -> PathBuf {
    checkpoint
        .join("eval")
        .join(format!("suite-{}", suite.name))
}

/// The suite a report was made with, beside it.
const SUITE_FILE: &str = "suite.json";

/// Reuses the suite results of the run's final checkpoint when they were made with the same
/// suite, or evaluates it (features cached in `CHECKPOINT/feature-cache`).
fn suite_stage(
    summary: &RunSummary,
    label: &str,
    suite: &OpenedSuite,
    plan: &EvalPlan,
    options: &CompareOptions,
) -> Result<SuiteReport> {
    let dir = suite_dir(&summary.checkpoint, suite);
    let definition = suite.definition();
    let saved: Option<Value> = cappa_io::read_json(&dir.join(SUITE_FILE)).ok();
    if saved.as_ref() == Some(&definition) {
        if let Ok(report) = cappa_io::read_json::<SuiteReport>(&dir.join(EVAL_REPORT_FILE)) {
            eprintln!("benchmarks {label}: done before, reused");
            return Ok(report);
        }
    }
    eprintln!("benchmarks {label}: suite `{}`", suite.name);
    let loaded = LoadedCheckpoint::load(&summary.checkpoint, options.device)?;
    let cache = summary
        .checkpoint
        .join(crate::checkpoint_eval::FEATURE_CACHE_DIR);
    let report = loaded.evaluate_suite(suite, plan, Some(&cache))?;
    let _ = std::fs::remove_file(dir.join(SUITE_FILE));
    report
        .write(&dir)
        .with_context(|| format!("writing {}", dir.display()))?;
    cappa_io::write_json(&dir.join(SUITE_FILE), &definition)?;
    Ok(report)
}

/// A finished run counts as done when it trained for the budget planned now.
fn within_budget(summary: &RunSummary, config: &ExperimentConfig) -> bool {
    let per_example = summary.train_flops_per_example;
    config
        .total_steps(per_example)
        .is_ok_and(|steps| steps == summary.total_steps)
}

fn train(run: &PlannedRun, options: &CompareOptions) -> Result<RunSummary> {
    let trainer_options = TrainerOptions {
        device: options.device,
        device_name: options.device_name.clone(),
        progress: options.progress,
        resume: Resume::Auto,
        interrupt: options.interrupt.clone(),
        dist: None,
    };
    let mut trainer = Trainer::start(run.config.clone(), &run.dir, trainer_options)
        .map_err(|error| {
            if error.is_config() {
                anyhow::Error::new(PresetError::Refused {
                    dir: run.dir.clone(),
                    error,
                })
            } else {
                anyhow::Error::new(error)
            }
        })
        .with_context(|| format!("starting the training run in {}", run.dir.display()))?;
    let summary = trainer.run()?;
    if !summary.finished {
        eprintln!(
            "interrupted at step {} of {} with a checkpoint in {}; run the same command again to \
             continue",
            summary.steps,
            summary.total_steps,
            summary.checkpoint.display()
        );
        bail!(Interrupted);
    }
    Ok(summary)
}

/// The plan an evaluation directory was made with, beside its report.
const EVAL_PLAN_FILE: &str = "plan.json";

/// The evaluation report in an evaluation directory (written by
/// [`cappa_eval::report::write_report`]).
const EVAL_REPORT_FILE: &str = "results.json";

#[derive(Serialize, Deserialize, PartialEq)]
struct SavedPlan {
    plan: EvalPlan,
}

/// The report in `dir` when it is complete and was made with `plan`.
fn reusable_eval(dir: &Path, plan: &EvalPlan) -> Option<EvalReport> {
    let saved: SavedPlan = cappa_io::read_json(&dir.join(EVAL_PLAN_FILE)).ok()?;
    if &saved.plan != plan {
        return None;
    }
    cappa_io::read_json(&dir.join(EVAL_REPORT_FILE)).ok()
}

/// Evaluates `checkpoint` with `plan`, writing the report into `dir`.
fn evaluate(checkpoint: &Path, dir: &Path, plan: &EvalPlan, device: Device) -> Result<EvalReport> {
    let loaded = LoadedCheckpoint::load(checkpoint, device)?;
    let report = loaded.evaluate_scene(plan)?;
    // The plan is written after the results: a plan file means the results are complete.
    let _ = std::fs::remove_file(dir.join(EVAL_PLAN_FILE));
    cappa_eval::report::write_report(dir, &report)
        .with_context(|| format!("writing {}", dir.display()))?;
    cappa_io::write_json(&dir.join(EVAL_PLAN_FILE), &SavedPlan { plan: plan.clone() })?;
    Ok(report)
}

/// The preset an experiment ran, in its directory.
pub const PRESET_FILE: &str = "preset.json";

/// An experiment's results (`CompareResults` or `ScaleResults` as JSON), in its directory.
pub const RESULTS_FILE: &str = "results.json";

/// An experiment's report in Markdown, in its directory.
pub const REPORT_FILE: &str = "report.md";

/// Trains and evaluates every model of `preset` (resuming finished stages), then writes
/// `report.md`, `results.json` and `plots/` into `options.out`.
pub fn compare(preset: &Preset, options: &CompareOptions) -> Result<CompareResults> {
    let seeds = options.seeds.unwrap_or(preset.seeds).max(1);
    let set = RunSet {
        train: &preset.train,
        objective_overrides: &preset.objective_overrides,
        objectives: &preset.objectives,
        seeds,
        match_text_tower: preset.match_text_tower,
    };
    let runs = plan_runs(&set, &options.overrides, &options.out, &preset.name)?;
    let suite = open_suite(preset.suite.as_deref(), options)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    cappa_io::write_json(&options.out.join(PRESET_FILE), preset)?;
    let (finished, clock) = run_stages(&runs, &preset.eval, suite.as_ref(), options)?;
    let mut results = CompareResults::gather(preset, &finished, options, clock.elapsed());
    results.write(&options.out, &finished)?;
    Ok(results)
}
