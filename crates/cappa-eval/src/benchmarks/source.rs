//! Where a split's images come from: an index of files, or webdataset shards; either way a
//! stream of samples, with an identity for the feature cache.

use std::path::PathBuf;

use cappa_data::readers::{FileRecord, FileSamples, TextMembers, WebDataset};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::images::{files_identity, Encoded, SampleSource};

/// The images of one split.
#[derive(Debug, Clone)]
pub enum SplitSource {
    /// Image files listed by an index (ImageFolder, CSV, Karpathy, COCO, …), in order.
    Files {
        records: Vec<FileRecord>,
        /// The index files (for the cache key).
        index: Vec<PathBuf>,
    },
    /// webdataset shards, read in order.
    Shards {
        shards: Vec<PathBuf>,
        text: TextMembers,
    },
}

impl SplitSource {
    /// The split's samples, good and bad, in order.
    pub fn samples(&self) -> SampleSource {
        match self {
            SplitSource::Files { records, .. } => Box::new(FileSamples::new(records.clone())),
            SplitSource::Shards { shards, text } => {
                Box::new(WebDataset::new(shards.clone()).with_text(*text))
            }
        }
    }

    /// How many samples the split has, when known without reading it.
    pub fn len(&self) -> Option<u64> {
        match self {
            SplitSource::Files { records, .. } => Some(records.len() as u64),
            SplitSource::Shards { .. } => None,
        }
    }

    /// Whether the index lists no image (shards: unknown until read, so `false`).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// What identifies the data for the cache: the index files or shards with their sizes and
    /// modification times, and the number of records.
    pub fn identity(&self) -> String {
        match self {
            SplitSource::Files { records, index } => format!(
                "{} records; {}",
                records.len(),
                files_identity(index.iter().map(PathBuf::as_path))
            ),
            SplitSource::Shards { shards, text } => format!(
                "{text:?}; {}",
                files_identity(shards.iter().map(PathBuf::as_path))
            ),
        }
    }

    /// Keeps at most `per_class` records of each label (`meta.label`), the first after a
    /// ChaCha8 shuffle seeded with 0, in index order; shards are left as they are (the caller
    /// caps them while streaming).
    pub fn capped(&self, per_class: Option<usize>) -> SplitSource {
        let (SplitSource::Files { records, index }, Some(cap)) = (self, per_class) else {
            return self.clone();
        };
        let mut by_label: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
        for (i, record) in records.iter().enumerate() {
            let label = record.meta.get("label").and_then(serde_json::Value::as_i64);
            by_label.entry(label.unwrap_or(-1)).or_default().push(i);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut chosen: Vec<usize> = Vec::new();
        for mut indices in by_label.into_values() {
            indices.shuffle(&mut rng);
            chosen.extend(indices.into_iter().take(cap));
        }
        chosen.sort_unstable();
        SplitSource::Files {
            records: chosen.into_iter().map(|i| records[i].clone()).collect(),
            index: index.clone(),
        }
    }
}

/// Keeps the first `cap` samples of each label of a stream (for shards, whose order is the
/// only one known without reading them).
#[derive(Debug, Default)]
pub(crate) struct PerClassCap {
    cap: Option<usize>,
    seen: std::collections::HashMap<i64, usize>,
}

impl PerClassCap {
    pub(crate) fn new(cap: Option<usize>) -> Self {
        PerClassCap {
            cap,
            seen: Default::default(),
        }
    }

    /// Whether to keep `sample` (always, without a cap).
    pub(crate) fn keep(&mut self, sample: &cappa_data::Sample) -> bool {
        let Some(cap) = self.cap else { return true };
        let label = sample
            .meta
            .get("label")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(-1);
        let count = self.seen.entry(label).or_default();
        *count += 1;
        *count <= cap
    }
}

/// Labels of an encoded split, checked against the class count: a label outside
/// `0..classes` means the class names do not cover the labels.
pub(crate) fn checked_labels(
    encoded: &Encoded,
    classes: usize,
    names_from: &str,
) -> Result<Vec<i64>, String> {
    let labels = encoded.labels();
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        return Err(format!(
            "a sample has label {bad}, but {names_from} names {classes} classes (labels \
             0..{}): give one class name per label",
            classes.saturating_sub(1)
        ));
    }
    Ok(labels)
}
