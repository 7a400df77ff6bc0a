//! Evaluators on stub models whose answers are known, through the one scoring path for both
//! kinds of scorer (embedding similarity and likelihood): a perfect model scores 100 %, a
//! shuffled one chance, and hand-built caption sets give hand-computed recalls and preference
//! accuracies. Then the batched scoring path against the real (untrained) models' own scoring.

use cappa_data::tokenizer::Tokenizer;
use cappa_eval::model::{embedding_similarity, ImageEncoder, ScoreKind, TextScorer};
use cappa_eval::scoring::{paired_scores, score_matrix, tokens};
use cappa_eval::tasks::{
    class_scores, class_texts, compositional, retrieval, zero_shot, EvalError, PreferenceItem,
    ZeroShotConfig,
};
use cappa_models::{CapConfig, CapModel, Clip, ClipConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const CLASSES: [&str; 4] = ["red star", "blue ring", "green cross", "white heart"];
const SEQ: usize = 12;
/// A stub captioner's log-likelihood of a caption of another class than the image's.
const WRONG: f64 = -5.0;

fn tokenizer() -> Tokenizer {
    let texts = (0..40).map(|i| {
        format!(
            "a picture of a {} and {}",
            CLASSES[i % 4],
            CLASSES[(i + 1) % 4]
        )
    });
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

/// Phrasings a stub recognises, with the class each names: the class name, and the class
/// name after "a picture of a ".
fn phrasings() -> Vec<(String, i64)> {
    CLASSES
        .iter()
        .enumerate()
        .flat_map(|(class, name)| {
            [
                (name.to_string(), class as i64),
                (format!("a picture of a {name}"), class as i64),
            ]
        })
        .collect()
}

/// Embeds an image as the one-hot of its (optionally permuted) label and a text as the one-hot
/// of the class it names. As a similarity scorer its scores are 1 for a caption of the image's
/// class and 0 otherwise; as a likelihood scorer 0 and [`WRONG`].
struct Stub {
    kind: ScoreKind,
    /// Token rows of [`phrasings`], with their class.
    rows: Vec<(Vec<i64>, i64)>,
    /// Image k of a batch of n is embedded as the label of image (k + shift) mod n.
    shift: Option<i64>,
}

impl Stub {
    fn new(kind: ScoreKind, tokenizer: &Tokenizer, shift: Option<i64>) -> Self {
        let rows = phrasings()
            .into_iter()
            .map(|(text, class)| (tokenizer.encode(&text, SEQ), class))
            .collect();
        Stub { kind, rows, shift }
    }

    fn label_of(images: &Tensor) -> Tensor {
        images
            .select(1, 0)
            .select(1, 0)
            .select(1, 0)
            .to_kind(Kind::Int64)
    }

    /// One-hot (…, 4) of the class each token row (…, L) names (class 0 if none).
    fn classes_of(&self, tokens: &Tensor) -> Tensor {
        let size = tokens.size();
        let flat: Vec<Vec<i64>> = Vec::try_from(tokens.reshape([-1, SEQ as i64])).unwrap();
        let classes: Vec<i64> = flat
            .iter()
            .map(|row| {
                self.rows
                    .iter()
                    .find(|(known, _)| known == row)
                    .map_or(0, |&(_, class)| class)
            })
            .collect();
        let shape: Vec<i64> = size[..size.len() - 1].to_vec();
        Tensor::from_slice(&classes)
            .view(shape.as_slice())
            .one_hot(4)
            .to_kind(Kind::Float)
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

impl TextScorer for Stub {
    fn score_kind(&self) -> ScoreKind {
        self.kind
    }
    fn prepare_images(&self, images: &Tensor) -> Tensor {
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
    fn prepare_texts(&self, tokens: &Tensor) -> Tensor {
        match self.kind {
            ScoreKind::Similarity => self.classes_of(tokens),
            // Captioners keep the token rows.
            ScoreKind::LogLikelihood => tokens.shallow_clone(),
        }
    }
    fn score_prepared(&self, images: &Tensor, texts: &Tensor) -> Tensor {
        match self.kind {
            ScoreKind::Similarity => embedding_similarity(images, texts),
            ScoreKind::LogLikelihood => {
                let matches = embedding_similarity(images, &self.classes_of(texts));
                (matches - 1.0) * -WRONG
            }
        }
    }
}

const BOTH: [ScoreKind; 2] = [ScoreKind::Similarity, ScoreKind::LogLikelihood];

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
fn a_perfect_model_classifies_everything_and_a_shuffled_one_at_chance() {
    let tokenizer = tokenizer();
    let (imgs, labels) = images(400);
    for kind in BOTH {
        let perfect = Stub::new(kind, &tokenizer, None);
        let acc = zero_shot(
            &perfect,
            &tokenizer,
            SEQ,
            &imgs,
            &labels,
            &names(),
            &plain(),
        );
        assert_eq!(acc, 1.0, "{kind:?}");
        // Shuffled within each batch of 7: the embedding of another image.
        let shuffled = Stub::new(kind, &tokenizer, Some(3));
        let acc = zero_shot(
            &shuffled,
            &tokenizer,
            SEQ,
            &imgs,
            &labels,
            &names(),
            &plain(),
        );
        assert!(
            (acc - 0.25).abs() < 0.1,
            "{kind:?}: shuffled accuracy {acc}"
        );
    }
}

/// Similarity scorers sum the normalised class embeddings of every template and renormalise;
/// likelihood scorers read the first template only.
#[test]
fn class_texts_ensemble_templates_for_similarity_and_take_the_first_for_likelihood() {
    let tokenizer = tokenizer();
    let prompts = vec!["{}".to_string(), "a picture of a {}".to_string()];
    let similarity = Stub::new(ScoreKind::Similarity, &tokenizer, None);
    let (classes, lengths) = class_texts(&similarity, &tokenizer, SEQ, &names(), &prompts);
    assert!(lengths.is_none());
    // Both templates name class c: the sum 2·e_c renormalised is e_c.
    assert_eq!(classes, Tensor::eye(4, (Kind::Float, Device::Cpu)));
    // One template names the class, the other (an unknown phrasing) class 0:
    // (e_c + e_0) / ‖e_c + e_0‖.
    let odd = vec!["{}".to_string(), "{} again".to_string()];
    let (classes, _) = class_texts(&similarity, &tokenizer, SEQ, &names(), &odd);
    let half = std::f32::consts::FRAC_1_SQRT_2;
    let expected = Tensor::from_slice(&[
        1.0f32, 0.0, 0.0, 0.0, half, half, 0.0, 0.0, half, 0.0, half, 0.0, half, 0.0, 0.0, half,
    ])
    .view([4, 4]);
    assert!(classes.allclose(&expected, 1e-6, 1e-6, false), "{classes}");

    let likelihood = Stub::new(ScoreKind::LogLikelihood, &tokenizer, None);
    let (rows, lengths) = class_texts(&likelihood, &tokenizer, SEQ, &names(), &prompts);
    assert_eq!(rows, tokens(&tokenizer, &names(), SEQ));
    let counted: Vec<f32> = names()
        .iter()
        .map(|n| {
            let ids = tokenizer.encode(n, SEQ);
            ids.iter().filter(|&&id| id != tokenizer.pad_id()).count() as f32
        })
        .collect();
    assert_eq!(lengths.unwrap(), Tensor::from_slice(&counted));
}

#[test]
fn length_normalisation_divides_likelihoods_by_token_counts() {
    let tokenizer = tokenizer();
    let (imgs, _) = images(9);
    let likelihood = Stub::new(ScoreKind::LogLikelihood, &tokenizer, None);
    let raw = class_scores(&likelihood, &tokenizer, SEQ, &imgs, &names(), &plain());
    let per_token = ZeroShotConfig {
        length_normalize: true,
        ..plain()
    };
    let normalised = class_scores(&likelihood, &tokenizer, SEQ, &imgs, &names(), &per_token);
    let (_, lengths) = class_texts(&likelihood, &tokenizer, SEQ, &names(), &plain().prompts);
    assert_eq!(normalised, &raw / lengths.unwrap().unsqueeze(0));
    assert!(raw.min().double_value(&[]) == WRONG && raw.max().double_value(&[]) == 0.0);
    // Similarity scores are never length-normalised.
    let similarity = Stub::new(ScoreKind::Similarity, &tokenizer, None);
    assert_eq!(
        class_scores(&similarity, &tokenizer, SEQ, &imgs, &names(), &per_token),
        class_scores(&similarity, &tokenizer, SEQ, &imgs, &names(), &plain())
    );
}

/// Four images of classes 0..3 with two captions each; image 1's captions both name class 0
/// and image 3's first names class 2. Flattened: texts 0–3 name class 0 (owners 0, 0, 1, 1),
/// texts 4–6 class 2 (owners 2, 2, 3), text 7 class 3 (owner 3).
fn captions() -> Vec<Vec<String>> {
    let picture = |c: usize| format!("a picture of a {}", CLASSES[c]);
    vec![
        vec![CLASSES[0].into(), picture(0)],
        vec![CLASSES[0].into(), picture(0)],
        vec![CLASSES[2].into(), picture(2)],
        vec![CLASSES[2].into(), CLASSES[3].into()],
    ]
}

#[test]
fn retrieval_with_several_captions_per_image_matches_hand_computed_recall() {
    let tokenizer = tokenizer();
    let (four, _) = images(4);
    for kind in BOTH {
        let stub = Stub::new(kind, &tokenizer, None);
        let r = retrieval(&stub, &tokenizer, SEQ, &four, &captions(), 3, 1000).unwrap();
        // Image→text: images 0, 2, 3 rank one of their captions first; image 1 scores every
        // caption alike, so ties go by index and its first caption (text 2) ranks third.
        assert_eq!(
            (r.image_to_text.r1, r.image_to_text.r5, r.image_to_text.r10),
            (0.75, 1.0, 1.0),
            "{kind:?}"
        );
        // Text→image: texts 2 and 3 rank image 0 above their image 1 (second), text 6 ranks
        // image 2, then images 0 and 1 (tied, earlier) above its image 3 (fourth): 5 of 8 hit
        // at 1, all at 5.
        assert_eq!(
            (r.text_to_image.r1, r.text_to_image.r5, r.text_to_image.r10),
            (0.625, 1.0, 1.0),
            "{kind:?}"
        );
    }
}

#[test]
fn likelihood_retrieval_is_refused_above_the_pair_limit_and_similarity_is_not() {
    let tokenizer = tokenizer();
    let (four, _) = images(4);
    // 4 images × 8 captions = 32 pairs.
    let likelihood = Stub::new(ScoreKind::LogLikelihood, &tokenizer, None);
    let error = retrieval(&likelihood, &tokenizer, SEQ, &four, &captions(), 3, 31).unwrap_err();
    assert_eq!(
        error,
        EvalError::TooManyPairs {
            pairs: 32,
            limit: 31
        }
    );
    assert!(error.to_string().contains("max_retrieval_pairs"), "{error}");
    assert!(retrieval(&likelihood, &tokenizer, SEQ, &four, &captions(), 3, 32).is_ok());
    let similarity = Stub::new(ScoreKind::Similarity, &tokenizer, None);
    assert!(retrieval(&similarity, &tokenizer, SEQ, &four, &captions(), 3, 0).is_ok());
}

#[test]
fn compositional_preference_counts_strict_wins_per_kind() {
    let tokenizer = tokenizer();
    let (four, _) = images(4);
    let item = |image: usize, kind: &str, caption: usize, negative: usize| PreferenceItem {
        image,
        kind: kind.into(),
        caption: CLASSES[caption].into(),
        negative: CLASSES[negative].into(),
    };
    let items = vec![
        item(0, "swap", 0, 1),
        item(1, "swap", 1, 2),
        // Image 0 again, gathered a second time.
        item(0, "swap", 0, 3),
        item(2, "replace", 2, 0),
        // Neither caption names image 3's class: a tie, which is no preference.
        item(3, "replace", 0, 1),
        // The negative names the image's class: a loss.
        item(3, "replace", 1, 3),
    ];
    for kind in BOTH {
        let stub = Stub::new(kind, &tokenizer, None);
        let acc = compositional(&stub, &tokenizer, SEQ, &four, &items, 4);
        assert_eq!(acc["swap"], 1.0, "{kind:?}");
        assert!((acc["replace"] - 1.0 / 3.0).abs() < 1e-12, "{kind:?}");
        assert!((acc["all"] - 4.0 / 6.0).abs() < 1e-12, "{kind:?}");
    }
}

fn untrained_captioner(tokenizer: &Tokenizer) -> (VarStore, CapModel) {
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let mut config = CapConfig::tiny();
    config.decoder.vocab_size = tokenizer.vocab_size() as i64;
    let cap = CapModel::new(vs.root(), &config);
    // The head starts at zero; give it weights so captions score differently.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.contains("head") {
                let _ = var.normal_(0.0, 0.5);
            }
        }
    });
    (vs, cap)
}

/// The batched classifier picks, for every image, the class that scoring each class alone
/// ranks first.
#[test]
fn batched_likelihood_classification_equals_brute_force() {
    let tokenizer = tokenizer();
    let (_vs, cap) = untrained_captioner(&tokenizer);
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
    let accuracy = zero_shot(&cap, &tokenizer, SEQ, &images, &brute, &names(), &plain());
    assert_eq!(accuracy, 1.0);
}

/// The scoring path's matrices and paired scores equal what the models compute directly
/// (up to float rounding, which depends on batching).
#[test]
fn scoring_path_matches_the_models_own_scores() {
    let tokenizer = tokenizer();
    let (_vs, cap) = untrained_captioner(&tokenizer);
    let images = Tensor::randn([5, 3, 32, 32], (Kind::Float, Device::Cpu));
    let texts: Vec<String> = phrasings().into_iter().map(|(text, _)| text).collect();
    let rows = tokens(&tokenizer, &texts, SEQ); // (8, L)
    let direct = cap.score(&images, &rows);
    let matrix = score_matrix(&cap, &images, &rows, 2);
    assert!(matrix.allclose(&direct, 1e-4, 1e-4, false));
    // Paired: text k against image k mod 5, and a second column of text 7 − k.
    let image_of: Vec<usize> = (0..8).map(|k| k % 5).collect();
    let reversed = rows.flip([0]);
    let paired = paired_scores(
        &cap,
        &images,
        &image_of,
        &[rows.shallow_clone(), reversed],
        3,
    );
    for k in 0..8usize {
        let i = (k % 5) as i64;
        let (first, second) = (
            direct.double_value(&[i, k as i64]),
            direct.double_value(&[i, 7 - k as i64]),
        );
        assert!((paired.double_value(&[k as i64, 0]) - first).abs() < 1e-4);
        assert!((paired.double_value(&[k as i64, 1]) - second).abs() < 1e-4);
    }

    tch::manual_seed(4);
    let vs = VarStore::new(Device::Cpu);
    let mut config = ClipConfig::tiny();
    config.text.vocab_size = tokenizer.vocab_size() as i64;
    let clip = Clip::new(vs.root(), &config);
    let direct = tch::no_grad(|| {
        clip.encode_image(&images, false)
            .matmul(&clip.encode_text(&rows, false).tr())
    });
    let text_sides = clip.prepare_texts(&rows);
    let matrix = score_matrix(&clip, &images, &text_sides, 2);
    assert!(matrix.allclose(&direct, 1e-5, 1e-5, false));
    let paired = paired_scores(&clip, &images, &image_of, &[rows.shallow_clone()], 3);
    for k in 0..8usize {
        let expected = direct.double_value(&[(k % 5) as i64, k as i64]);
        assert!((paired.double_value(&[k as i64, 0]) - expected).abs() < 1e-5);
    }
}
