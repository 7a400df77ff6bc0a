//! Compositional benchmarks: SugarCrepe's files and ARO's (VG-Relation, VG-Attribution,
//! COCO-Order, Flickr-Order). An item counts as correct when its true caption scores strictly
//! above every one of its negatives; accuracy per file, per sub-type (ARO's relation or
//! attribute pair, where the file has them) with their macro mean, and over all items.
//! Images are streamed (each distinct image, cropped where ARO gives a box, once), and the
//! items of each batch of images are scored before the next batch is read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use cappa_data::error::DataError;
use cappa_data::readers::{read_aro, read_sugarcrepe, CompositionalItem, FileRecord};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::source::SplitSource;
use super::{encode, Context};
use crate::images::SplitStats;
use crate::scoring::{paired_scores, tokens};
use crate::suite::{Benchmark, Compositional, CompositionalFormat};

#[derive(Debug)]
pub(crate) struct OpenedCompositional {
    files: Vec<(String, Vec<CompositionalItem>)>,
}

/// Accuracy per file, then per sub-type (`all` over the file's items, `macro` the mean over
/// its sub-types where it has them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositionalResults {
    pub files: BTreeMap<String, BTreeMap<String, f64>>,
    /// Items scored per file (items whose image could not be read are left out).
    pub items: BTreeMap<String, usize>,
}

impl CompositionalResults {
    pub(crate) fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (file, accuracies) in &self.files {
            for (kind, accuracy) in accuracies {
                m.insert(format!("{file}/{kind}"), *accuracy);
            }
        }
        m
    }
}

/// The file's name in reports: its stem (`replace_att`, `visual_genome_relation`).
fn file_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub(crate) fn open(spec: &Compositional) -> Result<OpenedCompositional, DataError> {
    let mut files = Vec::new();
    for path in &spec.files {
        let items = match spec.format {
            CompositionalFormat::Sugarcrepe => read_sugarcrepe(path, &spec.images)?,
            CompositionalFormat::Aro => read_aro(path, &spec.images)?,
        };
        if items.is_empty() {
            return Err(DataError::format(path, "holds no item"));
        }
        files.push((file_name(path), items));
    }
    Ok(OpenedCompositional { files })
}

/// An image as the items of a file see it: its path and crop box.
type ImageKey = (PathBuf, Option<[u64; 4]>);

fn image_key(item: &CompositionalItem) -> ImageKey {
    (
        item.image_path.clone(),
        item.crop.map(|c| c.map(f64::to_bits)),
    )
}

pub(crate) fn run(
    context: &Context<'_>,
    benchmark: &Benchmark,
    data: &OpenedCompositional,
    splits: &mut BTreeMap<String, SplitStats>,
) -> CompositionalResults {
    let scorer = context.model.scorer();
    let mut results = CompositionalResults {
        files: BTreeMap::new(),
        items: BTreeMap::new(),
    };
    for (name, items) in &data.files {
        // Distinct images in first-use order, with the items of each.
        let mut index: HashMap<ImageKey, usize> = HashMap::new();
        let mut records = Vec::new();
        let mut items_of: Vec<Vec<usize>> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = image_key(item);
            let image = *index.entry(key).or_insert_with(|| {
                records.push(FileRecord {
                    // Unique per (image, crop): the same image may be cropped differently.
                    key: format!("{}#{}", item.image_path.display(), records.len()),
                    path: item.image_path.clone(),
                    captions: vec![item.caption.clone()],
                    meta: match item.crop {
                        Some(crop) => serde_json::json!({ "crop": crop }),
                        None => serde_json::Value::Null,
                    },
                });
                items_of.push(Vec::new());
                records.len() - 1
            });
            items_of[image].push(i);
        }
        let position: HashMap<String, usize> = records
            .iter()
            .enumerate()
            .map(|(k, record)| (record.key.clone(), k))
            .collect();
        let source = SplitSource::Files {
            records,
            index: Vec::new(),
        };
        let mut correct: Vec<Option<bool>> = vec![None; items.len()];
        let encoded = encode(
            context,
            benchmark,
            name,
            &source,
            None,
            &[],
            "",
            |_| true,
            |images, kept| {
                // Rows: every candidate (true first, then negatives) of every item whose image
                // is in this batch.
                let mut image_of = Vec::new();
                let mut texts = Vec::new();
                let mut owners = Vec::new();
                for (local, sample) in kept.iter().enumerate() {
                    let image = position[&sample.key];
                    for &i in &items_of[image] {
                        let item = &items[i];
                        for text in std::iter::once(&item.caption).chain(&item.negatives) {
                            image_of.push(local);
                            texts.push(text.clone());
                        }
                        owners.push((i, 1 + item.negatives.len()));
                    }
                }
                if texts.is_empty() {
                    return Vec::new();
                }
                let rows = tokens(context.tokenizer, &texts, context.seq_len);
                let scores = paired_scores(
                    scorer,
                    images,
                    &image_of,
                    std::slice::from_ref(&rows),
                    context.batch as i64,
                );
                let scores: Vec<f64> = Vec::try_from(scores.view([-1])).expect("f64 scores");
                let mut at = 0;
                for (i, candidates) in owners {
                    let truth = scores[at];
                    let beaten = scores[at + 1..at + candidates].iter().all(|&n| truth > n);
                    correct[i] = Some(beaten);
                    at += candidates;
                }
                Vec::<(String, Tensor)>::new()
            },
        );
        splits.insert(name.clone(), encoded.stats);
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut scored = 0;
        for (item, hit) in items.iter().zip(&correct) {
            let Some(hit) = *hit else { continue };
            scored += 1;
            let mut add = |key: &str| {
                let entry = counts.entry(key.to_string()).or_default();
                entry.0 += usize::from(hit);
                entry.1 += 1;
            };
            add("all");
            if let Some(subtype) = &item.subtype {
                add(&format!("subtype:{subtype}"));
            }
        }
        let mut accuracies: BTreeMap<String, f64> = counts
            .iter()
            .map(|(k, &(hits, n))| (k.clone(), hits as f64 / n as f64))
            .collect();
        let subtypes: Vec<f64> = accuracies
            .iter()
            .filter(|(k, _)| k.starts_with("subtype:"))
            .map(|(_, &a)| a)
            .collect();
        if !subtypes.is_empty() {
            accuracies.insert(
                "macro".into(),
                subtypes.iter().sum::<f64>() / subtypes.len() as f64,
            );
        }
        results.files.insert(name.clone(), accuracies);
        results.items.insert(name.clone(), scored);
    }
    results
}
