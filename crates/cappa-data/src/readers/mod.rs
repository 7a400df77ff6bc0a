//! Readers for the datasets users already have: webdataset/img2dataset tar shards, CSV/TSV
//! tables, COCO captions, Karpathy splits, ImageFolder trees, CLIP_benchmark's webdataset
//! layout, SugarCrepe/ARO compositional benchmarks and VQA v2.
//!
//! Readers deliver images still encoded ([`ImageData::Encoded`]); decoding, and the skip
//! reasons that come with it, belong to the image pipeline. Problems with one sample become a
//! [`BadSample`] and are counted in a [`ReadStats`]; problems that make the whole source
//! unusable (a pattern that matches nothing, an annotation file without a required field) are
//! a [`DataError`] and are raised before any sample is read.
//!
//! File-based sources (CSV, COCO, Karpathy, ImageFolder) first build an index, a
//! `Vec<FileRecord>`, which a loader may shuffle or shard; [`FileSamples`] then reads the
//! image files lazily.
//!
//! ```no_run
//! use cappa_data::readers::{expand_paths, WebDataset};
//! let shards = expand_paths(&["shards/{00000..00009}.tar"])?;
//! let mut reader = WebDataset::new(shards);
//! let good = reader.by_ref().filter_map(Result::ok).count();
//! reader.stats().check_bad_fraction(0.01)?;
//! # Ok::<(), cappa_data::error::DataError>(())
//! ```

mod clip_benchmark;
mod coco;
mod compositional;
mod csv_tsv;
mod image_folder;
mod karpathy;
mod paths;
mod tar_stream;
#[cfg(test)]
mod test_util;
mod vqa;
mod webdataset;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::{BadSample, ImageData, Sample, SkipCounts, SkipReason};

pub use clip_benchmark::{
    read_class_name_lines, read_template_lines, ClipBenchmark, ClipBenchmarkKind,
};
pub use coco::read_coco;
pub use compositional::{read_aro, read_sugarcrepe, CompositionalItem};
pub use csv_tsv::{read_csv, read_labelled_csv, CsvConfig};
pub use image_folder::{read_class_names, ImageFolder, IMAGE_EXTENSIONS};
pub use karpathy::{read_karpathy, KarpathySplit, Restval};
pub use paths::expand_paths;
pub use vqa::{coco_image_file_name, normalize_vqa_answer, read_vqa, vqa_accuracy, VqaItem};
pub use webdataset::{ShardSamples, TextMembers, WebDataset};

/// How many samples a reader has produced, and how many of them were skipped and why.
///
/// `seen` counts every item a reader yielded, good or bad; a truncated shard counts as one
/// bad item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Items yielded so far, good and bad.
    pub seen: u64,
    /// Bad items by reason.
    pub skips: SkipCounts,
}

impl ReadStats {
    /// Counts one yielded item.
    pub fn record(&mut self, item: &Result<Sample, BadSample>) {
        self.seen += 1;
        if let Err(bad) = item {
            self.skips.add(bad.reason);
        }
    }

    /// Items that were good.
    pub fn good(&self) -> u64 {
        self.seen - self.skips.total()
    }

    /// Items that were skipped.
    pub fn bad(&self) -> u64 {
        self.skips.total()
    }

    /// Adds another reader's counts (for example another loader worker's).
    pub fn merge(&mut self, other: &ReadStats) {
        self.seen += other.seen;
        self.skips.merge(&other.skips);
    }

    /// Fails with [`DataError::TooManyBad`] when more than `max_bad_fraction` of the items
    /// seen so far were bad. Nothing seen is never too many.
    pub fn check_bad_fraction(&self, max_bad_fraction: f64) -> Result<(), DataError> {
        check_bad_fraction(self.bad(), self.seen, max_bad_fraction)
    }
}

/// Fails with [`DataError::TooManyBad`] when `bad / seen > max_bad_fraction`.
pub fn check_bad_fraction(bad: u64, seen: u64, max_bad_fraction: f64) -> Result<(), DataError> {
    if seen > 0 && (bad as f64) > max_bad_fraction * seen as f64 {
        Err(DataError::TooManyBad {
            bad,
            seen,
            threshold: max_bad_fraction,
        })
    } else {
        Ok(())
    }
}

/// One entry of a file-based index: an image file with its captions and metadata, not yet
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    /// The sample's key (image id, relative path, ...).
    pub key: String,
    /// Where the encoded image is.
    pub path: PathBuf,
    /// The captions; may be empty or blank, which [`FileRecord::load`] reports.
    pub captions: Vec<String>,
    /// Source-specific metadata.
    pub meta: serde_json::Value,
}

impl FileRecord {
    /// Reads the image bytes. A file that cannot be read is [`SkipReason::UnreadableFile`], a
    /// zero-byte one [`SkipReason::EmptyImage`]; no captions is [`SkipReason::MissingCaption`]
    /// and only blank captions [`SkipReason::EmptyCaption`]. Blank captions next to good ones
    /// are dropped.
    pub fn load(&self) -> Result<Sample, BadSample> {
        let bad = |reason, detail: String| BadSample {
            reason,
            location: self.path.display().to_string(),
            detail,
        };
        let bytes = std::fs::read(&self.path)
            .map_err(|e| bad(SkipReason::UnreadableFile, e.to_string()))?;
        if bytes.is_empty() {
            return Err(bad(SkipReason::EmptyImage, "zero-byte image file".into()));
        }
        if self.captions.is_empty() {
            return Err(bad(SkipReason::MissingCaption, format!("key {}", self.key)));
        }
        let captions: Vec<String> = self
            .captions
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        if captions.is_empty() {
            return Err(bad(SkipReason::EmptyCaption, format!("key {}", self.key)));
        }
        Ok(Sample {
            key: self.key.clone(),
            image: ImageData::Encoded(bytes),
            captions,
            meta: self.meta.clone(),
        })
    }
}

/// Reads the image files of an index lazily, in order, counting what it yields.
#[derive(Debug)]
pub struct FileSamples {
    records: std::vec::IntoIter<FileRecord>,
    stats: ReadStats,
}

impl FileSamples {
    /// Reads `records` in the given order.
    pub fn new(records: Vec<FileRecord>) -> Self {
        FileSamples {
            records: records.into_iter(),
            stats: ReadStats::default(),
        }
    }

    /// Counts of what was yielded so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }
}

impl Iterator for FileSamples {
    type Item = Result<Sample, BadSample>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.records.next()?.load();
        self.stats.record(&item);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}

/// Reads and parses a JSON file into `T`; every error names the file (and the field at fault).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, DataError> {
    Ok(cappa_io::read_json(path)?)
}
