//! Task evaluators over the model traits: zero-shot classification, retrieval, compositional
//! preference, perplexity and captioning. Inputs are in-memory tensors of evaluation images
//! (N, 3, H, W) on the CPU (moved to the model's device batch by batch) and plain strings;
//! every evaluator runs without gradient.

use std::collections::BTreeMap;

use cappa_data::tokenizer::Tokenizer;
use cappa_models::GenerateConfig;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::caption_metrics::{score_captions, CaptionItem, CaptionScores};
use crate::model::{ContrastiveScorer, ImageEncoder, LikelihoodScorer};

/// An evaluation that cannot run as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(
        "likelihood retrieval would score {pairs} image–caption pairs, more than the limit \
         {limit}: use fewer images (captioners score every pair with the decoder) or raise the limit"
    )]
    TooManyPairs { pairs: usize, limit: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Runs `f` over consecutive row ranges of `n` rows, `batch` at a time, concatenating the
/// (CPU) results along dimension 0.
pub fn batched(n: i64, batch: i64, mut f: impl FnMut(i64, i64) -> Tensor) -> Tensor {
    let batch = batch.max(1);
    let parts: Vec<Tensor> = (0..n)
        .step_by(batch as usize)
        .map(|start| f(start, batch.min(n - start)).to_device(Device::Cpu))
        .collect();
    Tensor::cat(&parts, 0)
}

/// Probe features (N, D) of images (N, 3, H, W).
pub fn probe_features(encoder: &dyn ImageEncoder, images: &Tensor, batch: i64) -> Tensor {
    let device = encoder.device();
    batched(images.size()[0], batch, |start, len| {
        encoder.probe_features(&images.narrow(0, start, len).to_device(device))
    })
}

/// Token rows (T, L) for texts, as the model was trained to read them.
pub fn tokens(tokenizer: &Tokenizer, texts: &[String], seq_len: usize) -> Tensor {
    tokenizer.encode_batch(texts, seq_len)
}

fn accuracy(predicted: &Tensor, labels: &[i64]) -> f64 {
    let truth = Tensor::from_slice(labels);
    predicted
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
    /// Prompt templates with `{}` for the class name. CLIP averages the normalised text
    /// embeddings of all templates (a prompt ensemble); captioners use the first template.
    pub prompts: Vec<String>,
    /// Captioners: divide each class's summed log-likelihood by its token count.
    pub length_normalize: bool,
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
            batch: 64,
        }
    }
}

fn prompted(template: &str, class: &str) -> String {
    template.replace("{}", class)
}

/// CLIP zero-shot accuracy: the class whose prompt-ensemble embedding is most similar.
pub fn zero_shot_contrastive(
    model: &dyn ContrastiveScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    labels: &[i64],
    class_names: &[String],
    config: &ZeroShotConfig,
) -> f64 {
    let device = model.device();
    let classes = tch::no_grad(|| {
        let mut sum: Option<Tensor> = None;
        for template in &config.prompts {
            let texts: Vec<String> = class_names.iter().map(|c| prompted(template, c)).collect();
            let e = model.embed_texts(&tokens(tokenizer, &texts, seq_len).to_device(device));
            sum = Some(match sum {
                Some(s) => s + e,
                None => e,
            });
        }
        cappa_models::layers::l2_normalize(&sum.expect("at least one prompt"))
    });
    let predicted = batched(images.size()[0], config.batch, |start, len| {
        let e = model.embed_images(&images.narrow(0, start, len).to_device(device));
        e.matmul(&classes.tr()).argmax(1, false)
    });
    accuracy(&predicted, labels)
}

/// Captioner zero-shot accuracy: the class whose (prompted) name has the highest
/// log-likelihood given the image, all classes scored in one batched decoder pass per image
/// batch.
pub fn zero_shot_likelihood(
    model: &dyn LikelihoodScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    labels: &[i64],
    class_names: &[String],
    config: &ZeroShotConfig,
) -> f64 {
    let template = config.prompts.first().map_or("{}", String::as_str);
    let texts: Vec<String> = class_names.iter().map(|c| prompted(template, c)).collect();
    let candidates = tokens(tokenizer, &texts, seq_len);
    let lengths = candidates
        .ne(tokenizer.pad_id())
        .sum_dim_intlist(1, false, Kind::Float)
        .clamp_min(1.0); // (C)
    let device = model.device();
    let candidates = candidates.to_device(device);
    let predicted = batched(images.size()[0], config.batch, |start, len| {
        let scores = model
            .log_likelihood(&images.narrow(0, start, len).to_device(device), &candidates)
            .to_device(Device::Cpu);
        let scores = if config.length_normalize {
            scores / lengths.unsqueeze(0)
        } else {
            scores
        };
        scores.argmax(1, false)
    });
    accuracy(&predicted, labels)
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

/// CLIP retrieval between images and their captions, by embedding similarity.
pub fn retrieval_contrastive(
    model: &dyn ContrastiveScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    captions: &[Vec<String>],
    batch: i64,
) -> RetrievalScores {
    let device = model.device();
    let (texts, owner) = flatten_captions(captions);
    let text_tokens = tokens(tokenizer, &texts, seq_len);
    let text_embeddings = batched(texts.len() as i64, batch, |start, len| {
        model.embed_texts(&text_tokens.narrow(0, start, len).to_device(device))
    });
    let image_embeddings = batched(images.size()[0], batch, |start, len| {
        model.embed_images(&images.narrow(0, start, len).to_device(device))
    });
    recall_from_similarity(&image_embeddings.matmul(&text_embeddings.tr()), &owner)
}

/// Captioner retrieval: every (image, caption) pair scored by the caption's log-likelihood.
/// Refused above `max_pairs` pairs, since each pair costs a decoder pass.
pub fn retrieval_likelihood(
    model: &dyn LikelihoodScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    captions: &[Vec<String>],
    max_pairs: usize,
    batch: i64,
) -> Result<RetrievalScores, EvalError> {
    let (texts, owner) = flatten_captions(captions);
    let pairs = images.size()[0] as usize * texts.len();
    if pairs > max_pairs {
        return Err(EvalError::TooManyPairs {
            pairs,
            limit: max_pairs,
        });
    }
    let device = model.device();
    let candidates = tokens(tokenizer, &texts, seq_len).to_device(device);
    // Fewer images per batch: each image scores every caption.
    let per_batch = (batch * 16 / texts.len().max(1) as i64).clamp(1, batch);
    let similarity = batched(images.size()[0], per_batch, |start, len| {
        model.log_likelihood(&images.narrow(0, start, len).to_device(device), &candidates)
    });
    Ok(recall_from_similarity(&similarity, &owner))
}

/// One image with a true caption and a negative of some kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceItem {
    pub image: usize,
    pub kind: String,
    pub caption: String,
    pub negative: String,
}

/// Accuracy per kind (and "all") of preferring the true caption over its negative, from a
/// function scoring (image indices, captions) pairs.
fn preference_accuracy(
    items: &[PreferenceItem],
    mut score_pairs: impl FnMut(&[usize], &[String]) -> Vec<f64>,
) -> BTreeMap<String, f64> {
    let images: Vec<usize> = items.iter().map(|i| i.image).collect();
    let captions: Vec<String> = items.iter().map(|i| i.caption.clone()).collect();
    let negatives: Vec<String> = items.iter().map(|i| i.negative.clone()).collect();
    let (good, bad) = (
        score_pairs(&images, &captions),
        score_pairs(&images, &negatives),
    );
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

/// Compositional preference for CLIP: cosine similarity of the image to each caption.
pub fn compositional_contrastive(
    model: &dyn ContrastiveScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    items: &[PreferenceItem],
    batch: i64,
) -> BTreeMap<String, f64> {
    let device = model.device();
    let image_embeddings = batched(images.size()[0], batch, |start, len| {
        model.embed_images(&images.narrow(0, start, len).to_device(device))
    });
    preference_accuracy(items, |which, texts| {
        let t = tokens(tokenizer, texts, seq_len);
        let e = batched(texts.len() as i64, batch, |start, len| {
            model.embed_texts(&t.narrow(0, start, len).to_device(device))
        });
        let index = Tensor::from_slice(&which.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let img = image_embeddings.index_select(0, &index);
        Vec::try_from((img * e).sum_dim_intlist(1, false, Kind::Double)).expect("f64")
    })
}

/// Compositional preference for captioners: summed log-likelihood of each caption.
pub fn compositional_likelihood(
    model: &dyn LikelihoodScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    items: &[PreferenceItem],
    batch: i64,
) -> BTreeMap<String, f64> {
    preference_accuracy(items, |which, texts| {
        pair_log_likelihood(model, tokenizer, seq_len, images, which, texts, batch)
    })
}

/// Summed log-likelihood of `texts[k]` given image `which[k]`.
fn pair_log_likelihood(
    model: &dyn LikelihoodScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    which: &[usize],
    texts: &[String],
    batch: i64,
) -> Vec<f64> {
    let device = model.device();
    let t = tokens(tokenizer, texts, seq_len);
    let index = Tensor::from_slice(&which.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let scores = batched(texts.len() as i64, batch, |start, len| {
        let imgs = images
            .index_select(0, &index.narrow(0, start, len))
            .to_device(device);
        // (b, 1, L): one candidate per image.
        let candidates = t.narrow(0, start, len).unsqueeze(1).to_device(device);
        model.log_likelihood(&imgs, &candidates).squeeze_dim(1)
    });
    Vec::try_from(scores.to_kind(Kind::Double)).expect("f64")
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

/// Perplexity of `captions[k]` given image `k` (teacher-forced, autoregressive).
pub fn perplexity(
    model: &dyn LikelihoodScorer,
    tokenizer: &Tokenizer,
    seq_len: usize,
    images: &Tensor,
    captions: &[String],
    batch: i64,
) -> Perplexity {
    let which: Vec<usize> = (0..captions.len()).collect();
    let logp = pair_log_likelihood(model, tokenizer, seq_len, images, &which, captions, batch);
    let count: i64 = tokens(tokenizer, captions, seq_len)
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptioningResult {
    pub scores: CaptionScores,
    pub hypotheses: Vec<String>,
}

/// Generates a caption per image (greedy or beam, per `config`) and scores them.
pub fn captioning(
    model: &dyn LikelihoodScorer,
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
        // The scorer likes true captions except for image 1.
        let acc = preference_accuracy(&items, |which, texts| {
            which
                .iter()
                .zip(texts)
                .map(|(&i, t)| f64::from(t.starts_with("true") != (i == 1)))
                .collect()
        });
        assert_eq!(acc["a"], 0.5);
        assert_eq!(acc["b"], 1.0);
        assert!((acc["all"] - 2.0 / 3.0).abs() < 1e-12);
    }
}
