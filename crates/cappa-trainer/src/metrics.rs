//! Metrics (one JSON object per line in `RUN/metrics.jsonl`) and progress display.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cappa_models::checkpoint::write_atomically;
use cappa_models::CheckpointError;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

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
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
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
        write_atomically(path, |temp| fs::write(temp, kept.as_bytes()).map_err(io))?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, record: &Value) -> Result<(), CheckpointError> {
        let mut line = serde_json::to_string(record).expect("metrics serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| CheckpointError::Io {
                path: self.path.clone(),
                source,
            })
    }
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
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_secs(6)), "6s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
