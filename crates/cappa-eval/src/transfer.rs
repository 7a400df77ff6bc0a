//! Vision-and-language transfer on a frozen encoder (LiT-decoder style): a fresh small
//! decoder — the same for every encoder, so abilities compare on equal terms — is trained on
//! the frozen encoder's full token sequence for (a) captioning and (b) VQA answer generation,
//! then evaluated: captions with BLEU/ROUGE-L/CIDEr-D, answers by exact match after VQA answer
//! normalisation (the scene world has one correct answer per question).
//!
//! VQA sequences are `question answer: ANSWER<eos>`; the loss covers the answer and EOS only,
//! and at test time the decoder reads the question prefix and generates greedily.

use cappa_data::readers::normalize_vqa_answer;
use cappa_data::tokenizer::Tokenizer;
use cappa_models::{
    shift_right, CapDecoder, DecoderConfig, Decoding, GenerateConfig, SpecialTokens,
};
use cappa_objectives::caption_loss;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Tensor};

use crate::caption_metrics::{score_captions, CaptionItem, CaptionScores};
use crate::model::ImageEncoder;
use crate::scoring::batched;

/// The transfer decoder and its training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub steps: usize,
    pub batch: i64,
    pub lr: f64,
    /// Tokens per sequence (question, answer and EOS for VQA).
    pub seq_len: usize,
    pub seed: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            width: 128,
            depth: 2,
            heads: 4,
            steps: 300,
            batch: 32,
            lr: 1e-3,
            seq_len: 32,
            seed: 0,
        }
    }
}

/// Training and test examples: per example an image index and a text; for VQA the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TextExample {
    pub image: usize,
    /// Captioning: the caption. VQA: the question.
    pub text: String,
    /// VQA only: the answer.
    pub answer: Option<String>,
}

const ANSWER_MARK: &str = " answer:";

/// Width of the transfer decoder's MLP as a multiple of its width (the usual 4).
pub const TRANSFER_MLP_RATIO: i64 = 4;

/// Most tokens generated for a VQA answer (the scene world's answers are a word or two).
pub const MAX_ANSWER_TOKENS: usize = 4;

/// The shortest transfer sequence worth training with: a VQA question, the answer mark, the
/// answer and EOS fit in it.
pub const MIN_TRANSFER_SEQ_LEN: usize = 24;

/// Reads a float written as `null`, as serde_json writes NaN (a loss after no steps).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// Results of both transfer tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferResult {
    pub captioning: CaptionScores,
    pub vqa_accuracy: f64,
    /// VQA accuracy per question kind, when kinds were given.
    pub vqa_by_kind: std::collections::BTreeMap<String, f64>,
    /// Loss of the last training step (NaN, written `null`, after no steps).
    #[serde(deserialize_with = "nan_if_null")]
    pub final_caption_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub final_vqa_loss: f64,
}

/// A decoder trained on frozen image tokens.
pub(crate) struct Trained {
    _vs: VarStore,
    pub(crate) decoder: CapDecoder,
    pub(crate) final_loss: f64,
}

/// Image tokens (N, T, D) of images (N, 3, H, W), on the CPU.
pub(crate) fn frozen_tokens(encoder: &dyn ImageEncoder, images: &Tensor, batch: i64) -> Tensor {
    let device = encoder.device();
    batched(images.size()[0], batch, |start, len| {
        encoder.image_tokens(&images.narrow(0, start, len).to_device(device))
    })
}

/// (targets, inputs) rows: the sequence, its shifted-right inputs, with the loss restricted to
/// the part after `prefix_len` tokens.
fn sequences(
    tokenizer: &Tokenizer,
    examples: &[&TextExample],
    seq_len: usize,
    bos_id: i64,
) -> (Tensor, Tensor) {
    let mut targets = Vec::with_capacity(examples.len() * seq_len);
    let mut inputs = Vec::with_capacity(examples.len() * seq_len);
    for example in examples {
        let (full, prefix_len) = match &example.answer {
            None => (tokenizer.encode(&example.text, seq_len), 0),
            Some(answer) => {
                let prefix = prefix_tokens(tokenizer, &example.text, seq_len);
                let full =
                    tokenizer.encode(&format!("{}{ANSWER_MARK} {answer}", example.text), seq_len);
                (full, prefix.len().min(seq_len - 1))
            }
        };
        let shifted = shift_right(&Tensor::from_slice(&full).view([1, seq_len as i64]), bos_id);
        inputs.extend(Vec::<i64>::try_from(shifted.view([-1])).expect("ids"));
        let mut masked = full;
        for id in masked.iter_mut().take(prefix_len) {
            *id = tokenizer.pad_id();
        }
        targets.extend(masked);
    }
    let shape = [examples.len() as i64, seq_len as i64];
    (
        Tensor::from_slice(&targets).view(shape),
        Tensor::from_slice(&inputs).view(shape),
    )
}

/// The question followed by the answer mark, without EOS.
pub(crate) fn prefix_tokens(tokenizer: &Tokenizer, question: &str, seq_len: usize) -> Vec<i64> {
    let ids = tokenizer.encode(&format!("{question}{ANSWER_MARK}"), seq_len);
    ids.into_iter()
        .take_while(|&id| id != tokenizer.eos_id() && id != tokenizer.pad_id())
        .collect()
}

pub(crate) fn train_decoder(
    tokens: &Tensor,
    tokenizer: &Tokenizer,
    examples: &[TextExample],
    config: &TransferConfig,
    device: Device,
) -> Trained {
    let memory_width = tokens.size()[2];
    // The tokenizer's own ids: the decoder starts from its pad id, stops at its EOS.
    let special = SpecialTokens {
        vocab_size: tokenizer.vocab_size() as i64,
        pad_id: tokenizer.pad_id(),
        eos_id: tokenizer.eos_id(),
    };
    let mut decoder_config = DecoderConfig::new(
        special,
        config.seq_len as i64,
        config.width,
        config.depth,
        config.heads,
        TRANSFER_MLP_RATIO * config.width,
    );
    decoder_config.depth = config.depth;
    decoder_config.memory_width = memory_width;
    tch::manual_seed(config.seed as i64);
    let vs = VarStore::new(device);
    let decoder = CapDecoder::new(vs.root() / "decoder", &decoder_config);
    let mut opt = nn::AdamW::default()
        .build(&vs, config.lr)
        .expect("AdamW builds over a VarStore");
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut final_loss = f64::NAN;
    for _ in 0..config.steps {
        let picked: Vec<&TextExample> = (0..config.batch)
            .map(|_| &examples[rng.random_range(0..examples.len())])
            .collect();
        let index = Tensor::from_slice(&picked.iter().map(|e| e.image as i64).collect::<Vec<_>>());
        let memory = tokens.index_select(0, &index).to_device(device);
        let (targets, inputs) =
            sequences(tokenizer, &picked, config.seq_len, decoder_config.bos_id);
        let logits = decoder.decode(&memory, &inputs.to_device(device), Decoding::Causal, true);
        let loss = caption_loss(&logits, &targets.to_device(device), tokenizer.pad_id(), 0.0);
        opt.backward_step(&loss);
        final_loss = loss.double_value(&[]);
    }
    Trained {
        _vs: vs,
        decoder,
        final_loss,
    }
}

/// Greedy answer after a question prefix, one example at a time (prefixes differ in length).
pub(crate) fn answer(
    decoder: &CapDecoder,
    memory: &Tensor,
    prefix: &[i64],
    max_new: usize,
    tokenizer: &Tokenizer,
) -> String {
    tch::no_grad(|| {
        let device = memory.device();
        let mut cache = decoder.start(memory);
        let mut input: Vec<i64> = vec![decoder.config().bos_id];
        input.extend_from_slice(prefix);
        let mut logits = decoder.step(
            &mut cache,
            &Tensor::from_slice(&input).view([1, -1]).to_device(device),
        );
        let mut out = Vec::new();
        for _ in 0..max_new {
            let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
            if next == tokenizer.eos_id()
                || cache.len() as usize >= decoder.config().max_len as usize
            {
                break;
            }
            out.push(next);
            logits = decoder.step(
                &mut cache,
                &Tensor::from_slice(&[next]).view([1, 1]).to_device(device),
            );
        }
        tokenizer.decode(&out)
    })
}

/// Trains the captioning and VQA decoders on `train_images` and evaluates them on
/// `test_images`. `caption_refs[k]` are the references of test image k.
#[allow(clippy::too_many_arguments)]
pub fn transfer(
    encoder: &dyn ImageEncoder,
    tokenizer: &Tokenizer,
    train_images: &Tensor,
    train_captions: &[TextExample],
    train_vqa: &[TextExample],
    test_images: &Tensor,
    caption_refs: &[Vec<String>],
    test_vqa: &[(TextExample, String)],
    config: &TransferConfig,
) -> TransferResult {
    let device = encoder.device();
    let train_tokens = frozen_tokens(encoder, train_images, config.batch);
    let test_tokens = frozen_tokens(encoder, test_images, config.batch);

    let captioner = train_decoder(&train_tokens, tokenizer, train_captions, config, device);
    let generate = GenerateConfig::greedy(config.seq_len as i64);
    let mut items = Vec::new();
    for start in (0..test_tokens.size()[0]).step_by(config.batch as usize) {
        let len = config.batch.min(test_tokens.size()[0] - start);
        let ids = captioner.decoder.generate(
            &test_tokens.narrow(0, start, len).to_device(device),
            &generate,
        );
        for (k, ids) in ids.iter().enumerate() {
            items.push(CaptionItem {
                refs: caption_refs[start as usize + k].clone(),
                hyp: tokenizer.decode(ids),
            });
        }
    }
    let captioning = score_captions(&items);

    let vqa = train_decoder(&train_tokens, tokenizer, train_vqa, config, device);
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut correct = 0usize;
    for (example, kind) in test_vqa {
        let prefix = prefix_tokens(tokenizer, &example.text, config.seq_len);
        let memory = test_tokens
            .narrow(0, example.image as i64, 1)
            .to_device(device);
        let predicted = answer(&vqa.decoder, &memory, &prefix, MAX_ANSWER_TOKENS, tokenizer);
        let truth = example.answer.as_deref().unwrap_or_default();
        let hit = normalize_vqa_answer(&predicted) == normalize_vqa_answer(truth);
        correct += usize::from(hit);
        let entry = by_kind.entry(kind.clone()).or_default();
        entry.0 += usize::from(hit);
        entry.1 += 1;
    }
    TransferResult {
        captioning,
        vqa_accuracy: correct as f64 / test_vqa.len().max(1) as f64,
        vqa_by_kind: by_kind
            .into_iter()
            .map(|(k, (hits, n))| (k, hits as f64 / n as f64))
            .collect(),
        final_caption_loss: captioner.final_loss,
        final_vqa_loss: vqa.final_loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let texts = (0..50).map(|i| format!("is there a red star {i}? answer: yes no two blue"));
        Tokenizer::train_bpe(texts, 300, true).unwrap()
    }

    #[test]
    fn vqa_loss_covers_the_answer_and_eos_only() {
        let tokenizer = tokenizer();
        let example = TextExample {
            image: 0,
            text: "is there a red star?".into(),
            answer: Some("yes".into()),
        };
        let (targets, inputs) = sequences(&tokenizer, &[&example], 16, 0);
        let targets: Vec<i64> = Vec::try_from(targets.view([-1])).unwrap();
        let inputs: Vec<i64> = Vec::try_from(inputs.view([-1])).unwrap();
        let prefix = prefix_tokens(&tokenizer, "is there a red star?", 16);
        let full = tokenizer.encode("is there a red star? answer: yes", 16);
        // Inputs: BOS then the full sequence shifted; targets: pads over the prefix, then the
        // answer tokens and EOS as encoded.
        assert_eq!(inputs[0], 0);
        assert_eq!(&inputs[1..], &full[..15]);
        assert!(targets[..prefix.len()]
            .iter()
            .all(|&t| t == tokenizer.pad_id()));
        assert_eq!(&targets[prefix.len()..], &full[prefix.len()..]);
        assert!(targets.contains(&tokenizer.eos_id()));
        assert_eq!(&full[..prefix.len()], prefix.as_slice());
    }

    #[test]
    fn captions_are_scored_everywhere() {
        let tokenizer = tokenizer();
        let example = TextExample {
            image: 0,
            text: "two blue".into(),
            answer: None,
        };
        let (targets, _) = sequences(&tokenizer, &[&example], 8, 0);
        let targets: Vec<i64> = Vec::try_from(targets.view([-1])).unwrap();
        assert_eq!(targets, tokenizer.encode("two blue", 8));
    }
}
