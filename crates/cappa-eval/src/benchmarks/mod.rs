//! Real benchmarks from disk, as an evaluation [`Suite`](crate::suite::Suite) lists them:
//! classification (zero-shot, few-shot ridge, linear probe), retrieval and captioning,
//! compositional preference and VQA v2 transfer, for any encoder behind the
//! [`crate::model`] traits.
//!
//! Each benchmark runs in two steps: [`open`] reads its annotation files and indices (no
//! images, no model), so every bad file is refused before any model work; [`run`] then
//! streams its images through the model ([`crate::images`]) and computes its metrics.
//!
//! ```no_run
//! use cappa_eval::{benchmarks, model::Evaluable, suite::Suite};
//! # fn demo(model: Evaluable<'_>, tokenizer: &cappa_data::tokenizer::Tokenizer) -> Result<(), Box<dyn std::error::Error>> {
//! let suite = Suite::resolve("my-suite.json")?.select(&["imagenet".into()])?;
//! suite.check()?;
//! let opened: Vec<_> = suite.benchmarks.iter().map(benchmarks::open).collect::<Result<_, _>>()?;
//! let context = benchmarks::Context::new(model, tokenizer, 64, cappa_data::pipeline::Normalize::clip());
//! for benchmark in &opened {
//!     let report = benchmarks::run(&context, benchmark)?;
//!     println!("{}: {:?}", report.name, report.results.metrics());
//! }
//! # Ok(()) }
//! ```

mod classify;
mod compose;
mod retrieve;
mod source;
mod vqa;

use std::collections::BTreeMap;
use std::time::Instant;

use cappa_data::error::DataError;
use cappa_data::pipeline::{EvalTransform, Normalize};
use cappa_data::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::images::{FeatureCache, ImageSpec, SplitStats};
use crate::model::Evaluable;
use crate::report::EvalReport;
use crate::scoring::DEFAULT_BATCH;
use crate::suite::{Benchmark, Task};

pub use classify::{ClassificationResults, LinearResults, DEFAULT_TEMPLATE};
pub use compose::CompositionalResults;
pub use retrieve::RetrievalResults;
pub use source::SplitSource;
pub use vqa::VqaResults;

/// What every benchmark of a run shares: the model, its tokenizer and how it reads images.
#[derive(Debug)]
pub struct Context<'a> {
    pub model: Evaluable<'a>,
    pub tokenizer: &'a Tokenizer,
    /// Caption tokens per text, as in training.
    pub seq_len: usize,
    /// Pixel normalisation, as in training.
    pub normalize: Normalize,
    /// Images per model call.
    pub batch: usize,
    /// Where split outputs are cached (`None`: always recompute).
    pub cache: Option<FeatureCache>,
}

impl<'a> Context<'a> {
    /// A context with [`DEFAULT_BATCH`] images per call and no cache.
    pub fn new(
        model: Evaluable<'a>,
        tokenizer: &'a Tokenizer,
        seq_len: usize,
        normalize: Normalize,
    ) -> Self {
        Context {
            model,
            tokenizer,
            seq_len,
            normalize,
            batch: DEFAULT_BATCH as usize,
            cache: None,
        }
    }

    fn spec(&self, benchmark: &Benchmark) -> ImageSpec {
        ImageSpec {
            transform: EvalTransform {
                size: self.model.encoder().image_size() as u32,
                crop_fraction: benchmark.crop_fraction,
            },
            normalize: self.normalize,
        }
    }
}

/// A benchmark that cannot run as written.
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    #[error("benchmark `{benchmark}`: {source}")]
    Data {
        benchmark: String,
        #[source]
        source: DataError,
    },
    #[error("benchmark `{benchmark}`: {problem}")]
    Invalid { benchmark: String, problem: String },
}

impl BenchmarkError {
    fn invalid(benchmark: &str, problem: impl Into<String>) -> Self {
        BenchmarkError::Invalid {
            benchmark: benchmark.into(),
            problem: problem.into(),
        }
    }
}

/// A benchmark with its annotation files read and its image sources listed.
#[derive(Debug)]
pub struct Opened {
    pub benchmark: Benchmark,
    data: OpenedData,
}

#[derive(Debug)]
enum OpenedData {
    Scene,
    Classification(classify::OpenedClassification),
    Retrieval(retrieve::OpenedRetrieval),
    Compositional(compose::OpenedCompositional),
    Vqa(vqa::OpenedVqa),
}

impl Opened {
    /// Whether this is the scene world's benchmark (which [`run`] leaves to the caller, who
    /// knows the world the model was trained on).
    pub fn is_scene(&self) -> bool {
        matches!(self.data, OpenedData::Scene)
    }
}

/// Reads a benchmark's annotations and lists its images, refusing bad files (a Karpathy file
/// without the split, class names that do not cover the labels, a template without `{c}`, …)
/// before any model work.
pub fn open(benchmark: &Benchmark) -> Result<Opened, BenchmarkError> {
    let name = benchmark.name.as_str();
    let wrap = |source: DataError| BenchmarkError::Data {
        benchmark: name.into(),
        source,
    };
    let data = match &benchmark.task {
        Task::Scene(_) => OpenedData::Scene,
        Task::Classification(c) => {
            OpenedData::Classification(classify::open(name, c).map_err(|e| e.into_benchmark(name))?)
        }
        Task::Retrieval(r) => {
            OpenedData::Retrieval(retrieve::open(name, r).map_err(|e| e.into_benchmark(name))?)
        }
        Task::Compositional(c) => OpenedData::Compositional(compose::open(c).map_err(wrap)?),
        Task::Vqa(v) => OpenedData::Vqa(vqa::open(v).map_err(|e| e.into_benchmark(name))?),
    };
    Ok(Opened {
        benchmark: benchmark.clone(),
        data,
    })
}

/// An error while opening, before it knows its benchmark's name.
#[derive(Debug)]
enum OpenError {
    Data(DataError),
    Invalid(String),
}

impl From<DataError> for OpenError {
    fn from(error: DataError) -> Self {
        OpenError::Data(error)
    }
}

impl OpenError {
    fn into_benchmark(self, benchmark: &str) -> BenchmarkError {
        match self {
            OpenError::Data(source) => BenchmarkError::Data {
                benchmark: benchmark.into(),
                source,
            },
            OpenError::Invalid(problem) => BenchmarkError::invalid(benchmark, problem),
        }
    }
}

/// One benchmark's results, with what its image streams read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkReport {
    pub name: String,
    /// Samples seen and skipped per split (`test`, `train`, or a file's name).
    pub splits: BTreeMap<String, SplitStats>,
    pub results: BenchmarkResults,
    pub seconds: f64,
}

/// The results of a benchmark, by task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum BenchmarkResults {
    Scene(Box<EvalReport>),
    Classification(ClassificationResults),
    Retrieval(RetrievalResults),
    Compositional(CompositionalResults),
    Vqa(VqaResults),
}

impl BenchmarkResults {
    /// Every number of the results by a flat name (`zero_shot/acc1`, `i2t/r5`, …), for
    /// tables and plots across models.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        match self {
            BenchmarkResults::Scene(report) => report.metrics(),
            BenchmarkResults::Classification(r) => r.metrics(),
            BenchmarkResults::Retrieval(r) => r.metrics(),
            BenchmarkResults::Compositional(r) => r.metrics(),
            BenchmarkResults::Vqa(r) => r.metrics(),
        }
    }
}

/// Runs an opened benchmark (not the scene world's: see [`Opened::is_scene`]).
pub fn run(context: &Context<'_>, opened: &Opened) -> Result<BenchmarkReport, BenchmarkError> {
    let started = Instant::now();
    let benchmark = &opened.benchmark;
    let mut splits = BTreeMap::new();
    let results = match &opened.data {
        OpenedData::Scene => {
            return Err(BenchmarkError::invalid(
                &benchmark.name,
                "the scene benchmark is evaluated on the world the model was trained on, by \
                 its caller (cappa's checkpoint evaluation)",
            ))
        }
        OpenedData::Classification(data) => {
            BenchmarkResults::Classification(classify::run(context, benchmark, data, &mut splits)?)
        }
        OpenedData::Retrieval(data) => {
            BenchmarkResults::Retrieval(retrieve::run(context, benchmark, data, &mut splits)?)
        }
        OpenedData::Compositional(data) => {
            BenchmarkResults::Compositional(compose::run(context, benchmark, data, &mut splits))
        }
        OpenedData::Vqa(data) => {
            BenchmarkResults::Vqa(vqa::run(context, benchmark, data, &mut splits))
        }
    };
    Ok(BenchmarkReport {
        name: benchmark.name.clone(),
        splits,
        results,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Flat metric names: `prefix/name`.
fn put(metrics: &mut BTreeMap<String, f64>, prefix: &str, name: &str, value: f64) {
    metrics.insert(format!("{prefix}/{name}"), value);
}

/// The outputs `outputs` of a split, from the cache when it has them, else computed by
/// streaming the split's images through `compute` (and then cached). `digest` names whatever
/// besides the model, data and transform decides the outputs (class texts, …).
#[allow(clippy::too_many_arguments)]
fn encode(
    context: &Context<'_>,
    benchmark: &Benchmark,
    split: &str,
    source: &SplitSource,
    limit: Option<usize>,
    outputs: &[String],
    digest: &str,
    keep: impl FnMut(&cappa_data::Sample) -> bool,
    compute: impl FnMut(&tch::Tensor, &[crate::images::Kept]) -> Vec<(String, tch::Tensor)>,
) -> crate::images::Encoded {
    let spec = context.spec(benchmark);
    let mut names = outputs.to_vec();
    names.push(digest.to_string());
    let key = crate::images::CacheKey {
        benchmark: &benchmark.name,
        split,
        data: source.identity(),
        spec,
        limit,
        outputs: names,
    };
    if let Some(cache) = &context.cache {
        if let Some(hit) = cache.load(&key) {
            eprintln!(
                "{} {split}: {} images' outputs from the feature cache",
                benchmark.name,
                hit.kept.len()
            );
            return hit;
        }
    }
    let total = source.len().map(|n| limit.map_or(n, |l| n.min(l as u64)));
    let progress = crate::images::Progress::new(format!("{} {split}", benchmark.name), total);
    let encoded = crate::images::Encoded::compute(
        source.samples(),
        &spec,
        context.batch,
        limit,
        &progress,
        keep,
        compute,
    );
    if let Some(cache) = &context.cache {
        if !outputs.is_empty() {
            cache.store(&key, &encoded);
        }
    }
    encoded
}

/// One model's results on a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteReport {
    pub suite: String,
    pub model_kind: crate::model::ModelKind,
    /// In the suite's order.
    pub benchmarks: Vec<BenchmarkReport>,
    /// Peak resident memory of the evaluating process, in bytes (Linux), when known.
    pub peak_rss_bytes: Option<u64>,
}

impl SuiteReport {
    /// Every metric by `benchmark/metric`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        self.benchmarks
            .iter()
            .flat_map(|b| {
                b.results
                    .metrics()
                    .into_iter()
                    .map(move |(k, v)| (format!("{}/{k}", b.name), v))
            })
            .collect()
    }

    /// A Markdown report: a section per benchmark with its metrics and skipped samples.
    pub fn markdown(&self) -> String {
        let mut text = format!("# Suite `{}`, {} model\n\n", self.suite, self.model_kind);
        for b in &self.benchmarks {
            text.push_str(&format!("## {} ({:.1} s)\n\n", b.name, b.seconds));
            let metrics = b.results.metrics();
            if metrics.is_empty() {
                text.push_str("No metric (nothing could be evaluated).\n\n");
            } else {
                text.push_str("| metric | value |\n|---|---:|\n");
                for (name, value) in metrics {
                    text.push_str(&format!("| {name} | {value:.4} |\n"));
                }
                text.push('\n');
            }
            if let BenchmarkResults::Retrieval(r) = &b.results {
                if let Some(why) = &r.retrieval_skipped {
                    text.push_str(&format!("Retrieval skipped: {why}.\n\n"));
                }
            }
            for (split, stats) in &b.splits {
                text.push_str(&format!(
                    "- `{split}`: {} samples read, {} used, skipped: {}\n",
                    stats.seen, stats.good, stats.skipped
                ));
            }
            if !b.splits.is_empty() {
                text.push('\n');
            }
        }
        if let Some(bytes) = self.peak_rss_bytes {
            text.push_str(&format!(
                "Peak resident memory: {:.0} MiB.\n",
                bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        text
    }

    /// Writes `results.json` (the whole report), `BENCHMARK.json` per benchmark and
    /// `report.md` into `dir`, each atomically.
    pub fn write(&self, dir: &std::path::Path) -> Result<(), cappa_io::FileError> {
        std::fs::create_dir_all(dir).map_err(|source| cappa_io::FileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        cappa_io::write_json(&dir.join("results.json"), self)?;
        for b in &self.benchmarks {
            cappa_io::write_json(&dir.join(format!("{}.json", b.name)), b)?;
        }
        cappa_io::write_atomically(&dir.join("report.md"), self.markdown().as_bytes())
    }
}
