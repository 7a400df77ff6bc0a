//! Metrics (one JSON object per line in `RUN/metrics.jsonl`): the step statistics between two
//! log lines, the records of training and evaluation steps, the MFU's peak FLOP/s, and the
//! progress display.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cappa_io::{io_error, FileError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tch::Device;

use crate::checkpoint::TrainState;
use crate::objective::LossSplit;
use crate::trainer::StepOutcome;

pub const METRICS_FILE: &str = "metrics.jsonl";

/// `metrics.jsonl`, appended line by line and flushed after each line.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens the log. With `resume_step`, lines of steps after it (written by the run after its
    /// last checkpoint) are dropped first, so a resumed run's log reads as if it had never
    /// stopped; without it the log starts empty.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self, FileError> {
        let kept = match (resume_step, File::open(path)) {
            (Some(step), Ok(file)) => BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .filter(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s <= step)
                })
                .map(|line| line + "\n")
                .collect::<String>(),
            _ => String::new(),
        };
        cappa_io::write_atomically(path, kept.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, record: &Value) -> Result<(), FileError> {
        let mut line = serde_json::to_string(record).expect("metrics serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(io_error(&self.path))
    }
}

/// Wall time logged by the last metrics line (to continue the clock on resume).
pub(crate) fn last_elapsed(path: &Path) -> Option<f64> {
    read_metrics(path)
        .ok()?
        .iter()
        .rev()
        .find_map(|v| v.get("elapsed_s").and_then(Value::as_f64))
}

/// Step statistics between two log lines.
#[derive(Debug, Default)]
pub(crate) struct Window {
    steps: u64,
    examples: u64,
    loss_sum: f64,
    finite_steps: u64,
    seconds: f64,
    wait_seconds: f64,
    split: Option<LossSplit>,
}

impl Window {
    /// CapPa's loss by kind of example over the window's finite steps.
    pub(crate) fn split(&self) -> Option<LossSplit> {
        self.split
    }

    /// Adds a step of `examples` that took `time`, of which `wait` waiting for data.
    pub(crate) fn add(
        &mut self,
        outcome: &StepOutcome,
        examples: u64,
        time: Duration,
        wait: Duration,
    ) {
        self.steps += 1;
        self.examples += examples;
        if outcome.loss.is_finite() {
            self.loss_sum += outcome.loss;
            self.finite_steps += 1;
            if let Some(split) = &outcome.split {
                self.split.get_or_insert_with(LossSplit::default).add(split);
            }
        }
        self.seconds += time.as_secs_f64();
        self.wait_seconds += wait.as_secs_f64();
    }

    /// The mean of the finite losses.
    pub(crate) fn mean_loss(&self) -> Option<f64> {
        (self.finite_steps > 0).then(|| self.loss_sum / self.finite_steps as f64)
    }

    pub(crate) fn mean_step_seconds(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.seconds / self.steps as f64)
    }

    pub(crate) fn examples_per_second(&self) -> f64 {
        self.examples as f64 / self.seconds.max(1e-9)
    }

    pub(crate) fn data_wait_fraction(&self) -> f64 {
        self.wait_seconds / self.seconds.max(1e-9)
    }

    /// The progress line of a log step.
    pub(crate) fn summary_line(&self, outcome: &StepOutcome) -> String {
        let split = match self.split.map(|s| s.means()) {
            Some((Some(p), Some(c))) => format!(" (parallel {p:.3}, causal {c:.3})"),
            _ => String::new(),
        };
        format!(
            "loss {:.4}{split}  lr {:.2e}  {:.0} ex/s  data wait {:.0}%",
            outcome.loss,
            outcome.lr,
            self.examples_per_second(),
            100.0 * self.data_wait_fraction()
        )
    }
}

/// What a log step knows besides the window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepContext<'a> {
    pub state: &'a TrainState,
    pub outcome: &'a StepOutcome,
    pub flops_per_example: f64,
    pub param_norm: f64,
    /// The MFU's denominator (every rank's device), if known.
    pub peak_flops: Option<f64>,
    /// Seconds since the run began, resumed runs included.
    pub elapsed: f64,
}

/// The metrics record of a log step.
pub(crate) fn step_record(step: StepContext<'_>, window: &Window) -> Value {
    let s = step.state;
    let outcome = step.outcome;
    let flops_per_second = window.examples_per_second() * step.flops_per_example;
    let mut record = json!({
        "step": s.step,
        "examples": s.examples_seen,
        "train_flops": s.flops_seen,
        "epoch": s.cursor.source.epoch,
        "loss": outcome.loss,
        "loss_mean": window.mean_loss(),
        "lr": outcome.lr,
        "grad_norm": outcome.grad_norm,
        "param_norm": step.param_norm,
        "examples_per_s": window.examples_per_second(),
        "step_time_s": window.mean_step_seconds(),
        "data_wait_fraction": window.data_wait_fraction(),
        "mfu": step.peak_flops.map(|p| flops_per_second / p),
        "bad_samples": s.cursor.skipped.total(),
        "skipped": s.cursor.skipped,
        "bad_steps": s.bad_steps,
        "elapsed_s": step.elapsed,
    });
    if let Some(split) = window.split() {
        let (parallel, causal) = split.means();
        record["loss_parallel_mean"] = json!(parallel);
        record["loss_causal_mean"] = json!(causal);
        record["parallel_examples"] = json!(split.parallel_examples);
        record["causal_examples"] = json!(split.causal_examples);
    }
    record
}

/// The metrics record and the progress line of an evaluation at `step`.
pub(crate) fn eval_record(step: u64, results: &[(String, f64)]) -> (Value, String) {
    let mut record = json!({"step": step, "event": "eval"});
    let mut line = format!("eval at step {step}:");
    for (key, value) in results {
        record[key] = json!(value);
        line.push_str(&format!(" {key} {value:.4}"));
    }
    (record, line)
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

/// The MFU's denominator: `peak_flops` from the config, else the table's value for a CUDA
/// device of that name; times the number of ranks.
pub(crate) fn total_peak_flops(
    configured: Option<f64>,
    device: Device,
    device_name: Option<&str>,
    world_size: usize,
) -> Option<f64> {
    configured
        .or_else(|| {
            matches!(device, Device::Cuda(_))
                .then(|| device_name.and_then(peak_flops_for))
                .flatten()
        })
        .map(|peak| peak * world_size as f64)
}

/// Reads every record of a metrics log.
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<Value>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A progress bar on a terminal, plain lines otherwise.
    Auto,
    /// A plain line per log step.
    Plain,
    /// Nothing.
    Quiet,
}

/// The progress display.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
}

impl Progress {
    pub fn new(mode: ProgressMode, position: u64, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let (bar, plain) = match mode {
            ProgressMode::Quiet => (None, false),
            ProgressMode::Plain => (None, true),
            ProgressMode::Auto if terminal => {
                let bar = ProgressBar::new(total).with_position(position);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                    )
                    .expect("a valid template"),
                );
                bar.enable_steady_tick(Duration::from_millis(500));
                (Some(bar), false)
            }
            ProgressMode::Auto => (None, true),
        };
        Progress { bar, plain, total }
    }

    /// After each step.
    pub fn step(&self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    /// After each log step: `summary` is a short line such as `loss 2.31 lr 1e-3`.
    pub fn log(&self, step: u64, summary: &str, eta: Option<Duration>) {
        if let Some(bar) = &self.bar {
            bar.set_message(summary.to_string());
        } else if self.plain {
            let eta = eta.map_or(String::new(), |d| format!("  eta {}", format_duration(d)));
            eprintln!("step {step}/{}  {summary}{eta}", self.total);
        }
    }

    /// A line that must stay visible (evaluation results, checkpoints, warnings).
    pub fn println(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.println(line);
        } else if self.plain {
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `1h02m03s`, `4m05s` or `6s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_lines_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        for step in 1..=5 {
            log.write(&serde_json::json!({"step": step, "loss": step as f64 / 10.0}))
                .unwrap();
        }
        drop(log);
        let mut log = MetricsLog::open(&path, Some(3)).unwrap();
        log.write(&serde_json::json!({"step": 4, "loss": 9.0}))
            .unwrap();
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        assert_eq!(read_metrics(&path).unwrap()[3]["loss"], 9.0);
    }

    #[test]
    fn peaks_by_device_name() {
        assert_eq!(peak_flops_for("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_flops_for("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_flops_for("Some CPU"), None);
        // The table applies to CUDA devices only; a configured peak to any, times the ranks.
        assert_eq!(total_peak_flops(None, Device::Cpu, Some("H100"), 1), None);
        assert_eq!(
            total_peak_flops(None, Device::Cuda(0), Some("H100"), 2),
            Some(2.0 * 989e12)
        );
        assert_eq!(
            total_peak_flops(Some(1e12), Device::Cpu, None, 4),
            Some(4e12)
        );
    }

    #[test]
    fn windows_average_finite_losses_only() {
        let mut window = Window::default();
        let outcome = |loss| StepOutcome {
            loss,
            grad_norm: 1.0,
            lr: 1e-3,
            applied: loss.is_finite(),
            split: None,
        };
        let second = Duration::from_secs(1);
        window.add(&outcome(2.0), 8, second, Duration::from_millis(250));
        window.add(&outcome(f64::NAN), 8, second, Duration::ZERO);
        window.add(&outcome(4.0), 8, second * 2, Duration::from_millis(750));
        assert_eq!(window.mean_loss(), Some(3.0));
        assert_eq!(window.mean_step_seconds(), Some(4.0 / 3.0));
        assert_eq!(window.examples_per_second(), 6.0);
        assert_eq!(window.data_wait_fraction(), 0.25);
        assert_eq!(Window::default().mean_loss(), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_secs(6)), "6s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
