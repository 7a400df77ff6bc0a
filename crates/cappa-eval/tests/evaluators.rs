//! Evaluators on stub models whose answers are known — a perfect model scores 100 %, a
//! shuffled one chance — and the batched likelihood classifier against brute force with a real
//! (untrained) captioner.

use cappa_data::tokenizer::Tokenizer;
use cappa_eval::model::{ContrastiveScorer, ImageEncoder, LikelihoodScorer};
use cappa_eval::tasks::{
    compositional_contrastive, retrieval_contrastive, zero_shot_contrastive, zero_shot_likelihood,
    PreferenceItem, ZeroShotConfig,
};
use cappa_models::{CapConfig, CapModel, GenerateConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const CLASSES: [&str; 4] = ["red star", "blue ring", "green cross", "white heart"];
const SEQ: usize = 8;

fn tokenizer() -> Tokenizer {
    let texts = (0..40).map(|i| format!("{} and {}", CLASSES[i % 4], CLASSES[(i + 1) % 4]));
    Tokenizer::train_bpe(texts, 300, true).unwrap()
}

/// Images whose every pixel holds their label: the first four cycle through the classes, the
/// rest are pseudo-random (a linear congruential sequence).
fn images(n: i64) -> (Tensor, Vec<i64>) {
    let mut state: u64 = 12345;
    let labels: Vec<i64> = (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if i < 4 {
                i
            } else {
                (state >> 33) as i64 % CLASSES.len() as i64
            }
        })
        .collect();
    let images = Tensor::from_slice(&labels)
        .to_kind(Kind::Float)
        .view([n, 1, 1, 1])
        .expand([n, 3, 4, 4], false)
        .contiguous();
    (images, labels)
}

/// Embeds an image as the one-hot of its (optionally permuted) label and a text as the one-hot
/// of the class whose tokens it equals.
struct Stub {
    class_rows: Vec<Vec<i64>>,
    /// Image k of a batch of n is embedded as the label of image (k + shift) mod n.
    shift: Option<i64>,
}

impl Stub {
    fn new(tokenizer: &Tokenizer, shift: Option<i64>) -> Self {
        let class_rows = CLASSES.iter().map(|c| tokenizer.encode(c, SEQ)).collect();
        Stub { class_rows, shift }
    }
    fn label_of(images: &Tensor) -> Tensor {
        images
            .select(1, 0)
            .select(1, 0)
            .select(1, 0)
            .to_kind(Kind::Int64)
    }
}

impl ImageEncoder for Stub {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn image_size(&self) -> i64 {
        4
    }
    fn probe_features(&self, images: &Tensor) -> Tensor {
        Stub::label_of(images).one_hot(4).to_kind(Kind::Float)
    }
    fn image_tokens(&self, images: &Tensor) -> Tensor {
        self.probe_features(images).unsqueeze(1)
    }
}

impl ContrastiveScorer for Stub {
    fn embed_images(&self, images: &Tensor) -> Tensor {
        let labels = Stub::label_of(images);
        let labels = match self.shift {
            Some(shift) => {
                let n = labels.size()[0];
                labels.roll([shift % n], [0])
            }
            None => labels,
        };
        labels.one_hot(4).to_kind(Kind::Float)
    }
    fn embed_texts(&self, tokens: &Tensor) -> Tensor {
        let rows: Vec<Vec<i64>> = Vec::try_from(tokens).unwrap();
        let classes: Vec<i64> = rows
            .iter()
            .map(|row| {
                self.class_rows
                    .iter()
                    .position(|c| c == row)
                    .map_or(0, |p| p as i64)
            })
            .collect();
        Tensor::from_slice(&classes).one_hot(4).to_kind(Kind::Float)
    }
}

impl LikelihoodScorer for Stub {
    /// 0 for the image's class row, −5 for every other candidate.
    fn log_likelihood(&self, images: &Tensor, candidates: &Tensor) -> Tensor {
        let text = self.embed_texts(candidates); // (C, 4)
        let image = self.embed_images(images); // (B, 4)
        (image.matmul(&text.tr()) - 1.0) * 5.0
    }
    fn generate(&self, images: &Tensor, _config: &GenerateConfig) -> Vec<Vec<i64>> {
        vec![Vec::new(); images.size()[0] as usize]
    }
}

fn names() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}

fn plain() -> ZeroShotConfig {
    ZeroShotConfig {
        prompts: vec!["{}".into()],
        length_normalize: false,
        batch: 7,
    }
}

#[test]
fn a_perfect_model_scores_everything_and_a_shuffled_one_chance() {
    let tokenizer = tokenizer();
    let (imgs, labels) = images(400);
    let perfect = Stub::new(&tokenizer, None);
    let acc = zero_shot_contrastive(
        &perfect,
        &tokenizer,
        SEQ,
        &imgs,
        &labels,
        &names(),
        &plain(),
    );
    assert_eq!(acc, 1.0);
    let acc = zero_shot_likelihood(
        &perfect,
        &tokenizer,
        SEQ,
        &imgs,
        &labels,
        &names(),
        &plain(),
    );
    assert_eq!(acc, 1.0);

    // Shuffled within each batch of 7: the embedding of another image.
    let shuffled = Stub::new(&tokenizer, Some(3));
    let acc = zero_shot_contrastive(
        &shuffled,
        &tokenizer,
        SEQ,
        &imgs,
        &labels,
        &names(),
        &plain(),
    );
    assert!((acc - 0.25).abs() < 0.1, "shuffled accuracy {acc}");

    // Retrieval: each image owns the caption of its class; with four classes repeated, R@1 of
    // image→text is 1 (every own caption ties with same-class ones, and ties go to the
    // earliest text, which may be another image's), so check on four distinct images.
    let (four, _) = images(4);
    let captions: Vec<Vec<String>> = CLASSES.iter().map(|c| vec![c.to_string()]).collect();
    let r = retrieval_contrastive(&perfect, &tokenizer, SEQ, &four, &captions, 2);
    assert_eq!(
        (r.image_to_text.r1, r.text_to_image.r1, r.text_to_image.r5),
        (1.0, 1.0, 1.0)
    );

    // Compositional: the true caption is the image's class, the negative another class.
    let items: Vec<PreferenceItem> = (0..4)
        .map(|i| PreferenceItem {
            image: i,
            kind: if i < 2 { "swap" } else { "replace" }.into(),
            caption: CLASSES[i].into(),
            negative: CLASSES[(i + 1) % 4].into(),
        })
        .collect();
    let acc = compositional_contrastive(&perfect, &tokenizer, SEQ, &four, &items, 3);
    assert_eq!((acc["swap"], acc["replace"], acc["all"]), (1.0, 1.0, 1.0));
}

/// The batched classifier picks, for every image, the class that scoring each class alone
/// ranks first.
#[test]
fn batched_likelihood_classification_equals_brute_force() {
    tch::manual_seed(3);
    let tokenizer = tokenizer();
    let vs = VarStore::new(Device::Cpu);
    let mut config = CapConfig::tiny();
    config.decoder.vocab_size = tokenizer.vocab_size() as i64;
    let cap = CapModel::new(vs.root(), &config);
    // The head starts at zero; give it weights so classes score differently.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.contains("head") {
                let _ = var.normal_(0.0, 0.5);
            }
        }
    });
    let images = Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu));
    let rows: Vec<Vec<i64>> = CLASSES.iter().map(|c| tokenizer.encode(c, SEQ)).collect();
    let brute: Vec<i64> = (0..6)
        .map(|i| {
            let image = images.narrow(0, i, 1);
            let scores: Vec<f64> = rows
                .iter()
                .map(|row| {
                    let candidate = Tensor::from_slice(row).view([1, SEQ as i64]);
                    cap.score(&image, &candidate).double_value(&[0, 0])
                })
                .collect();
            let best = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            best as i64
        })
        .collect();
    let accuracy = zero_shot_likelihood(&cap, &tokenizer, SEQ, &images, &brute, &names(), &plain());
    assert_eq!(accuracy, 1.0);
}
