//! `scale`: each objective trained over a grid of model sizes × examples seen, and over the
//! caption quality of the data (the scene world's alt-text-like caption noise), with each
//! task's metric plotted against training compute (log-log, as the paper's scaling figures)
//! and against caption noise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use cappa_trainer::Objective;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use cappa_eval::benchmarks::SuiteReport;
use cappa_eval::report::EvalReport;

use super::preset::read_named;
use super::results::{
    metrics_of, objective_colour, objective_label, plot_path, write_plots_markdown, Metric,
    TaskGroup, COMPOSITIONAL_ALL, PLOTS_DIR, TABLE_SHOTS,
};
use super::{
    merge_config, minutes, open_suite, plan_runs, run_stages, CompareOptions, PlannedRun,
    PresetError, RunSet, PRESET_FILE, REPORT_FILE, RESULTS_FILE,
};
use crate::checkpoint_eval::EvalPlan;
use crate::plots::{self, Axes, Line, LineStyle, Panel};

/// A model size of a sweep: a name and its changes to the shared training config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleModel {
    pub name: String,
    #[serde(default)]
    pub train: Value,
}

/// A `scale` preset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalePreset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub objectives: Vec<Objective>,
    /// Model sizes, smallest first.
    pub models: Vec<ScaleModel>,
    /// Examples seen per run (the compute axis, with the model sizes).
    pub examples: Vec<u64>,
    /// Caption-noise levels: the first is used for the compute sweep; the others are run at
    /// the first model size and the largest number of examples (the data-quality axis).
    pub caption_noise: Vec<f32>,
    #[serde(default = "yes")]
    pub match_text_tower: bool,
    #[serde(default)]
    pub train: Value,
    #[serde(default)]
    pub eval: EvalPlan,
    /// A suite of real benchmarks every point is also evaluated on (`--suite` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
}

fn yes() -> bool {
    true
}

/// The built-in `scale` presets: name, JSON.
pub const SCALE_PRESETS: [(&str, &str); 2] = [
    (
        "default",
        include_str!("../../../../data/scale/default.json"),
    ),
    ("test", include_str!("../../../../data/scale/test.json")),
];

impl ScalePreset {
    /// A built-in preset (`default`, `test`) or a preset file.
    pub fn named(name: &str) -> Result<Self, PresetError> {
        let preset: ScalePreset = read_named(name, &SCALE_PRESETS, "scale")?;
        let fail = |field: &str, why| {
            Err(PresetError::Invalid {
                kind: "scale",
                preset: name.to_string(),
                field: field.to_string(),
                why,
            })
        };
        if preset.objectives.is_empty() {
            return fail("objectives", "must not be empty");
        }
        if preset.models.is_empty() {
            return fail("models", "must not be empty");
        }
        if preset.examples.is_empty() || preset.examples.contains(&0) {
            return fail(
                "examples",
                "needs positive counts, e.g. [25000, 50000, 100000]",
            );
        }
        let in_unit_range = |n: &f32| (0.0..=1.0).contains(n);
        if preset.caption_noise.is_empty() || !preset.caption_noise.iter().all(in_unit_range) {
            return fail(
                "caption_noise",
                "needs levels in 0..=1, e.g. [0.0, 0.3, 0.6]",
            );
        }
        Ok(preset)
    }
}

/// One trained and evaluated point of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalePoint {
    pub objective: Objective,
    pub model: String,
    pub examples: u64,
    pub caption_noise: f32,
    pub params: i64,
    /// Training FLOPs of the whole run.
    pub train_flops: f64,
    /// Summary metrics (means over label sets or kinds), by name.
    pub metrics: BTreeMap<String, f64>,
}

/// Everything `scale` reports; `results.json` is this document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleResults {
    pub name: String,
    pub description: String,
    pub wall_seconds: f64,
    pub points: Vec<ScalePoint>,
    pub plots: Vec<String>,
}

/// The summary metric a table row of a report counts towards, if any: few-shot at
/// [`TABLE_SHOTS`], linear probe and zero-shot accuracy (each averaged over label sets),
/// image-to-text R@1, compositional accuracy over all negatives and greedy CIDEr-D.
fn summary_name(metric: &Metric) -> Option<String> {
    let name = match (metric.group, metric.id.as_str()) {
        (TaskGroup::FewShot, _) if metric.in_table => {
            return Some(format!("few-shot {TABLE_SHOTS}-shot accuracy"));
        }
        (TaskGroup::LinearProbe, _) => "linear probe accuracy",
        (TaskGroup::ZeroShot, _) => "zero-shot accuracy",
        (TaskGroup::Retrieval, "retrieval/image_to_text/r1") => "image-to-text R@1",
        (TaskGroup::Compositional, COMPOSITIONAL_ALL) => "compositional accuracy",
        (TaskGroup::Captioning, "captioning/greedy/cider_d") => "captioning CIDEr-D",
        _ => return None,
    };
    Some(name.to_string())
}

/// Summary metrics of one evaluation report: the means of the table's rows of each task.
fn summary_metrics(report: &EvalReport) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for metric in metrics_of(report) {
        if let Some(name) = summary_name(&metric) {
            let sum = sums.entry(name).or_insert((0.0, 0));
            sum.0 += metric.value;
            sum.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(name, (sum, n))| (name, sum / n as f64))
        .collect()
}

/// One point of the sweep: a model size, a number of examples and a caption-noise level.
#[derive(Debug, Clone, Copy)]
struct SweepPoint<'a> {
    model: &'a ScaleModel,
    examples: u64,
    caption_noise: f32,
}

/// The sweep: every model size × number of examples at the first noise level, then the other
/// noise levels at the first model size and the largest number of examples.
fn sweep(preset: &ScalePreset) -> Vec<SweepPoint<'_>> {
    let first_noise = preset.caption_noise[0];
    let largest = *preset.examples.iter().max().expect("checked non-empty");
    let mut grid = Vec::new();
    for (m, model) in preset.models.iter().enumerate() {
        for &examples in &preset.examples {
            grid.push(SweepPoint {
                model,
                examples,
                caption_noise: first_noise,
            });
        }
        if m == 0 {
            for &caption_noise in &preset.caption_noise[1..] {
                grid.push(SweepPoint {
                    model,
                    examples: largest,
                    caption_noise,
                });
            }
        }
    }
    grid
}

/// Plans every run of the sweep (in `OUT/MODEL-Nex-noiseX/`), each with its sweep point.
fn plan_sweep<'a>(
    preset: &'a ScalePreset,
    options: &CompareOptions,
) -> Result<Vec<(PlannedRun, SweepPoint<'a>)>, PresetError> {
    let mut runs = Vec::new();
    let no_overrides = BTreeMap::new();
    for point in sweep(preset) {
        let mut train = preset.train.clone();
        merge_config(&mut train, &point.model.train);
        merge_config(
            &mut train,
            &serde_json::json!({"budget": {"examples": point.examples}, "data": {"scene": {"caption_noise": point.caption_noise}}}),
        );
        let name = format!(
            "{}-{}ex-noise{}",
            point.model.name, point.examples, point.caption_noise
        );
        let set = RunSet {
            train: &train,
            objective_overrides: &no_overrides,
            objectives: &preset.objectives,
            seeds: 1,
            match_text_tower: preset.match_text_tower,
        };
        let planned = plan_runs(
            &set,
            &options.overrides,
            &options.out.join(&name),
            &format!("{}-{name}", preset.name),
        )?;
        runs.extend(planned.into_iter().map(|run| (run, point)));
    }
    Ok(runs)
}

/// Runs the sweep (reusing finished stages) and writes `report.md`, `results.json` and
/// `plots/` into `options.out`.
pub fn scale(preset: &ScalePreset, options: &CompareOptions) -> Result<ScaleResults> {
    let (runs, points): (Vec<PlannedRun>, Vec<SweepPoint<'_>>) =
        plan_sweep(preset, options)?.into_iter().unzip();
    let suite = open_suite(preset.suite.as_deref(), options)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    cappa_io::write_json(&options.out.join(PRESET_FILE), preset)?;
    let (finished, clock) = run_stages(&runs, &preset.eval, suite.as_ref(), options)?;
    let points: Vec<ScalePoint> = finished
        .iter()
        .zip(&points)
        .map(|(f, point)| ScalePoint {
            objective: f.run.objective,
            model: point.model.name.clone(),
            examples: point.examples,
            caption_noise: point.caption_noise,
            params: f.summary.params,
            train_flops: f.summary.train_flops_seen,
            metrics: {
                let mut metrics = summary_metrics(&f.report);
                if let Some(suite) = &f.suite {
                    metrics.extend(headline_metrics(suite));
                }
                metrics
            },
        })
        .collect();
    let mut results = ScaleResults {
        name: preset.name.clone(),
        description: preset.description.clone(),
        wall_seconds: clock.elapsed(),
        points,
        plots: Vec::new(),
    };
    results.plots = results.draw(&options.out, preset)?;
    cappa_io::write_json(&options.out.join(RESULTS_FILE), &results)?;
    cappa_io::write_atomically(
        &options.out.join(REPORT_FILE),
        results.markdown().as_bytes(),
    )?;
    Ok(results)
}

/// Whether a summary metric is an accuracy or recall (plotted as its error), not CIDEr.
fn is_accuracy(metric: &str) -> bool {
    !metric.contains("CIDEr") && !metric.contains("cider")
}

/// The real benchmarks' headline numbers, one plot line each: zero-shot and linear top-1,
/// 10-shot accuracy, R@1 both ways, greedy and transfer CIDEr-D, compositional accuracy over
/// all items, VQA accuracy; named `BENCHMARK/metric`.
pub(crate) fn headline_metrics(suite: &SuiteReport) -> BTreeMap<String, f64> {
    const HEADLINES: [&str; 10] = [
        "zero_shot/acc1",
        "linear/acc1",
        "few_shot/10shot",
        "i2t/r1",
        "t2i/r1",
        "captioning_greedy/cider_d",
        "transfer_captioning/cider_d",
        "/all",
        "vqa/accuracy",
        "macro",
    ];
    suite
        .metrics()
        .into_iter()
        .filter(|(name, _)| HEADLINES.iter().any(|h| name.ends_with(h)))
        .collect()
}

impl ScaleResults {
    fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .points
            .iter()
            .flat_map(|p| p.metrics.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Draws the compute plot and, with several noise levels, the caption-noise plot.
    fn draw(&self, dir: &Path, preset: &ScalePreset) -> Result<Vec<String>> {
        let plots_dir = dir.join(PLOTS_DIR);
        let mut written = vec![self.draw_compute(&plots_dir, preset)?];
        if preset.caption_noise.len() > 1 {
            written.push(self.draw_caption_noise(&plots_dir, preset)?);
        }
        Ok(written)
    }

    /// Compute axis: error (1 − accuracy; CIDEr as is) against training FLOPs, log-log, one
    /// line per objective and model size (the objective's colour, the size's stroke).
    fn draw_compute(&self, plots_dir: &Path, preset: &ScalePreset) -> Result<String> {
        let panel = |metric: String| {
            let mut lines = Vec::new();
            for objective in &preset.objectives {
                for m in 0..preset.models.len() {
                    lines.extend(self.compute_line(&metric, *objective, m, preset));
                }
            }
            let title = if is_accuracy(&metric) {
                format!("{metric}: error")
            } else {
                metric
            };
            Panel { title, lines }
        };
        let panels: Vec<Panel> = self.metric_names().into_iter().map(panel).collect();
        let file = "compute.png";
        plots::line_panels(
            &plots_dir.join(file),
            "Each task against training compute (log-log)",
            &panels,
            "training FLOPs",
            "error (1 − accuracy) or CIDEr-D",
            Axes::LogLog,
        )?;
        Ok(plot_path(file))
    }

    /// One objective's and the `m`-th model size's `metric` against training FLOPs, at the
    /// first noise level, in the objective's colour and the size's stroke; `None` without
    /// points.
    fn compute_line(
        &self,
        metric: &str,
        objective: Objective,
        m: usize,
        preset: &ScalePreset,
    ) -> Option<Line> {
        let model = &preset.models[m];
        let points: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|p| {
                p.objective == objective
                    && p.model == model.name
                    && p.caption_noise == preset.caption_noise[0]
            })
            .filter_map(|p| {
                let v = *p.metrics.get(metric)?;
                Some((p.train_flops, if is_accuracy(metric) { 1.0 - v } else { v }))
            })
            .collect();
        (!points.is_empty()).then(|| Line {
            name: format!("{} {}", objective_label(objective), model.name),
            colour: objective_colour(objective),
            style: LineStyle::nth(m),
            points,
        })
    }

    /// Data-quality axis: each metric against the caption-noise level, at the first model
    /// size and the largest number of examples.
    fn draw_caption_noise(&self, plots_dir: &Path, preset: &ScalePreset) -> Result<String> {
        let model0 = &preset.models[0].name;
        let largest = *preset.examples.iter().max().expect("non-empty");
        let line = |metric: &str, objective: Objective| Line {
            name: objective_label(objective).into(),
            colour: objective_colour(objective),
            style: LineStyle::Solid,
            points: self
                .points
                .iter()
                .filter(|p| p.objective == objective && &p.model == model0 && p.examples == largest)
                .filter_map(|p| Some((p.caption_noise as f64, *p.metrics.get(metric)?)))
                .collect(),
        };
        let panel = |metric: String| Panel {
            lines: preset
                .objectives
                .iter()
                .map(|objective| line(&metric, *objective))
                .filter(|l| !l.points.is_empty())
                .collect(),
            title: metric,
        };
        let panels: Vec<Panel> = self.metric_names().into_iter().map(panel).collect();
        let file = "caption_noise.png";
        plots::line_panels(
            &plots_dir.join(file),
            &format!("Sensitivity to caption quality ({model0}, {largest} examples)"),
            &panels,
            "fraction of noisy captions",
            "metric",
            Axes::Linear,
        )?;
        Ok(plot_path(file))
    }

    /// The report in Markdown: one row per trained point.
    pub fn markdown(&self) -> String {
        let names = self.metric_names();
        let mut md = format!("# cappa scale: {}\n\n", self.name);
        if !self.description.is_empty() {
            let _ = writeln!(md, "{}\n", self.description);
        }
        let _ = writeln!(
            md,
            "{} runs, wall time {}. Metrics are means over the label sets (few-shot: \
             {TABLE_SHOTS} shots; linear probe; zero-shot) or over all negative kinds \
             (compositional).\n",
            self.points.len(),
            minutes(self.wall_seconds)
        );
        md.push_str(
            "| model | examples | caption noise | objective | parameters | training FLOPs |",
        );
        for n in &names {
            let _ = write!(md, " {n} |");
        }
        md.push_str("\n|---|---:|---:|---|---:|---:|");
        md.push_str(&"---:|".repeat(names.len()));
        md.push('\n');
        for p in &self.points {
            let _ = write!(
                md,
                "| {} | {} | {} | {} | {} | {:.3e} |",
                p.model,
                p.examples,
                p.caption_noise,
                objective_label(p.objective),
                p.params,
                p.train_flops
            );
            for n in &names {
                match p.metrics.get(n) {
                    Some(v) => {
                        let _ = write!(md, " {v:.3} |");
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        write_plots_markdown(&mut md, &self.plots);
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_scale_presets_parse() {
        for (name, _) in SCALE_PRESETS {
            let preset = ScalePreset::named(name).expect(name);
            assert!(preset.models.len() >= 2, "{name}: a size axis");
            assert!(
                preset.caption_noise.len() >= 2,
                "{name}: a data-quality axis"
            );
        }
    }

    #[test]
    fn summary_metrics_average_the_table_rows() {
        let report = super::super::results::report_of(serde_json::json!({
            "few_shot": {
                "colour": [
                    {"shots": 10, "mean_accuracy": 0.5, "accuracies": [0.5]},
                    {"shots": 1, "mean_accuracy": 0.1, "accuracies": [0.1]},
                ],
                "shape": [{"shots": 10, "mean_accuracy": 0.7, "accuracies": [0.7]}],
            },
            "zero_shot": {"colour": 0.25},
            "compositional": {"all": 0.9, "relation_swap": 0.6},
        }));
        let m = summary_metrics(&report);
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "compositional accuracy",
                "few-shot 10-shot accuracy",
                "zero-shot accuracy"
            ]
        );
        assert!((m["few-shot 10-shot accuracy"] - 0.6).abs() < 1e-12);
        assert_eq!(m["zero-shot accuracy"], 0.25);
        assert_eq!(m["compositional accuracy"], 0.9);
    }
}
