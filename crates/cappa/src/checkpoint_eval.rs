//! Evaluating a trainer checkpoint on the scene world's held-out split and on evaluation
//! suites of real benchmarks: what `cappa eval` and the experiments share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cappa_data::pipeline::Normalize;
use cappa_data::scene::{SceneConfig, SceneWorld};
use cappa_data::tokenizer::Tokenizer;
use cappa_eval::benchmarks::{self, BenchmarkReport, BenchmarkResults, Opened, SuiteReport};
use cappa_eval::images::{peak_rss_bytes, FeatureCache};
use cappa_eval::model::Evaluable;
use cappa_eval::report::{evaluate_scene, EvalOptions, EvalReport};
use cappa_eval::scene::{SceneEvalSet, SceneEvalSizes};
use cappa_eval::suite::Suite;
use cappa_eval::tasks::MAX_LIKELIHOOD_RETRIEVAL_PAIRS;
use cappa_eval::transfer::{TransferConfig, MIN_TRANSFER_SEQ_LEN};
use cappa_models::Model;
use cappa_trainer::tokens::check_tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::VarStore;
use tch::Device;

/// Which evaluations to run and on how many held-out images: `cappa eval`'s flags (this
/// struct is their clap definition, so the defaults below are the only ones) and a preset's
/// `eval` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct EvalPlan {
    /// Held-out test images.
    #[arg(long, default_value_t = EvalPlan::DEFAULT.test)]
    pub test: u64,
    /// Held-out images for the few-shot pool and transfer training.
    #[arg(long, default_value_t = EvalPlan::DEFAULT.pool)]
    pub pool: u64,
    /// Beam size of a second captioning pass (captioners; 1 = greedy only).
    #[arg(long, default_value_t = EvalPlan::DEFAULT.beam)]
    pub beam: i64,
    /// Train and evaluate the frozen-encoder transfer decoders (captioning, VQA).
    #[arg(long)]
    pub transfer: bool,
    /// Transfer decoder training steps.
    #[arg(long, default_value_t = EvalPlan::DEFAULT.transfer_steps)]
    pub transfer_steps: usize,
    /// Captioners: the most (image, caption) pairs likelihood retrieval may score; above it
    /// retrieval is skipped with a note (each pair is one decoder pass).
    #[arg(long, default_value_t = EvalPlan::DEFAULT.max_retrieval_pairs)]
    #[serde(skip_serializing_if = "is_default_pair_limit")]
    pub max_retrieval_pairs: usize,
}

/// Saved plans leave the pair limit out at its default, so plans written before it existed
/// still match.
fn is_default_pair_limit(pairs: &usize) -> bool {
    *pairs == MAX_LIKELIHOOD_RETRIEVAL_PAIRS
}

impl EvalPlan {
    /// The defaults of every field (and of `cappa eval`'s flags).
    pub const DEFAULT: EvalPlan = EvalPlan {
        test: 200,
        pool: 400,
        beam: 1,
        transfer: false,
        transfer_steps: 300,
        max_retrieval_pairs: MAX_LIKELIHOOD_RETRIEVAL_PAIRS,
    };
}

impl Default for EvalPlan {
    fn default() -> Self {
        EvalPlan::DEFAULT
    }
}

/// What a checkpoint was trained with, from its `experiment.json` (defaults otherwise).
#[derive(Debug, Clone)]
pub struct TrainedWith {
    pub scene: SceneConfig,
    pub seq_len: usize,
    pub normalize: Normalize,
    pub seed: u64,
}

impl TrainedWith {
    /// Reads `DIR/experiment.json`; without one, the default world, 24-token captions and
    /// [-1, 1] pixels (said on stderr).
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("experiment.json");
        let value: Value = match cappa_io::read_json(&path) {
            Ok(value) => value,
            Err(error) if !error.is_not_found() => return Err(error.into()),
            Err(_) => {
                eprintln!(
                    "note: {} not found; evaluating with the default scene world, 24-token \
                     captions and [-1, 1] pixels",
                    path.display()
                );
                return Ok(TrainedWith {
                    scene: SceneConfig::default(),
                    seq_len: 24,
                    normalize: Normalize::MinusOneToOne,
                    seed: 0,
                });
            }
        };
        fn field<T: serde::de::DeserializeOwned>(
            value: &Value,
            name: &str,
            path: &Path,
        ) -> Result<T> {
            let v = value["data"]
                .get(name)
                .cloned()
                .with_context(|| format!("{}: no data.{name}", path.display()))?;
            serde_json::from_value(v).with_context(|| format!("{}: data.{name}", path.display()))
        }
        Ok(TrainedWith {
            scene: field(&value, "scene", &path)?,
            seq_len: field(&value, "seq_len", &path)?,
            normalize: field(&value, "normalize", &path)?,
            seed: value["seed"].as_u64().unwrap_or(0),
        })
    }
}

/// A trainer (or any) checkpoint loaded for evaluation: the model, its tokenizer and what it
/// was trained with.
pub struct LoadedCheckpoint {
    _vs: VarStore,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub trained_with: TrainedWith,
    pub dir: PathBuf,
}

impl std::fmt::Debug for LoadedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCheckpoint")
            .field("dir", &self.dir)
            .field("trained_with", &self.trained_with)
            .finish_non_exhaustive()
    }
}

/// The checkpoint directory `path` names: `path` itself when it holds a model, else the one
/// the trainer's `latest` file points at, where `path` is that file, the `checkpoints/`
/// directory holding it, or the run directory above that.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    use cappa_trainer::checkpoint::LATEST_FILE;
    let latest = if path.is_file() && path.file_name() == Some(LATEST_FILE.as_ref()) {
        path.to_path_buf()
    } else if path.join(cappa_models::checkpoint::CONFIG_FILE).exists() {
        return Ok(path.to_path_buf());
    } else if path.join(LATEST_FILE).is_file() {
        path.join(LATEST_FILE)
    } else if path.join("checkpoints").join(LATEST_FILE).is_file() {
        path.join("checkpoints").join(LATEST_FILE)
    } else {
        return Ok(path.to_path_buf());
    };
    let name = std::fs::read_to_string(&latest)
        .with_context(|| format!("reading {}", latest.display()))?;
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && !name.contains(['/', '\\']),
        "{} should name a checkpoint directory beside it (e.g. step-00000500) but holds {name:?}; \
         pass the checkpoint directory itself",
        latest.display()
    );
    Ok(latest.with_file_name(name))
}

impl LoadedCheckpoint {
    /// Loads `dir` (`config.json`, `model.safetensors`, `tokenizer.json`, optionally
    /// `experiment.json`) onto `device`. `dir` may also be a run directory, its
    /// `checkpoints/` or the `latest` file in it: see [`resolve_checkpoint`].
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let dir = &resolve_checkpoint(dir)?;
        let (vs, model, config) = cappa_models::checkpoint::load(dir, device)
            .with_context(|| format!("loading the checkpoint {}", dir.display()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::load(&tokenizer_path)
            .with_context(|| format!("loading {}", tokenizer_path.display()))?;
        // A model evaluated with another tokenizer's ids would pool and stop at wrong tokens.
        let config_path = dir.join(cappa_models::checkpoint::CONFIG_FILE);
        check_tokenizer(&config, &config_path, &tokenizer, &tokenizer_path)?;
        Ok(LoadedCheckpoint {
            _vs: vs,
            model,
            tokenizer,
            trained_with: TrainedWith::read(dir)?,
            dir: dir.to_path_buf(),
        })
    }

    pub fn evaluable(&self) -> Evaluable<'_> {
        Evaluable::of(&self.model)
    }

    /// The held-out evaluation sets of the world the model was trained on.
    pub fn scene_set(&self, plan: &EvalPlan) -> Result<SceneEvalSet> {
        let with = &self.trained_with;
        let world = SceneWorld::eval(with.scene.clone(), with.seed)?;
        let sizes = SceneEvalSizes {
            test: plan.test,
            pool: plan.pool,
        };
        let image_size = self.evaluable().encoder().image_size();
        Ok(SceneEvalSet::build(
            &world,
            sizes,
            image_size,
            with.normalize,
        ))
    }

    /// Every scene-world task of `plan`.
    pub fn evaluate_scene(&self, plan: &EvalPlan) -> Result<EvalReport> {
        let set = self.scene_set(plan)?;
        let seq_len = self.trained_with.seq_len;
        let mut options = EvalOptions::new(seq_len);
        options.beam_size = plan.beam;
        options.max_retrieval_pairs = plan.max_retrieval_pairs;
        if plan.transfer {
            options.transfer = Some(TransferConfig {
                steps: plan.transfer_steps,
                seq_len: seq_len.max(MIN_TRANSFER_SEQ_LEN),
                ..TransferConfig::default()
            });
        }
        Ok(evaluate_scene(
            self.evaluable(),
            &self.tokenizer,
            &set,
            &options,
        ))
    }
}

/// A suite resolved, filtered and opened: every path checked and every annotation file read,
/// before any model work.
#[derive(Debug)]
pub struct OpenedSuite {
    pub name: String,
    pub benchmarks: Vec<Opened>,
}

impl OpenedSuite {
    /// Resolves `suite` (a built-in name or a file), keeps the benchmarks in `only` (all when
    /// empty), checks every path and opens every benchmark.
    pub fn open(suite: &str, only: &[String]) -> Result<Self> {
        let suite = Suite::resolve(suite)?.select(only)?;
        suite.check()?;
        let benchmarks = suite
            .benchmarks
            .iter()
            .map(benchmarks::open)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OpenedSuite {
            name: suite.name,
            benchmarks,
        })
    }
}

/// Where `cappa eval` caches benchmark features by default: `CHECKPOINT/feature-cache`.
pub const FEATURE_CACHE_DIR: &str = "feature-cache";

impl LoadedCheckpoint {
    /// A feature cache in `dir` keyed by this checkpoint's weights.
    pub fn feature_cache(&self, dir: &Path) -> Result<FeatureCache> {
        let weights = self.dir.join(cappa_models::checkpoint::WEIGHTS_FILE);
        let digest = cappa_io::FileDigest::of(&weights)?;
        Ok(FeatureCache {
            dir: dir.to_path_buf(),
            model: digest.xxh3,
        })
    }

    /// Every benchmark of `suite`: the scene world's with `plan`, the others from disk,
    /// their features cached in `cache` when given.
    pub fn evaluate_suite(
        &self,
        suite: &OpenedSuite,
        plan: &EvalPlan,
        cache: Option<&Path>,
    ) -> Result<SuiteReport> {
        let with = &self.trained_with;
        let mut context = benchmarks::Context::new(
            self.evaluable(),
            &self.tokenizer,
            with.seq_len,
            with.normalize,
        );
        context.cache = cache.map(|dir| self.feature_cache(dir)).transpose()?;
        let mut reports = Vec::new();
        for opened in &suite.benchmarks {
            let report = if opened.is_scene() {
                let started = std::time::Instant::now();
                let scene = self.evaluate_scene(plan)?;
                BenchmarkReport {
                    name: opened.benchmark.name.clone(),
                    splits: Default::default(),
                    results: BenchmarkResults::Scene(Box::new(scene)),
                    seconds: started.elapsed().as_secs_f64(),
                }
            } else {
                benchmarks::run(&context, opened)?
            };
            reports.push(report);
        }
        Ok(SuiteReport {
            suite: suite.name.clone(),
            model_kind: self.evaluable().kind(),
            benchmarks: reports,
            peak_rss_bytes: peak_rss_bytes(),
        })
    }
}

impl OpenedSuite {
    /// The suite's benchmarks as JSON: what decides its results (for reusing them).
    pub fn definition(&self) -> Value {
        let benchmarks: Vec<&cappa_eval::suite::Benchmark> =
            self.benchmarks.iter().map(|b| &b.benchmark).collect();
        serde_json::json!({ "name": self.name, "benchmarks": benchmarks })
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_checkpoint;
    use std::fs;

    #[test]
    fn a_run_its_checkpoints_and_latest_resolve_to_the_checkpoint_latest_names() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = run.path().join("checkpoints");
        for step in ["step-00000001", "step-00000002"] {
            fs::create_dir_all(checkpoints.join(step)).unwrap();
            fs::write(checkpoints.join(step).join("config.json"), "{}").unwrap();
        }
        fs::write(checkpoints.join("latest"), "step-00000001\n").unwrap();
        let want = checkpoints.join("step-00000001");
        for path in [
            run.path().to_path_buf(),
            checkpoints.clone(),
            checkpoints.join("latest"),
        ] {
            assert_eq!(
                resolve_checkpoint(&path).unwrap(),
                want,
                "{}",
                path.display()
            );
        }
        // A checkpoint directory is itself, whatever `latest` says.
        let other = checkpoints.join("step-00000002");
        assert_eq!(resolve_checkpoint(&other).unwrap(), other);
        fs::write(checkpoints.join("latest"), "../elsewhere\n").unwrap();
        let err = resolve_checkpoint(run.path()).unwrap_err().to_string();
        assert!(err.contains("latest") && err.contains("elsewhere"), "{err}");
    }
}
