//! VQA v2 transfer: a small decoder trained on the frozen encoder's token sequences of train
//! images with their questions (target: the most common human answer), then answering val
//! questions greedily, scored with the standard VQA accuracy (the mean over the ten
//! leave-one-annotator-out subsets of min(#matching answers / 3, 1), after the official answer
//! normalisation; [`cappa_data::readers::vqa_accuracy`]).

use std::collections::BTreeMap;
use std::path::Path;

use cappa_data::readers::{coco_image_file_name, read_vqa, vqa_accuracy, FileRecord, VqaItem};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::source::SplitSource;
use super::{encode, put, Context, OpenError};
use crate::images::SplitStats;
use crate::suite::{Benchmark, Vqa, VqaSplit};
use crate::transfer::{
    answer, prefix_tokens, train_decoder, TextExample, TransferConfig, MAX_ANSWER_TOKENS,
    MIN_TRANSFER_SEQ_LEN,
};

/// Most tokens a generated VQA v2 answer may have (its answers are a few words).
const MAX_VQA_ANSWER_TOKENS: usize = 2 * MAX_ANSWER_TOKENS;

/// Questions grouped by image id, ascending.
type ByImage = Vec<(u64, Vec<VqaItem>)>;

#[derive(Debug)]
pub(crate) struct OpenedVqa {
    /// Questions of the first `train_images` / `val_images` images, by image id.
    train: ByImage,
    val: ByImage,
    train_source: SplitSource,
    val_source: SplitSource,
    spec: Vqa,
}

/// The results of VQA v2 transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaResults {
    /// Mean VQA accuracy over the val questions answered.
    pub accuracy: f64,
    pub val_questions: usize,
    pub train_questions: usize,
    pub final_loss: f64,
}

impl VqaResults {
    pub(crate) fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        put(&mut m, "vqa", "accuracy", self.accuracy);
        m
    }
}

/// The questions of a split, grouped by image (ascending id), the first `images` images,
/// and the image files they need.
fn split(split: &VqaSplit, images: usize) -> Result<(ByImage, SplitSource), OpenError> {
    let items = read_vqa(&split.questions, Some(&split.annotations))?;
    if let Some(item) = items.iter().find(|i| i.answers.is_empty()) {
        return Err(OpenError::Invalid(format!(
            "{}: question {} has no answers: VQA transfer needs annotated questions (the \
             train and val splits, not test-dev)",
            split.annotations.display(),
            item.question_id
        )));
    }
    let mut by_image: BTreeMap<u64, Vec<VqaItem>> = BTreeMap::new();
    for item in items {
        by_image.entry(item.image_id).or_default().push(item);
    }
    let grouped: ByImage = by_image.into_iter().take(images).collect();
    let prefix = split.prefix();
    let records = grouped
        .iter()
        .map(|(id, _)| {
            let path = split.images.join(coco_image_file_name(&prefix, *id));
            FileRecord {
                key: id.to_string(),
                path,
                captions: vec![String::from("-")],
                meta: serde_json::json!({ "image_id": id }),
            }
        })
        .collect();
    let index = vec![split.questions.clone(), split.annotations.clone()];
    Ok((grouped, SplitSource::Files { records, index }))
}

pub(crate) fn open(spec: &Vqa) -> Result<OpenedVqa, OpenError> {
    let (train, train_source) = split(&spec.train, spec.train_images)?;
    let (val, val_source) = split(&spec.val, spec.val_images)?;
    for (name, grouped, s) in [("train", &train, &spec.train), ("val", &val, &spec.val)] {
        let first = grouped.first().map(|(id, _)| *id);
        if let Some(id) = first {
            let path = s.images.join(coco_image_file_name(&s.prefix(), id));
            if !Path::new(&path).exists() {
                return Err(OpenError::Invalid(format!(
                    "{name}: the image of question image id {id} is not at {}: check \
                     `{name}.images` and `{name}.image_prefix` (VQA v2 images are COCO 2014's, \
                     e.g. `COCO_val2014_000000000042.jpg`)",
                    path.display()
                )));
            }
        }
    }
    Ok(OpenedVqa {
        train,
        val,
        train_source,
        val_source,
        spec: spec.clone(),
    })
}

pub(crate) fn run(
    context: &Context<'_>,
    benchmark: &Benchmark,
    data: &OpenedVqa,
    splits: &mut BTreeMap<String, SplitStats>,
) -> VqaResults {
    let encoder = context.model.encoder();
    let device = encoder.device();
    let tokenizer = context.tokenizer;
    let config = TransferConfig {
        steps: data.spec.steps,
        seq_len: context.seq_len.max(MIN_TRANSFER_SEQ_LEN),
        ..TransferConfig::default()
    };
    let questions_of: BTreeMap<String, &Vec<VqaItem>> = data
        .train
        .iter()
        .map(|(id, items)| (id.to_string(), items))
        .collect();
    // Train: frozen tokens of the train images, one example per question.
    let mut parts: Vec<Tensor> = Vec::new();
    let mut examples = Vec::new();
    let train = encode(
        context,
        benchmark,
        "train",
        &data.train_source,
        None,
        &[],
        "",
        |_| true,
        |images, kept| {
            let offset: usize = parts.iter().map(|t| t.size()[0] as usize).sum();
            for (k, sample) in kept.iter().enumerate() {
                for item in questions_of[&sample.key] {
                    examples.push(TextExample {
                        image: offset + k,
                        text: item.question.clone(),
                        answer: Some(item.multiple_choice_answer.clone()),
                    });
                }
            }
            parts.push(
                encoder
                    .image_tokens(&images.to_device(device))
                    .to_device(Device::Cpu),
            );
            Vec::new()
        },
    );
    splits.insert("train".into(), train.stats);
    let train_questions = examples.len();
    let final_loss;
    let mut total = 0.0;
    let mut answered = 0usize;
    if examples.is_empty() {
        eprintln!(
            "{}: no train image could be read; VQA not evaluated",
            benchmark.name
        );
        final_loss = f64::NAN;
    } else {
        let tokens = Tensor::cat(&parts, 0);
        drop(parts);
        let trained = train_decoder(&tokens, tokenizer, &examples, &config, device);
        drop(tokens);
        final_loss = trained.final_loss;
        let val_of: BTreeMap<String, &Vec<VqaItem>> = data
            .val
            .iter()
            .map(|(id, items)| (id.to_string(), items))
            .collect();
        let val = encode(
            context,
            benchmark,
            "val",
            &data.val_source,
            None,
            &[],
            "",
            |_| true,
            |images, kept| {
                let memory = encoder.image_tokens(&images.to_device(device));
                for (k, sample) in kept.iter().enumerate() {
                    let row = memory.narrow(0, k as i64, 1);
                    for item in val_of[&sample.key] {
                        let prefix = prefix_tokens(tokenizer, &item.question, config.seq_len);
                        let predicted = answer(
                            &trained.decoder,
                            &row,
                            &prefix,
                            MAX_VQA_ANSWER_TOKENS,
                            tokenizer,
                        );
                        total += vqa_accuracy(&predicted, &item.answers);
                        answered += 1;
                    }
                }
                Vec::new()
            },
        );
        splits.insert("val".into(), val.stats);
    }
    VqaResults {
        accuracy: total / answered.max(1) as f64,
        val_questions: answered,
        train_questions,
        final_loss,
    }
}
