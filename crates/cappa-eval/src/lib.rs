//! Evaluators for frozen image encoders: few-shot and linear probes, zero-shot classification,
//! retrieval, captioning metrics (BLEU, ROUGE-L, CIDEr-D as pycocoevalcap computes them),
//! compositional preference, perplexity and vision-and-language transfer on a frozen encoder.
//!
//! Boundaries: evaluators see models only through small traits ([`model::ImageEncoder`],
//! [`model::TextScorer`], [`model::Captioner`]), never concrete model types; the traits are
//! implemented for cappa's CLIP and Cap models, and anyone's encoder can implement them.
//! Zero-shot classification, retrieval and compositional preference all run on one scoring
//! path ([`scoring`]): (images × candidate texts) score matrices, similarities for two-tower
//! models and summed log-likelihoods for captioners. Data comes from `cappa-data`: the scene
//! world's held-out split ([`scene`]; reports are [`report::EvalReport`]s, written and read
//! back as JSON), and real benchmarks from disk listed by an evaluation [`suite`] and run by
//! [`benchmarks`] (ImageFolder / CLIP_benchmark / CSV classification with
//! [`classification`] metrics, Karpathy / COCO retrieval and captioning, SugarCrepe / ARO,
//! VQA v2), their images streamed and their features cached by [`images`].
//!
//! ```no_run
//! use cappa_data::{scene::{SceneConfig, SceneWorld}, pipeline::Normalize, tokenizer::Tokenizer};
//! use cappa_eval::{model::Evaluable, report, scene::{SceneEvalSet, SceneEvalSizes}, tasks};
//!
//! let dir = std::path::Path::new("runs/demo/checkpoints/step-00000200");
//! let (_vs, model, _) = cappa_models::checkpoint::load(dir, tch::Device::Cpu)?;
//! let tokenizer = Tokenizer::load(dir.join("tokenizer.json"))?;
//! let world = SceneWorld::eval(SceneConfig::default(), 0)?;
//! let model = Evaluable::of(&model);
//! let sizes = SceneEvalSizes { test: 200, pool: 400 };
//! let set = SceneEvalSet::build(&world, sizes, model.encoder().image_size(), Normalize::MinusOneToOne);
//! // One task on its own: zero-shot shape classification, for either kind of model.
//! let (labels, classes) = (&set.test.labels["shape"], &set.class_names["shape"]);
//! let config = tasks::ZeroShotConfig::default();
//! let accuracy = tasks::zero_shot(model.scorer(), &tokenizer, 24, &set.test.images, labels, classes, &config);
//! // Every task, as a report written to a directory and read back.
//! let results = report::evaluate_scene(model, &tokenizer, &set, &report::EvalOptions::new(24));
//! report::write_report(std::path::Path::new("eval"), &results)?;
//! let again: report::EvalReport = cappa_io::read_json(std::path::Path::new("eval/results.json"))?;
//! println!("zero-shot shape {accuracy:.3}, {} model", again.model_kind);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod benchmarks;
pub mod caption_metrics;
pub mod classification;
pub mod images;
pub mod model;
pub mod probe;
pub mod report;
pub mod scene;
pub mod scoring;
pub mod suite;
pub mod tasks;
pub mod transfer;
