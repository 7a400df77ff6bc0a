//! Evaluators for frozen image encoders: few-shot and linear probes, zero-shot classification,
//! retrieval, captioning metrics (BLEU, ROUGE-L, CIDEr-D as pycocoevalcap computes them),
//! compositional preference, perplexity and vision-and-language transfer on a frozen encoder.
//!
//! Boundaries: evaluators see models only through small traits ([`model::ImageEncoder`],
//! [`model::ContrastiveScorer`], [`model::LikelihoodScorer`]), never concrete model types; the
//! traits are implemented for cappa's CLIP and Cap models, and anyone's encoder can implement
//! them. Data comes from `cappa-data` (the scene world's held-out split, [`scene`]).
//!
//! ```no_run
//! use cappa_data::{scene::{SceneConfig, SceneWorld}, pipeline::Normalize, tokenizer::Tokenizer};
//! use cappa_eval::{model::Evaluable, report, scene::{SceneEvalSet, SceneEvalSizes}};
//!
//! let dir = std::path::Path::new("runs/demo/checkpoints/step-00000200");
//! let (_vs, model, _) = cappa_models::checkpoint::load(dir, tch::Device::Cpu)?;
//! let tokenizer = Tokenizer::load(dir.join("tokenizer.json"))?;
//! let world = SceneWorld::eval(SceneConfig::default(), 0)?;
//! let model = Evaluable::of(&model);
//! let sizes = SceneEvalSizes { test: 200, pool: 400 };
//! let set = SceneEvalSet::build(&world, sizes, model.encoder().image_size(), Normalize::MinusOneToOne);
//! let results = report::evaluate_scene(model, &tokenizer, &set, &report::EvalOptions::new(24));
//! println!("{}", serde_json::to_string_pretty(&results)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod caption_metrics;
pub mod model;
pub mod probe;
pub mod report;
pub mod scene;
pub mod tasks;
pub mod transfer;
