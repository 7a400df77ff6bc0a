//! Benchmark images streamed through a model: samples are read one batch at a time, decoded
//! and transformed in parallel, run through the model, and dropped, so memory holds the
//! outputs (features, embeddings, scores) and never all pixels. Bad samples are skipped and
//! counted by reason; a progress bar on stderr shows images/s and the ETA. The outputs of a
//! split can be cached on disk ([`FeatureCache`]), keyed by the model's weights, the
//! benchmark, its data and the transform, so a rerun or a second probe does not recompute them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cappa_data::pipeline::{decode, to_tensor, DecodeLimits, EvalTransform, Normalize};
use cappa_data::{BadSample, Sample, SkipCounts};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, Tensor};

/// A stream of samples, good and bad, from any reader.
pub type SampleSource = Box<dyn Iterator<Item = Result<Sample, BadSample>> + Send>;

/// How images become model input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub transform: EvalTransform,
    pub normalize: Normalize,
}

/// What is kept of a good sample besides its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub key: String,
    pub captions: Vec<String>,
    /// The integer `label` of the sample's metadata, when it has one.
    pub label: Option<i64>,
}

/// What a split's stream read: samples seen and skipped by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    pub seen: u64,
    pub good: u64,
    pub skipped: SkipCounts,
    /// Seconds spent reading, decoding and running the model.
    pub seconds: f64,
}

/// Bad samples whose location is printed (the rest are only counted).
const SHOWN_BAD_SAMPLES: u64 = 5;

/// The crop box `[x, y, w, h]` in a sample's metadata (`"crop"`), as ARO's Visual Genome
/// items give it.
fn crop_box(meta: &Value) -> Option<[f64; 4]> {
    let values = meta.get("crop")?.as_array()?;
    let v: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
}

/// Decodes, crops (when the metadata says so) and transforms one sample.
fn prepare(sample: &Sample, spec: &ImageSpec) -> Result<image::RgbImage, BadSample> {
    let bad = |reason| BadSample {
        reason,
        location: sample.key.clone(),
        detail: "cannot be decoded".into(),
    };
    let mut image = decode(&sample.image, &DecodeLimits::default()).map_err(bad)?;
    if let Some([x, y, w, h]) = crop_box(&sample.meta) {
        let (width, height) = image.dimensions();
        let x0 = (x.max(0.0) as u32).min(width.saturating_sub(1));
        let y0 = (y.max(0.0) as u32).min(height.saturating_sub(1));
        let w = (w.max(1.0) as u32).min(width - x0).max(1);
        let h = (h.max(1.0) as u32).min(height - y0).max(1);
        image = image::imageops::crop_imm(&image, x0, y0, w, h).to_image();
    }
    Ok(spec.transform.apply(&image))
}

/// Reads `source` `batch` samples at a time; each batch's good images (B, 3, S, S), on the
/// CPU, go to `on_batch` with what is kept of them. Stops after `limit` good images.
/// `keep` may drop samples before they are decoded (for a per-class cap); dropped samples are
/// not counted. `label` names the progress bar; `total` is the expected sample count.
pub fn stream(
    source: SampleSource,
    spec: &ImageSpec,
    batch: usize,
    limit: Option<usize>,
    progress: &Progress,
    mut keep: impl FnMut(&Sample) -> bool,
    mut on_batch: impl FnMut(&Tensor, &[Kept]),
) -> SplitStats {
    let started = Instant::now();
    let mut stats = SplitStats::default();
    let bar = progress.bar();
    let mut source = source.peekable();
    let limit = limit.unwrap_or(usize::MAX);
    let mut good = 0usize;
    while good < limit && source.peek().is_some() {
        let mut chunk = Vec::with_capacity(batch);
        for item in source.by_ref() {
            if let Ok(sample) = &item {
                if !keep(sample) {
                    continue;
                }
            }
            chunk.push(item);
            if chunk.len() >= batch.min(limit - good) {
                break;
            }
        }
        let prepared: Vec<Result<(image::RgbImage, Kept), BadSample>> = chunk
            .into_par_iter()
            .map(|item| {
                let sample = item?;
                let image = prepare(&sample, spec)?;
                let label = sample.meta.get("label").and_then(Value::as_i64);
                Ok((
                    image,
                    Kept {
                        key: sample.key,
                        captions: sample.captions,
                        label,
                    },
                ))
            })
            .collect();
        let mut images = Vec::with_capacity(prepared.len());
        let mut kept = Vec::with_capacity(prepared.len());
        for item in prepared {
            stats.seen += 1;
            match item {
                Ok((image, k)) => {
                    images.push(image);
                    kept.push(k);
                }
                Err(bad) => {
                    if stats.skipped.total() < SHOWN_BAD_SAMPLES {
                        bar.suspend(|| eprintln!("{}: skipped {bad}", progress.label));
                    }
                    stats.skipped.add(bad.reason);
                }
            }
        }
        bar.inc(images.len() as u64);
        if images.is_empty() {
            continue;
        }
        good += images.len();
        stats.good += images.len() as u64;
        on_batch(&to_tensor(&images, spec.normalize), &kept);
    }
    bar.finish_and_clear();
    stats.seconds = started.elapsed().as_secs_f64();
    stats
}

/// A progress bar's label and expected length; drawn on stderr when it is a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    pub label: String,
    pub total: Option<u64>,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        Progress {
            label: label.into(),
            total,
        }
    }

    fn bar(&self) -> ProgressBar {
        let bar = match self.total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} images {per_sec} ETA {eta}",
                )
                .expect("a valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix} {spinner} {pos} images {per_sec}")
                    .expect("a valid template"),
            ),
        };
        bar.with_prefix(self.label.clone())
    }
}

/// A split's model outputs by name (each (N, …) on the CPU, N the good images, in stream
/// order) with what was kept of its samples.
#[derive(Debug)]
pub struct Encoded {
    pub outputs: BTreeMap<String, Tensor>,
    pub kept: Vec<Kept>,
    pub stats: SplitStats,
}

impl Encoded {
    /// The output `name`.
    ///
    /// # Panics
    /// If it was not computed.
    pub fn output(&self, name: &str) -> &Tensor {
        self.outputs
            .get(name)
            .unwrap_or_else(|| panic!("the output `{name}` was not computed"))
    }

    /// The labels of the kept samples (−1 where a sample had none).
    pub fn labels(&self) -> Vec<i64> {
        self.kept.iter().map(|k| k.label.unwrap_or(-1)).collect()
    }

    /// Streams `source` and computes, per batch, the outputs `compute` returns by name
    /// (concatenated over batches).
    pub fn compute(
        source: SampleSource,
        spec: &ImageSpec,
        batch: usize,
        limit: Option<usize>,
        progress: &Progress,
        keep: impl FnMut(&Sample) -> bool,
        mut compute: impl FnMut(&Tensor, &[Kept]) -> Vec<(String, Tensor)>,
    ) -> Encoded {
        let mut parts: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
        let mut kept = Vec::new();
        let stats = stream(source, spec, batch, limit, progress, keep, |images, k| {
            for (name, output) in compute(images, k) {
                parts
                    .entry(name)
                    .or_default()
                    .push(output.to_device(Device::Cpu));
            }
            kept.extend_from_slice(k);
        });
        let outputs = parts
            .into_iter()
            .map(|(name, parts)| (name, Tensor::cat(&parts, 0)))
            .collect();
        Encoded {
            outputs,
            kept,
            stats,
        }
    }
}

/// Caches [`Encoded`] splits on disk: `DIR/BENCHMARK.SPLIT.KEY.safetensors` (the outputs)
/// and `….json` (what was kept, the counts), where KEY hashes the model's weights, the
/// benchmark and split, the data's identity, the transform and the outputs' names. Files
/// are written atomically; an unreadable entry is recomputed.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
    /// Identifies the model's weights (e.g. the xxh3 digest of its safetensors file).
    pub model: String,
}

#[derive(Serialize, Deserialize)]
struct CacheIndex {
    kept: Vec<Kept>,
    stats: SplitStats,
    outputs: Vec<String>,
}

/// What identifies a cached split besides the model.
#[derive(Debug, Clone, Serialize)]
pub struct CacheKey<'a> {
    pub benchmark: &'a str,
    pub split: &'a str,
    /// The data: paths with their sizes and modification times, record counts, ….
    pub data: String,
    pub spec: ImageSpec,
    pub limit: Option<usize>,
    /// The outputs' names, and whatever decides them (a digest of the class texts, …).
    pub outputs: Vec<String>,
}

impl FeatureCache {
    fn paths(&self, key: &CacheKey<'_>) -> (PathBuf, PathBuf) {
        let text = serde_json::to_string(&(&self.model, key)).expect("keys serialise");
        let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
        let stem = format!("{}.{}.{hash}", key.benchmark, key.split);
        (
            self.dir.join(format!("{stem}.safetensors")),
            self.dir.join(format!("{stem}.json")),
        )
    }

    /// The cached split for `key`, if there is a readable one.
    pub fn load(&self, key: &CacheKey<'_>) -> Option<Encoded> {
        let (tensors, index) = self.paths(key);
        let index: CacheIndex = cappa_io::read_json(&index).ok()?;
        let outputs: BTreeMap<String, Tensor> = Tensor::read_safetensors(&tensors)
            .ok()?
            .into_iter()
            .collect();
        if index.outputs.iter().any(|name| !outputs.contains_key(name)) {
            return None;
        }
        Some(Encoded {
            outputs,
            kept: index.kept,
            stats: index.stats,
        })
    }

    /// Stores `encoded` for `key`; failures are reported on stderr and otherwise ignored
    /// (the cache only saves time).
    pub fn store(&self, key: &CacheKey<'_>, encoded: &Encoded) {
        let (tensors, index) = self.paths(key);
        let result = std::fs::create_dir_all(&self.dir)
            .map_err(|e| cappa_io::FileError::Io {
                path: self.dir.clone(),
                source: e,
            })
            .and_then(|()| {
                let named: Vec<(&str, &Tensor)> = encoded
                    .outputs
                    .iter()
                    .map(|(name, t)| (name.as_str(), t))
                    .collect();
                cappa_io::write_atomically_with(&tensors, |temp: &Path| {
                    Tensor::write_safetensors(&named, temp).map_err(|e| cappa_io::FileError::Io {
                        path: temp.to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })?;
                cappa_io::write_json(
                    &index,
                    &CacheIndex {
                        kept: encoded.kept.clone(),
                        stats: encoded.stats.clone(),
                        outputs: encoded.outputs.keys().cloned().collect(),
                    },
                )
            });
        if let Err(error) = result {
            eprintln!("note: the feature cache was not written: {error}");
        }
    }
}

/// The identity of files for a cache key: each path with its size and modification time.
pub fn files_identity<'a>(paths: impl IntoIterator<Item = &'a Path>) -> String {
    let mut text = String::new();
    for path in paths {
        let (size, modified) = std::fs::metadata(path)
            .map(|m| {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (m.len(), modified)
            })
            .unwrap_or((0, 0));
        text.push_str(&format!("{}:{size}:{modified};", path.display()));
    }
    text
}

/// Peak resident memory of this process so far, in bytes (Linux's `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
