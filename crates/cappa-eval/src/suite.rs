//! Evaluation suites: a JSON file listing benchmarks, each with a name, its task, the format
//! and paths of its data, and options. [`Suite::resolve`] gives a built-in suite by name
//! (`scene`, `paper`) or reads a file; [`Suite::check`] checks every path before any model
//! work and names the first missing one. Unknown fields are refused.
//!
//! ```json
//! {"name": "mine", "benchmarks": [
//!   {"name": "imagenet", "task": "classification",
//!    "data": {"format": "image_folder", "train": "data/imagenet/train",
//!             "test": "data/imagenet/val", "class_names": "data/imagenet/classnames.txt"},
//!    "templates": "data/imagenet/templates.txt", "linear": {"l2": 1e-4}},
//!   {"name": "coco", "task": "retrieval",
//!    "data": {"format": "karpathy", "annotations": "data/coco/dataset_coco.json",
//!             "images": "data/coco/images"}},
//!   {"name": "sugarcrepe", "task": "compositional", "format": "sugarcrepe",
//!    "files": ["data/sugarcrepe/replace_att.json"], "images": "data/coco/val2017"},
//!   {"name": "vqav2", "task": "vqa",
//!    "train": {"questions": "…", "annotations": "…", "images": "data/coco/train2014"},
//!    "val": {"questions": "…", "annotations": "…", "images": "data/coco/val2014"}}]}
//! ```
//!
//! Relative paths are relative to the current directory for built-in suites and to the suite
//! file's directory for files.

use std::path::{Path, PathBuf};

use cappa_data::readers::KarpathySplit;
use serde::{Deserialize, Serialize};

use crate::probe::FewShotConfig;

/// The `paper` suite's file: the paper's benchmarks at conventional paths under `data/`.
pub const PAPER_SUITE: &str = include_str!("../suites/paper.json");

/// Names of the built-in suites.
pub const BUILTIN_SUITES: [&str; 2] = ["scene", "paper"];

/// A list of benchmarks to evaluate an encoder on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The suite's name, in reports.
    pub name: String,
    pub benchmarks: Vec<Benchmark>,
}

/// One benchmark of a suite: `name`, `limit` and `crop_fraction` next to the task's own
/// fields (`task`, then `data` and options), all in one JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    /// Unique within the suite; names the report's section and the cache files.
    pub name: String,
    pub task: Task,
    /// Evaluate on at most this many test images (the first ones, in the source's order).
    pub limit: Option<usize>,
    /// Fraction of the resized shorter side the centre crop keeps: 1.0 (open_clip, the
    /// default) or 0.875 (the ImageNet habit).
    pub crop_fraction: f64,
}

/// The fields every benchmark has, besides its task's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default = "default_crop_fraction")]
    crop_fraction: f64,
}

const COMMON_FIELDS: [&str; 3] = ["name", "limit", "crop_fraction"];

impl<'de> Deserialize<'de> for Benchmark {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut task = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut common = serde_json::Map::new();
        for field in COMMON_FIELDS {
            if let Some(value) = task.remove(field) {
                common.insert(field.to_string(), value);
            }
        }
        let common: Common = serde_json::from_value(common.into()).map_err(D::Error::custom)?;
        let task: Task = serde_path_to_error::deserialize(serde_json::Value::Object(task))
            .map_err(|e| {
                let at = e.path().to_string();
                let inner = e.into_inner();
                match at.as_str() {
                    "." | "" => D::Error::custom(format!("benchmark `{}`: {inner}", common.name)),
                    _ => D::Error::custom(format!("benchmark `{}`: {at}: {inner}", common.name)),
                }
            })?;
        Ok(Benchmark {
            name: common.name,
            task,
            limit: common.limit,
            crop_fraction: common.crop_fraction,
        })
    }
}

impl Serialize for Benchmark {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut value = serde_json::to_value(&self.task).map_err(S::Error::custom)?;
        let object = value
            .as_object_mut()
            .expect("a task serialises to an object");
        object.insert("name".into(), self.name.clone().into());
        if let Some(limit) = self.limit {
            object.insert("limit".into(), limit.into());
        }
        object.insert("crop_fraction".into(), self.crop_fraction.into());
        value.serialize(serializer)
    }
}

fn default_crop_fraction() -> f64 {
    1.0
}

/// What a benchmark measures, with its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// The scene world's held-out split (every scene task, as `cappa eval` always ran).
    Scene(SceneSpec),
    Classification(Classification),
    Retrieval(Retrieval),
    Compositional(Compositional),
    Vqa(Vqa),
}

impl Task {
    /// The task's name as written in suite files.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Scene(_) => "scene",
            Task::Classification(_) => "classification",
            Task::Retrieval(_) => "retrieval",
            Task::Compositional(_) => "compositional",
            Task::Vqa(_) => "vqa",
        }
    }
}

/// The scene task has no options of its own (`cappa eval`'s flags size it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneSpec {}

/// Classification: zero-shot, few-shot ridge and the full linear probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classification {
    pub data: ClassificationData,
    /// Zero-shot prompt templates, one per line with `{c}` for the class name (CLIP_benchmark's
    /// `zeroshot_classification_templates.txt`); default: the CLIP_benchmark layout's own file,
    /// else the class name alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
    /// Run zero-shot classification (default true).
    #[serde(default = "yes")]
    pub zero_shot: bool,
    /// Few-shot ridge probes on the train split (default: 1, 5, 10, 25 shots × 3 seeds;
    /// `null` skips them). Needs a train split.
    #[serde(default = "default_few_shot")]
    pub few_shot: Option<FewShotConfig>,
    /// The full linear probe on the train split (`null` skips it). Needs a train split.
    #[serde(default = "default_linear")]
    pub linear: Option<LinearSpec>,
    /// Use at most this many training images per class (the first after a seeded shuffle),
    /// for probes on huge train splits; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_per_class: Option<usize>,
}

fn yes() -> bool {
    true
}

fn default_few_shot() -> Option<FewShotConfig> {
    Some(FewShotConfig::default())
}

fn default_linear() -> Option<LinearSpec> {
    Some(LinearSpec::default())
}

/// The full linear probe's regularisation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    /// A fixed L2 strength (`l2/2·‖W‖²` added to the mean cross-entropy; scikit-learn's
    /// `LogisticRegression(C)` at `C = 1/(N·l2)`); default: chosen on a validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
}

/// Where classification data is and how it is laid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClassificationData {
    /// `SPLIT_ROOT/CLASS/*.{jpg,jpeg,png,webp}`; labels are the sorted folder names.
    ImageFolder {
        test: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Display names, one line per class folder in sorted order (default: folder names).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class_names: Option<PathBuf>,
    },
    /// CLIP_benchmark's webdataset layout: `root/classnames.txt`,
    /// `root/zeroshot_classification_templates.txt`, `root/SPLIT/{0..N-1}.tar` of
    /// `KEY.{webp,jpg,png}` + `KEY.cls`, `root/SPLIT/nshards.txt`.
    ClipBenchmark {
        root: PathBuf,
        #[serde(default = "test_split")]
        test_split: String,
        /// The split probes train on (`null`: no probes).
        #[serde(default = "train_split")]
        train_split: Option<String>,
    },
    /// A table with an image path column and an integer label column.
    Csv {
        test: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train: Option<PathBuf>,
        /// Class names, one per line, line k naming label k.
        class_names: PathBuf,
        #[serde(default = "filepath_column")]
        path_column: String,
        #[serde(default = "label_column")]
        label_column: String,
        /// Field separator (default `,`).
        #[serde(default = "comma")]
        separator: char,
    },
}

fn test_split() -> String {
    "test".into()
}

fn train_split() -> Option<String> {
    Some("train".into())
}

fn karpathy_test() -> KarpathySplit {
    KarpathySplit::Test
}

fn karpathy_train() -> Option<KarpathySplit> {
    Some(KarpathySplit::Train)
}

fn filepath_column() -> String {
    "filepath".into()
}

fn label_column() -> String {
    "label".into()
}

fn comma() -> char {
    ','
}

/// Retrieval (recall@1/5/10 both ways) and, for captioners, captioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retrieval {
    pub data: RetrievalData,
    /// Captioners: score retrieval by likelihood (every image–caption pair a decoder pass;
    /// refused above `max_pairs`). Default false: captioners skip retrieval with a note.
    #[serde(default)]
    pub likelihood: bool,
    /// Captioners: the most pairs likelihood retrieval may score.
    #[serde(default = "default_max_pairs")]
    pub max_pairs: usize,
    /// Captioners: caption the test images (greedy, and beam when `beam` > 1) and score the
    /// captions against the references (default true).
    #[serde(default = "yes")]
    pub captioning: bool,
    /// Beam size of a second captioning pass (1: greedy only).
    #[serde(default = "one")]
    pub beam: i64,
    /// Train the frozen-encoder transfer decoder on the train split's captions and caption
    /// the test images with it (every kind of encoder); needs a train split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSpec>,
}

fn default_max_pairs() -> usize {
    crate::tasks::MAX_LIKELIHOOD_RETRIEVAL_PAIRS
}

fn one() -> i64 {
    1
}

/// Training of a transfer decoder on a frozen encoder.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferSpec {
    /// Training images whose frozen token sequences are kept in memory (the first ones).
    pub train_images: usize,
    /// Decoder training steps.
    pub steps: usize,
}

impl Default for TransferSpec {
    fn default() -> Self {
        TransferSpec {
            train_images: 1000,
            steps: 1000,
        }
    }
}

/// Where retrieval data is and how it is laid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum RetrievalData {
    /// Karpathy's `dataset_coco.json` / `dataset_flickr30k.json`; images at
    /// `images/filepath/filename` (or `images/filename`).
    Karpathy {
        annotations: PathBuf,
        images: PathBuf,
        #[serde(default = "karpathy_test")]
        split: KarpathySplit,
        /// The split transfer decoders train on (`restval` counts as train).
        #[serde(default = "karpathy_train")]
        train_split: Option<KarpathySplit>,
    },
    /// A COCO captions file (`captions_val2017.json`); images at `images/file_name`.
    Coco {
        annotations: PathBuf,
        images: PathBuf,
        /// A second captions file for transfer training.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train_annotations: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train_images: Option<PathBuf>,
    },
    /// CLIP_benchmark's retrieval layout: `root/SPLIT/{0..N-1}.tar` of `KEY.{webp,jpg,png}` +
    /// `KEY.txt` (the captions, one per line), `root/dataset_type.txt` = `retrieval`.
    ClipBenchmark {
        root: PathBuf,
        #[serde(default = "test_split")]
        split: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train_split: Option<String>,
    },
}

/// Compositional preference: accuracy of scoring the true caption above each negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compositional {
    pub format: CompositionalFormat,
    /// SugarCrepe: its seven files (`replace_att.json`, …); ARO: VG-Relation, VG-Attribution,
    /// COCO-Order or Flickr-Order files.
    pub files: Vec<PathBuf>,
    /// The directory the files' image names are relative to.
    pub images: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompositionalFormat {
    /// `{id: {filename, caption, negative_caption}}`.
    Sugarcrepe,
    /// A list of `{image_path, true_caption, false_caption(s)}` (with `bbox_*` and
    /// `relation_name` / `attributes` for VG-Relation / VG-Attribution).
    Aro,
}

/// VQA v2: a transfer decoder trained on the frozen encoder with train questions, scored on
/// val questions with the standard VQA accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vqa {
    pub train: VqaSplit,
    pub val: VqaSplit,
    /// Training images whose questions train the decoder (the first ones by image id);
    /// their frozen token sequences are kept in memory.
    #[serde(default = "default_vqa_train_images")]
    pub train_images: usize,
    /// Validation images whose questions are answered (the first ones by image id).
    #[serde(default = "default_vqa_val_images")]
    pub val_images: usize,
    /// Decoder training steps.
    #[serde(default = "default_vqa_steps")]
    pub steps: usize,
}

fn default_vqa_train_images() -> usize {
    2000
}

fn default_vqa_val_images() -> usize {
    1000
}

fn default_vqa_steps() -> usize {
    2000
}

/// One VQA v2 split: `v2_OpenEnded_mscoco_SPLIT_questions.json`,
/// `v2_mscoco_SPLIT_annotations.json` and the COCO image directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqaSplit {
    pub questions: PathBuf,
    pub annotations: PathBuf,
    pub images: PathBuf,
    /// The image file names' prefix, e.g. `COCO_val2014_` (default: from the directory's
    /// name, `COCO_<dir>_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_prefix: Option<String>,
}

impl VqaSplit {
    /// The file name prefix of this split's images.
    pub fn prefix(&self) -> String {
        self.image_prefix.clone().unwrap_or_else(|| {
            let dir = self
                .images
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("COCO_{dir}_")
        })
    }
}

/// A suite that cannot be used as written.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    File(#[from] cappa_io::FileError),
    #[error(
        "unknown suite `{name}`: give a built-in suite ({}) or the path of a suite JSON file",
        BUILTIN_SUITES.join(", ")
    )]
    Unknown { name: String },
    #[error("{suite}: benchmark `{benchmark}`: {problem}")]
    Invalid {
        suite: String,
        benchmark: String,
        problem: String,
    },
    #[error(
        "{suite}: benchmark `{benchmark}` needs `{field}` = {}, which does not exist: put the \
         data there, fix the path in the suite file, or leave the benchmark out (`--only`)",
        path.display()
    )]
    MissingPath {
        suite: String,
        benchmark: String,
        field: String,
        path: PathBuf,
    },
    #[error(
        "{suite}: no benchmark named {}; the suite has {}",
        missing.join(", "),
        have.join(", ")
    )]
    NoSuchBenchmark {
        suite: String,
        missing: Vec<String>,
        have: Vec<String>,
    },
}

impl Suite {
    /// The built-in `scene` suite: the scene world's held-out split.
    pub fn scene() -> Suite {
        Suite {
            name: "scene".into(),
            benchmarks: vec![Benchmark {
                name: "scene".into(),
                task: Task::Scene(SceneSpec {}),
                limit: None,
                crop_fraction: 1.0,
            }],
        }
    }

    /// The built-in `paper` suite ([`PAPER_SUITE`]).
    pub fn paper() -> Suite {
        Suite::parse(PAPER_SUITE, Path::new("suites/paper.json"))
            .expect("the built-in paper suite parses")
    }

    /// A built-in suite by name, or the suite file at `name_or_path` (relative paths inside
    /// it resolved against its directory).
    pub fn resolve(name_or_path: &str) -> Result<Suite, SuiteError> {
        match name_or_path {
            "scene" => return Ok(Suite::scene()),
            "paper" => return Ok(Suite::paper()),
            _ => {}
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(SuiteError::Unknown {
                name: name_or_path.into(),
            });
        }
        let mut suite: Suite = cappa_io::read_json(path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        suite.rebase(base);
        suite.validate()?;
        Ok(suite)
    }

    /// Parses suite JSON (paths as written); `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Suite, SuiteError> {
        let suite: Suite = cappa_io::parse_json(text, origin)?;
        suite.validate()?;
        Ok(suite)
    }

    fn invalid(&self, benchmark: &str, problem: impl Into<String>) -> SuiteError {
        SuiteError::Invalid {
            suite: self.name.clone(),
            benchmark: benchmark.into(),
            problem: problem.into(),
        }
    }

    /// Checks what can be checked without the file system: unique names, sensible options.
    pub fn validate(&self) -> Result<(), SuiteError> {
        let mut seen = std::collections::BTreeSet::new();
        for b in &self.benchmarks {
            if b.name.is_empty()
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "-_.".contains(c))
            {
                return Err(self.invalid(
                    &b.name,
                    "a benchmark name must be non-empty letters, digits, `-`, `_` or `.`",
                ));
            }
            if !seen.insert(&b.name) {
                return Err(self.invalid(&b.name, "two benchmarks have this name"));
            }
            if !(b.crop_fraction > 0.0 && b.crop_fraction <= 1.0) {
                return Err(self.invalid(&b.name, "`crop_fraction` must be in (0, 1]"));
            }
            if b.limit == Some(0) {
                return Err(self.invalid(&b.name, "`limit` must be at least 1"));
            }
            match &b.task {
                Task::Classification(c) => {
                    if let Some(few) = &c.few_shot {
                        if few.shots.is_empty() || few.shots.contains(&0) || few.seeds == 0 {
                            return Err(self.invalid(
                                &b.name,
                                "`few_shot` needs positive `shots` and at least one seed",
                            ));
                        }
                    }
                    if let Some(LinearSpec { l2: Some(l2) }) = c.linear {
                        if !(l2 > 0.0 && l2.is_finite()) {
                            return Err(self.invalid(&b.name, "`linear.l2` must be positive"));
                        }
                    }
                    if c.train_per_class == Some(0) {
                        return Err(self.invalid(&b.name, "`train_per_class` must be at least 1"));
                    }
                }
                Task::Retrieval(r) => {
                    if r.beam < 1 {
                        return Err(self.invalid(&b.name, "`beam` must be at least 1"));
                    }
                }
                Task::Compositional(c) => {
                    if c.files.is_empty() {
                        return Err(self.invalid(&b.name, "`files` lists no file"));
                    }
                }
                Task::Vqa(v) => {
                    if v.train_images == 0 || v.val_images == 0 || v.steps == 0 {
                        return Err(self.invalid(
                            &b.name,
                            "`train_images`, `val_images` and `steps` must be at least 1",
                        ));
                    }
                }
                Task::Scene(_) => {}
            }
        }
        Ok(())
    }

    /// Keeps only the benchmarks named in `only` (all when empty); an unknown name is an
    /// error listing the suite's names.
    pub fn select(mut self, only: &[String]) -> Result<Suite, SuiteError> {
        if only.is_empty() {
            return Ok(self);
        }
        let have: Vec<String> = self.benchmarks.iter().map(|b| b.name.clone()).collect();
        let missing: Vec<String> = only.iter().filter(|o| !have.contains(o)).cloned().collect();
        if !missing.is_empty() {
            return Err(SuiteError::NoSuchBenchmark {
                suite: self.name,
                missing,
                have,
            });
        }
        self.benchmarks.retain(|b| only.contains(&b.name));
        Ok(self)
    }

    /// Makes relative paths relative to `base`.
    fn rebase(&mut self, base: &Path) {
        for b in &mut self.benchmarks {
            for (_, path) in b.paths_mut() {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }

    /// Checks that every path of every benchmark exists, before any model work; the first
    /// missing one is named with its field.
    pub fn check(&self) -> Result<(), SuiteError> {
        for b in &self.benchmarks {
            let mut copy = b.clone();
            for (field, path) in copy.paths_mut() {
                if !path.exists() {
                    return Err(SuiteError::MissingPath {
                        suite: self.name.clone(),
                        benchmark: b.name.clone(),
                        field: field.to_string(),
                        path: path.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Benchmark {
    /// Every path of the benchmark with the name of its field.
    fn paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let mut paths: Vec<(String, &mut PathBuf)> = Vec::new();
        match &mut self.task {
            Task::Scene(_) => {}
            Task::Classification(c) => {
                if let Some(t) = &mut c.templates {
                    paths.push(("templates".into(), t));
                }
                match &mut c.data {
                    ClassificationData::ImageFolder {
                        test,
                        train,
                        class_names,
                    } => {
                        paths.push(("data.test".into(), test));
                        if let Some(t) = train {
                            paths.push(("data.train".into(), t));
                        }
                        if let Some(n) = class_names {
                            paths.push(("data.class_names".into(), n));
                        }
                    }
                    ClassificationData::ClipBenchmark { root, .. } => {
                        paths.push(("data.root".into(), root));
                    }
                    ClassificationData::Csv {
                        test,
                        train,
                        class_names,
                        ..
                    } => {
                        paths.push(("data.test".into(), test));
                        if let Some(t) = train {
                            paths.push(("data.train".into(), t));
                        }
                        paths.push(("data.class_names".into(), class_names));
                    }
                }
            }
            Task::Retrieval(r) => match &mut r.data {
                RetrievalData::Karpathy {
                    annotations,
                    images,
                    ..
                } => {
                    paths.push(("data.annotations".into(), annotations));
                    paths.push(("data.images".into(), images));
                }
                RetrievalData::Coco {
                    annotations,
                    images,
                    train_annotations,
                    train_images,
                } => {
                    paths.push(("data.annotations".into(), annotations));
                    paths.push(("data.images".into(), images));
                    if let Some(a) = train_annotations {
                        paths.push(("data.train_annotations".into(), a));
                    }
                    if let Some(i) = train_images {
                        paths.push(("data.train_images".into(), i));
                    }
                }
                RetrievalData::ClipBenchmark { root, .. } => {
                    paths.push(("data.root".into(), root));
                }
            },
            Task::Compositional(c) => {
                for (k, f) in c.files.iter_mut().enumerate() {
                    paths.push((format!("files[{k}]"), f));
                }
                paths.push(("images".into(), &mut c.images));
            }
            Task::Vqa(v) => {
                for (name, split) in [("train", &mut v.train), ("val", &mut v.val)] {
                    paths.push((format!("{name}.questions"), &mut split.questions));
                    paths.push((format!("{name}.annotations"), &mut split.annotations));
                    paths.push((format!("{name}.images"), &mut split.images));
                }
            }
        }
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_suite_parses_and_names_its_benchmarks() {
        let suite = Suite::paper();
        let names: Vec<&str> = suite.benchmarks.iter().map(|b| b.name.as_str()).collect();
        for name in ["imagenet", "coco", "flickr30k", "sugarcrepe", "vqav2"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let text = r#"{"name": "x", "benchmarks": [{"name": "a", "task": "classification",
            "data": {"format": "image_folder", "test": "t", "tset": "oops"}}]}"#;
        let error = Suite::parse(text, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("tset"), "{error}");
        let text = r#"{"name": "x", "benchmarks": [{"name": "a", "task": "vqa2"}]}"#;
        let error = Suite::parse(text, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("vqa2"), "{error}");
    }

    #[test]
    fn a_missing_path_is_named_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("val")).unwrap();
        let text = r#"{"name": "x", "benchmarks": [{"name": "inet", "task": "classification",
            "data": {"format": "image_folder", "test": "val", "train": "train"}}]}"#;
        let file = dir.path().join("suite.json");
        std::fs::write(&file, text).unwrap();
        let suite = Suite::resolve(file.to_str().unwrap()).unwrap();
        let error = suite.check().unwrap_err().to_string();
        assert!(error.contains("data.train"), "{error}");
        assert!(
            error.contains(&dir.path().join("train").display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn select_keeps_the_named_benchmarks_and_refuses_unknown_names() {
        let suite = Suite::paper();
        let only = suite.clone().select(&["coco".into()]).unwrap();
        assert_eq!(only.benchmarks.len(), 1);
        let error = suite.select(&["cocoa".into()]).unwrap_err().to_string();
        assert!(
            error.contains("cocoa") && error.contains("imagenet"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_names_and_bad_options_are_refused() {
        let text = r#"{"name": "x", "benchmarks": [{"name": "s", "task": "scene"},
            {"name": "s", "task": "scene"}]}"#;
        assert!(Suite::parse(text, Path::new("x.json")).is_err());
        let text = r#"{"name": "x", "benchmarks": [{"name": "c", "task": "classification",
            "data": {"format": "image_folder", "test": "t"}, "linear": {"l2": -1}}]}"#;
        let error = Suite::parse(text, Path::new("x.json"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("linear.l2"), "{error}");
    }
}
