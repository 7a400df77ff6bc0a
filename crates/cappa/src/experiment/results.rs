//! `compare`'s results: every evaluation metric per objective as mean ± spread over seeds,
//! the models' sizes and compute, which objective wins each group of tasks, the paper's
//! findings checked against the numbers, and the report (Markdown, JSON, PNG plots).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use cappa_data::scene::{LabelSet, SceneWorld};
use cappa_eval::report::EvalReport;
use cappa_trainer::{Objective, RunSummary, METRICS_FILE};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CompareOptions, FinishedRun, Preset, REPORT_FILE, RESULTS_FILE};
use crate::checkpoint_eval::TrainedWith;
use crate::plots::{self, Axes, BarGroup, CaptionedImage, Line, LineStyle, Panel};

/// Shots per class of the few-shot rows of the table (every shot count is in the JSON).
pub const TABLE_SHOTS: u64 = 10;

/// With one seed, a group's best objective leads clearly when its mean is more than this
/// above the next one's (with more seeds: more than the larger of their seed spreads).
pub const CLEAR_LEAD_WITH_ONE_SEED: f64 = 0.01;

/// Captioners are "far ahead" on compositional tests (the paper's finding) when the best
/// captioner's accuracy over all negatives leads the best contrastive model's by this much.
pub const FAR_AHEAD_ON_COMPOSITIONAL: f64 = 0.05;

/// The compositional row over all negative kinds; it summarises the per-kind rows.
pub(crate) const COMPOSITIONAL_ALL: &str = "compositional/all";

/// The contrastive objectives and the captioners, as the findings compare them.
const CONTRASTIVE: [Objective; 2] = [Objective::Clip, Objective::Sigmoid];
const CAPTIONERS: [Objective; 2] = [Objective::Cap, Objective::CapPa];

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

/// A group of tasks, in the order of the results table. Serialised (and shown) by its
/// [`name`](Self::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskGroup {
    #[serde(rename = "few-shot")]
    FewShot,
    #[serde(rename = "linear probe")]
    LinearProbe,
    #[serde(rename = "zero-shot")]
    ZeroShot,
    #[serde(rename = "retrieval")]
    Retrieval,
    #[serde(rename = "compositional")]
    Compositional,
    #[serde(rename = "captioning")]
    Captioning,
    #[serde(rename = "transfer")]
    Transfer,
}

impl TaskGroup {
    /// Every group, in the table's order.
    pub const ALL: [TaskGroup; 7] = [
        TaskGroup::FewShot,
        TaskGroup::LinearProbe,
        TaskGroup::ZeroShot,
        TaskGroup::Retrieval,
        TaskGroup::Compositional,
        TaskGroup::Captioning,
        TaskGroup::Transfer,
    ];

    /// The name in the report and in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            TaskGroup::FewShot => "few-shot",
            TaskGroup::LinearProbe => "linear probe",
            TaskGroup::ZeroShot => "zero-shot",
            TaskGroup::Retrieval => "retrieval",
            TaskGroup::Compositional => "compositional",
            TaskGroup::Captioning => "captioning",
            TaskGroup::Transfer => "transfer",
        }
    }
}

impl std::fmt::Display for TaskGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Values by objective, kept in the order of the objectives' config names (`cap`, `cap_pa`,
/// `clip`, `sigmoid`): the order in which `results.json` lists them and ties are broken.
/// Serialised as a JSON object keyed by those names.
#[derive(Debug, Clone, PartialEq)]
pub struct ByObjective<T>(Vec<(Objective, T)>);

impl<T> Default for ByObjective<T> {
    fn default() -> Self {
        ByObjective(Vec::new())
    }
}

impl<T> ByObjective<T> {
    /// Where `objective` is, or would be inserted.
    fn position(&self, objective: Objective) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(o, _)| o.name().cmp(objective.name()))
    }

    pub fn get(&self, objective: Objective) -> Option<&T> {
        self.position(objective).ok().map(|at| &self.0[at].1)
    }

    pub fn contains(&self, objective: Objective) -> bool {
        self.position(objective).is_ok()
    }

    /// Sets `objective`'s value, replacing any earlier one.
    pub fn insert(&mut self, objective: Objective, value: T) {
        match self.position(objective) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (objective, value)),
        }
    }

    /// `objective`'s value, first set to `make()` when it has none.
    pub fn get_or_insert_with(&mut self, objective: Objective, make: impl FnOnce() -> T) -> &mut T {
        let at = match self.position(objective) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (objective, make()));
                at
            }
        };
        &mut self.0[at].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (Objective, &T)> {
        self.0.iter().map(|(o, v)| (*o, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(Objective, T)> for ByObjective<T> {
    /// Later values of an objective replace earlier ones.
    fn from_iter<I: IntoIterator<Item = (Objective, T)>>(iter: I) -> Self {
        let mut by = ByObjective::default();
        for (objective, value) in iter {
            by.insert(objective, value);
        }
        by
    }
}

impl<T> IntoIterator for ByObjective<T> {
    type Item = (Objective, T);
    type IntoIter = std::vec::IntoIter<(Objective, T)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: Serialize> Serialize for ByObjective<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(o, v)| (o.name(), v)))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ByObjective<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let by_name = BTreeMap::<String, T>::deserialize(deserializer)?;
        by_name
            .into_iter()
            .map(|(name, value)| {
                let name: serde::de::value::StrDeserializer<'_, D::Error> =
                    name.as_str().into_deserializer();
                Ok((Objective::deserialize(name)?, value))
            })
            .collect()
    }
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
    pub group: TaskGroup,
    pub label: String,
    /// Absent where the metric does not apply (e.g. CIDEr for CLIP).
    pub values: ByObjective<Spread>,
    /// In the Markdown table (the JSON has every row).
    pub in_table: bool,
    /// What a model that ignores the image scores ([`chance_level`]); absent where there is no
    /// such level (captioning scores, transfer, real benchmarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance: Option<Chance>,
}

/// A row's chance level and the margin a value needs to count as above it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Chance {
    pub level: f64,
    /// Test items the metric averages over (the sampling error of a chance-level model is
    /// √(p(1 − p) / n)).
    pub items: usize,
}

impl Chance {
    /// Whether `value` is clearly above chance: by more than three times the larger of its
    /// seed standard deviation and the sampling error of a chance-level model on the items.
    pub fn exceeded_by(&self, value: &Spread) -> bool {
        let p = self.level.clamp(0.0, 1.0);
        let sampling = (p * (1.0 - p) / self.items.max(1) as f64).sqrt();
        value.mean - p > 3.0 * value.std.max(sampling)
    }
}

/// The score of guessing without the image, for a metric of the scene world's evaluation:
/// 1/K for a label set of K classes (few-shot, linear probe, zero-shot), 1/2 for preferring
/// the true caption of a pair (compositional), and for retrieval over `test_images` images with
/// `captions_per_image` captions each, k/N text-to-image and 1 − C(T − c, k) / C(T, k)
/// image-to-text (at least one of an image's c captions among the top k of all T captions).
/// `None` for metrics without a chance level (captioning, transfer) and unknown label sets.
pub(crate) fn chance_level(
    id: &str,
    scene: &cappa_data::scene::SceneConfig,
    test_images: usize,
    captions_per_image: usize,
) -> Option<f64> {
    let parts: Vec<&str> = id.split('/').collect();
    let classes = |set: &str| {
        let set = LabelSet::ALL.into_iter().find(|l| l.name() == set)?;
        Some(1.0 / set.class_names(scene).len().max(1) as f64)
    };
    let recall_k = |k: &str| k.strip_prefix('r')?.parse::<usize>().ok();
    match parts.as_slice() {
        ["few_shot", _, set] | ["linear_probe", set] | ["zero_shot", set] => classes(set),
        ["compositional", _] => Some(0.5),
        ["retrieval", "text_to_image", k] => {
            Some((recall_k(k)? as f64 / test_images.max(1) as f64).min(1.0))
        }
        ["retrieval", "image_to_text", k] => {
            let (k, c) = (recall_k(k)?, captions_per_image);
            let texts = test_images * c;
            // C(T − c, k) / C(T, k) = Π_{i<k} (T − c − i) / (T − i).
            let miss: f64 = (0..k.min(texts))
                .map(|i| (texts.saturating_sub(c + i)) as f64 / (texts - i) as f64)
                .product();
            Some(1.0 - miss)
        }
        _ => None,
    }
}

/// One trained model (means over seeds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRow {
    pub objective: Objective,
    pub label: String,
    pub params: i64,
    pub train_flops_per_example: f64,
    pub examples_seen: u64,
    pub steps: u64,
    pub train_seconds: Spread,
    pub final_loss: Option<Spread>,
    /// CapPa: the final training loss of its parallel-prediction and of its causal examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss_parallel: Option<Spread>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss_causal: Option<Spread>,
    /// The contrastive text tower's depth, sized to the captioner's FLOPs.
    pub matched_text_depth: Option<i64>,
}

/// Which objective leads a group of tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupWinner {
    pub group: TaskGroup,
    /// Mean of the group's metrics per objective.
    pub means: ByObjective<f64>,
    pub best: Objective,
    /// The lead is larger than the seed spread (or, with one seed, than
    /// [`CLEAR_LEAD_WITH_ONE_SEED`]).
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
    pub objectives: Vec<Objective>,
    pub seeds: Vec<u64>,
    pub device: String,
    pub data: String,
    pub wall_seconds: f64,
    pub models: Vec<ModelRow>,
    pub metrics: Vec<MetricRow>,
    pub winners: Vec<GroupWinner>,
    pub findings: Vec<Finding>,
    pub plots: Vec<String>,
    /// The real benchmarks' metrics (a suite's), by benchmark then metric, per objective over
    /// seeds (each seed's value in `per_seed`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmarks: BTreeMap<String, BTreeMap<String, ByObjective<Spread>>>,
}

/// Every metric of the finished runs' suite reports, per benchmark, metric and objective.
fn benchmark_rows(
    objectives: &[Objective],
    finished: &[FinishedRun],
) -> BTreeMap<String, BTreeMap<String, ByObjective<Spread>>> {
    let mut values: BTreeMap<(String, String), ByObjective<Vec<f64>>> = BTreeMap::new();
    for run in finished {
        let Some(suite) = &run.suite else { continue };
        for benchmark in &suite.benchmarks {
            for (metric, value) in benchmark.results.metrics() {
                values
                    .entry((benchmark.name.clone(), metric))
                    .or_default()
                    .get_or_insert_with(run.run.objective, Vec::new)
                    .push(value);
            }
        }
    }
    let mut rows: BTreeMap<String, BTreeMap<String, ByObjective<Spread>>> = BTreeMap::new();
    for ((benchmark, metric), by) in values {
        let spreads: ByObjective<Spread> = objectives
            .iter()
            .filter_map(|o| Some((*o, Spread::of(by.get(*o)?)?)))
            .collect();
        rows.entry(benchmark).or_default().insert(metric, spreads);
    }
    rows
}

/// One number of an evaluation report, as a row of the results names it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metric {
    /// Stable identifier, e.g. `few_shot/10/colour`.
    pub id: String,
    pub group: TaskGroup,
    pub label: String,
    pub value: f64,
    /// In the Markdown table.
    pub in_table: bool,
}

impl Metric {
    fn new(id: String, group: TaskGroup, label: String, value: f64, in_table: bool) -> Self {
        Metric {
            id,
            group,
            label,
            value,
            in_table,
        }
    }
}

/// The finite metrics of one evaluation report, task by task.
pub(crate) fn metrics_of(report: &EvalReport) -> Vec<Metric> {
    let mut metrics = few_shot_metrics(report);
    metrics.extend(linear_probe_metrics(report));
    metrics.extend(zero_shot_metrics(report));
    metrics.extend(retrieval_metrics(report));
    metrics.extend(compositional_metrics(report));
    metrics.extend(captioning_metrics(report));
    metrics.extend(transfer_metrics(report));
    metrics.retain(|m| m.value.is_finite());
    metrics
}

/// Every shot count of every label set; the table shows [`TABLE_SHOTS`].
fn few_shot_metrics(report: &EvalReport) -> Vec<Metric> {
    let mut metrics = Vec::new();
    for (set, results) in &report.few_shot {
        for result in results {
            let shots = result.shots as u64;
            metrics.push(Metric::new(
                format!("few_shot/{shots}/{set}"),
                TaskGroup::FewShot,
                format!("{shots}-shot {set}"),
                result.mean_accuracy,
                shots == TABLE_SHOTS,
            ));
        }
    }
    metrics
}

fn linear_probe_metrics(report: &EvalReport) -> Vec<Metric> {
    let rows = report.linear_probe.iter().map(|(set, result)| {
        Metric::new(
            format!("linear_probe/{set}"),
            TaskGroup::LinearProbe,
            format!("linear probe {set}"),
            result.test_accuracy,
            true,
        )
    });
    rows.collect()
}

fn zero_shot_metrics(report: &EvalReport) -> Vec<Metric> {
    let rows = report.zero_shot.iter().map(|(set, accuracy)| {
        Metric::new(
            format!("zero_shot/{set}"),
            TaskGroup::ZeroShot,
            format!("zero-shot {set}"),
            *accuracy,
            true,
        )
    });
    rows.collect()
}

/// Recall at 1, 5 and 10 both ways; the table shows R@1 and R@5.
fn retrieval_metrics(report: &EvalReport) -> Vec<Metric> {
    let Some(retrieval) = &report.retrieval else {
        return Vec::new();
    };
    let mut metrics = Vec::new();
    for (direction, short, recall) in [
        ("image_to_text", "image-to-text", &retrieval.image_to_text),
        ("text_to_image", "text-to-image", &retrieval.text_to_image),
    ] {
        for (k, value) in [("1", recall.r1), ("5", recall.r5), ("10", recall.r10)] {
            metrics.push(Metric::new(
                format!("retrieval/{direction}/r{k}"),
                TaskGroup::Retrieval,
                format!("{short} R@{k}"),
                value,
                k != "10",
            ));
        }
    }
    metrics
}

fn compositional_metrics(report: &EvalReport) -> Vec<Metric> {
    let rows = report.compositional.iter().map(|(kind, accuracy)| {
        Metric::new(
            format!("compositional/{kind}"),
            TaskGroup::Compositional,
            format!("compositional {}", kind.replace('_', " ")),
            *accuracy,
            true,
        )
    });
    rows.collect()
}

/// Greedy captioning's CIDEr-D, BLEU-4 and ROUGE-L; the table leaves out ROUGE-L.
fn captioning_metrics(report: &EvalReport) -> Vec<Metric> {
    let Some(scores) = &report.captioning_greedy else {
        return Vec::new();
    };
    let scores = [
        ("cider_d", "CIDEr-D", scores.cider_d, true),
        ("bleu_4", "BLEU-4", scores.bleu_4, true),
        ("rouge_l", "ROUGE-L", scores.rouge_l, false),
    ];
    let rows = scores.into_iter().map(|(key, label, value, in_table)| {
        Metric::new(
            format!("captioning/greedy/{key}"),
            TaskGroup::Captioning,
            format!("captioning {label}"),
            value,
            in_table,
        )
    });
    rows.collect()
}

fn transfer_metrics(report: &EvalReport) -> Vec<Metric> {
    let Some(transfer) = &report.transfer else {
        return Vec::new();
    };
    vec![
        Metric::new(
            "transfer/captioning/cider_d".into(),
            TaskGroup::Transfer,
            "transfer captioning CIDEr-D".into(),
            transfer.captioning.cider_d,
            true,
        ),
        Metric::new(
            "transfer/vqa_accuracy".into(),
            TaskGroup::Transfer,
            "transfer VQA accuracy".into(),
            transfer.vqa_accuracy,
            true,
        ),
    ]
}

/// One objective's mean over a group's rows: of its means and of its seed spreads.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupMean {
    mean: f64,
    std: f64,
}

/// Group means that decide the winners and findings: only table rows, and groups whose
/// scales are comparable (accuracies and recalls; captioning's CIDEr is its own group).
fn group_means(
    metrics: &[MetricRow],
    objectives: &[Objective],
) -> BTreeMap<TaskGroup, ByObjective<GroupMean>> {
    let mut sums: BTreeMap<TaskGroup, ByObjective<(f64, f64, usize)>> = BTreeMap::new();
    // `compositional/all` summarises the kinds' rows: counting it too would weigh them twice.
    for row in metrics
        .iter()
        .filter(|r| r.in_table && r.id != COMPOSITIONAL_ALL)
    {
        // A group's mean is over the rows every compared objective has.
        let present: Vec<(Objective, &Spread)> = objectives
            .iter()
            .filter_map(|o| Some((*o, row.values.get(*o)?)))
            .collect();
        if present.len() < 2 {
            continue;
        }
        for (objective, spread) in present {
            let sum = sums
                .entry(row.group)
                .or_default()
                .get_or_insert_with(objective, || (0.0, 0.0, 0));
            sum.0 += spread.mean;
            sum.1 += spread.std;
            sum.2 += 1;
        }
    }
    let mean_of = |(sum, std, n): (f64, f64, usize)| GroupMean {
        mean: sum / n as f64,
        std: std / n as f64,
    };
    sums.into_iter()
        .map(|(group, by)| {
            (
                group,
                by.into_iter().map(|(o, s)| (o, mean_of(s))).collect(),
            )
        })
        .collect()
}

/// The leader of each group, in the table's order of groups.
fn winners(groups: &BTreeMap<TaskGroup, ByObjective<GroupMean>>, seeds: usize) -> Vec<GroupWinner> {
    let winner = |(group, by): (&TaskGroup, &ByObjective<GroupMean>)| {
        let mut ranked: Vec<(Objective, &GroupMean)> = by.iter().collect();
        // Stable: on a tie the first objective by name leads.
        ranked.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
        let (best, leader) = ranked[0];
        let clear = ranked.get(1).is_none_or(|(_, next)| {
            let margin = if seeds > 1 {
                leader.std.max(next.std)
            } else {
                CLEAR_LEAD_WITH_ONE_SEED
            };
            leader.mean - next.mean > margin
        });
        GroupWinner {
            group: *group,
            means: by.iter().map(|(o, m)| (o, m.mean)).collect(),
            best,
            clear,
        }
    };
    groups.iter().map(winner).collect()
}

/// Reference captions per test image of the scene world (retrieval's texts).
const REFERENCES_PER_IMAGE: usize = 5;

/// One row per metric in the order of the first report that has it, the groups in the
/// table's order; each objective's value is its spread over the seeds' reports.
fn metric_rows(objectives: &[Objective], finished: &[FinishedRun]) -> Vec<MetricRow> {
    let mut first_seen: Vec<Metric> = Vec::new();
    let mut values: BTreeMap<(String, &'static str), Vec<f64>> = BTreeMap::new();
    for run in finished {
        for metric in metrics_of(&run.report) {
            values
                .entry((metric.id.clone(), run.run.objective.name()))
                .or_default()
                .push(metric.value);
            if !first_seen.iter().any(|m| m.id == metric.id) {
                first_seen.push(metric);
            }
        }
    }
    first_seen.sort_by_key(|m| m.group);
    // The world the models were evaluated in (the first run's; every run of a comparison
    // shares it) decides the label sets' sizes.
    let world = finished.first().and_then(|f| {
        let with = TrainedWith::read(&f.run.dir).ok()?;
        Some((with.scene, f.report.test_images))
    });
    let chance = |id: &str| {
        let (scene, test_images) = world.as_ref()?;
        let level = chance_level(id, scene, *test_images, REFERENCES_PER_IMAGE)?;
        Some(Chance {
            level,
            items: *test_images,
        })
    };
    let row = |metric: Metric| MetricRow {
        chance: chance(&metric.id),
        values: objectives
            .iter()
            .filter_map(|o| {
                let seeds = values.get(&(metric.id.clone(), o.name()))?;
                Some((*o, Spread::of(seeds)?))
            })
            .collect(),
        id: metric.id,
        group: metric.group,
        label: metric.label,
        in_table: metric.in_table,
    };
    first_seen.into_iter().map(row).collect()
}

/// One row per objective that has runs: sizes from its first run, spreads over its seeds.
fn model_rows(objectives: &[Objective], finished: &[FinishedRun]) -> Vec<ModelRow> {
    let mut models = Vec::new();
    for objective in objectives {
        let runs: Vec<&FinishedRun> = finished
            .iter()
            .filter(|f| f.run.objective == *objective)
            .collect();
        let Some(first) = runs.first() else { continue };
        let losses: Vec<f64> = runs.iter().filter_map(|f| f.summary.final_loss).collect();
        let seconds: Vec<f64> = runs.iter().map(|f| f.summary.seconds).collect();
        let of = |value: fn(&RunSummary) -> Option<f64>| -> Vec<f64> {
            runs.iter().filter_map(|f| value(&f.summary)).collect()
        };
        models.push(ModelRow {
            objective: *objective,
            label: objective_label(*objective).into(),
            params: first.summary.params,
            train_flops_per_example: first.summary.train_flops_per_example,
            examples_seen: first.summary.examples_seen,
            steps: first.summary.steps,
            train_seconds: Spread::of(&seconds).expect("at least one run"),
            final_loss: Spread::of(&losses),
            final_loss_parallel: Spread::of(&of(|s| s.final_loss_parallel)),
            final_loss_causal: Spread::of(&of(|s| s.final_loss_causal)),
            matched_text_depth: first.run.matched_text_depth,
        });
    }
    models
}

/// What the models were trained on, in words.
fn data_description(preset: &Preset, options: &CompareOptions) -> String {
    if !options.overrides.data.is_empty() {
        return format!("shards {}", options.overrides.data.join(" "));
    }
    match preset.train["data"]["kind"].as_str() {
        Some("shards") => format!("shards {}", preset.train["data"]["shards"]),
        _ => "the built-in scene world (generated on the fly)".to_string(),
    }
}

/// The distinct seeds of the finished runs, ascending.
fn seeds_of(finished: &[FinishedRun]) -> Vec<u64> {
    let mut seeds: Vec<u64> = finished.iter().map(|f| f.run.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
}

/// Appends the report's plot section (nothing without plots).
pub(crate) fn write_plots_markdown(md: &mut String, plots: &[String]) {
    if plots.is_empty() {
        return;
    }
    md.push_str("\n## Plots\n\n");
    for plot in plots {
        let _ = writeln!(md, "![{plot}]({plot})\n");
    }
}

/// A plot's path in the report, relative to the experiment's directory.
pub(crate) fn plot_path(file: &str) -> String {
    format!("{PLOTS_DIR}/{file}")
}

/// The experiment's directory of plots.
pub(crate) const PLOTS_DIR: &str = "plots";

impl CompareResults {
    /// Collects the finished runs into per-objective rows.
    pub fn gather(
        preset: &Preset,
        finished: &[FinishedRun],
        options: &CompareOptions,
        wall_seconds: f64,
    ) -> Self {
        let objectives = preset.objectives.clone();
        let seeds = seeds_of(finished);
        let metrics = metric_rows(&objectives, finished);
        let groups = group_means(&metrics, &objectives);
        CompareResults {
            name: preset.name.clone(),
            description: preset.description.clone(),
            models: model_rows(&objectives, finished),
            winners: winners(&groups, seeds.len()),
            findings: findings(&groups, &metrics),
            objectives,
            seeds,
            device: format!("{:?}", options.device),
            data: data_description(preset, options),
            wall_seconds,
            metrics,
            plots: Vec::new(),
            benchmarks: benchmark_rows(&preset.objectives, finished),
        }
    }

    fn label(&self, objective: Objective) -> String {
        self.models
            .iter()
            .find(|m| m.objective == objective)
            .map_or(objective.name().to_string(), |m| m.label.clone())
    }

    /// The results table in Markdown: one row per metric, one column per objective, the best
    /// of each row in bold.
    pub fn table_markdown(&self) -> String {
        let mut out = String::from("| group | task | chance |");
        for o in &self.objectives {
            let _ = write!(out, " {} |", self.label(*o));
        }
        out.push_str("\n|---|---|---:|");
        out.push_str(&"---:|".repeat(self.objectives.len()));
        out.push('\n');
        for row in self.metrics.iter().filter(|r| r.in_table) {
            self.write_table_row(&mut out, row);
        }
        out
    }

    fn write_table_row(&self, out: &mut String, row: &MetricRow) {
        let best = row
            .values
            .values()
            .map(|s| s.mean)
            .fold(f64::NEG_INFINITY, f64::max);
        let chance = match &row.chance {
            Some(c) if !row.values.values().any(|v| c.exceeded_by(v)) => {
                format!("{:.3} · not learned at this budget", c.level)
            }
            Some(c) => format!("{:.3}", c.level),
            None => "–".to_string(),
        };
        let _ = write!(out, "| {} | {} | {chance} |", row.group, row.label);
        for o in &self.objectives {
            match row.values.get(*o) {
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

    /// The whole report in Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.write_heading(&mut md);
        self.write_models(&mut md);
        self.write_results(&mut md);
        self.write_benchmarks(&mut md);
        self.write_winners(&mut md);
        self.write_findings(&mut md);
        write_plots_markdown(&mut md, &self.plots);
        md
    }

    /// A section per real benchmark: its metrics per objective.
    fn write_benchmarks(&self, md: &mut String) {
        if self.benchmarks.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\n## Real benchmarks\n\nEvery model on the suite's benchmarks (each benchmark's \
             `results.json` in `CHECKPOINT/eval/suite-NAME/` also counts its skipped samples).\n"
        );
        for (benchmark, metrics) in &self.benchmarks {
            let _ = writeln!(md, "### {benchmark}\n");
            let mut header = String::from("| metric |");
            for o in &self.objectives {
                let _ = write!(header, " {} |", self.label(*o));
            }
            let _ = writeln!(md, "{header}");
            let _ = writeln!(md, "|---|{}", "---:|".repeat(self.objectives.len()));
            for (metric, by) in metrics {
                let mut line = format!("| {metric} |");
                for o in &self.objectives {
                    match by.get(*o) {
                        Some(s) => {
                            let _ = write!(line, " {} |", s.display());
                        }
                        None => line.push_str(" — |"),
                    }
                }
                let _ = writeln!(md, "{line}");
            }
            md.push('\n');
        }
    }

    fn write_heading(&self, md: &mut String) {
        let _ = write!(md, "# cappa compare: {}\n\n", self.name);
        if !self.description.is_empty() {
            let _ = writeln!(md, "{}\n", self.description);
        }
        let seeds = self.seeds.len();
        let seed_list: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            md,
            "Trained on {} with {} seed{} ({}) on {}; wall time {} (training, evaluation and \
             this report).\n",
            self.data,
            seeds,
            if seeds == 1 { "" } else { "s" },
            seed_list.join(", "),
            self.device,
            super::minutes(self.wall_seconds)
        );
    }

    fn write_models(&self, md: &mut String) {
        md.push_str("## Models, at matched compute\n\n");
        md.push_str(
            "Every model has the same image encoder and sees the same number of examples; the \
             contrastive text tower's depth is chosen so that its training FLOPs per example \
             come closest to the captioner's decoder.\n\n",
        );
        md.push_str(
            "Throughput is the training's: examples seen over training seconds, and 3 × forward \
             FLOPs per example at that rate. CapPa's final loss mixes its parallel-prediction \
             and causal examples; the two are shown apart (means over the last log window).\n\n",
        );
        md.push_str(
            "| model | parameters | training FLOPs / example | examples seen | steps | \
             training time | examples/s | GFLOP/s | final loss |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.models {
            let per_second = m.examples_seen as f64 / m.train_seconds.mean.max(1e-9);
            let mut loss = m.final_loss.as_ref().map_or("–".into(), Spread::display);
            if let (Some(p), Some(c)) = (&m.final_loss_parallel, &m.final_loss_causal) {
                let _ = write!(loss, " (parallel {}, causal {})", p.display(), c.display());
            }
            let _ = writeln!(
                md,
                "| {}{} | {} | {:.3e} | {} | {} | {} | {per_second:.0} | {:.1} | {loss} |",
                m.label,
                m.matched_text_depth
                    .map(|d| format!(" (text tower: {d} layers)"))
                    .unwrap_or_default(),
                m.params,
                m.train_flops_per_example,
                m.examples_seen,
                m.steps,
                super::minutes(m.train_seconds.mean),
                per_second * m.train_flops_per_example / 1e9,
            );
        }
    }

    fn write_results(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Results\n\n{} on the scene world's held-out split (never seen in training); \
             the best of each row in bold. Few-shot rows are {TABLE_SHOTS}-shot ridge probes \
             (every shot count is in results.json). *Chance* is the score of guessing without \
             the image (1/K for K classes, 1/2 for a caption pair, k/N-like for recall@k); a \
             row is *not learned at this budget* when no objective beats it by more than three \
             times the larger of its seed standard deviation and a chance-level model's \
             sampling error √(p(1 − p)/n) on the n test images.\n",
            if self.seeds.len() > 1 {
                "Mean ± standard deviation over seeds"
            } else {
                "One seed"
            }
        );
        md.push_str(&self.table_markdown());
    }

    fn write_winners(&self, md: &mut String) {
        md.push_str("\n## Which objective wins where\n\n");
        for w in &self.winners {
            let means: Vec<String> = w
                .means
                .iter()
                .map(|(o, m)| format!("{} {m:.3}", self.label(o)))
                .collect();
            let verdict = match (w.clear, self.seeds.len() > 1) {
                (true, _) => "leads".to_string(),
                (false, true) => "leads within the seed spread".to_string(),
                (false, false) => format!("leads by less than {CLEAR_LEAD_WITH_ONE_SEED}"),
            };
            let _ = writeln!(
                md,
                "- {}: **{}** {verdict} (mean of the group's rows: {})",
                w.group,
                self.label(w.best),
                means.join(", ")
            );
        }
    }

    fn write_findings(&self, md: &mut String) {
        md.push_str("\n## The paper's findings on this run\n\n");
        for f in &self.findings {
            let mark = match f.reproduced {
                Some(true) => "reproduced",
                Some(false) => "not reproduced",
                None => "not checked",
            };
            let _ = writeln!(md, "- {} — **{mark}**: {}", f.claim, f.evidence);
        }
    }

    /// Writes the plots, `results.json` and `report.md` into `dir`.
    pub fn write(&mut self, dir: &Path, finished: &[FinishedRun]) -> Result<()> {
        self.plots = self.draw(dir, finished)?;
        cappa_io::write_json(&dir.join(RESULTS_FILE), self)?;
        cappa_io::write_atomically(&dir.join(REPORT_FILE), self.markdown().as_bytes())?;
        Ok(())
    }

    /// Draws every plot into `dir/plots/`; their paths relative to `dir`.
    fn draw(&self, dir: &Path, finished: &[FinishedRun]) -> Result<Vec<String>> {
        let plots_dir = dir.join(PLOTS_DIR);
        let mut written = vec![self.draw_loss_curves(&plots_dir, finished)?];
        written.extend(self.draw_bars(&plots_dir)?);
        written.extend(self.draw_captions(&plots_dir, finished)?);
        Ok(written)
    }

    /// Training loss against examples seen, one panel per objective, one line per seed.
    fn draw_loss_curves(&self, plots_dir: &Path, finished: &[FinishedRun]) -> Result<String> {
        let panel = |objective: &Objective| Panel {
            title: self.label(*objective),
            lines: finished
                .iter()
                .filter(|f| f.run.objective == *objective)
                .map(|f| Line {
                    name: format!("seed {}", f.run.seed),
                    colour: f.run.seed as usize,
                    style: LineStyle::Solid,
                    points: loss_curve(&f.run.dir.join(METRICS_FILE)),
                })
                .collect(),
        };
        let panels: Vec<Panel> = self.objectives.iter().map(panel).collect();
        let file = "loss_curves.png";
        plots::line_panels(
            &plots_dir.join(file),
            "Training loss",
            &panels,
            "examples seen",
            "loss",
            Axes::Linear,
        )?;
        Ok(plot_path(file))
    }

    /// Grouped bars of the table's accuracy rows (not CIDEr/BLEU, on another scale), and of
    /// the compositional rows.
    fn draw_bars(&self, plots_dir: &Path) -> Result<Vec<String>> {
        let labels: Vec<String> = self.objectives.iter().map(|o| self.label(*o)).collect();
        let colours: Vec<usize> = self
            .objectives
            .iter()
            .map(|o| objective_colour(*o))
            .collect();
        let spread = if self.seeds.len() > 1 {
            " (bars: ± one standard deviation over seeds)"
        } else {
            ""
        };
        let accuracies = self.bar_groups(|r| {
            r.in_table
                && !matches!(r.group, TaskGroup::Captioning | TaskGroup::Compositional)
                && !r.label.contains("CIDEr")
        });
        let compositional = self.bar_groups(|r| r.group == TaskGroup::Compositional);
        let charts = [
            (
                "results.png",
                format!("Results by task{spread}"),
                accuracies,
                "accuracy / recall",
            ),
            (
                "compositional.png",
                format!("Compositional accuracy by negative type{spread}"),
                compositional,
                "preference accuracy",
            ),
        ];
        let mut written = Vec::new();
        for (file, title, groups, y_label) in charts {
            let path = plots_dir.join(file);
            plots::grouped_bars(&path, &title, &labels, &colours, &groups, y_label)?;
            written.push(plot_path(file));
        }
        // One chart per real benchmark, of its accuracies and recalls (not the caption
        // metrics, on another scale).
        for (benchmark, metrics) in &self.benchmarks {
            let groups: Vec<BarGroup> = metrics
                .iter()
                .filter(|(m, _)| !["cider", "bleu", "rouge"].iter().any(|c| m.contains(c)))
                .map(|(metric, by)| BarGroup {
                    label: metric.clone(),
                    values: self
                        .objectives
                        .iter()
                        .map(|o| by.get(*o).map(|s| (s.mean, s.std)))
                        .collect(),
                })
                .collect();
            if groups.is_empty() {
                continue;
            }
            let file = format!("benchmark_{benchmark}.png");
            let title = format!("{benchmark}{spread}");
            plots::grouped_bars(
                &plots_dir.join(&file),
                &title,
                &labels,
                &colours,
                &groups,
                "accuracy / recall",
            )?;
            written.push(plot_path(&file));
        }
        Ok(written)
    }

    /// One bar group per metric row that `keep` keeps: (mean, std) per objective.
    fn bar_groups(&self, keep: impl Fn(&MetricRow) -> bool) -> Vec<BarGroup> {
        let group = |r: &MetricRow| BarGroup {
            label: r.label.clone(),
            values: self
                .objectives
                .iter()
                .map(|o| r.values.get(*o).map(|s| (s.mean, s.std)))
                .collect(),
        };
        self.metrics.iter().filter(|r| keep(r)).map(group).collect()
    }

    /// Test images with their reference and each captioner's greedy caption (first seed);
    /// nothing without a captioner.
    fn draw_captions(&self, plots_dir: &Path, finished: &[FinishedRun]) -> Result<Option<String>> {
        let captioners: Vec<&FinishedRun> = finished
            .iter()
            .filter(|f| f.run.seed == self.seeds[0] && !f.run.objective.is_contrastive())
            .collect();
        let Some(first) = captioners.first() else {
            return Ok(None);
        };
        let with = TrainedWith::read(&first.run.dir)?;
        let world = SceneWorld::eval(with.scene.clone(), with.seed)?;
        let items: Vec<CaptionedImage> = (0..first.report.sample_captions.len())
            .map(|i| captioned_image(&world, i, &captioners))
            .collect();
        let file = "captions.png";
        plots::caption_grid(
            &plots_dir.join(file),
            "Held-out test images with greedy captions (seed 0)",
            &items,
        )?;
        Ok(Some(plot_path(file)))
    }
}

/// Test image `index` of `world` with its first reference caption and each captioner's
/// sample caption of it.
fn captioned_image(
    world: &SceneWorld,
    index: usize,
    captioners: &[&FinishedRun],
) -> CaptionedImage {
    let scene = world.scene(index as u64);
    let reference = world
        .captions(&scene, index as u64)
        .into_iter()
        .next()
        .unwrap_or_default();
    let mut lines = vec![("reference".to_string(), reference)];
    for c in captioners {
        let caption = c
            .report
            .sample_captions
            .get(index)
            .map_or("", String::as_str);
        lines.push((
            objective_label(c.run.objective).to_string(),
            caption.to_string(),
        ));
    }
    CaptionedImage {
        image: world.render(&scene),
        lines,
    }
}

/// A training step's line of the trainer's metrics log (other events are left out).
#[derive(Deserialize)]
struct LoggedStep {
    examples: f64,
    loss: f64,
    event: Option<String>,
}

/// Training loss per logged step: (examples seen, loss).
pub(crate) fn loss_curve(path: &Path) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<LoggedStep>(line).ok())
        .filter(|step| step.event.is_none())
        .map(|step| (step.examples, step.loss))
        .collect()
}

/// The paper's findings, checked against the group means and the compositional row.
fn findings(
    groups: &BTreeMap<TaskGroup, ByObjective<GroupMean>>,
    metrics: &[MetricRow],
) -> Vec<Finding> {
    let group_mean = |group: TaskGroup| {
        move |o: Objective| groups.get(&group).and_then(|g| g.get(o)).map(|m| m.mean)
    };
    let compositional_all = metrics.iter().find(|r| r.id == COMPOSITIONAL_ALL);
    let compositional = |o: Objective| {
        compositional_all
            .and_then(|r| r.values.get(o))
            .map(|s| s.mean)
    };
    vec![
        few_shot_finding(group_mean(TaskGroup::FewShot)),
        compositional_finding(compositional),
        contrastive_tasks_finding(
            group_mean(TaskGroup::Retrieval),
            group_mean(TaskGroup::ZeroShot),
        ),
    ]
}

/// An objective's value on a task or group, where it has one.
type MeanOf<'a> = dyn Fn(Objective) -> Option<f64> + 'a;

/// The objective of `objectives` with the largest value (the last of equals) and its value.
fn best_of(
    objectives: &[Objective],
    value: impl Fn(Objective) -> Option<f64>,
) -> Option<(Objective, f64)> {
    objectives
        .iter()
        .filter_map(|o| value(*o).map(|m| (*o, m)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Few-shot classification: captioning ≥ contrastive, and CapPa > Cap.
fn few_shot_finding(mean: impl Fn(Objective) -> Option<f64>) -> Finding {
    let claim = "Captioning encoders match or beat contrastive ones on few-shot classification, \
                 and CapPa beats Cap"
        .to_string();
    match (
        best_of(&CONTRASTIVE, &mean),
        best_of(&CAPTIONERS, &mean),
        mean(Objective::Cap),
        mean(Objective::CapPa),
    ) {
        (Some((c, cm)), Some((_, pm)), Some(cap), Some(cap_pa)) => Finding {
            claim,
            reproduced: Some(pm >= cm && cap_pa > cap),
            evidence: format!(
                "mean {TABLE_SHOTS}-shot accuracy {} {cm:.3}, Cap {cap:.3}, CapPa {cap_pa:.3}",
                objective_label(c)
            ),
        },
        _ => Finding {
            claim,
            reproduced: None,
            evidence: "needs a contrastive model, Cap and CapPa".into(),
        },
    }
}

/// Compositional tests: captioners far ahead (by [`FAR_AHEAD_ON_COMPOSITIONAL`] on the
/// accuracy over all negative kinds).
fn compositional_finding(accuracy: impl Fn(Objective) -> Option<f64>) -> Finding {
    let claim = "Captioning encoders are far ahead on compositional tests (attribute and relation \
                 swaps, word order)"
        .to_string();
    match (
        best_of(&CONTRASTIVE, &accuracy),
        best_of(&CAPTIONERS, &accuracy),
    ) {
        (Some((c, cm)), Some((p, pm))) => Finding {
            claim,
            reproduced: Some(pm - cm >= FAR_AHEAD_ON_COMPOSITIONAL),
            evidence: format!(
                "accuracy over all negatives {} {pm:.3} vs {} {cm:.3} (a lead of at least \
                 {FAR_AHEAD_ON_COMPOSITIONAL} counts as far ahead)",
                objective_label(p),
                objective_label(c)
            ),
        },
        _ => Finding {
            claim,
            reproduced: None,
            evidence: "needs a contrastive model and a captioner".into(),
        },
    }
}

/// Retrieval and zero-shot classification: contrastive ahead on each group that both kinds
/// of model have.
fn contrastive_tasks_finding(
    retrieval: impl Fn(Objective) -> Option<f64>,
    zero_shot: impl Fn(Objective) -> Option<f64>,
) -> Finding {
    let claim = "Contrastive encoders are ahead on retrieval and zero-shot classification".into();
    let mut parts = Vec::new();
    let mut verdicts = Vec::new();
    let groups: [(TaskGroup, &MeanOf<'_>); 2] = [
        (TaskGroup::Retrieval, &retrieval),
        (TaskGroup::ZeroShot, &zero_shot),
    ];
    for (group, mean) in groups {
        if let (Some((c, cm)), Some((p, pm))) =
            (best_of(&CONTRASTIVE, mean), best_of(&CAPTIONERS, mean))
        {
            verdicts.push(cm > pm);
            parts.push(format!(
                "{group}: {} {cm:.3} vs {} {pm:.3}",
                objective_label(c),
                objective_label(p)
            ));
        }
    }
    Finding {
        claim,
        reproduced: (!verdicts.is_empty()).then(|| verdicts.iter().all(|v| *v)),
        evidence: if parts.is_empty() {
            "needs a contrastive model and a captioner with retrieval or zero-shot results".into()
        } else {
            format!("mean of the table's rows — {}", parts.join("; "))
        },
    }
}

/// An evaluation report with only the tasks `tasks` gives (as `EvalReport`'s JSON), for
/// tests.
#[cfg(test)]
pub(crate) fn report_of(tasks: serde_json::Value) -> EvalReport {
    let mut value = serde_json::json!({
        "model_kind": "captioner",
        "test_images": 0,
        "few_shot": {},
        "zero_shot": {},
        "linear_probe": {},
        "compositional": {},
        "compositional_files": {},
        "sample_captions": [],
        "seconds": {},
    });
    super::merge(&mut value, &tasks);
    serde_json::from_value(value).expect("an evaluation report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_names_every_finite_number_of_a_report() {
        let mut report = report_of(serde_json::json!({
            "few_shot": {"colour": [
                {"shots": 1, "mean_accuracy": 0.25, "accuracies": [0.25]},
                {"shots": 10, "mean_accuracy": 0.5, "accuracies": [0.5]},
            ]},
            "linear_probe": {"colour": {
                "l2": 1.0, "validation_accuracy": 0.5, "test_accuracy": 0.625, "grid": [],
            }},
            "zero_shot": {"shape": 0.75},
            "retrieval": {
                "image_to_text": {"r1": 0.1, "r5": 0.2, "r10": 0.3},
                "text_to_image": {"r1": 0.4, "r5": 0.5, "r10": 0.6},
            },
            "compositional": {"all": 0.9, "relation_swap": 0.8},
            "captioning_greedy": {
                "bleu_1": 0.0, "bleu_2": 0.0, "bleu_3": 0.0, "bleu_4": 0.125,
                "rouge_l": 0.375, "cider_d": 1.5, "images": 4,
            },
            "transfer": {
                "captioning": {
                    "bleu_1": 0.0, "bleu_2": 0.0, "bleu_3": 0.0, "bleu_4": 0.0,
                    "rouge_l": 0.0, "cider_d": 0.875, "images": 4,
                },
                "vqa_accuracy": 0.25, "vqa_by_kind": {},
                "final_caption_loss": 1.0, "final_vqa_loss": 1.0,
            },
        }));
        // A NaN (a task that could not score) is left out, not reported as a number.
        report.zero_shot.insert("size".into(), f64::NAN);
        let rows: Vec<String> = metrics_of(&report)
            .iter()
            .map(|m| {
                format!(
                    "{} | {} | {} | {} | {}",
                    m.id, m.group, m.label, m.value, m.in_table
                )
            })
            .collect();
        let expected = [
            "few_shot/1/colour | few-shot | 1-shot colour | 0.25 | false",
            "few_shot/10/colour | few-shot | 10-shot colour | 0.5 | true",
            "linear_probe/colour | linear probe | linear probe colour | 0.625 | true",
            "zero_shot/shape | zero-shot | zero-shot shape | 0.75 | true",
            "retrieval/image_to_text/r1 | retrieval | image-to-text R@1 | 0.1 | true",
            "retrieval/image_to_text/r5 | retrieval | image-to-text R@5 | 0.2 | true",
            "retrieval/image_to_text/r10 | retrieval | image-to-text R@10 | 0.3 | false",
            "retrieval/text_to_image/r1 | retrieval | text-to-image R@1 | 0.4 | true",
            "retrieval/text_to_image/r5 | retrieval | text-to-image R@5 | 0.5 | true",
            "retrieval/text_to_image/r10 | retrieval | text-to-image R@10 | 0.6 | false",
            "compositional/all | compositional | compositional all | 0.9 | true",
            "compositional/relation_swap | compositional | compositional relation swap | 0.8 | true",
            "captioning/greedy/cider_d | captioning | captioning CIDEr-D | 1.5 | true",
            "captioning/greedy/bleu_4 | captioning | captioning BLEU-4 | 0.125 | true",
            "captioning/greedy/rouge_l | captioning | captioning ROUGE-L | 0.375 | false",
            "transfer/captioning/cider_d | transfer | transfer captioning CIDEr-D | 0.875 | true",
            "transfer/vqa_accuracy | transfer | transfer VQA accuracy | 0.25 | true",
        ];
        assert_eq!(rows, expected);
    }

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

    #[test]
    fn task_groups_serialise_by_name_and_sort_in_table_order() {
        let names: Vec<String> = TaskGroup::ALL
            .iter()
            .map(|g| {
                serde_json::to_value(g)
                    .expect("serialises")
                    .as_str()
                    .expect("a string")
                    .to_string()
            })
            .collect();
        let expected = [
            "few-shot",
            "linear probe",
            "zero-shot",
            "retrieval",
            "compositional",
            "captioning",
            "transfer",
        ];
        assert_eq!(names, expected);
        for group in TaskGroup::ALL {
            assert_eq!(group.to_string(), group.name());
            let back: TaskGroup = serde_json::from_value(group.name().into()).expect("parses");
            assert_eq!(back, group);
        }
        let mut sorted = TaskGroup::ALL;
        sorted.sort();
        assert_eq!(sorted, TaskGroup::ALL);
    }

    #[test]
    fn by_objective_keeps_name_order_and_round_trips() {
        let mut by: ByObjective<f64> = [
            (Objective::Sigmoid, 4.0),
            (Objective::Clip, 1.0),
            (Objective::CapPa, 3.0),
        ]
        .into_iter()
        .collect();
        *by.get_or_insert_with(Objective::Cap, || 0.0) += 2.0;
        by.insert(Objective::Clip, 1.5);
        let text = serde_json::to_string(&by).expect("serialises");
        assert_eq!(text, r#"{"cap":2.0,"cap_pa":3.0,"clip":1.5,"sigmoid":4.0}"#);
        let back: ByObjective<f64> = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, by);
        assert_eq!((by.len(), by.get(Objective::Clip)), (4, Some(&1.5)));
        let unknown = serde_json::from_str::<ByObjective<f64>>(r#"{"clap": 1.0}"#);
        assert!(unknown.unwrap_err().to_string().contains("clap"));
    }

    fn row(id: &str, group: TaskGroup, values: &[(Objective, f64)]) -> MetricRow {
        MetricRow {
            id: id.into(),
            group,
            label: id.into(),
            values: values
                .iter()
                .map(|(o, v)| (*o, Spread::of(&[*v]).expect("value")))
                .collect(),
            in_table: true,
            chance: None,
        }
    }

    #[test]
    fn chance_levels_by_hand() {
        use cappa_data::scene::SceneConfig;
        let world = SceneConfig::default(); // 8 shapes, 1..=4 objects
        let level = |id: &str| chance_level(id, &world, 100, 5);
        assert_eq!(level("few_shot/10/shape"), Some(1.0 / 8.0));
        assert_eq!(level("linear_probe/count"), Some(0.25));
        let colours = LabelSet::Colour.class_names(&world).len() as f64;
        assert_eq!(level("zero_shot/shape_colour"), Some(1.0 / (8.0 * colours)));
        assert_eq!(level("compositional/relation_swap"), Some(0.5));
        assert_eq!(level("retrieval/text_to_image/r5"), Some(0.05));
        // One of an image's 5 captions first among 500: 5/500.
        assert!((level("retrieval/image_to_text/r1").unwrap() - 0.01).abs() < 1e-12);
        // Among the top 2: 1 − (495/500)(494/499).
        let r2 = chance_level("retrieval/image_to_text/r2", &world, 100, 5).unwrap();
        assert!((r2 - (1.0 - 495.0 / 500.0 * 494.0 / 499.0)).abs() < 1e-12);
        assert_eq!(level("captioning/greedy/cider_d"), None);
        assert_eq!(level("zero_shot/flowers"), None);
        let one_object = SceneConfig {
            max_objects: 2,
            ..SceneConfig::default()
        };
        assert_eq!(
            chance_level("few_shot/1/count", &one_object, 100, 5),
            Some(0.5)
        );
    }

    #[test]
    fn rows_at_chance_say_so() {
        use Objective::{Cap, Clip};
        let chance = Chance {
            level: 0.125,
            items: 100,
        };
        // 3 × √(0.125 · 0.875 / 100) = 0.0992: 0.2 is not clear of chance, 0.25 is.
        assert!(!chance.exceeded_by(&Spread::of(&[0.2]).unwrap()));
        assert!(chance.exceeded_by(&Spread::of(&[0.25]).unwrap()));
        // With seeds, their spread counts when it is the larger.
        assert!(!chance.exceeded_by(&Spread::of(&[0.1, 0.5]).unwrap()));
        let mut shape = row(
            "few_shot/10/shape",
            TaskGroup::FewShot,
            &[(Clip, 0.2), (Cap, 0.15)],
        );
        shape.chance = Some(chance);
        let mut colour = row(
            "few_shot/10/colour",
            TaskGroup::FewShot,
            &[(Clip, 0.2), (Cap, 0.9)],
        );
        colour.chance = Some(chance);
        let results = results_with(vec![shape, colour], vec![Clip, Cap]);
        let table = results.table_markdown();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("| chance |"), "{table}");
        assert!(
            lines[2].contains("0.125 · not learned at this budget"),
            "{table}"
        );
        assert!(
            lines[3].contains("| 0.125 |") && !lines[3].contains("not learned"),
            "{table}"
        );
    }

    #[test]
    fn findings_follow_the_numbers() {
        use Objective::{Cap, CapPa, Clip};
        let objectives = [Clip, Cap, CapPa];
        let metrics = vec![
            row(
                "few_shot/10/a",
                TaskGroup::FewShot,
                &[(Clip, 0.5), (Cap, 0.6), (CapPa, 0.7)],
            ),
            row(
                "few_shot/10/b",
                TaskGroup::FewShot,
                &[(Clip, 0.5), (Cap, 0.6), (CapPa, 0.7)],
            ),
            row(
                COMPOSITIONAL_ALL,
                TaskGroup::Compositional,
                &[(Clip, 0.6), (Cap, 0.9), (CapPa, 0.62)],
            ),
            row(
                "retrieval/x",
                TaskGroup::Retrieval,
                &[(Clip, 0.8), (Cap, 0.3)],
            ),
            row(
                "zero_shot/y",
                TaskGroup::ZeroShot,
                &[(Clip, 0.4), (Cap, 0.5), (CapPa, 0.45)],
            ),
        ];
        let groups = group_means(&metrics, &objectives);
        assert!((groups[&TaskGroup::FewShot].get(CapPa).expect("mean").mean - 0.7).abs() < 1e-12);
        // Retrieval has no CapPa value: its mean is over the objectives present.
        assert!(!groups[&TaskGroup::Retrieval].contains(CapPa));
        // `compositional/all` summarises other rows: it is no group mean of its own.
        assert!(!groups.contains_key(&TaskGroup::Compositional));
        let f = findings(&groups, &metrics);
        assert_eq!(f[0].reproduced, Some(true), "{}", f[0].evidence);
        assert_eq!(f[1].reproduced, Some(true), "Cap .90 vs CLIP .60");
        assert!(f[1]
            .evidence
            .contains("Cap 0.900 vs CLIP 0.600 (a lead of at least 0.05 "));
        // Retrieval favours CLIP but zero-shot does not: not reproduced.
        assert_eq!(f[2].reproduced, Some(false), "{}", f[2].evidence);
    }

    #[test]
    fn a_compositional_lead_counts_as_far_ahead_from_the_threshold_on() {
        let lead = |captioner: f64| {
            let accuracy = move |o: Objective| match o {
                Objective::Clip => Some(0.5),
                Objective::Cap => Some(captioner),
                _ => None,
            };
            compositional_finding(accuracy).reproduced
        };
        assert_eq!(lead(0.5 + FAR_AHEAD_ON_COMPOSITIONAL + 1e-9), Some(true));
        assert_eq!(lead(0.5 + FAR_AHEAD_ON_COMPOSITIONAL - 1e-9), Some(false));
        let none = compositional_finding(|o: Objective| (o == Objective::Clip).then_some(0.5));
        assert_eq!(none.reproduced, None);
    }

    #[test]
    fn with_one_seed_a_lead_is_clear_above_the_threshold_only() {
        use Objective::{Cap, Clip};
        let metrics = vec![
            row("a", TaskGroup::FewShot, &[(Clip, 0.5), (Cap, 0.52)]),
            row("b", TaskGroup::ZeroShot, &[(Clip, 0.5), (Cap, 0.505)]),
            // A tie: the first objective by name (`cap`) leads, not clearly.
            row("c", TaskGroup::Retrieval, &[(Clip, 0.5), (Cap, 0.5)]),
        ];
        let groups = group_means(&metrics, &[Clip, Cap]);
        let won = winners(&groups, 1);
        let verdicts: Vec<(TaskGroup, Objective, bool)> =
            won.iter().map(|w| (w.group, w.best, w.clear)).collect();
        assert_eq!(
            verdicts,
            [
                (TaskGroup::FewShot, Cap, true),
                (TaskGroup::ZeroShot, Cap, false),
                (TaskGroup::Retrieval, Cap, false),
            ]
        );
        let results = CompareResults {
            winners: won,
            ..results_with(vec![], vec![Clip, Cap])
        };
        let md = results.markdown();
        assert!(
            md.contains("- zero-shot: **cap** leads by less than 0.01 (mean of the group's rows: cap 0.505, clip 0.500)"),
            "{md}"
        );
    }

    fn results_with(metrics: Vec<MetricRow>, objectives: Vec<Objective>) -> CompareResults {
        CompareResults {
            name: "t".into(),
            description: String::new(),
            objectives,
            seeds: vec![0],
            device: "Cpu".into(),
            data: "scene".into(),
            wall_seconds: 1.0,
            models: vec![],
            metrics,
            winners: vec![],
            findings: vec![],
            plots: vec![],
            benchmarks: BTreeMap::new(),
        }
    }

    #[test]
    fn the_table_bolds_the_best_and_dashes_what_is_missing() {
        use Objective::{Cap, Clip};
        let results = results_with(
            vec![
                row("a", TaskGroup::FewShot, &[(Clip, 0.5), (Cap, 0.75)]),
                row("b", TaskGroup::Captioning, &[(Cap, 1.25)]),
            ],
            vec![Clip, Cap],
        );
        let table = results.table_markdown();
        assert!(
            table.contains("| few-shot | a | – | 0.500 | **0.750** |"),
            "{table}"
        );
        assert!(
            table.contains("| captioning | b | – | – | 1.250 |"),
            "{table}"
        );
        let json = serde_json::to_value(&results).expect("serialises");
        assert_eq!(json["objectives"], serde_json::json!(["clip", "cap"]));
        assert_eq!(json["metrics"][1]["group"], "captioning");
        assert_eq!(json["metrics"][0]["values"]["cap"]["mean"], 0.75);
    }
}
