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

use super::preset::read_named;
use super::results::{metrics_of, objective_colour, objective_label, objective_name_label};
use super::{
    merge_config, minutes, plan_runs, run_stages, write_atomically, write_json_atomically,
    CompareOptions, PresetError, RunSet,
};
use crate::evaluate::EvalPlan;
use crate::plots::{self, Axes, Line, Panel};

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
        let fail = |what: &str| Err(PresetError(format!("scale preset `{name}`: {what}")));
        if preset.objectives.is_empty() || preset.models.is_empty() {
            return fail("objectives and models must not be empty");
        }
        if preset.examples.is_empty() || preset.examples.contains(&0) {
            return fail("examples needs positive counts, e.g. [25000, 50000, 100000]");
        }
        if preset.caption_noise.is_empty()
            || preset
                .caption_noise
                .iter()
                .any(|n| !(0.0..=1.0).contains(n))
        {
            return fail("caption_noise needs levels in 0..=1, e.g. [0.0, 0.3, 0.6]");
        }
        Ok(preset)
    }
}

/// One trained and evaluated point of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalePoint {
    pub objective: String,
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

/// Summary metrics of one evaluation report: the means of the table's rows of each task.
fn summary_metrics(report: &Value) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (id, _group, _label, value, in_table) in metrics_of(report) {
        let key = match id.as_str() {
            i if i.starts_with("few_shot/10/") => "few-shot 10-shot accuracy",
            i if i.starts_with("linear_probe/") => "linear probe accuracy",
            i if i.starts_with("zero_shot/") => "zero-shot accuracy",
            "retrieval/image_to_text/r1" => "image-to-text R@1",
            "compositional/all" => "compositional accuracy",
            "captioning/greedy/cider_d" => "captioning CIDEr-D",
            _ => continue,
        };
        if in_table || key.starts_with("few-shot") {
            let e = sums.entry(key.to_string()).or_insert((0.0, 0));
            e.0 += value;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

/// Runs the sweep (reusing finished stages) and writes `report.md`, `results.json` and
/// `plots/` into `options.out`.
pub fn scale(preset: &ScalePreset, options: &CompareOptions) -> Result<ScaleResults> {
    let first_noise = preset.caption_noise[0];
    let largest = *preset.examples.iter().max().expect("checked non-empty");
    let mut grid = Vec::new();
    for (m, model) in preset.models.iter().enumerate() {
        for &examples in &preset.examples {
            grid.push((model, examples, first_noise));
        }
        if m == 0 {
            for &noise in &preset.caption_noise[1..] {
                grid.push((model, largest, noise));
            }
        }
    }
    let mut runs = Vec::new();
    let mut point_of = Vec::new();
    for (model, examples, noise) in &grid {
        let mut train = preset.train.clone();
        merge_config(&mut train, &model.train);
        merge_config(
            &mut train,
            &serde_json::json!({"budget": {"examples": examples}, "data": {"scene": {"caption_noise": noise}}}),
        );
        let point = format!("{}-{examples}ex-noise{noise}", model.name);
        let no_overrides = BTreeMap::new();
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
            &options.out.join(&point),
            &format!("{}-{point}", preset.name),
        )?;
        for run in planned {
            point_of.push((model.name.clone(), *examples, *noise));
            runs.push(run);
        }
    }
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    write_json_atomically(&options.out.join("preset.json"), preset)?;
    let (finished, clock) = run_stages(&runs, &preset.eval, options)?;
    let points: Vec<ScalePoint> = finished
        .iter()
        .zip(&point_of)
        .map(|(f, (model, examples, noise))| ScalePoint {
            objective: f.run.objective.name().into(),
            model: model.clone(),
            examples: *examples,
            caption_noise: *noise,
            params: f.summary.params,
            train_flops: f.summary.train_flops_seen,
            metrics: summary_metrics(&f.report),
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
    write_json_atomically(&options.out.join("results.json"), &results)?;
    write_atomically(
        &options.out.join("report.md"),
        results.markdown().as_bytes(),
    )?;
    Ok(results)
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

    fn draw(&self, dir: &Path, preset: &ScalePreset) -> Result<Vec<String>> {
        let noise0 = preset.caption_noise[0];
        let mut written = Vec::new();
        // Compute axis: error (1 − accuracy; CIDEr as is) against training FLOPs, log-log.
        let panels: Vec<Panel> = self
            .metric_names()
            .into_iter()
            .map(|metric| {
                let is_accuracy = !metric.contains("CIDEr");
                let mut lines = Vec::new();
                for objective in &preset.objectives {
                    for model in &preset.models {
                        let points: Vec<(f64, f64)> = self
                            .points
                            .iter()
                            .filter(|p| {
                                p.objective == objective.name()
                                    && p.model == model.name
                                    && p.caption_noise == noise0
                            })
                            .filter_map(|p| {
                                let v = *p.metrics.get(&metric)?;
                                Some((p.train_flops, if is_accuracy { 1.0 - v } else { v }))
                            })
                            .collect();
                        if !points.is_empty() {
                            lines.push(Line {
                                name: format!("{} {}", objective_label(*objective), model.name),
                                colour: objective_colour(*objective),
                                points,
                            });
                        }
                    }
                }
                Panel {
                    title: if is_accuracy {
                        format!("{metric}: error")
                    } else {
                        metric
                    },
                    lines,
                }
            })
            .collect();
        plots::line_panels(
            &dir.join("plots/compute.png"),
            "Each task against training compute (log-log)",
            &panels,
            "training FLOPs",
            "error (1 − accuracy) or CIDEr-D",
            Axes::LogLog,
        )?;
        written.push("plots/compute.png".to_string());
        if preset.caption_noise.len() > 1 {
            let model0 = &preset.models[0].name;
            let largest = *preset.examples.iter().max().expect("non-empty");
            let panels: Vec<Panel> = self
                .metric_names()
                .into_iter()
                .map(|metric| Panel {
                    lines: preset
                        .objectives
                        .iter()
                        .map(|objective| Line {
                            name: objective_label(*objective).into(),
                            colour: objective_colour(*objective),
                            points: self
                                .points
                                .iter()
                                .filter(|p| {
                                    p.objective == objective.name()
                                        && &p.model == model0
                                        && p.examples == largest
                                })
                                .filter_map(|p| {
                                    Some((p.caption_noise as f64, *p.metrics.get(&metric)?))
                                })
                                .collect(),
                        })
                        .filter(|l| !l.points.is_empty())
                        .collect(),
                    title: metric,
                })
                .collect();
            plots::line_panels(
                &dir.join("plots/caption_noise.png"),
                &format!("Sensitivity to caption quality ({model0}, {largest} examples)"),
                &panels,
                "fraction of noisy captions",
                "metric",
                Axes::Linear,
            )?;
            written.push("plots/caption_noise.png".to_string());
        }
        Ok(written)
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
            "{} runs, wall time {}. Metrics are means over the label sets (few-shot: 10 shots; \
             linear probe; zero-shot) or over all negative kinds (compositional).\n",
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
                objective_name_label(&p.objective),
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
        if !self.plots.is_empty() {
            md.push_str("\n## Plots\n\n");
            for plot in &self.plots {
                let _ = writeln!(md, "![{plot}]({plot})\n");
            }
        }
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
        let report = serde_json::json!({
            "few_shot": {"colour": [{"shots": 10, "mean_accuracy": 0.5}, {"shots": 1, "mean_accuracy": 0.1}],
                         "shape": [{"shots": 10, "mean_accuracy": 0.7}]},
            "zero_shot": {"colour": 0.25},
            "compositional": {"all": 0.9, "relation_swap": 0.6},
        });
        let m = summary_metrics(&report);
        assert!((m["few-shot 10-shot accuracy"] - 0.6).abs() < 1e-12);
        assert_eq!(m["zero-shot accuracy"], 0.25);
        assert_eq!(m["compositional accuracy"], 0.9);
        assert!(!m.contains_key("captioning CIDEr-D"));
    }
}
