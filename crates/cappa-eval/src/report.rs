//! One model on every scene-world task: few-shot probes per label set, zero-shot
//! classification, retrieval, compositional preference, and for captioners captioning
//! (greedy, optionally beam) and perplexity. Writes one JSON per task and `results.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use cappa_data::tokenizer::Tokenizer;
use cappa_models::GenerateConfig;
use serde::Serialize;

use crate::caption_metrics::CaptionScores;
use crate::model::Evaluable;
use crate::probe::{
    few_shot, has_validation_split, linear_probe, FewShotConfig, FewShotResult, LinearProbeConfig,
    LinearProbeResult,
};
use crate::scene::SceneEvalSet;
use crate::tasks::{
    captioning, compositional_contrastive, compositional_likelihood, perplexity, probe_features,
    retrieval_contrastive, retrieval_likelihood, zero_shot_contrastive, zero_shot_likelihood,
    Perplexity, RetrievalScores, ZeroShotConfig,
};
use crate::transfer::{transfer, TransferConfig, TransferResult};

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
            max_retrieval_pairs: 200_000,
            beam_size: 1,
            batch: 64,
            transfer: None,
        }
    }
}

/// Every result of one model.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// `contrastive` or `captioner`.
    pub model_kind: &'static str,
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
    pub seconds: BTreeMap<String, f64>,
}

/// Runs every task on `set`.
pub fn evaluate_scene(
    model: Evaluable<'_>,
    tokenizer: &Tokenizer,
    set: &SceneEvalSet,
    options: &EvalOptions,
) -> EvalReport {
    let mut seconds = BTreeMap::new();
    let mut timed = |name: &str, started: Instant| {
        seconds.insert(name.to_string(), started.elapsed().as_secs_f64());
    };
    let (batch, seq_len) = (options.batch, options.seq_len);
    let encoder = model.encoder();

    let started = Instant::now();
    let train_x = probe_features(encoder, &set.pool.images, batch);
    let test_x = probe_features(encoder, &set.test.images, batch);
    let mut few = BTreeMap::new();
    let mut linear = BTreeMap::new();
    let probe_config = LinearProbeConfig::default();
    for (name, train_y) in &set.pool.labels {
        let classes = set.class_names[name].len();
        let test_y = &set.test.labels[name];
        few.insert(
            name.clone(),
            few_shot(
                &train_x,
                train_y,
                &test_x,
                test_y,
                classes,
                &options.few_shot,
            ),
        );
        // Too few pool examples per class for a validation split: no linear probe for this set.
        if has_validation_split(train_y, probe_config.validation_fraction) {
            let probe = linear_probe(&train_x, train_y, &test_x, test_y, classes, &probe_config);
            linear.insert(name.clone(), probe);
        }
    }
    timed("probes", started);

    let started = Instant::now();
    let mut zero = BTreeMap::new();
    for (name, labels) in &set.test.labels {
        let names = &set.class_names[name];
        let accuracy = match model {
            Evaluable::Contrastive(m) => zero_shot_contrastive(
                m,
                tokenizer,
                seq_len,
                &set.test.images,
                labels,
                names,
                &options.zero_shot,
            ),
            Evaluable::Captioner(m) => zero_shot_likelihood(
                m,
                tokenizer,
                seq_len,
                &set.test.images,
                labels,
                names,
                &options.zero_shot,
            ),
        };
        zero.insert(name.clone(), accuracy);
    }
    timed("zero_shot", started);

    let started = Instant::now();
    let (retrieval, retrieval_skipped) = match model {
        Evaluable::Contrastive(m) => (
            Some(retrieval_contrastive(
                m,
                tokenizer,
                seq_len,
                &set.test.images,
                &set.references,
                batch,
            )),
            None,
        ),
        Evaluable::Captioner(m) => match retrieval_likelihood(
            m,
            tokenizer,
            seq_len,
            &set.test.images,
            &set.references,
            options.max_retrieval_pairs,
            batch,
        ) {
            Ok(scores) => (Some(scores), None),
            Err(why) => (None, Some(why.to_string())),
        },
    };
    timed("retrieval", started);

    let started = Instant::now();
    let compositional = match model {
        Evaluable::Contrastive(m) => compositional_contrastive(
            m,
            tokenizer,
            seq_len,
            &set.test.images,
            &set.compositional,
            batch,
        ),
        Evaluable::Captioner(m) => compositional_likelihood(
            m,
            tokenizer,
            seq_len,
            &set.test.images,
            &set.compositional,
            batch,
        ),
    };
    timed("compositional", started);

    let (mut greedy, mut beam, mut samples, mut ppl) = (None, None, Vec::new(), None);
    if let Evaluable::Captioner(m) = model {
        let started = Instant::now();
        let max_len = seq_len as i64;
        let result = captioning(
            m,
            tokenizer,
            &set.test.images,
            &set.references,
            &GenerateConfig::greedy(max_len),
            batch,
        );
        greedy = Some(result.scores);
        samples = result.hypotheses.into_iter().take(8).collect();
        timed("captioning_greedy", started);
        if options.beam_size > 1 {
            let started = Instant::now();
            let result = captioning(
                m,
                tokenizer,
                &set.test.images,
                &set.references,
                &GenerateConfig::beam(max_len, options.beam_size, 0.6),
                batch,
            );
            beam = Some(result.scores);
            timed("captioning_beam", started);
        }
        let started = Instant::now();
        let first: Vec<String> = set.references.iter().map(|r| r[0].clone()).collect();
        ppl = Some(perplexity(
            m,
            tokenizer,
            seq_len,
            &set.test.images,
            &first,
            batch,
        ));
        timed("perplexity", started);
    }

    let transfer_result = options.transfer.as_ref().map(|config| {
        let started = Instant::now();
        let result = transfer(
            encoder,
            tokenizer,
            &set.pool.images,
            &set.pool_captions,
            &set.pool_vqa,
            &set.test.images,
            &set.references,
            &set.test_vqa,
            config,
        );
        seconds.insert("transfer".to_string(), started.elapsed().as_secs_f64());
        result
    });

    EvalReport {
        model_kind: match model {
            Evaluable::Contrastive(_) => "contrastive",
            Evaluable::Captioner(_) => "captioner",
        },
        test_images: set.test.images.size()[0] as usize,
        few_shot: few,
        linear_probe: linear,
        zero_shot: zero,
        retrieval,
        retrieval_skipped,
        compositional,
        compositional_files: BTreeMap::new(),
        captioning_greedy: greedy,
        captioning_beam: beam,
        sample_captions: samples,
        perplexity: ppl,
        transfer: transfer_result,
        seconds,
    }
}

/// Writes `results.json` (the whole report) and one `TASK.json` per task into `dir`.
pub fn write_report(dir: &Path, report: &EvalReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let value = serde_json::to_value(report).expect("reports serialise");
    for task in [
        "few_shot",
        "linear_probe",
        "zero_shot",
        "retrieval",
        "compositional",
        "compositional_files",
        "captioning_greedy",
        "captioning_beam",
        "perplexity",
        "transfer",
    ] {
        if !value[task].is_null() {
            let text = serde_json::to_string_pretty(&value[task]).expect("JSON");
            std::fs::write(dir.join(format!("{task}.json")), text + "\n")?;
        }
    }
    let text = serde_json::to_string_pretty(&value).expect("JSON");
    std::fs::write(dir.join("results.json"), text + "\n")
}
