//! The evaluation tasks, each a function of score matrices from the one scoring path
//! ([`crate::scoring`]) and so the same for every kind of [`TextScorer`]: zero-shot
//! classification (an (images, classes) matrix), retrieval (images × captions) and compositional
//! preference (pairs × {true, negative}); plus, for captioners, perplexity and captioning.
//! Inputs are in-memory tensors of evaluation images (N, 3, H, W) on the CPU (moved to the
//! model's device batch by batch) and plain strings; every evaluator runs without gradient.

use std::collections::BTreeMap;

use cappa_data::tokenizer::Tokenizer;
use cappa_models::GenerateConfig;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::caption_metrics::{score_captions, CaptionItem, CaptionScores};
use crate::model::{Captioner, ImageEncoder, ScoreKind, TextScorer};
use crate::scoring::{
    batched, paired_scores, prepare_texts, score_matrix, score_streamed, tokens, Batches,
    DEFAULT_BATCH,
};

/// Captioners: the most (image, caption) pairs retrieval scores by default (each pair is a
/// decoder pass; 200 test images with 5 captions each need 200,000).
pub const MAX_LIKELIHOOD_RETRIEVAL_PAIRS: usize = 200_000;

/// An evaluation that cannot run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error(
        "likelihood retrieval would score {pairs} image–caption pairs, more than the limit \
         {limit} (captioners score every pair with the decoder): evaluate fewer test images, \
         or raise the limit (`cappa eval --max-retrieval-pairs N`, `max_retrieval_pairs` in a \
         preset's `eval`, or `EvalOptions::max_retrieval_pairs`; default \
         {MAX_LIKELIHOOD_RETRIEVAL_PAIRS})"
    )]
    TooManyPairs { pairs: usize, limit: usize },
}

/// Probe features (N, D) of images (N, 3, H, W).
pub fn probe_features(encoder: &dyn ImageEncoder, images: &Tensor, batch: i64) -> Tensor {
    let device = encoder.device();
    batched(images.size()[0], batch, |start, len| {
        encoder.probe_features(&images.narrow(0, start, len).to_device(device))
    })
}

/// Fraction of rows of `scores` (N, C) whose highest score is at the row's label (ties go to
/// the first class).
pub fn top1_accuracy(scores: &Tensor, labels: &[i64]) -> f64 {
    let truth = Tensor::from_slice(labels);
    scores
        .argmax(1, false)
        .to_device(Device::Cpu)
        .eq_tensor(&truth)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

/// How zero-shot classification phrases class names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroShotConfig {
    /// Prompt templates with `{}` for the class name (none: the class name alone). Similarity
    /// scorers average the normalised text embeddings of all templates (a prompt ensemble);
    /// likelihood scorers use the first template.
    pub prompts: Vec<String>,
    /// Likelihood scorers: divide each class's summed log-likelihood by its token count.
    pub length_normalize: bool,
    /// Images per scoring call.
    pub batch: i64,
}

impl Default for ZeroShotConfig {
    fn default() -> Self {
        ZeroShotConfig {
            prompts: vec![
                "{}".into(),
                "a picture of a {}".into(),
                "an image showing a {}".into(),
            ],
            length_normalize: false,
            batch: DEFAULT_BATCH,
        }
    }
}

fn prompted(template: &str, class: &str) -> String {
    template.replace("{}", class)
}

/// The text side (C, …) of zero-shot classes, on the scorer's device, and for likelihood
/// scorers the token count (C) of each class's text:
/// - similarity: the sum of every template's normalised class embeddings (one call per
///   template with all classes), L2-normalised — the direction of their mean;
/// - log-likelihood: the token rows of the first template.
pub fn class_texts(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    class_names: &[String],
    prompts: &[String],
) -> (Tensor, Option<Tensor>) {
    let alone = ["{}".to_string()];
    let prompts = if prompts.is_empty() {
        &alone[..]
    } else {
        prompts
    };
    let device = scorer.device();
    let rows = |template: &str| {
        let texts: Vec<String> = class_names.iter().map(|c| prompted(template, c)).collect();
        tokens(tokenizer, &texts, seq_len)
    };
    match scorer.score_kind() {
        ScoreKind::Similarity => tch::no_grad(|| {
            let mut sum: Option<Tensor> = None;
            for template in prompts {
                let embedded = scorer.prepare_texts(&rows(template).to_device(device));
                sum = Some(match sum {
                    Some(s) => s + embedded,
                    None => embedded,
                });
            }
            let sum = sum.expect("at least one template");
            (cappa_models::layers::l2_normalize(&sum), None)
        }),
        ScoreKind::LogLikelihood => {
            let candidates = rows(&prompts[0]);
            let lengths = candidates
                .ne(tokenizer.pad_id())
                .sum_dim_intlist(1, false, Kind::Float)
                .clamp_min(1.0); // (C)
            (
                scorer.prepare_texts(&candidates.to_device(device)),
                Some(lengths),
            )
        }
    }
}

/// Zero-shot scores (N, C) of images against classes (see [`class_texts`]), `config.batch`
/// images per call; likelihoods divided by token counts when `config.length_normalize`.
pub fn class_scores(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    class_names: &[String],
    config: &ZeroShotConfig,
) -> Tensor {
    let (classes, lengths) = class_texts(scorer, tokenizer, seq_len, class_names, &config.prompts);
    let scores = score_streamed(scorer, images, &classes, Batches::of_images(config.batch));
    match lengths {
        Some(lengths) if config.length_normalize => scores / lengths.unsqueeze(0),
        _ => scores,
    }
}

/// Zero-shot accuracy: the fraction of images whose best-scoring class is their label.
pub fn zero_shot(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    labels: &[i64],
    class_names: &[String],
    config: &ZeroShotConfig,
) -> f64 {
    let scores = class_scores(scorer, tokenizer, seq_len, images, class_names, config);
    top1_accuracy(&scores, labels)
}

/// Recall at 1, 5 and 10.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalScores {
    pub image_to_text: Recall,
    pub text_to_image: Recall,
}

/// Recall@{1,5,10} from a similarity matrix (I, T) where text `t` belongs to image
/// `text_image[t]`. Image→text: a hit if any of the image's texts ranks within k; text→image:
/// a hit if its image ranks within k. Ties rank by index (the first wins).
pub fn recall_from_similarity(similarity: &Tensor, text_image: &[usize]) -> RetrievalScores {
    let sim = similarity.to_device(Device::Cpu).to_kind(Kind::Double);
    let (images, texts) = sim.size2().expect("similarity is (I, T)");
    assert_eq!(texts as usize, text_image.len(), "one image index per text");
    let values: Vec<f64> = Vec::try_from(sim.reshape([-1])).expect("f64 values");
    let at = |i: usize, t: usize| values[i * texts as usize + t];
    let ks = [1usize, 5, 10];
    // Rank of the best true text of each image.
    let mut i2t = [0usize; 3];
    for i in 0..images as usize {
        let best_true = (0..texts as usize)
            .filter(|&t| text_image[t] == i)
            .map(|t| rank(|u| at(i, u), texts as usize, t))
            .min();
        if let Some(r) = best_true {
            for (hits, k) in i2t.iter_mut().zip(ks) {
                *hits += usize::from(r < k);
            }
        }
    }
    let mut t2i = [0usize; 3];
    for (t, &i) in text_image.iter().enumerate() {
        let r = rank(|j| at(j, t), images as usize, i);
        for (hits, k) in t2i.iter_mut().zip(ks) {
            *hits += usize::from(r < k);
        }
    }
    let recall = |hits: [usize; 3], n: usize| Recall {
        r1: hits[0] as f64 / n.max(1) as f64,
        r5: hits[1] as f64 / n.max(1) as f64,
        r10: hits[2] as f64 / n.max(1) as f64,
    };
    RetrievalScores {
        image_to_text: recall(i2t, images as usize),
        text_to_image: recall(t2i, texts as usize),
    }
}

/// 0-based rank of candidate `target` among `n` by descending score (earlier index wins ties).
fn rank(score: impl Fn(usize) -> f64, n: usize, target: usize) -> usize {
    let s = score(target);
    (0..n)
        .filter(|&u| {
            let v = score(u);
            v > s || (v == s && u < target)
        })
        .count()
}

/// Flattens per-image caption lists into (texts, owning image of each text).
pub fn flatten_captions(captions: &[Vec<String>]) -> (Vec<String>, Vec<usize>) {
    let mut texts = Vec::new();
    let mut owner = Vec::new();
    for (i, list) in captions.iter().enumerate() {
        for c in list {
            texts.push(c.clone());
            owner.push(i);
        }
    }
    (texts, owner)
}

/// Retrieval between images and their captions (several per image), from the score matrix
/// (images × captions) of [`score_matrix`]. Likelihood scorers are refused above
/// `max_likelihood_pairs` pairs, since each pair costs a decoder pass.
pub fn retrieval(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    captions: &[Vec<String>],
    batch: i64,
    max_likelihood_pairs: usize,
) -> Result<RetrievalScores, EvalError> {
    let (texts, owner) = flatten_captions(captions);
    let pairs = images.size()[0] as usize * texts.len();
    if scorer.score_kind() == ScoreKind::LogLikelihood && pairs > max_likelihood_pairs {
        return Err(EvalError::TooManyPairs {
            pairs,
            limit: max_likelihood_pairs,
        });
    }
    let text_sides = prepare_texts(scorer, &tokens(tokenizer, &texts, seq_len), batch);
    let scores = score_matrix(scorer, images, &text_sides, batch);
    Ok(recall_from_similarity(&scores, &owner))
}

/// One image with a true caption and a negative of some kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceItem {
    pub image: usize,
    pub kind: String,
    pub caption: String,
    pub negative: String,
}

/// Scores (N, 2) of each item's image against its true caption (column 0) and its negative
/// (column 1), from [`paired_scores`].
pub fn preference_scores(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    items: &[PreferenceItem],
    batch: i64,
) -> Tensor {
    let image_of: Vec<usize> = items.iter().map(|i| i.image).collect();
    let captions: Vec<String> = items.iter().map(|i| i.caption.clone()).collect();
    let negatives: Vec<String> = items.iter().map(|i| i.negative.clone()).collect();
    let columns = [
        tokens(tokenizer, &captions, seq_len),
        tokens(tokenizer, &negatives, seq_len),
    ];
    paired_scores(scorer, images, &image_of, &columns, batch)
}

/// Accuracy per kind (and "all") of preferring the true caption over its negative, from
/// scores (N, 2) of (true, negative) per item: a strictly higher true score counts.
pub fn preference_accuracy(items: &[PreferenceItem], scores: &Tensor) -> BTreeMap<String, f64> {
    let scores = scores.to_device(Device::Cpu).to_kind(Kind::Double);
    assert_eq!(
        scores.size(),
        [items.len() as i64, 2],
        "preference scores are (items, 2)"
    );
    let good: Vec<f64> = Vec::try_from(scores.select(1, 0)).expect("f64 scores");
    let bad: Vec<f64> = Vec::try_from(scores.select(1, 1)).expect("f64 scores");
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (item, (g, b)) in items.iter().zip(good.iter().zip(&bad)) {
        for key in [item.kind.as_str(), "all"] {
            let entry = counts.entry(key.to_string()).or_default();
            entry.0 += usize::from(g > b);
            entry.1 += 1;
        }
    }
    counts
        .into_iter()
        .map(|(k, (hits, n))| (k, hits as f64 / n as f64))
        .collect()
}

/// Compositional preference: accuracy per kind (and "all") of scoring each item's true
/// caption above its negative.
pub fn compositional(
    scorer: &dyn TextScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    items: &[PreferenceItem],
    batch: i64,
) -> BTreeMap<String, f64> {
    let scores = preference_scores(scorer, tokenizer, seq_len, images, items, batch);
    preference_accuracy(items, &scores)
}

/// Held-out caption likelihood of a captioner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// Mean negative log-likelihood per token (EOS included, padding excluded).
    pub nll_per_token: f64,
    /// exp(nll_per_token).
    pub perplexity: f64,
    pub tokens: u64,
}

/// Perplexity of `captions[k]` given image `k` (teacher-forced, autoregressive), from the
/// captioner's paired scores ([`paired_scores`], one column).
pub fn perplexity(
    model: &dyn Captioner,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    captions: &[String],
    batch: i64,
) -> Perplexity {
    let image_of: Vec<usize> = (0..captions.len()).collect();
    let rows = tokens(tokenizer, captions, seq_len);
    let scores = paired_scores(model, images, &image_of, std::slice::from_ref(&rows), batch);
    let logp: Vec<f64> = Vec::try_from(scores.view([-1])).expect("f64 scores");
    let count: i64 = rows
        .ne(tokenizer.pad_id())
        .sum(Kind::Int64)
        .int64_value(&[]);
    let nll = -logp.iter().sum::<f64>() / count.max(1) as f64;
    Perplexity {
        nll_per_token: nll,
        perplexity: nll.exp(),
        tokens: count as u64,
    }
}

/// Captions generated for images, scored against references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptioningResult {
    pub scores: CaptionScores,
    pub hypotheses: Vec<String>,
}

/// Generates a caption per image (greedy or beam, per `config`) and scores them.
pub fn captioning(
    model: &dyn Captioner,
    tokenizer: &Tokenizer,
    images: &Tensor,
    references: &[Vec<String>],
    config: &GenerateConfig,
    batch: i64,
) -> CaptioningResult {
    let device = model.device();
    let n = images.size()[0];
    let mut hypotheses = Vec::with_capacity(n as usize);
    for start in (0..n).step_by(batch.max(1) as usize) {
        let len = batch.min(n - start);
        let ids = model.generate(&images.narrow(0, start, len).to_device(device), config);
        hypotheses.extend(ids.iter().map(|ids| tokenizer.decode(ids)));
    }
    let items: Vec<CaptionItem> = hypotheses
        .iter()
        .zip(references)
        .map(|(hyp, refs)| CaptionItem {
            refs: refs.clone(),
            hyp: hyp.clone(),
        })
        .collect();
    CaptioningResult {
        scores: score_captions(&items),
        hypotheses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_by_hand() {
        // Two images, three texts (texts 0, 1 belong to image 0; text 2 to image 1).
        let sim = Tensor::from_slice(&[0.9f32, 0.1, 0.5, 0.2, 0.8, 0.3]).view([2, 3]);
        let r = recall_from_similarity(&sim, &[0, 0, 1]);
        // Image 0 ranks text 0 first: hit@1. Image 1 ranks text 1 (0.8) above its text 2
        // (0.3) and text 0 (0.2): its true text is 2nd → miss@1, hit@5.
        assert_eq!(r.image_to_text.r1, 0.5);
        assert_eq!(r.image_to_text.r5, 1.0);
        // Text 0: image 0 (0.9) > image 1 (0.2) hit; text 1: image 1 (0.8) > image 0 (0.1)
        // miss; text 2: image 0 (0.5) > image 1 (0.3) miss.
        assert!((r.text_to_image.r1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.text_to_image.r10, 1.0);
    }

    #[test]
    fn top1_takes_the_first_of_tied_classes() {
        let scores = Tensor::from_slice(&[0.2f32, 0.9, 0.1, 0.5, 0.5, 0.0]).view([2, 3]);
        assert_eq!(top1_accuracy(&scores, &[1, 0]), 1.0);
        assert_eq!(top1_accuracy(&scores, &[1, 1]), 0.5);
    }

    #[test]
    fn ties_rank_by_index() {
        assert_eq!(rank(|_| 1.0, 4, 2), 2);
        assert_eq!(rank(|u| u as f64, 4, 3), 0);
    }

    #[test]
    fn preference_counts_per_kind() {
        let items: Vec<PreferenceItem> = [("a", 0), ("a", 1), ("b", 2)]
            .iter()
            .map(|&(kind, image)| PreferenceItem {
                image,
                kind: kind.into(),
                caption: format!("true {image}"),
                negative: format!("false {image}"),
            })
            .collect();
        // (true, negative) scores: the true caption wins except for image 1, where they tie
        // (a tie is not a preference).
        let scores = Tensor::from_slice(&[1.0f64, 0.0, 0.5, 0.5, 2.0, -1.0]).view([3, 2]);
        let acc = preference_accuracy(&items, &scores);
        assert_eq!(acc["a"], 0.5);
        assert_eq!(acc["b"], 1.0);
        assert!((acc["all"] - 2.0 / 3.0).abs() < 1e-12);
    }
}
