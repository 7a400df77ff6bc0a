//! Classification benchmarks: ImageFolder, CLIP_benchmark's webdataset layout and CSV; zero-shot
//! (prompt-ensembled embeddings for two-tower models, summed log-likelihood of the prompted
//! class name for captioners), few-shot ridge and the full linear probe on the train split.

use std::collections::BTreeMap;
use std::path::Path;

use cappa_data::readers::{
    read_class_name_lines, read_class_names, read_labelled_csv, read_template_lines, ClipBenchmark,
    ClipBenchmarkKind, FileRecord, ImageFolder,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::source::{checked_labels, PerClassCap, SplitSource};
use super::{encode, put, BenchmarkError, Context, OpenError};
use crate::classification::{classification_metrics, ClassificationMetrics};
use crate::images::SplitStats;
use crate::model::ScoreKind;
use crate::probe::{
    few_shot, has_validation_split, linear_probe_fixed, linear_probe_scored, FewShotResult,
    LinearProbeConfig,
};
use crate::scoring::LIKELIHOOD_PAIRS_PER_IMAGE;
use crate::suite::{Benchmark, Classification, ClassificationData, LinearSpec};
use crate::tasks::class_texts;

/// The zero-shot prompt where a benchmark gives none.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {c}.";

/// A classification benchmark's splits, class names and templates.
#[derive(Debug)]
pub(crate) struct OpenedClassification {
    test: SplitSource,
    train: Option<SplitSource>,
    class_names: Vec<String>,
    /// Where the class names come from (in errors).
    names_from: String,
    /// Prompt templates with `{}` for the class name.
    prompts: Vec<String>,
    spec: Classification,
}

/// The results of a classification benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationResults {
    pub classes: usize,
    pub test_images: usize,
    pub train_images: Option<usize>,
    pub zero_shot: Option<ClassificationMetrics>,
    /// Few-shot ridge accuracy (top-1) per shot count, mean over seeds.
    pub few_shot: Vec<FewShotResult>,
    pub linear: Option<LinearResults>,
}

/// The full linear probe's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearResults {
    pub l2: f64,
    /// Whether `l2` was chosen on a validation split (else it was fixed by the suite).
    pub validated: bool,
    pub metrics: ClassificationMetrics,
}

impl ClassificationResults {
    pub(crate) fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let mut put_metrics = |prefix: &str, c: &ClassificationMetrics| {
            put(&mut m, prefix, "acc1", c.acc1);
            put(&mut m, prefix, "acc5", c.acc5);
            put(
                &mut m,
                prefix,
                "mean_per_class_recall",
                c.mean_per_class_recall,
            );
        };
        if let Some(z) = &self.zero_shot {
            put_metrics("zero_shot", z);
        }
        if let Some(l) = &self.linear {
            put_metrics("linear", &l.metrics);
        }
        for r in &self.few_shot {
            put(
                &mut m,
                "few_shot",
                &format!("{}shot", r.shots),
                r.mean_accuracy,
            );
        }
        m
    }
}

/// Reads a templates file (one prompt per line with `{c}`), returned with `{}` for the class
/// name as the zero-shot prompts take it.
pub(crate) fn read_templates(path: &Path) -> Result<Vec<String>, OpenError> {
    let templates = read_template_lines(path)?;
    if templates.is_empty() {
        return Err(OpenError::Invalid(format!(
            "{} holds no template: write one per line with `{{c}}` for the class name",
            path.display()
        )));
    }
    Ok(templates.iter().map(|t| t.replace("{c}", "{}")).collect())
}

/// An ImageFolder split, refusing class folders without images.
fn image_folder(root: &Path) -> Result<ImageFolder, OpenError> {
    let folder = ImageFolder::open(root)?;
    let empty = folder.empty_classes();
    if !empty.is_empty() {
        return Err(OpenError::Invalid(format!(
            "{}: the class folder(s) {} hold no image (.jpg, .jpeg, .png, .webp): add \
             images or remove the folder",
            root.display(),
            empty.join(", ")
        )));
    }
    Ok(folder)
}

/// CSV rows as file records with `meta.label` (and the class name as caption).
fn labelled_records(
    path: &Path,
    class_names: &[String],
    names_file: &Path,
    columns: (&str, &str, char),
) -> Result<Vec<FileRecord>, OpenError> {
    let (path_column, label_column, separator) = columns;
    let rows = read_labelled_csv(path, path_column, label_column, separator as u8)?;
    rows.into_iter()
        .enumerate()
        .map(|(row, (image, label))| {
            let name = class_names.get(label as usize).ok_or_else(|| {
                OpenError::Invalid(format!(
                    "{}: row {} has label {label}, but {} names {} classes: give one class \
                     name per label (line k names label k)",
                    path.display(),
                    row + 1,
                    names_file.display(),
                    class_names.len()
                ))
            })?;
            Ok(FileRecord {
                key: image.display().to_string(),
                path: image,
                captions: vec![name.clone()],
                meta: serde_json::json!({ "label": label }),
            })
        })
        .collect()
}

fn files(folder: ImageFolder, root: &Path) -> SplitSource {
    SplitSource::Files {
        records: folder.records,
        index: vec![root.to_path_buf()],
    }
}

pub(crate) fn open(name: &str, spec: &Classification) -> Result<OpenedClassification, OpenError> {
    let _ = name;
    let (test, train, class_names, names_from, own_templates) = match &spec.data {
        ClassificationData::ImageFolder {
            test,
            train,
            class_names,
        } => {
            let test_folder = image_folder(test)?;
            let train_folder = train.as_deref().map(image_folder).transpose()?;
            if let Some(t) = &train_folder {
                if t.classes != test_folder.classes {
                    return Err(OpenError::Invalid(format!(
                        "the train split {} and the test split {} have different class \
                         folders ({} and {}): both need the same folder names",
                        train.as_ref().expect("a train root").display(),
                        test.display(),
                        t.classes.len(),
                        test_folder.classes.len()
                    )));
                }
            }
            let (names, from) = match class_names {
                Some(file) => (
                    read_class_names(file, test_folder.classes.len())?,
                    file.display().to_string(),
                ),
                None => (test_folder.classes.clone(), test.display().to_string()),
            };
            let train = train_folder.map(|f| files(f, train.as_deref().expect("a train root")));
            (files(test_folder, test), train, names, from, None)
        }
        ClassificationData::ClipBenchmark {
            root,
            test_split,
            train_split,
        } => {
            let test = ClipBenchmark::open(root, test_split)?;
            if test.kind != ClipBenchmarkKind::Classification {
                return Err(OpenError::Invalid(format!(
                    "{} says this is a retrieval dataset: list it under `\"task\": \"retrieval\"`",
                    root.join("dataset_type.txt").display()
                )));
            }
            let train = match train_split {
                Some(split) if spec.few_shot.is_some() || spec.linear.is_some() => {
                    Some(ClipBenchmark::open(root, split)?)
                }
                _ => None,
            };
            let shards = |b: &ClipBenchmark| SplitSource::Shards {
                shards: b.shards.clone(),
                text: cappa_data::readers::TextMembers::Label,
            };
            let templates = (!test.templates.is_empty()).then(|| {
                test.templates
                    .iter()
                    .map(|t| t.replace("{c}", "{}"))
                    .collect::<Vec<_>>()
            });
            (
                shards(&test),
                train.as_ref().map(shards),
                test.class_names.clone(),
                root.join("classnames.txt").display().to_string(),
                templates,
            )
        }
        ClassificationData::Csv {
            test,
            train,
            class_names,
            path_column,
            label_column,
            separator,
        } => {
            let names = read_class_name_lines(class_names)?;
            let columns = (path_column.as_str(), label_column.as_str(), *separator);
            let records = |path: &Path| -> Result<SplitSource, OpenError> {
                Ok(SplitSource::Files {
                    records: labelled_records(path, &names, class_names, columns)?,
                    index: vec![path.to_path_buf()],
                })
            };
            let test_source = records(test)?;
            let train_source = train.as_deref().map(records).transpose()?;
            let from = class_names.display().to_string();
            (test_source, train_source, names, from, None)
        }
    };
    if test.is_empty() {
        return Err(OpenError::Invalid("the test split lists no image".into()));
    }
    let prompts = match &spec.templates {
        Some(path) => read_templates(path)?,
        None => own_templates.unwrap_or_else(|| vec![DEFAULT_TEMPLATE.replace("{c}", "{}")]),
    };
    Ok(OpenedClassification {
        test,
        train,
        class_names,
        names_from,
        prompts,
        spec: spec.clone(),
    })
}

/// Output names of the test split: probe features, CLIP embeddings, captioner zero-shot scores.
const PROBE: &str = "probe";
const EMBEDDING: &str = "embedding";
const ZERO_SHOT: &str = "zero_shot";

pub(crate) fn run(
    context: &Context<'_>,
    benchmark: &Benchmark,
    data: &OpenedClassification,
    splits: &mut BTreeMap<String, SplitStats>,
) -> Result<ClassificationResults, BenchmarkError> {
    let scorer = context.model.scorer();
    let encoder = context.model.encoder();
    let spec = &data.spec;
    let probes = data.train.is_some() && (spec.few_shot.is_some() || spec.linear.is_some());
    let likelihood = scorer.score_kind() == ScoreKind::LogLikelihood;
    let classes = data.class_names.len();
    let class_side = spec.zero_shot.then(|| {
        let (side, _) = class_texts(
            scorer,
            context.tokenizer,
            context.seq_len,
            &data.class_names,
            &data.prompts,
        );
        side
    });
    let mut outputs = Vec::new();
    if probes {
        outputs.push(PROBE.to_string());
    }
    if spec.zero_shot {
        outputs.push(if likelihood { ZERO_SHOT } else { EMBEDDING }.to_string());
    }
    // Captioner scores depend on the class texts too.
    let digest = format!(
        "{:?} {:?} {}",
        data.class_names, data.prompts, context.seq_len
    );
    let device = encoder.device();
    let pairs_per_call = context.batch as i64 * LIKELIHOOD_PAIRS_PER_IMAGE;
    let test = encode(
        context,
        benchmark,
        "test",
        &data.test,
        benchmark.limit,
        &outputs,
        &digest,
        |_| true,
        |images, _| {
            let images = images.to_device(device);
            let mut out = Vec::new();
            if !spec.zero_shot {
                out.push((PROBE.into(), encoder.probe_features(&images)));
                return out;
            }
            let (side, probe) = scorer.prepare_images_and_probe(&images);
            if probes {
                out.push((PROBE.into(), probe));
            }
            let texts = class_side.as_ref().expect("zero-shot class texts");
            if likelihood {
                let b = images.size()[0];
                let chunk = (pairs_per_call / b.max(1)).max(1);
                let parts: Vec<Tensor> = (0..classes as i64)
                    .step_by(chunk as usize)
                    .map(|first| {
                        let count = chunk.min(classes as i64 - first);
                        scorer.score_prepared(&side, &texts.narrow(0, first, count))
                    })
                    .collect();
                out.push((ZERO_SHOT.into(), Tensor::cat(&parts, 1)));
            } else {
                out.push((EMBEDDING.into(), side));
            }
            out
        },
    );
    splits.insert("test".into(), test.stats.clone());
    let invalid = |problem: String| BenchmarkError::invalid(&benchmark.name, problem);
    let test_labels = checked_labels(&test, classes, &data.names_from).map_err(invalid)?;
    if test_labels.is_empty() {
        return Err(invalid(
            "no test image could be read (see the skipped counts above)".into(),
        ));
    }
    let zero_shot = spec.zero_shot.then(|| {
        let scores = if likelihood {
            test.output(ZERO_SHOT).shallow_clone()
        } else {
            let texts = class_side.as_ref().expect("zero-shot class texts");
            scorer.score_prepared(
                &test.output(EMBEDDING).to_device(device),
                &texts.to_device(device),
            )
        };
        classification_metrics(&scores, &test_labels)
    });
    let mut results = ClassificationResults {
        classes,
        test_images: test_labels.len(),
        train_images: None,
        zero_shot,
        few_shot: Vec::new(),
        linear: None,
    };
    if !probes {
        return Ok(results);
    }
    let train_source = data
        .train
        .as_ref()
        .expect("probes need a train split")
        .capped(spec.train_per_class);
    let mut cap = PerClassCap::new(match train_source {
        SplitSource::Shards { .. } => spec.train_per_class,
        SplitSource::Files { .. } => None,
    });
    let train = encode(
        context,
        benchmark,
        "train",
        &train_source,
        None,
        &[PROBE.to_string()],
        &format!("per class {:?}", spec.train_per_class),
        |sample| cap.keep(sample),
        |images, _| {
            vec![(
                PROBE.into(),
                encoder.probe_features(&images.to_device(device)),
            )]
        },
    );
    splits.insert("train".into(), train.stats.clone());
    let train_labels = checked_labels(&train, classes, &data.names_from).map_err(invalid)?;
    if train_labels.is_empty() {
        return Err(invalid(
            "no train image could be read (see the skipped counts above)".into(),
        ));
    }
    results.train_images = Some(train_labels.len());
    let (train_x, test_x) = (train.output(PROBE), test.output(PROBE));
    if let Some(config) = &spec.few_shot {
        results.few_shot = few_shot(
            train_x,
            &train_labels,
            test_x,
            &test_labels,
            classes,
            config,
        );
    }
    results.linear = spec.linear.and_then(|linear| {
        linear_results(
            linear,
            train_x,
            &train_labels,
            test_x,
            &test_labels,
            classes,
        )
    });
    Ok(results)
}

/// The full linear probe with a fixed or a validated L2 strength (`None` when the train
/// split is too small to hold out a validation split).
fn linear_results(
    linear: LinearSpec,
    train_x: &Tensor,
    train_y: &[i64],
    test_x: &Tensor,
    test_y: &[i64],
    classes: usize,
) -> Option<LinearResults> {
    let config = LinearProbeConfig::default();
    match linear.l2 {
        Some(l2) => {
            let fitted = linear_probe_fixed(train_x, train_y, test_x, test_y, classes, l2);
            if !fitted.converged {
                eprintln!(
                    "note: the linear probe at l2 {l2:e} stopped after {} steps with a largest \
                     gradient entry of {:.1e} (not converged); a larger l2 converges faster",
                    fitted.iterations, fitted.max_gradient
                );
            }
            Some(LinearResults {
                l2,
                validated: false,
                metrics: classification_metrics(&fitted.test_scores, test_y),
            })
        }
        None => {
            if !has_validation_split(train_y, config.validation_fraction) {
                eprintln!(
                    "note: too few training images per class to choose the linear probe's L2 \
                     on a validation split; give `linear.l2` to fix it"
                );
                return None;
            }
            let (result, scores) =
                linear_probe_scored(train_x, train_y, test_x, test_y, classes, &config);
            Some(LinearResults {
                l2: result.l2,
                validated: true,
                metrics: classification_metrics(&scores.to_kind(Kind::Double), test_y),
            })
        }
    }
}
