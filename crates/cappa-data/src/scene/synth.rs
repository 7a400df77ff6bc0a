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

/// Writes `value` as pretty JSON atomically. Unlike `cappa_io::write_json` no final newline
/// is added, so that synth's files stay byte for byte what they have always been.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), SceneError> {
    let bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    Ok(cappa_io::write_atomically(path, &bytes)?)
}

/// Writes one evaluation image. Plainly, not atomically: thousands of small files, each
/// fsynced twice, would double synth's time, and an interrupted synth is rerun as a whole.
fn write_image(path: &Path, png: &[u8]) -> Result<(), SceneError> {
    Ok(fs::write(path, png).map_err(cappa_io::io_error(path))?)
}

fn create_dir(path: &Path) -> Result<(), SceneError> {
    Ok(fs::create_dir_all(path).map_err(cappa_io::io_error(path))?)
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
/// Every file is written atomically (a temporary name, then a rename).
pub fn write_synth(out_dir: &Path, config: &SynthConfig) -> Result<SynthReport, SceneError> {
    config.validate()?;
    let train = SceneWorld::with_split(config.world.clone(), config.seed, Split::Train)?;
    let eval = SceneWorld::with_split(config.world.clone(), config.seed, Split::Eval)?;
    let shards = write_shards(&train, config, &out_dir.join("shards"))?;

    let eval_dir = out_dir.join("eval");
    let items = write_eval_images(&eval, config.eval_samples, &eval_dir.join("images"))?;
    let karpathy = eval_dir.join("karpathy.json");
    write_json(&karpathy, &karpathy_json(&items))?;
    let classify = write_classify(&eval, &items, &eval_dir.join("classify"))?;
    let compositional = write_compositional(&items, &eval_dir.join("compositional"))?;
    let vqa_questions = write_vqa(&items, &eval_dir.join("vqa"))?;
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

/// How the training shards are named: shard numbers zero-padded to at least five digits and
/// keys made of the shard number and the zero-padded position in the shard, as img2dataset
/// names them.
struct ShardLayout<'a> {
    dir: &'a Path,
    shard_width: usize,
    key_width: usize,
}

impl ShardLayout<'_> {
    /// The shard's name without extension: `00000`.
    fn name(&self, shard: u64) -> String {
        format!("{shard:0width$}", width = self.shard_width)
    }

    /// The key of the sample at `offset` in `shard`: `000000000`.
    fn key(&self, shard: u64, offset: u64) -> String {
        format!(
            "{}{offset:0width$}",
            self.name(shard),
            width = self.key_width
        )
    }
}

/// One training sample's members: the encoded image, the caption (`.txt`) and the
/// img2dataset metadata (`.json`).
struct TrainMember {
    key: String,
    image: Vec<u8>,
    caption: String,
    json: serde_json::Value,
}

/// Writes `shards/` (created even when there are no training samples).
fn write_shards(
    train: &SceneWorld,
    config: &SynthConfig,
    dir: &Path,
) -> Result<Vec<PathBuf>, SceneError> {
    create_dir(dir)?;
    let num_shards = config.train_samples.div_ceil(config.shard_size);
    let layout = ShardLayout {
        dir,
        shard_width: digits(num_shards.saturating_sub(1)).max(5),
        key_width: digits(config.shard_size - 1),
    };
    (0..num_shards)
        .map(|shard| write_shard(train, config, &layout, shard))
        .collect()
}

/// Renders one shard's samples in parallel, then writes the tar and its `_stats.json`.
fn write_shard(
    train: &SceneWorld,
    config: &SynthConfig,
    layout: &ShardLayout<'_>,
    shard: u64,
) -> Result<PathBuf, SceneError> {
    let start_time = now_seconds();
    let clock = Instant::now();
    let first = shard * config.shard_size;
    let last = (first + config.shard_size).min(config.train_samples);
    let name = layout.name(shard);
    let tar_path = layout.dir.join(format!("{name}.tar"));
    let members: Vec<TrainMember> = (first..last)
        .into_par_iter()
        .map(|index| {
            let key = layout.key(shard, index - first);
            train_member(train, config, index, key, &tar_path)
        })
        .collect::<Result<_, SceneError>>()?;
    write_tar(&tar_path, &members, config.image_format)?;
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
    write_json(&layout.dir.join(format!("{name}_stats.json")), &stats)?;
    Ok(tar_path)
}

/// Renders and encodes training sample `index`, with its training caption and metadata.
fn train_member(
    train: &SceneWorld,
    config: &SynthConfig,
    index: u64,
    key: String,
    tar_path: &Path,
) -> Result<TrainMember, SceneError> {
    let size = config.world.image_size;
    let scene = train.scene(index);
    let image = train.render(&scene);
    let bytes = encode(&image, config.image_format, tar_path)?;
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
    Ok(TrainMember {
        key,
        image: bytes,
        caption,
        json,
    })
}

/// Writes the members as `KEY.ext`, `KEY.txt`, `KEY.json` of an uncompressed tar.
fn write_tar(
    tar_path: &Path,
    members: &[TrainMember],
    format: ImageFormat,
) -> Result<(), SceneError> {
    let ext = format.extension();
    cappa_io::write_atomically_with(tar_path, |temp| {
        let file = fs::File::create(temp).map_err(cappa_io::io_error(temp))?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        for member in members {
            let key = &member.key;
            append(
                &mut builder,
                &format!("{key}.{ext}"),
                &member.image,
                tar_path,
            )?;
            let caption = member.caption.as_bytes();
            append(&mut builder, &format!("{key}.txt"), caption, tar_path)?;
            let json = serde_json::to_vec(&member.json).expect("JSON values serialise");
            append(&mut builder, &format!("{key}.json"), &json, tar_path)?;
        }
        let mut writer = builder.into_inner().map_err(cappa_io::io_error(temp))?;
        writer.flush().map_err(cappa_io::io_error(temp))?;
        Ok(())
    })
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
    Ok(builder
        .append_data(&mut header, name, data)
        .map_err(cappa_io::io_error(tar_path))?)
}

/// One held-out image with everything the evaluation sets say about it.
struct EvalItem {
    filename: String,
    png: Vec<u8>,
    captions: Vec<String>,
    /// The class index in each of [`LabelSet::ALL`].
    labels: Vec<usize>,
    /// The item of each of [`CompositionKind::ALL`], where the scene allows one.
    compositional: Vec<Option<CompositionalItem>>,
    vqa: Vec<VqaItem>,
}

/// Renders the evaluation images in parallel and writes them to `eval/images/`.
fn write_eval_images(
    eval: &SceneWorld,
    count: u64,
    image_dir: &Path,
) -> Result<Vec<EvalItem>, SceneError> {
    create_dir(image_dir)?;
    let items: Vec<EvalItem> = (0..count)
        .into_par_iter()
        .map(|index| eval_item(eval, index, image_dir))
        .collect::<Result<_, SceneError>>()?;
    for item in &items {
        write_image(&image_dir.join(&item.filename), &item.png)?;
    }
    Ok(items)
}

fn eval_item(eval: &SceneWorld, index: u64, image_dir: &Path) -> Result<EvalItem, SceneError> {
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
}

/// `karpathy.json`: every image in split "test" with its five reference sentences, sentence
/// ids counted across images.
fn karpathy_json(items: &[EvalItem]) -> serde_json::Value {
    let mut sentence_id = 0u64;
    let images: Vec<serde_json::Value> = items
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
    serde_json::json!({"dataset": "synth", "images": images})
}

/// Writes `classify/<label_set>/<class>/` image folders and each label set's `classes.json`;
/// returns the number of classes per label set.
fn write_classify(
    eval: &SceneWorld,
    items: &[EvalItem],
    classify_dir: &Path,
) -> Result<BTreeMap<String, usize>, SceneError> {
    let mut classify = BTreeMap::new();
    for (l, label_set) in LabelSet::ALL.iter().enumerate() {
        let root = classify_dir.join(label_set.name());
        let names = eval.class_names(*label_set);
        let dirs: Vec<PathBuf> = names
            .iter()
            .map(|n| root.join(n.replace(' ', "_")))
            .collect();
        for dir in &dirs {
            create_dir(dir)?;
        }
        for item in items {
            write_image(&dirs[item.labels[l]].join(&item.filename), &item.png)?;
        }
        write_json(&root.join("classes.json"), &serde_json::json!(names))?;
        classify.insert(label_set.name().to_string(), names.len());
    }
    Ok(classify)
}

/// Writes one SugarCrepe-style `<kind>.json` per composition kind; returns the number of
/// items per kind.
fn write_compositional(
    items: &[EvalItem],
    dir: &Path,
) -> Result<BTreeMap<String, usize>, SceneError> {
    create_dir(dir)?;
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
            &dir.join(format!("{}.json", kind.name())),
            &serde_json::Value::Object(map),
        )?;
    }
    Ok(compositional)
}

/// Writes VQA v2's `questions.json` and `annotations.json` (question ids `10 × image + q`);
/// returns the number of questions.
fn write_vqa(items: &[EvalItem], dir: &Path) -> Result<usize, SceneError> {
    create_dir(dir)?;
    let mut questions = Vec::new();
    let mut annotations = Vec::new();
    for (image_id, item) in items.iter().enumerate() {
        for (q, vqa) in item.vqa.iter().enumerate() {
            let question_id = image_id as u64 * 10 + q as u64;
            questions.push(serde_json::json!({
                "image_id": image_id, "question": vqa.question, "question_id": question_id
            }));
            annotations.push(vqa_annotation(image_id, question_id, vqa));
        }
    }
    let count = questions.len();
    write_json(
        &dir.join("questions.json"),
        &serde_json::json!({
            "task_type": "Open-Ended", "data_type": "synth", "data_subtype": "eval",
            "questions": questions,
        }),
    )?;
    write_json(
        &dir.join("annotations.json"),
        &serde_json::json!({"data_type": "synth", "data_subtype": "eval", "annotations": annotations}),
    )?;
    Ok(count)
}

/// A VQA v2 annotation whose ten answers all are the correct one.
fn vqa_annotation(image_id: usize, question_id: u64, vqa: &VqaItem) -> serde_json::Value {
    let answers: Vec<serde_json::Value> = (1..=10)
        .map(|answer_id| {
            serde_json::json!({
                "answer": vqa.answer, "answer_confidence": "yes", "answer_id": answer_id
            })
        })
        .collect();
    serde_json::json!({
        "question_id": question_id,
        "image_id": image_id,
        "question_type": vqa.kind.name(),
        "answer_type": vqa.kind.answer_type(),
        "answers": answers,
        "multiple_choice_answer": vqa.answer,
    })
}
