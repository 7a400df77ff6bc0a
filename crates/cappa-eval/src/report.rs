//! One model on every scene-world task: few-shot probes per label set, zero-shot
//! classification, retrieval, compositional preference, and for captioners captioning
//! (greedy, optionally beam) and perplexity. Writes one JSON per task and `results.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use cappa_data::tokenizer::Tokenizer;
use cappa_io::FileError;
use cappa_models::GenerateConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::caption_metrics::CaptionScores;
use crate::model::{Captioner, Evaluable, ImageEncoder, ModelKind, TextScorer};
use crate::probe::{
    few_shot, has_validation_split, linear_probe, FewShotConfig, FewShotResult, LinearProbeConfig,
    LinearProbeResult,
};
use crate::scene::SceneEvalSet;
use crate::scoring::DEFAULT_BATCH;
use crate::tasks::{
    captioning, compositional, perplexity, probe_features, retrieval, zero_shot, Perplexity,
    RetrievalScores, ZeroShotConfig, MAX_LIKELIHOOD_RETRIEVAL_PAIRS,
};
use crate::transfer::{transfer, TransferConfig, TransferResult};

/// Length penalty α of the beam-search captioning pass (hypotheses ranked by log-probability
/// divided by `length^α`), the value the paper's captioning evaluation uses.
pub const BEAM_LENGTH_PENALTY: f64 = 0.6;

/// Greedy captions of the first test images kept in the report, for a look.
pub const SAMPLE_CAPTIONS: usize = 8;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub few_shot: FewShotConfig,
    pub zero_shot: ZeroShotConfig,
    /// Caption tokens per text, as in training.
    pub seq_len: usize,
    /// Captioners: largest number of (image, caption) pairs retrieval may score.
    pub max_retrieval_pairs: usize,
    /// Captioners: beam size for a second captioning run (1: greedy only).
    pub beam_size: i64,
    pub batch: i64,
    /// Vision-and-language transfer on the frozen encoder (two decoders trained; the slowest
    /// task); `None` skips it.
    pub transfer: Option<TransferConfig>,
}

impl EvalOptions {
    pub fn new(seq_len: usize) -> Self {
        EvalOptions {
            few_shot: FewShotConfig::default(),
            zero_shot: ZeroShotConfig::default(),
            seq_len,
            max_retrieval_pairs: MAX_LIKELIHOOD_RETRIEVAL_PAIRS,
            beam_size: 1,
            batch: DEFAULT_BATCH,
            transfer: None,
        }
    }
}

/// A task whose time the report records, by its name in `seconds`. Variants are in the
/// alphabetical order of their names, so a map keyed by them serialises in the same order as
/// one keyed by the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimedTask {
    CaptioningBeam,
    CaptioningGreedy,
    Compositional,
    Perplexity,
    /// Probe features, few-shot and linear probes together.
    Probes,
    Retrieval,
    Transfer,
    ZeroShot,
}

/// Every result of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub model_kind: ModelKind,
    pub test_images: usize,
    /// Few-shot ridge accuracy by label set.
    pub few_shot: BTreeMap<String, Vec<FewShotResult>>,
    /// Zero-shot accuracy by label set.
    pub zero_shot: BTreeMap<String, f64>,
    pub retrieval: Option<RetrievalScores>,
    /// Why retrieval did not run (captioners above the pair limit).
    pub retrieval_skipped: Option<String>,
    /// Logistic-regression probe on the pool, tested on the test images, by label set (label
    /// sets whose pool is too small for a validation split are left out).
    pub linear_probe: BTreeMap<String, LinearProbeResult>,
    /// Accuracy of preferring the true caption, by negative kind and `all`.
    pub compositional: BTreeMap<String, f64>,
    /// The same on benchmark files (SugarCrepe/ARO format), by file then kind; filled by
    /// callers that have such files.
    pub compositional_files: BTreeMap<String, BTreeMap<String, f64>>,
    pub captioning_greedy: Option<CaptionScores>,
    pub captioning_beam: Option<CaptionScores>,
    /// Greedy captions of the first test images, for a look.
    pub sample_captions: Vec<String>,
    pub perplexity: Option<Perplexity>,
    pub transfer: Option<TransferResult>,
    /// Seconds per task.
    pub seconds: BTreeMap<TimedTask, f64>,
}

impl EvalReport {
    /// Every number of the report by a flat name (`few_shot/colour/10shot`,
    /// `zero_shot/shape`, `i2t/r1`, `captioning_greedy/cider_d`, …), for tables across models.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (set, results) in &self.few_shot {
            for r in results {
                m.insert(format!("few_shot/{set}/{}shot", r.shots), r.mean_accuracy);
            }
        }
        for (set, accuracy) in &self.zero_shot {
            m.insert(format!("zero_shot/{set}"), *accuracy);
        }
        for (set, probe) in &self.linear_probe {
            m.insert(format!("linear/{set}"), probe.test_accuracy);
        }
        if let Some(r) = &self.retrieval {
            for (prefix, recall) in [("i2t", &r.image_to_text), ("t2i", &r.text_to_image)] {
                m.insert(format!("{prefix}/r1"), recall.r1);
                m.insert(format!("{prefix}/r5"), recall.r5);
                m.insert(format!("{prefix}/r10"), recall.r10);
            }
        }
        for (kind, accuracy) in &self.compositional {
            m.insert(format!("compositional/{kind}"), *accuracy);
        }
        for (name, scores) in [
            ("captioning_greedy", &self.captioning_greedy),
            ("captioning_beam", &self.captioning_beam),
        ] {
            if let Some(s) = scores {
                m.insert(format!("{name}/cider_d"), s.cider_d);
                m.insert(format!("{name}/bleu_4"), s.bleu_4);
            }
        }
        if let Some(t) = &self.transfer {
            m.insert("transfer/captioning_cider_d".into(), t.captioning.cider_d);
            m.insert("transfer/vqa_accuracy".into(), t.vqa_accuracy);
        }
        m
    }
}

/// Times tasks into the report's `seconds`.
#[derive(Debug, Default)]
struct Timer {
    seconds: BTreeMap<TimedTask, f64>,
}

impl Timer {
    fn time<T>(&mut self, task: TimedTask, run: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = run();
        self.seconds.insert(task, started.elapsed().as_secs_f64());
        result
    }
}

/// Runs every task on `set`, in this order: probes, zero-shot, retrieval, compositional,
/// then captioning (greedy, beam) and perplexity for captioners, then transfer.
pub fn evaluate_scene(
    model: Evaluable<'_>,
    tokenizer: &Tokenizer,
    set: &SceneEvalSet,
    options: &EvalOptions,
) -> EvalReport {
    let mut timer = Timer::default();
    let scorer = model.scorer();
    let (few_shot, linear_probe) =
        timer.time(TimedTask::Probes, || probes(model.encoder(), set, options));
    let zero_shot = timer.time(TimedTask::ZeroShot, || {
        zero_shot_by_label_set(scorer, tokenizer, set, options)
    });
    let (retrieval, retrieval_skipped) = timer.time(TimedTask::Retrieval, || {
        scene_retrieval(scorer, tokenizer, set, options)
    });
    let compositional = timer.time(TimedTask::Compositional, || {
        let (seq_len, batch) = (options.seq_len, options.batch);
        compositional(
            scorer,
            tokenizer,
            seq_len,
            &set.test.images,
            &set.compositional,
            batch,
        )
    });
    let captioner = model
        .captioner()
        .map(|m| captioner_tasks(m, tokenizer, set, options, &mut timer))
        .unwrap_or_default();
    let transfer = options.transfer.as_ref().map(|config| {
        timer.time(TimedTask::Transfer, || {
            scene_transfer(model.encoder(), tokenizer, set, config)
        })
    });
    EvalReport {
        model_kind: model.kind(),
        test_images: set.test.images.size()[0] as usize,
        few_shot,
        linear_probe,
        zero_shot,
        retrieval,
        retrieval_skipped,
        compositional,
        compositional_files: BTreeMap::new(),
        captioning_greedy: captioner.greedy,
        captioning_beam: captioner.beam,
        sample_captions: captioner.samples,
        perplexity: captioner.perplexity,
        transfer,
        seconds: timer.seconds,
    }
}

type ProbeResults = (
    BTreeMap<String, Vec<FewShotResult>>,
    BTreeMap<String, LinearProbeResult>,
);

/// Few-shot ridge and linear probes per label set, on the pool's and the test images'
/// probe features.
fn probes(encoder: &dyn ImageEncoder, set: &SceneEvalSet, options: &EvalOptions) -> ProbeResults {
    let train_x = probe_features(encoder, &set.pool.images, options.batch);
    let test_x = probe_features(encoder, &set.test.images, options.batch);
    let mut few = BTreeMap::new();
    let mut linear = BTreeMap::new();
    let probe_config = LinearProbeConfig::default();
    for (name, train_y) in &set.pool.labels {
        let classes = set.class_names[name].len();
        let test_y = &set.test.labels[name];
        let result = few_shot(
            &train_x,
            train_y,
            &test_x,
            test_y,
            classes,
            &options.few_shot,
        );
        few.insert(name.clone(), result);
        // Too few pool examples per class for a validation split: no linear probe for this set.
        if has_validation_split(train_y, probe_config.validation_fraction) {
            let probe = linear_probe(&train_x, train_y, &test_x, test_y, classes, &probe_config);
            linear.insert(name.clone(), probe);
        }
    }
    (few, linear)
}

/// Zero-shot accuracy per label set on the test images.
fn zero_shot_by_label_set(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    set: &SceneEvalSet,
    options: &EvalOptions,
) -> BTreeMap<String, f64> {
    let images = &set.test.images;
    set.test
        .labels
        .iter()
        .map(|(name, labels)| {
            let names = &set.class_names[name];
            let config = &options.zero_shot;
            let accuracy = zero_shot(
                scorer,
                tokenizer,
                options.seq_len,
                images,
                labels,
                names,
                config,
            );
            (name.clone(), accuracy)
        })
        .collect()
}

/// Retrieval between the test images and their reference captions, or why it was skipped.
fn scene_retrieval(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    set: &SceneEvalSet,
    options: &EvalOptions,
) -> (Option<RetrievalScores>, Option<String>) {
    match retrieval(
        scorer,
        tokenizer,
        options.seq_len,
        &set.test.images,
        &set.references,
        options.batch,
        options.max_retrieval_pairs,
    ) {
        Ok(scores) => (Some(scores), None),
        Err(why) => (None, Some(why.to_string())),
    }
}

/// What only captioners are evaluated on.
#[derive(Debug, Default)]
struct CaptionerResults {
    greedy: Option<CaptionScores>,
    beam: Option<CaptionScores>,
    samples: Vec<String>,
    perplexity: Option<Perplexity>,
}

/// Greedy captioning, beam captioning when `options.beam_size > 1`, and the perplexity of
/// each test image's first reference.
fn captioner_tasks(
    model: &dyn Captioner,
    tokenizer: &Tokenizer,
    set: &SceneEvalSet,
    options: &EvalOptions,
    timer: &mut Timer,
) -> CaptionerResults {
    let (images, references, batch) = (&set.test.images, &set.references, options.batch);
    let max_len = options.seq_len as i64;
    let greedy = timer.time(TimedTask::CaptioningGreedy, || {
        let generate = GenerateConfig::greedy(max_len);
        captioning(model, tokenizer, images, references, &generate, batch)
    });
    let beam = (options.beam_size > 1).then(|| {
        timer.time(TimedTask::CaptioningBeam, || {
            let generate = GenerateConfig::beam(max_len, options.beam_size, BEAM_LENGTH_PENALTY);
            captioning(model, tokenizer, images, references, &generate, batch).scores
        })
    });
    let perplexity = timer.time(TimedTask::Perplexity, || {
        let first: Vec<String> = references.iter().map(|r| r[0].clone()).collect();
        perplexity(model, tokenizer, options.seq_len, images, &first, batch)
    });
    CaptionerResults {
        greedy: Some(greedy.scores),
        beam,
        samples: greedy
            .hypotheses
            .into_iter()
            .take(SAMPLE_CAPTIONS)
            .collect(),
        perplexity: Some(perplexity),
    }
}

/// Transfer decoders trained on the pool's frozen image tokens, tested on the test images.
fn scene_transfer(
    encoder: &dyn ImageEncoder,
    tokenizer: &Tokenizer,
    set: &SceneEvalSet,
    config: &TransferConfig,
) -> TransferResult {
    transfer(
        encoder,
        tokenizer,
        &set.pool.images,
        &set.pool_captions,
        &set.pool_vqa,
        &set.test.images,
        &set.references,
        &set.test_vqa,
        config,
    )
}

/// The JSON of `value` with every object's keys sorted, as the report files have always been
/// written (through `serde_json::Value`).
fn sorted_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("reports serialise: every map key is a string")
}

/// Writes `results.json` (the whole report) and one `TASK.json` per task that ran into `dir`,
/// each atomically, pretty-printed with sorted keys.
///
/// # Errors
/// When `dir` cannot be created or a file cannot be written.
pub fn write_report(dir: &Path, report: &EvalReport) -> Result<(), FileError> {
    std::fs::create_dir_all(dir).map_err(cappa_io::io_error(dir))?;
    let optional = |value: Option<Value>| value.unwrap_or(Value::Null);
    let tasks = [
        ("few_shot", sorted_json(&report.few_shot)),
        ("linear_probe", sorted_json(&report.linear_probe)),
        ("zero_shot", sorted_json(&report.zero_shot)),
        (
            "retrieval",
            optional(report.retrieval.as_ref().map(sorted_json)),
        ),
        ("compositional", sorted_json(&report.compositional)),
        (
            "compositional_files",
            sorted_json(&report.compositional_files),
        ),
        (
            "captioning_greedy",
            optional(report.captioning_greedy.as_ref().map(sorted_json)),
        ),
        (
            "captioning_beam",
            optional(report.captioning_beam.as_ref().map(sorted_json)),
        ),
        (
            "perplexity",
            optional(report.perplexity.as_ref().map(sorted_json)),
        ),
        (
            "transfer",
            optional(report.transfer.as_ref().map(sorted_json)),
        ),
    ];
    for (task, value) in tasks.iter().filter(|(_, value)| !value.is_null()) {
        cappa_io::write_json(&dir.join(format!("{task}.json")), value)?;
    }
    cappa_io::write_json(&dir.join("results.json"), &sorted_json(report))
}
