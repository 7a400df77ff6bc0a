//! The `synth` writer: renders a training set as img2dataset/webdataset tar shards and the
//! held-out evaluation sets in the formats users already have (Karpathy JSON, ImageFolder,
//! SugarCrepe JSON, VQA v2 JSON), so the same readers serve synthetic and real data.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    CompositionKind, CompositionalItem, LabelSet, SceneConfig, SceneError, SceneWorld, Split,
    VqaItem,
};

/// Encoding of the written images. Evaluation images are always PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpg,
}

impl ImageFormat {
    /// The file extension: "png" or "jpg".
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpg => "jpg",
        }
    }
}

/// What `write_synth` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub world: SceneConfig,
    pub seed: u64,
    /// Training samples (tar shards).
    pub train_samples: u64,
    /// Held-out evaluation images (all evaluation sets are built from these).
    pub eval_samples: u64,
    /// Samples per tar shard (img2dataset's `number_sample_per_shard`).
    pub shard_size: u64,
    pub image_format: ImageFormat,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            world: SceneConfig::default(),
            seed: 0,
            train_samples: 10_000,
            eval_samples: 500,
            shard_size: 10_000,
            image_format: ImageFormat::Jpg,
        }
    }
}

impl SynthConfig {
    /// Checks the world config and the sizes; the error names the offending field.
    pub fn validate(&self) -> Result<(), SceneError> {
        self.world.validate()?;
        if self.shard_size == 0 {
            return Err(SceneError::InvalidConfig {
                field: "shard_size",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// What was written, and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthReport {
    pub out_dir: PathBuf,
    /// The tar shards, in order (each has a `_stats.json` beside it).
    pub shards: Vec<PathBuf>,
    pub train_samples: u64,
    pub eval_images: u64,
    /// `eval/karpathy.json`.
    pub karpathy: PathBuf,
    /// Number of classes per label set (`eval/classify/<name>`).
    pub classify: BTreeMap<String, usize>,
    /// Number of items per compositional kind (`eval/compositional/<name>.json`).
    pub compositional: BTreeMap<String, usize>,
    /// Number of VQA questions (`eval/vqa/questions.json`).
    pub vqa_questions: usize,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SceneError + '_ {
    move |source| SceneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The temporary name a file is written under before it is renamed into place.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` via a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SceneError> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), SceneError> {
    let bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    write_atomic(path, &bytes)
}

fn create_dir(path: &Path) -> Result<(), SceneError> {
    fs::create_dir_all(path).map_err(io_error(path))
}

fn encode(
    image: &image::RgbImage,
    format: ImageFormat,
    path: &Path,
) -> Result<Vec<u8>, SceneError> {
    let mut bytes = Cursor::new(Vec::new());
    let result = match format {
        ImageFormat::Png => image.write_to(&mut bytes, image::ImageFormat::Png),
        ImageFormat::Jpg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95).encode_image(image)
        }
    };
    result.map_err(|source| SceneError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes.into_inner())
}

/// Number of decimal digits of `n` (at least 1).
fn digits(n: u64) -> usize {
    n.max(1).ilog10() as usize + 1
}

/// Karpathy-style tokens: lower-cased, punctuation removed, split on white space.
fn tokens(caption: &str) -> Vec<String> {
    caption
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Appends one regular file member to a tar archive.
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    tar_path: &Path,
) -> Result<(), SceneError> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, data)
        .map_err(io_error(tar_path))
}

/// Writes the training shards and the evaluation sets under `out_dir` (created if missing):
///
/// - `shards/00000.tar`, … in img2dataset layout (`KEY.jpg|png`, `KEY.txt`, `KEY.json`, keys
///   zero-padded as img2dataset does) and `shards/00000_stats.json` beside each tar;
/// - `eval/images/NNNNNN.png`, `eval/karpathy.json` (split "test");
/// - `eval/classify/<label_set>/<class_name>/NNNNNN.png` plus `classes.json` (zero-shot names
///   in label order; every class has a directory, even an empty one);
/// - `eval/compositional/<kind>.json` (SugarCrepe: `{id: {filename, caption,
///   negative_caption}}`, filenames relative to `eval/images`);
/// - `eval/vqa/questions.json` and `eval/vqa/annotations.json` (VQA v2, ten identical answers).
///
/// Every file is written to a temporary name and renamed into place.
pub fn write_synth(out_dir: &Path, config: &SynthConfig) -> Result<SynthReport, SceneError> {
    config.validate()?;
    let train = SceneWorld::with_split(config.world.clone(), config.seed, Split::Train)?;
    let eval = SceneWorld::with_split(config.world.clone(), config.seed, Split::Eval)?;
    let shard_dir = out_dir.join("shards");
    create_dir(&shard_dir)?;

    let num_shards = config.train_samples.div_ceil(config.shard_size);
    let shard_width = digits(num_shards.saturating_sub(1)).max(5);
    let key_width = digits(config.shard_size - 1);
    let ext = config.image_format.extension();
    let size = config.world.image_size;
    let mut shards = Vec::with_capacity(num_shards as usize);
    for shard in 0..num_shards {
        let start_time = now_seconds();
        let clock = Instant::now();
        let first = shard * config.shard_size;
        let last = (first + config.shard_size).min(config.train_samples);
        let tar_path = shard_dir.join(format!("{shard:0shard_width$}.tar"));
        let members: Vec<(String, Vec<u8>, String, serde_json::Value)> = (first..last)
            .into_par_iter()
            .map(|index| {
                let key = format!("{shard:0shard_width$}{:0key_width$}", index - first);
                let scene = train.scene(index);
                let image = train.render(&scene);
                let bytes = encode(&image, config.image_format, &tar_path)?;
                let caption = train.training_caption(&scene, index);
                let json = serde_json::json!({
                    "key": key,
                    "caption": caption,
                    "url": format!("synth://{}/train/{index}", config.seed),
                    "status": "success",
                    "error_message": null,
                    "width": size,
                    "height": size,
                    "original_width": size,
                    "original_height": size,
                    "exif": "{}",
                    "index": index,
                    "scene": scene.to_json(),
                });
                Ok((key, bytes, caption, json))
            })
            .collect::<Result<_, SceneError>>()?;
        let tmp = temp_path(&tar_path);
        let file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        for (key, bytes, caption, json) in &members {
            append(&mut builder, &format!("{key}.{ext}"), bytes, &tar_path)?;
            append(
                &mut builder,
                &format!("{key}.txt"),
                caption.as_bytes(),
                &tar_path,
            )?;
            let json = serde_json::to_vec(json).expect("JSON values serialise");
            append(&mut builder, &format!("{key}.json"), &json, &tar_path)?;
        }
        let mut writer = builder.into_inner().map_err(io_error(&tmp))?;
        writer.flush().map_err(io_error(&tmp))?;
        drop(writer);
        fs::rename(&tmp, &tar_path).map_err(io_error(&tar_path))?;
        let count = members.len();
        let stats = serde_json::json!({
            "count": count,
            "successes": count,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": clock.elapsed().as_secs_f64(),
            "start_time": start_time,
            "end_time": now_seconds(),
            "status_dict": {"success": count},
        });
        write_json(
            &shard_dir.join(format!("{shard:0shard_width$}_stats.json")),
            &stats,
        )?;
        shards.push(tar_path);
    }

    let eval_dir = out_dir.join("eval");
    let image_dir = eval_dir.join("images");
    create_dir(&image_dir)?;
    struct EvalItem {
        filename: String,
        png: Vec<u8>,
        captions: Vec<String>,
        labels: Vec<usize>,
        compositional: Vec<Option<CompositionalItem>>,
        vqa: Vec<VqaItem>,
    }
    let items: Vec<EvalItem> = (0..config.eval_samples)
        .into_par_iter()
        .map(|index| {
            let filename = format!("{index:06}.png");
            let scene = eval.scene(index);
            let png = encode(
                &eval.render(&scene),
                ImageFormat::Png,
                &image_dir.join(&filename),
            )?;
            Ok(EvalItem {
                png,
                captions: eval.captions(&scene, index),
                labels: LabelSet::ALL
                    .iter()
                    .map(|&l| eval.label(&scene, l))
                    .collect(),
                compositional: CompositionKind::ALL
                    .iter()
                    .map(|&k| eval.compositional(&scene, index, k))
                    .collect(),
                vqa: eval.vqa(&scene, index),
                filename,
            })
        })
        .collect::<Result<_, SceneError>>()?;
    for item in &items {
        write_atomic(&image_dir.join(&item.filename), &item.png)?;
    }

    let mut sentence_id = 0u64;
    let karpathy_images: Vec<serde_json::Value> = items
        .iter()
        .enumerate()
        .map(|(imgid, item)| {
            let sentences: Vec<serde_json::Value> = item
                .captions
                .iter()
                .map(|raw| {
                    sentence_id += 1;
                    serde_json::json!({
                        "raw": raw, "tokens": tokens(raw), "imgid": imgid, "sentid": sentence_id - 1
                    })
                })
                .collect();
            let first = sentence_id - sentences.len() as u64;
            serde_json::json!({
                "filename": item.filename,
                "filepath": "images",
                "imgid": imgid,
                "split": "test",
                "sentids": (first..sentence_id).collect::<Vec<_>>(),
                "sentences": sentences,
            })
        })
        .collect();
    let karpathy = eval_dir.join("karpathy.json");
    write_json(
        &karpathy,
        &serde_json::json!({"dataset": "synth", "images": karpathy_images}),
    )?;

    let mut classify = BTreeMap::new();
    for (l, label_set) in LabelSet::ALL.iter().enumerate() {
        let root = eval_dir.join("classify").join(label_set.name());
        let names = eval.class_names(*label_set);
        let dirs: Vec<PathBuf> = names
            .iter()
            .map(|n| root.join(n.replace(' ', "_")))
            .collect();
        for dir in &dirs {
            create_dir(dir)?;
        }
        for item in &items {
            write_atomic(&dirs[item.labels[l]].join(&item.filename), &item.png)?;
        }
        write_json(&root.join("classes.json"), &serde_json::json!(names))?;
        classify.insert(label_set.name().to_string(), names.len());
    }

    let comp_dir = eval_dir.join("compositional");
    create_dir(&comp_dir)?;
    let mut compositional = BTreeMap::new();
    for (k, kind) in CompositionKind::ALL.iter().enumerate() {
        let mut map = serde_json::Map::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(c) = &item.compositional[k] {
                map.insert(
                    index.to_string(),
                    serde_json::json!({
                        "filename": item.filename,
                        "caption": c.caption,
                        "negative_caption": c.negative_caption,
                    }),
                );
            }
        }
        compositional.insert(kind.name().to_string(), map.len());
        write_json(
            &comp_dir.join(format!("{}.json", kind.name())),
            &serde_json::Value::Object(map),
        )?;
    }

    let vqa_dir = eval_dir.join("vqa");
    create_dir(&vqa_dir)?;
    let mut questions = Vec::new();
    let mut annotations = Vec::new();
    for (image_id, item) in items.iter().enumerate() {
        for (q, vqa) in item.vqa.iter().enumerate() {
            let question_id = image_id as u64 * 10 + q as u64;
            questions.push(serde_json::json!({
                "image_id": image_id, "question": vqa.question, "question_id": question_id
            }));
            let answers: Vec<serde_json::Value> = (1..=10)
                .map(|answer_id| {
                    serde_json::json!({
                        "answer": vqa.answer, "answer_confidence": "yes", "answer_id": answer_id
                    })
                })
                .collect();
            annotations.push(serde_json::json!({
                "question_id": question_id,
                "image_id": image_id,
                "question_type": vqa.kind.name(),
                "answer_type": vqa.kind.answer_type(),
                "answers": answers,
                "multiple_choice_answer": vqa.answer,
            }));
        }
    }
    let vqa_questions = questions.len();
    write_json(
        &vqa_dir.join("questions.json"),
        &serde_json::json!({
            "task_type": "Open-Ended", "data_type": "synth", "data_subtype": "eval",
            "questions": questions,
        }),
    )?;
    write_json(
        &vqa_dir.join("annotations.json"),
        &serde_json::json!({"data_type": "synth", "data_subtype": "eval", "annotations": annotations}),
    )?;

    Ok(SynthReport {
        out_dir: out_dir.to_path_buf(),
        shards,
        train_samples: config.train_samples,
        eval_images: config.eval_samples,
        karpathy,
        classify,
        compositional,
        vqa_questions,
    })
}
