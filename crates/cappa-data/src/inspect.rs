//! `cappa data inspect`: read a dataset in any supported format end to end — every image
//! decoded, every caption looked at — and report what is there and what is broken.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::pipeline::{decode, DecodeLimits};
use crate::readers::{
    expand_paths, read_coco, read_csv, read_karpathy, read_sugarcrepe, read_vqa, CsvConfig,
    FileRecord, FileSamples, ImageFolder, KarpathySplit, Restval, WebDataset,
};
use crate::sample::{BadSample, ImageData, Sample, SkipCounts};

/// The dataset formats cappa reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    WebDataset,
    Csv,
    Tsv,
    Coco,
    Karpathy,
    ImageFolder,
    SugarCrepe,
    Vqa,
}

/// Minimum, mean and maximum of a quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Summary {
    fn add(&mut self, value: f64) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        }
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.mean += (value - self.mean) / self.count as f64;
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectReport {
    pub format: DatasetFormat,
    pub inputs: Vec<String>,
    /// Items read, good and bad.
    pub seen: u64,
    /// Good samples (images decoded, captions present).
    pub samples: u64,
    pub skipped: SkipCounts,
    pub image_width: Summary,
    pub image_height: Summary,
    pub captions_per_sample: Summary,
    pub caption_words: Summary,
}

/// Options of [`inspect`].
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// The format; detected from the path when `None`.
    pub format: Option<DatasetFormat>,
    /// Where the images of an annotation file are; default: the file's directory.
    pub image_root: Option<PathBuf>,
    pub limits: DecodeLimits,
}

/// Tells the format from a path: a directory is an ImageFolder, `.tar` webdataset shards,
/// `.csv`/`.tsv` tables, and a `.json` file is recognised by its fields.
pub fn detect_format(path: &Path) -> Result<DatasetFormat, DataError> {
    if path.is_dir() {
        return Ok(DatasetFormat::ImageFolder);
    }
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "tar" => return Ok(DatasetFormat::WebDataset),
        "csv" => return Ok(DatasetFormat::Csv),
        "tsv" => return Ok(DatasetFormat::Tsv),
        "json" => {}
        _ => {
            return Err(DataError::format(
                path,
                "cannot tell the format from the name: pass --format",
            ))
        }
    }
    let value: serde_json::Value = cappa_io::read_json(path)?;
    let has = |key: &str| value.get(key).is_some();
    let first_image_has_sentences = value
        .get("images")
        .and_then(|images| images.get(0))
        .is_some_and(|image| image.get("sentences").is_some());
    let sugarcrepe = value.as_object().is_some_and(|items| {
        !items.is_empty()
            && items
                .values()
                .all(|item| item.get("caption").is_some() && item.get("negative_caption").is_some())
    });
    if first_image_has_sentences {
        Ok(DatasetFormat::Karpathy)
    } else if has("images") && has("annotations") {
        Ok(DatasetFormat::Coco)
    } else if has("questions") {
        Ok(DatasetFormat::Vqa)
    } else if sugarcrepe {
        Ok(DatasetFormat::SugarCrepe)
    } else {
        Err(DataError::format(
            path,
            "not a COCO, Karpathy, VQA or SugarCrepe file: pass --format",
        ))
    }
}

/// Reads the dataset at `patterns` end to end and summarises it.
pub fn inspect(patterns: &[String], options: &InspectOptions) -> Result<InspectReport, DataError> {
    let paths = expand_paths(patterns)?;
    let first = paths
        .first()
        .expect("expand_paths returns at least one path");
    let format = match options.format {
        Some(format) => format,
        None => detect_format(first)?,
    };
    let mut report = InspectReport::empty(format, &paths);
    let items: Box<dyn Iterator<Item = Result<Sample, BadSample>>> = match format {
        DatasetFormat::WebDataset => Box::new(WebDataset::new(paths.clone())),
        DatasetFormat::ImageFolder => Box::new(ImageFolder::open(first)?.samples()),
        DatasetFormat::Vqa => {
            summarise_questions(&mut report, first)?;
            return Ok(report);
        }
        DatasetFormat::Csv
        | DatasetFormat::Tsv
        | DatasetFormat::Coco
        | DatasetFormat::Karpathy
        | DatasetFormat::SugarCrepe => Box::new(FileSamples::new(index(format, &paths, options)?)),
    };
    summarise_samples(&mut report, items, &options.limits);
    Ok(report)
}

impl InspectReport {
    /// A report of nothing read yet.
    fn empty(format: DatasetFormat, paths: &[PathBuf]) -> Self {
        InspectReport {
            format,
            inputs: paths.iter().map(|p| p.display().to_string()).collect(),
            seen: 0,
            samples: 0,
            skipped: SkipCounts::default(),
            image_width: Summary::default(),
            image_height: Summary::default(),
            captions_per_sample: Summary::default(),
            caption_words: Summary::default(),
        }
    }
}

/// Where the images of the annotation file `path` are: the option, else the file's directory.
fn image_root(options: &InspectOptions, path: &Path) -> PathBuf {
    options
        .image_root
        .clone()
        .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The index of a file-based format (CSV/TSV tables, COCO, Karpathy, SugarCrepe); every
/// Karpathy split is read, and a SugarCrepe item's captions are its positive then its
/// negatives.
fn index(
    format: DatasetFormat,
    paths: &[PathBuf],
    options: &InspectOptions,
) -> Result<Vec<FileRecord>, DataError> {
    let first = &paths[0];
    let mut records = Vec::new();
    match format {
        DatasetFormat::Csv | DatasetFormat::Tsv => {
            let config = match format {
                DatasetFormat::Csv => CsvConfig::comma(),
                _ => CsvConfig::open_clip(),
            };
            for path in paths {
                records.extend(read_csv(path, &config)?);
            }
        }
        DatasetFormat::Coco => records = read_coco(first, &image_root(options, first))?,
        DatasetFormat::Karpathy => {
            for split in [
                KarpathySplit::Train,
                KarpathySplit::Restval,
                KarpathySplit::Val,
                KarpathySplit::Test,
            ] {
                records.extend(read_karpathy(
                    first,
                    &image_root(options, first),
                    split,
                    Restval::Separate,
                )?);
            }
        }
        DatasetFormat::SugarCrepe => {
            for path in paths {
                for item in read_sugarcrepe(path, &image_root(options, path))? {
                    records.push(FileRecord {
                        key: item.image_path.display().to_string(),
                        path: item.image_path.clone(),
                        captions: std::iter::once(item.caption)
                            .chain(item.negatives)
                            .collect(),
                        meta: serde_json::Value::Null,
                    });
                }
            }
        }
        DatasetFormat::WebDataset | DatasetFormat::ImageFolder | DatasetFormat::Vqa => {
            unreachable!("{format:?} is read without an index")
        }
    }
    Ok(records)
}

/// VQA questions only: counts them and summarises their lengths.
fn summarise_questions(report: &mut InspectReport, questions: &Path) -> Result<(), DataError> {
    for item in read_vqa(questions, None)? {
        report.seen += 1;
        report.samples += 1;
        report.captions_per_sample.add(1.0);
        report
            .caption_words
            .add(item.question.split_whitespace().count() as f64);
    }
    Ok(())
}

/// Decodes every image and looks at every caption, in chunks so that images are checked in
/// parallel but memory stays bounded.
fn summarise_samples(
    report: &mut InspectReport,
    items: impl Iterator<Item = Result<Sample, BadSample>>,
    limits: &DecodeLimits,
) {
    let mut items = items.peekable();
    while items.peek().is_some() {
        let chunk: Vec<_> = items.by_ref().take(256).collect();
        let decoded: Vec<_> = chunk
            .into_par_iter()
            .map(|item| {
                let sample = item.map_err(|bad| bad.reason)?;
                let size = match &sample.image {
                    ImageData::Rgb(image) => image.dimensions(),
                    ImageData::Encoded(_) => decode(&sample.image, limits)?.dimensions(),
                };
                Ok((size, sample.captions))
            })
            .collect();
        for result in decoded {
            report.seen += 1;
            match result {
                Ok(((width, height), captions)) => {
                    report.samples += 1;
                    report.image_width.add(width as f64);
                    report.image_height.add(height as f64);
                    report.captions_per_sample.add(captions.len() as f64);
                    for caption in &captions {
                        report
                            .caption_words
                            .add(caption.split_whitespace().count() as f64);
                    }
                }
                Err(reason) => report.skipped.add(reason),
            }
        }
    }
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let summary = |s: &Summary| {
            if s.count == 0 {
                "-".to_owned()
            } else {
                format!("min {:.0}, mean {:.1}, max {:.0}", s.min, s.mean, s.max)
            }
        };
        writeln!(f, "format             {:?}", self.format)?;
        writeln!(f, "inputs             {}", self.inputs.join(", "))?;
        writeln!(f, "items read         {}", self.seen)?;
        writeln!(f, "good samples       {}", self.samples)?;
        writeln!(
            f,
            "bad samples        {} ({})",
            self.skipped.total(),
            self.skipped
        )?;
        writeln!(f, "image width        {}", summary(&self.image_width))?;
        writeln!(f, "image height       {}", summary(&self.image_height))?;
        writeln!(
            f,
            "captions/sample    {}",
            summary(&self.captions_per_sample)
        )?;
        writeln!(f, "caption words      {}", summary(&self.caption_words))
    }
}
