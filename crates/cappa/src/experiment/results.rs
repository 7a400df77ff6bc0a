//! `compare`'s results: every evaluation metric per objective as mean ± spread over seeds,
//! the models' sizes and compute, which objective wins each group of tasks, the paper's
//! findings checked against the numbers, and the report (Markdown, JSON, PNG plots).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use cappa_data::scene::SceneWorld;
use cappa_trainer::{Objective, METRICS_FILE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{write_atomically, write_json_atomically, CompareOptions, FinishedRun, Preset};
use crate::evaluate::TrainedWith;
use crate::plots::{self, Axes, BarGroup, CaptionedImage, Line, Panel};

/// Shots per class of the few-shot rows of the table (every shot count is in the JSON).
pub const TABLE_SHOTS: u64 = 10;

/// The display name of an objective.
pub fn objective_label(objective: Objective) -> &'static str {
    match objective {
        Objective::Clip => "CLIP",
        Objective::Sigmoid => "SigLIP",
        Objective::Cap => "Cap",
        Objective::CapPa => "CapPa",
    }
}

/// The plot colour of an objective, the same in every plot: CLIP, Cap, CapPa, SigLIP.
pub fn objective_colour(objective: Objective) -> usize {
    match objective {
        Objective::Clip => 0,
        Objective::Cap => 1,
        Objective::CapPa => 2,
        Objective::Sigmoid => 3,
    }
}

/// The display name of an objective given by its config name (`cap_pa` → `CapPa`).
pub fn objective_name_label(name: &str) -> String {
    serde_json::from_value::<Objective>(Value::String(name.to_string()))
        .map_or(name.to_string(), |o| objective_label(o).to_string())
}

/// Mean and spread of one metric over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    /// Sample standard deviation over seeds (0 with one seed).
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub per_seed: Vec<f64>,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(Spread {
            mean,
            std,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            per_seed: values.to_vec(),
        })
    }

    /// `0.812` with one seed, `0.812 ± 0.013` with more.
    pub fn display(&self) -> String {
        if self.per_seed.len() > 1 {
            format!("{:.3} ± {:.3}", self.mean, self.std)
        } else {
            format!("{:.3}", self.mean)
        }
    }
}

/// One row of the results: a metric of a task, per objective.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRow {
    /// Stable identifier, e.g. `few_shot/10/colour`.
    pub id: String,
    /// Task group: few-shot, linear probe, zero-shot, retrieval, compositional, captioning,
    /// transfer.
    pub group: String,
    pub label: String,
    /// By objective name; absent where the metric does not apply (e.g. CIDEr for CLIP).
    pub values: BTreeMap<String, Spread>,
    /// In the Markdown table (the JSON has every row).
    pub in_table: bool,
}

/// One trained model (means over seeds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRow {
    pub objective: String,
    pub label: String,
    pub params: i64,
    pub train_flops_per_example: f64,
    pub examples_seen: u64,
    pub steps: u64,
    pub train_seconds: Spread,
    pub final_loss: Option<Spread>,
    /// The contrastive text tower's depth, sized to the captioner's FLOPs.
    pub matched_text_depth: Option<i64>,
}

/// Which objective leads a group of tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupWinner {
    pub group: String,
    /// Mean of the group's metrics per objective.
    pub means: BTreeMap<String, f64>,
    pub best: String,
    /// The lead is larger than the seed spread (or, with one seed, than 0.01).
    pub clear: bool,
}

/// One of the paper's findings, checked on this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub claim: String,
    /// `None` when the run lacks the objectives or tasks to check it.
    pub reproduced: Option<bool>,
    pub evidence: String,
}

/// Everything `compare` reports; `results.json` is this document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareResults {
    pub name: String,
    pub description: String,
    pub objectives: Vec<String>,
    pub seeds: Vec<u64>,
    pub device: String,
    pub data: String,
    pub wall_seconds: f64,
    pub models: Vec<ModelRow>,
    pub metrics: Vec<MetricRow>,
    pub winners: Vec<GroupWinner>,
    pub findings: Vec<Finding>,
    pub plots: Vec<String>,
}

/// The metrics of one evaluation report, as (id, group, label, value, in_table).
pub(crate) fn metrics_of(report: &Value) -> Vec<(String, String, String, f64, bool)> {
    let mut out = Vec::new();
    let mut push = |id: String, group: &str, label: String, value: Option<f64>, table: bool| {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            out.push((id, group.to_string(), label, v, table));
        }
    };
    if let Some(sets) = report["few_shot"].as_object() {
        for (set, results) in sets {
            for r in results.as_array().into_iter().flatten() {
                let shots = r["shots"].as_u64().unwrap_or(0);
                push(
                    format!("few_shot/{shots}/{set}"),
                    "few-shot",
                    format!("{shots}-shot {set}"),
                    r["mean_accuracy"].as_f64(),
                    shots == TABLE_SHOTS,
                );
            }
        }
    }
    if let Some(sets) = report["linear_probe"].as_object() {
        for (set, r) in sets {
            push(
                format!("linear_probe/{set}"),
                "linear probe",
                format!("linear probe {set}"),
                r["test_accuracy"].as_f64(),
                true,
            );
        }
    }
    if let Some(sets) = report["zero_shot"].as_object() {
        for (set, v) in sets {
            push(
                format!("zero_shot/{set}"),
                "zero-shot",
                format!("zero-shot {set}"),
                v.as_f64(),
                true,
            );
        }
    }
    for (direction, short) in [
        ("image_to_text", "image-to-text"),
        ("text_to_image", "text-to-image"),
    ] {
        for k in ["r1", "r5", "r10"] {
            push(
                format!("retrieval/{direction}/{k}"),
                "retrieval",
                format!("{short} R@{}", &k[1..]),
                report["retrieval"][direction][k].as_f64(),
                k != "r10",
            );
        }
    }
    if let Some(kinds) = report["compositional"].as_object() {
        for (kind, v) in kinds {
            push(
                format!("compositional/{kind}"),
                "compositional",
                format!("compositional {}", kind.replace('_', " ")),
                v.as_f64(),
                true,
            );
        }
    }
    for (key, label) in [
        ("cider_d", "CIDEr-D"),
        ("bleu_4", "BLEU-4"),
        ("rouge_l", "ROUGE-L"),
    ] {
        push(
            format!("captioning/greedy/{key}"),
            "captioning",
            format!("captioning {label}"),
            report["captioning_greedy"][key].as_f64(),
            key != "rouge_l",
        );
    }
    push(
        "transfer/captioning/cider_d".into(),
        "transfer",
        "transfer captioning CIDEr-D".into(),
        report["transfer"]["captioning"]["cider_d"].as_f64(),
        true,
    );
    push(
        "transfer/vqa_accuracy".into(),
        "transfer",
        "transfer VQA accuracy".into(),
        report["transfer"]["vqa_accuracy"].as_f64(),
        true,
    );
    out
}

/// Group means that decide the winners and findings: only table rows, and groups whose
/// scales are comparable (accuracies and recalls; captioning's CIDEr is its own group).
fn group_means(
    metrics: &[MetricRow],
    objectives: &[String],
) -> BTreeMap<String, BTreeMap<String, (f64, f64)>> {
    let mut sums: BTreeMap<String, BTreeMap<String, (f64, f64, usize)>> = BTreeMap::new();
    // `compositional/all` summarises the kinds' rows: counting it too would weigh them twice.
    for row in metrics
        .iter()
        .filter(|r| r.in_table && r.id != "compositional/all")
    {
        // A group's mean is over the rows every compared objective has.
        let present: Vec<&String> = objectives
            .iter()
            .filter(|o| row.values.contains_key(*o))
            .collect();
        if present.len() < 2 {
            continue;
        }
        for o in present {
            let s = &row.values[o];
            let entry = sums
                .entry(row.group.clone())
                .or_default()
                .entry(o.clone())
                .or_insert((0.0, 0.0, 0));
            entry.0 += s.mean;
            entry.1 += s.std;
            entry.2 += 1;
        }
    }
    sums.into_iter()
        .map(|(group, by)| {
            let means = by
                .into_iter()
                .map(|(o, (sum, std, n))| (o, (sum / n as f64, std / n as f64)))
                .collect();
            (group, means)
        })
        .collect()
}

impl CompareResults {
    /// Collects the finished runs into per-objective rows.
    pub fn gather(
        preset: &Preset,
        finished: &[FinishedRun],
        options: &CompareOptions,
        wall_seconds: f64,
    ) -> Result<Self> {
        let objectives: Vec<String> = preset
            .objectives
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let mut seeds: Vec<u64> = finished.iter().map(|f| f.run.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();

        let mut models = Vec::new();
        for objective in &preset.objectives {
            let runs: Vec<&FinishedRun> = finished
                .iter()
                .filter(|f| f.run.objective == *objective)
                .collect();
            let Some(first) = runs.first() else { continue };
            let losses: Vec<f64> = runs.iter().filter_map(|f| f.summary.final_loss).collect();
            let seconds: Vec<f64> = runs.iter().map(|f| f.summary.seconds).collect();
            models.push(ModelRow {
                objective: objective.name().into(),
                label: objective_label(*objective).into(),
                params: first.summary.params,
                train_flops_per_example: first.summary.train_flops_per_example,
                examples_seen: first.summary.examples_seen,
                steps: first.summary.steps,
                train_seconds: Spread::of(&seconds).expect("at least one run"),
                final_loss: Spread::of(&losses),
                matched_text_depth: first.run.matched_text_depth,
            });
        }

        // Metric rows in the order of the first report that has them.
        let mut order: Vec<(String, String, String, bool)> = Vec::new();
        let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for run in finished {
            for (id, group, label, value, table) in metrics_of(&run.report) {
                if !order.iter().any(|(i, ..)| *i == id) {
                    order.push((id.clone(), group, label, table));
                }
                values
                    .entry((id, run.run.objective.name().to_string()))
                    .or_default()
                    .push(value);
            }
        }
        let group_rank = |g: &str| {
            [
                "few-shot",
                "linear probe",
                "zero-shot",
                "retrieval",
                "compositional",
                "captioning",
                "transfer",
            ]
            .iter()
            .position(|x| *x == g)
            .unwrap_or(99)
        };
        order.sort_by_key(|(_, group, ..)| group_rank(group));
        let metrics: Vec<MetricRow> = order
            .into_iter()
            .map(|(id, group, label, in_table)| MetricRow {
                values: objectives
                    .iter()
                    .filter_map(|o| {
                        values
                            .get(&(id.clone(), o.clone()))
                            .and_then(|v| Spread::of(v))
                            .map(|s| (o.clone(), s))
                    })
                    .collect(),
                id,
                group,
                label,
                in_table,
            })
            .collect();

        let groups = group_means(&metrics, &objectives);
        let mut ordered: Vec<_> = groups.iter().collect();
        ordered.sort_by_key(|(group, _)| group_rank(group.as_str()));
        let winners = ordered
            .into_iter()
            .map(|(group, by)| {
                let mut ranked: Vec<(&String, &(f64, f64))> = by.iter().collect();
                ranked.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
                let (best, (best_mean, best_std)) = ranked[0];
                let clear = ranked.get(1).is_none_or(|(_, (m, s))| {
                    best_mean - m
                        > if seeds.len() > 1 {
                            best_std.max(*s)
                        } else {
                            0.01
                        }
                });
                GroupWinner {
                    group: group.clone(),
                    means: by.iter().map(|(o, (m, _))| (o.clone(), *m)).collect(),
                    best: best.clone(),
                    clear,
                }
            })
            .collect();
        let findings = findings(&groups, &metrics);
        let data = if options.overrides.data.is_empty() {
            match preset.train["data"]["kind"].as_str() {
                Some("shards") => format!("shards {}", preset.train["data"]["shards"]),
                _ => "the built-in scene world (generated on the fly)".to_string(),
            }
        } else {
            format!("shards {}", options.overrides.data.join(" "))
        };
        Ok(CompareResults {
            name: preset.name.clone(),
            description: preset.description.clone(),
            objectives,
            seeds,
            device: format!("{:?}", options.device),
            data,
            wall_seconds,
            models,
            metrics,
            winners,
            findings,
            plots: Vec::new(),
        })
    }

    fn label(&self, objective: &str) -> String {
        self.models
            .iter()
            .find(|m| m.objective == objective)
            .map_or(objective.to_string(), |m| m.label.clone())
    }

    /// The results table in Markdown: one row per metric, one column per objective, the best
    /// of each row in bold.
    pub fn table_markdown(&self) -> String {
        let mut out = String::from("| group | task |");
        for o in &self.objectives {
            let _ = write!(out, " {} |", self.label(o));
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---:|".repeat(self.objectives.len()));
        out.push('\n');
        for row in self.metrics.iter().filter(|r| r.in_table) {
            let best = row
                .values
                .values()
                .map(|s| s.mean)
                .fold(f64::NEG_INFINITY, f64::max);
            let _ = write!(out, "| {} | {} |", row.group, row.label);
            for o in &self.objectives {
                match row.values.get(o) {
                    Some(s) if row.values.len() > 1 && s.mean == best => {
                        let _ = write!(out, " **{}** |", s.display());
                    }
                    Some(s) => {
                        let _ = write!(out, " {} |", s.display());
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// The whole report in Markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!("# cappa compare: {}\n\n", self.name);
        if !self.description.is_empty() {
            let _ = writeln!(md, "{}\n", self.description);
        }
        let seeds = self.seeds.len();
        let _ = writeln!(
            md,
            "Trained on {} with {} seed{} ({}) on {}; wall time {} (training, evaluation and \
             this report).\n",
            self.data,
            seeds,
            if seeds == 1 { "" } else { "s" },
            self.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.device,
            super::minutes(self.wall_seconds)
        );
        md.push_str("## Models, at matched compute\n\n");
        md.push_str(
            "Every model has the same image encoder and sees the same number of examples; the \
             contrastive text tower's depth is chosen so that its training FLOPs per example \
             come closest to the captioner's decoder.\n\n",
        );
        md.push_str(
            "| model | parameters | training FLOPs / example | examples seen | steps | \
             training time | final loss |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.models {
            let _ = writeln!(
                md,
                "| {}{} | {} | {:.3e} | {} | {} | {} | {} |",
                m.label,
                m.matched_text_depth
                    .map(|d| format!(" (text tower: {d} layers)"))
                    .unwrap_or_default(),
                m.params,
                m.train_flops_per_example,
                m.examples_seen,
                m.steps,
                super::minutes(m.train_seconds.mean),
                m.final_loss.as_ref().map_or("–".into(), Spread::display),
            );
        }
        let _ = writeln!(
            md,
            "\n## Results\n\n{} on the scene world's held-out split (never seen in training); \
             the best of each row in bold. Few-shot rows are {TABLE_SHOTS}-shot ridge probes \
             (every shot count is in results.json).\n",
            if seeds > 1 {
                "Mean ± standard deviation over seeds"
            } else {
                "One seed"
            }
        );
        md.push_str(&self.table_markdown());
        md.push_str("\n## Which objective wins where\n\n");
        for w in &self.winners {
            let means: Vec<String> = w
                .means
                .iter()
                .map(|(o, m)| format!("{} {m:.3}", self.label(o)))
                .collect();
            let _ = writeln!(
                md,
                "- {}: **{}** {} (mean of the group's rows: {})",
                w.group,
                self.label(&w.best),
                match (w.clear, seeds > 1) {
                    (true, _) => "leads",
                    (false, true) => "leads within the seed spread",
                    (false, false) => "leads by less than 0.01",
                },
                means.join(", ")
            );
        }
        md.push_str("\n## The paper's findings on this run\n\n");
        for f in &self.findings {
            let mark = match f.reproduced {
                Some(true) => "reproduced",
                Some(false) => "not reproduced",
                None => "not checked",
            };
            let _ = writeln!(md, "- {} — **{mark}**: {}", f.claim, f.evidence);
        }
        if !self.plots.is_empty() {
            md.push_str("\n## Plots\n\n");
            for plot in &self.plots {
                let _ = writeln!(md, "![{plot}]({plot})\n");
            }
        }
        md
    }

    /// Writes the plots, `results.json` and `report.md` into `dir`.
    pub fn write(&mut self, dir: &Path, finished: &[FinishedRun]) -> Result<()> {
        self.plots = self.draw(dir, finished)?;
        write_json_atomically(&dir.join("results.json"), self)?;
        write_atomically(&dir.join("report.md"), self.markdown().as_bytes())
    }

    fn draw(&self, dir: &Path, finished: &[FinishedRun]) -> Result<Vec<String>> {
        let plots_dir = dir.join("plots");
        let mut written = Vec::new();
        let labels: Vec<String> = self.objectives.iter().map(|o| self.label(o)).collect();
        let colours: Vec<usize> = self
            .objectives
            .iter()
            .map(|o| {
                serde_json::from_value::<Objective>(Value::String(o.clone()))
                    .map_or(0, objective_colour)
            })
            .collect();

        // Training loss against examples seen, one panel per objective, one line per seed.
        let panels: Vec<Panel> = self
            .objectives
            .iter()
            .map(|o| Panel {
                title: self.label(o),
                lines: finished
                    .iter()
                    .filter(|f| f.run.objective.name() == o)
                    .map(|f| Line {
                        name: format!("seed {}", f.run.seed),
                        colour: f.run.seed as usize,
                        points: loss_curve(&f.run.dir.join(METRICS_FILE)),
                    })
                    .collect(),
            })
            .collect();
        let path = plots_dir.join("loss_curves.png");
        plots::line_panels(
            &path,
            "Training loss",
            &panels,
            "examples seen",
            "loss",
            Axes::Linear,
        )?;
        written.push("plots/loss_curves.png".to_string());

        // Grouped bars of the table's accuracy rows (not CIDEr/BLEU, on another scale).
        let bar_groups = |filter: &dyn Fn(&MetricRow) -> bool| -> Vec<BarGroup> {
            self.metrics
                .iter()
                .filter(|r| filter(r))
                .map(|r| BarGroup {
                    label: r.label.clone(),
                    values: self
                        .objectives
                        .iter()
                        .map(|o| r.values.get(o).map(|s| (s.mean, s.std)))
                        .collect(),
                })
                .collect()
        };
        let groups = bar_groups(&|r| {
            r.in_table
                && !matches!(r.group.as_str(), "captioning" | "compositional")
                && !r.label.contains("CIDEr")
        });
        let spread = if self.seeds.len() > 1 {
            " (bars: ± one standard deviation over seeds)"
        } else {
            ""
        };
        plots::grouped_bars(
            &plots_dir.join("results.png"),
            &format!("Results by task{spread}"),
            &labels,
            &colours,
            &groups,
            "accuracy / recall",
        )?;
        written.push("plots/results.png".to_string());
        let groups = bar_groups(&|r| r.group == "compositional");
        plots::grouped_bars(
            &plots_dir.join("compositional.png"),
            &format!("Compositional accuracy by negative type{spread}"),
            &labels,
            &colours,
            &groups,
            "preference accuracy",
        )?;
        written.push("plots/compositional.png".to_string());

        // Test images with their reference and each captioner's greedy caption (seed 0).
        let seed0: Vec<&FinishedRun> = finished
            .iter()
            .filter(|f| f.run.seed == self.seeds[0])
            .collect();
        let captioners: Vec<&&FinishedRun> = seed0
            .iter()
            .filter(|f| !f.run.objective.is_contrastive())
            .collect();
        if let Some(first) = captioners.first() {
            let with = TrainedWith::read(&first.run.dir)?;
            let world = SceneWorld::eval(with.scene.clone(), with.seed)?;
            let shown = first.report["sample_captions"]
                .as_array()
                .map_or(0, Vec::len);
            let items: Vec<CaptionedImage> = (0..shown)
                .map(|i| {
                    let scene = world.scene(i as u64);
                    let mut lines = vec![(
                        "reference".to_string(),
                        world
                            .captions(&scene, i as u64)
                            .into_iter()
                            .next()
                            .unwrap_or_default(),
                    )];
                    for c in &captioners {
                        let caption = c.report["sample_captions"][i].as_str().unwrap_or("");
                        lines.push((
                            objective_label(c.run.objective).to_string(),
                            caption.to_string(),
                        ));
                    }
                    CaptionedImage {
                        image: world.render(&scene),
                        lines,
                    }
                })
                .collect();
            plots::caption_grid(
                &plots_dir.join("captions.png"),
                "Held-out test images with greedy captions (seed 0)",
                &items,
            )?;
            written.push("plots/captions.png".to_string());
        }
        Ok(written)
    }
}

/// Training loss per logged step: (examples seen, loss).
pub(crate) fn loss_curve(path: &Path) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("event").is_none())
        .filter_map(|v| Some((v["examples"].as_f64()?, v["loss"].as_f64()?)))
        .collect()
}

fn findings(
    groups: &BTreeMap<String, BTreeMap<String, (f64, f64)>>,
    metrics: &[MetricRow],
) -> Vec<Finding> {
    let mean = |group: &str, o: &str| groups.get(group).and_then(|g| g.get(o)).map(|v| v.0);
    let best_of = |group: &str, names: &[&str]| -> Option<(String, f64)> {
        names
            .iter()
            .filter_map(|o| mean(group, o).map(|m| (o.to_string(), m)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let contrastive = ["clip", "sigmoid"];
    let captioners = ["cap", "cap_pa"];
    let show = |o: &str| objective_name_label(o);
    let mut out = Vec::new();

    // 1. Few-shot classification: captioning ≥ contrastive, and CapPa > Cap.
    let claim = "Captioning encoders match or beat contrastive ones on few-shot classification, \
                 and CapPa beats Cap"
        .to_string();
    out.push(
        match (
            best_of("few-shot", &contrastive),
            best_of("few-shot", &captioners),
            mean("few-shot", "cap"),
            mean("few-shot", "cap_pa"),
        ) {
            (Some((c, cm)), Some((_, pm)), Some(cap), Some(cap_pa)) => Finding {
                claim,
                reproduced: Some(pm >= cm && cap_pa > cap),
                evidence: format!(
                    "mean {TABLE_SHOTS}-shot accuracy {} {cm:.3}, Cap {cap:.3}, CapPa {cap_pa:.3}",
                    show(&c)
                ),
            },
            _ => Finding {
                claim,
                reproduced: None,
                evidence: "needs a contrastive model, Cap and CapPa".into(),
            },
        },
    );

    // 2. Compositional tests: captioners far ahead (≥ 5 points on the mean over kinds).
    let claim = "Captioning encoders are far ahead on compositional tests (attribute and relation \
                 swaps, word order)"
        .to_string();
    let all = metrics.iter().find(|r| r.id == "compositional/all");
    let value = |o: &str| all.and_then(|r| r.values.get(o)).map(|s| s.mean);
    let best = |names: &[&str]| {
        names
            .iter()
            .filter_map(|o| value(o).map(|m| (o.to_string(), m)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    out.push(match (best(&contrastive), best(&captioners)) {
        (Some((c, cm)), Some((p, pm))) => Finding {
            claim,
            reproduced: Some(pm - cm >= 0.05),
            evidence: format!(
                "accuracy over all negatives {} {pm:.3} vs {} {cm:.3} (a lead of at least 0.05 \
                 counts as far ahead)",
                show(&p),
                show(&c)
            ),
        },
        _ => Finding {
            claim,
            reproduced: None,
            evidence: "needs a contrastive model and a captioner".into(),
        },
    });

    // 3. Retrieval and zero-shot: contrastive ahead.
    let claim = "Contrastive encoders are ahead on retrieval and zero-shot classification".into();
    let mut parts = Vec::new();
    let mut verdicts = Vec::new();
    for group in ["retrieval", "zero-shot"] {
        if let (Some((c, cm)), Some((p, pm))) =
            (best_of(group, &contrastive), best_of(group, &captioners))
        {
            verdicts.push(cm > pm);
            parts.push(format!(
                "{group}: {} {cm:.3} vs {} {pm:.3}",
                show(&c),
                show(&p)
            ));
        }
    }
    out.push(Finding {
        claim,
        reproduced: (!verdicts.is_empty()).then(|| verdicts.iter().all(|v| *v)),
        evidence: if parts.is_empty() {
            "needs a contrastive model and a captioner with retrieval or zero-shot results".into()
        } else {
            format!("mean of the table's rows — {}", parts.join("; "))
        },
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_standard_deviation() {
        let s = Spread::of(&[0.5, 0.7, 0.9]).expect("values");
        assert!((s.mean - 0.7).abs() < 1e-12);
        assert!((s.std - 0.2).abs() < 1e-12);
        assert_eq!((s.min, s.max), (0.5, 0.9));
        assert_eq!(s.display(), "0.700 ± 0.200");
        assert_eq!(Spread::of(&[0.25]).expect("one").display(), "0.250");
        assert!(Spread::of(&[]).is_none());
    }

    fn row(id: &str, group: &str, values: &[(&str, f64)]) -> MetricRow {
        MetricRow {
            id: id.into(),
            group: group.into(),
            label: id.into(),
            values: values
                .iter()
                .map(|(o, v)| (o.to_string(), Spread::of(&[*v]).expect("value")))
                .collect(),
            in_table: true,
        }
    }

    #[test]
    fn findings_follow_the_numbers() {
        let objectives: Vec<String> = ["clip", "cap", "cap_pa"].map(String::from).to_vec();
        let metrics = vec![
            row(
                "few_shot/10/a",
                "few-shot",
                &[("clip", 0.5), ("cap", 0.6), ("cap_pa", 0.7)],
            ),
            row(
                "few_shot/10/b",
                "few-shot",
                &[("clip", 0.5), ("cap", 0.6), ("cap_pa", 0.7)],
            ),
            row(
                "compositional/all",
                "compositional",
                &[("clip", 0.6), ("cap", 0.9), ("cap_pa", 0.62)],
            ),
            row("retrieval/x", "retrieval", &[("clip", 0.8), ("cap", 0.3)]),
            row(
                "zero_shot/y",
                "zero-shot",
                &[("clip", 0.4), ("cap", 0.5), ("cap_pa", 0.45)],
            ),
        ];
        let groups = group_means(&metrics, &objectives);
        assert!((groups["few-shot"]["cap_pa"].0 - 0.7).abs() < 1e-12);
        // Retrieval has no CapPa value: its mean is over the objectives present.
        assert!(!groups["retrieval"].contains_key("cap_pa"));
        let f = findings(&groups, &metrics);
        assert_eq!(f[0].reproduced, Some(true), "{}", f[0].evidence);
        assert_eq!(f[1].reproduced, Some(true), "Cap .90 vs CLIP .60");
        // Retrieval favours CLIP but zero-shot does not: not reproduced.
        assert_eq!(f[2].reproduced, Some(false), "{}", f[2].evidence);
    }

    #[test]
    fn the_table_bolds_the_best_and_dashes_what_is_missing() {
        let results = CompareResults {
            name: "t".into(),
            description: String::new(),
            objectives: ["clip", "cap"].map(String::from).to_vec(),
            seeds: vec![0],
            device: "Cpu".into(),
            data: "scene".into(),
            wall_seconds: 1.0,
            models: vec![],
            metrics: vec![
                row("a", "few-shot", &[("clip", 0.5), ("cap", 0.75)]),
                row("b", "captioning", &[("cap", 1.25)]),
            ],
            winners: vec![],
            findings: vec![],
            plots: vec![],
        };
        let table = results.table_markdown();
        assert!(
            table.contains("| few-shot | a | 0.500 | **0.750** |"),
            "{table}"
        );
        assert!(table.contains("| captioning | b | – | 1.250 |"), "{table}");
    }
}
