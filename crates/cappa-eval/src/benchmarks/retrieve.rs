//! Retrieval and captioning benchmarks: Karpathy splits, COCO captions files and
//! CLIP_benchmark's retrieval layout. Recall@1/5/10 both ways by CLIP_benchmark's definition
//! (an image query counts when any of its captions ranks within k; every caption is a text
//! query); captioners by likelihood only when asked. Captioners caption the test images
//! (greedy, and beam); the frozen-encoder transfer decoder captions them for every encoder.

use std::collections::BTreeMap;

use cappa_data::readers::{read_coco, read_karpathy, ClipBenchmark, ClipBenchmarkKind, Restval};
use cappa_models::GenerateConfig;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::source::SplitSource;
use super::{encode, put, BenchmarkError, Context, OpenError};
use crate::caption_metrics::{score_captions, CaptionItem, CaptionScores};
use crate::images::SplitStats;
use crate::model::ScoreKind;
use crate::report::{BEAM_LENGTH_PENALTY, SAMPLE_CAPTIONS};
use crate::scoring::{likelihood_images_per_batch, prepare_texts, tokens};
use crate::suite::{Benchmark, Retrieval, RetrievalData};
use crate::tasks::{flatten_captions, recall_from_similarity, RetrievalScores};
use crate::transfer::{train_decoder, TextExample, TransferConfig, MIN_TRANSFER_SEQ_LEN};

#[derive(Debug)]
pub(crate) struct OpenedRetrieval {
    test: SplitSource,
    train: Option<SplitSource>,
    spec: Retrieval,
}

/// The results of a retrieval benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalResults {
    pub images: usize,
    pub texts: usize,
    pub retrieval: Option<RetrievalScores>,
    /// Why retrieval did not run (captioners not asked to score by likelihood, or above the
    /// pair limit).
    pub retrieval_skipped: Option<String>,
    pub captioning_greedy: Option<CaptionScores>,
    pub captioning_beam: Option<CaptionScores>,
    /// Captions of the frozen-encoder transfer decoder.
    pub transfer_captioning: Option<CaptionScores>,
    pub transfer_final_loss: Option<f64>,
    /// The first greedy (or transfer) captions, for a look.
    pub sample_captions: Vec<String>,
}

impl RetrievalResults {
    pub(crate) fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(r) = &self.retrieval {
            for (prefix, recall) in [("i2t", &r.image_to_text), ("t2i", &r.text_to_image)] {
                put(&mut m, prefix, "r1", recall.r1);
                put(&mut m, prefix, "r5", recall.r5);
                put(&mut m, prefix, "r10", recall.r10);
            }
        }
        for (prefix, scores) in [
            ("captioning_greedy", &self.captioning_greedy),
            ("captioning_beam", &self.captioning_beam),
            ("transfer_captioning", &self.transfer_captioning),
        ] {
            if let Some(s) = scores {
                put(&mut m, prefix, "bleu_4", s.bleu_4);
                put(&mut m, prefix, "rouge_l", s.rouge_l);
                put(&mut m, prefix, "cider_d", s.cider_d);
            }
        }
        m
    }
}

fn karpathy(
    annotations: &std::path::Path,
    images: &std::path::Path,
    split: cappa_data::readers::KarpathySplit,
) -> Result<SplitSource, OpenError> {
    let records = read_karpathy(annotations, images, split, Restval::AsTrain)?;
    if records.is_empty() {
        return Err(OpenError::Invalid(format!(
            "{} has no image in the `{}` split: give the Karpathy file of the dataset (its \
             images carry `\"split\": \"train\" | \"val\" | \"test\" | \"restval\"`) or \
             another `split`",
            annotations.display(),
            split.as_str()
        )));
    }
    Ok(SplitSource::Files {
        records,
        index: vec![annotations.to_path_buf()],
    })
}

fn coco(annotations: &std::path::Path, images: &std::path::Path) -> Result<SplitSource, OpenError> {
    let records = read_coco(annotations, images)?;
    if records.is_empty() {
        return Err(OpenError::Invalid(format!(
            "{} lists no image",
            annotations.display()
        )));
    }
    Ok(SplitSource::Files {
        records,
        index: vec![annotations.to_path_buf()],
    })
}

fn clip_benchmark(root: &std::path::Path, split: &str) -> Result<SplitSource, OpenError> {
    let opened = ClipBenchmark::open(root, split)?;
    if opened.kind != ClipBenchmarkKind::Retrieval {
        return Err(OpenError::Invalid(format!(
            "{} does not say `retrieval` (a classification dataset?): CLIP_benchmark's \
             retrieval layout has `dataset_type.txt` = `retrieval` and `KEY.txt` captions",
            root.join("dataset_type.txt").display()
        )));
    }
    Ok(SplitSource::Shards {
        shards: opened.shards,
        text: cappa_data::readers::TextMembers::CaptionLines,
    })
}

pub(crate) fn open(_name: &str, spec: &Retrieval) -> Result<OpenedRetrieval, OpenError> {
    let want_train = spec.transfer.is_some();
    let (test, train) = match &spec.data {
        RetrievalData::Karpathy {
            annotations,
            images,
            split,
            train_split,
        } => {
            let test = karpathy(annotations, images, *split)?;
            let train = match (want_train, train_split) {
                (true, Some(s)) => Some(karpathy(annotations, images, *s)?),
                _ => None,
            };
            (test, train)
        }
        RetrievalData::Coco {
            annotations,
            images,
            train_annotations,
            train_images,
        } => {
            let test = coco(annotations, images)?;
            let train = match (want_train, train_annotations) {
                (true, Some(a)) => Some(coco(a, train_images.as_deref().unwrap_or(images))?),
                _ => None,
            };
            (test, train)
        }
        RetrievalData::ClipBenchmark {
            root,
            split,
            train_split,
        } => {
            let test = clip_benchmark(root, split)?;
            let train = match (want_train, train_split) {
                (true, Some(s)) => Some(clip_benchmark(root, s)?),
                _ => None,
            };
            (test, train)
        }
    };
    if want_train && train.is_none() {
        return Err(OpenError::Invalid(
            "`transfer` trains on a train split: give `data.train_split` (Karpathy, \
             CLIP_benchmark) or `data.train_annotations` (COCO)"
                .into(),
        ));
    }
    Ok(OpenedRetrieval {
        test,
        train,
        spec: spec.clone(),
    })
}

const EMBEDDING: &str = "embedding";

pub(crate) fn run(
    context: &Context<'_>,
    benchmark: &Benchmark,
    data: &OpenedRetrieval,
    splits: &mut BTreeMap<String, SplitStats>,
) -> Result<RetrievalResults, BenchmarkError> {
    let scorer = context.model.scorer();
    let encoder = context.model.encoder();
    let device = encoder.device();
    let spec = &data.spec;
    let captioner = context.model.captioner();
    let likelihood = scorer.score_kind() == ScoreKind::LogLikelihood;
    let transfer_config = spec.transfer.map(|t| TransferConfig {
        steps: t.steps,
        seq_len: context.seq_len.max(MIN_TRANSFER_SEQ_LEN),
        ..TransferConfig::default()
    });
    // The transfer decoder trains first, on the train split's frozen tokens.
    let transfer = match (&data.train, spec.transfer, &transfer_config) {
        (Some(train), Some(t), Some(config)) => {
            let mut token_parts = Vec::new();
            let mut examples = Vec::new();
            let encoded = encode(
                context,
                benchmark,
                "train",
                train,
                Some(t.train_images),
                &[],
                "",
                |_| true,
                |images, kept| {
                    let offset: usize = token_parts
                        .iter()
                        .map(|t: &Tensor| t.size()[0] as usize)
                        .sum();
                    for (k, sample) in kept.iter().enumerate() {
                        for caption in &sample.captions {
                            examples.push(TextExample {
                                image: offset + k,
                                text: caption.clone(),
                                answer: None,
                            });
                        }
                    }
                    token_parts.push(
                        encoder
                            .image_tokens(&images.to_device(device))
                            .to_device(tch::Device::Cpu),
                    );
                    Vec::new()
                },
            );
            splits.insert("train".into(), encoded.stats.clone());
            if examples.is_empty() {
                return Err(BenchmarkError::invalid(
                    &benchmark.name,
                    "no train image with captions could be read for the transfer decoder",
                ));
            }
            let tokens = Tensor::cat(&token_parts, 0);
            Some(train_decoder(
                &tokens,
                context.tokenizer,
                &examples,
                config,
                device,
            ))
        }
        _ => None,
    };

    let captioning = spec.captioning && captioner.is_some();
    let generates = captioning || transfer.is_some();
    let pair_limit_ok = |images: usize, texts: usize| images * texts <= spec.max_pairs;
    // Captioners keep the image sides for likelihood retrieval, when it is asked for and the
    // pairs (known up front for file indices) are within the limit.
    let known_pairs = match &data.test {
        SplitSource::Files { records, .. } => {
            let records = &records[..benchmark.limit.unwrap_or(usize::MAX).min(records.len())];
            let texts: usize = records.iter().map(|r| r.captions.len()).sum();
            Some((records.len(), texts))
        }
        SplitSource::Shards { .. } => None,
    };
    let keep_sides = likelihood
        && spec.likelihood
        && known_pairs.is_none_or(|(images, texts)| pair_limit_ok(images, texts));
    let mut greedy = Vec::new();
    let mut beam = Vec::new();
    let mut transferred = Vec::new();
    let mut sides = Vec::new();
    let outputs: Vec<String> = if likelihood || generates {
        Vec::new()
    } else {
        vec![EMBEDDING.into()]
    };
    let max_len = context.seq_len as i64;
    let test = encode(
        context,
        benchmark,
        "test",
        &data.test,
        benchmark.limit,
        &outputs,
        "",
        |_| true,
        |images, _| {
            let images = images.to_device(device);
            let mut out = Vec::new();
            if !likelihood {
                out.push((EMBEDDING.into(), scorer.prepare_images(&images)));
            } else if keep_sides {
                sides.push(scorer.prepare_images(&images).to_device(tch::Device::Cpu));
            }
            if let (true, Some(model)) = (captioning, captioner) {
                let decode = |ids: Vec<Vec<i64>>| -> Vec<String> {
                    ids.iter()
                        .map(|ids| context.tokenizer.decode(ids))
                        .collect()
                };
                greedy.extend(decode(
                    model.generate(&images, &GenerateConfig::greedy(max_len)),
                ));
                if spec.beam > 1 {
                    let config = GenerateConfig::beam(max_len, spec.beam, BEAM_LENGTH_PENALTY);
                    beam.extend(decode(model.generate(&images, &config)));
                }
            }
            if let (Some(trained), Some(config)) = (&transfer, &transfer_config) {
                let memory = encoder.image_tokens(&images);
                let generate = GenerateConfig::greedy(config.seq_len as i64);
                for ids in trained.decoder.generate(&memory, &generate) {
                    transferred.push(context.tokenizer.decode(&ids));
                }
            }
            out
        },
    );
    splits.insert("test".into(), test.stats.clone());
    let references: Vec<Vec<String>> = test.kept.iter().map(|k| k.captions.clone()).collect();
    if references.is_empty() {
        return Err(BenchmarkError::invalid(
            &benchmark.name,
            "no test image could be read (see the skipped counts above)",
        ));
    }
    let (texts, owner) = flatten_captions(&references);
    let scored = |hypotheses: &[String]| -> Option<CaptionScores> {
        (!hypotheses.is_empty()).then(|| {
            let items: Vec<CaptionItem> = hypotheses
                .iter()
                .zip(&references)
                .map(|(hyp, refs)| CaptionItem {
                    refs: refs.clone(),
                    hyp: hyp.clone(),
                })
                .collect();
            score_captions(&items)
        })
    };
    let (retrieval, retrieval_skipped) = if !likelihood {
        let text_sides = prepare_texts(
            scorer,
            &tokens(context.tokenizer, &texts, context.seq_len),
            context.batch as i64,
        );
        let similarity = scorer.score_prepared(test.output(EMBEDDING), &text_sides);
        (Some(recall_from_similarity(&similarity, &owner)), None)
    } else if !spec.likelihood {
        (
            None,
            Some(
                "captioners score retrieval by likelihood (a decoder pass per image–caption \
                 pair) only when asked: set `\"likelihood\": true` in the benchmark"
                    .to_string(),
            ),
        )
    } else if !keep_sides || !pair_limit_ok(references.len(), texts.len()) {
        (
            None,
            Some(format!(
                "likelihood retrieval would score {} image–caption pairs, more than the \
                 limit {}: evaluate fewer images (`limit`) or raise `max_pairs` in the \
                 benchmark",
                references.len() * texts.len(),
                spec.max_pairs
            )),
        )
    } else {
        let sides = Tensor::cat(&sides, 0);
        let rows = tokens(context.tokenizer, &texts, context.seq_len).to_device(device);
        let per_call = likelihood_images_per_batch(context.batch as i64, texts.len());
        let n = sides.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(per_call as usize)
            .map(|start| {
                let len = per_call.min(n - start);
                let side = sides.narrow(0, start, len).to_device(device);
                scorer
                    .score_prepared(&side, &rows)
                    .to_device(tch::Device::Cpu)
            })
            .collect();
        (
            Some(recall_from_similarity(&Tensor::cat(&parts, 0), &owner)),
            None,
        )
    };
    let samples = if greedy.is_empty() {
        &transferred
    } else {
        &greedy
    };
    Ok(RetrievalResults {
        images: references.len(),
        texts: texts.len(),
        retrieval,
        retrieval_skipped,
        captioning_greedy: scored(&greedy),
        captioning_beam: scored(&beam),
        transfer_captioning: scored(&transferred),
        transfer_final_loss: transfer.as_ref().map(|t| t.final_loss),
        sample_captions: samples.iter().take(SAMPLE_CAPTIONS).cloned().collect(),
    })
}
