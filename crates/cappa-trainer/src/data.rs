//! The data of a run: the loader's settings, the training source (the scene world or
//! WebDataset shards, each rank reading its own slice), the scene worlds of the two splits, and
//! the run's tokenizer (given, trained on the training captions, or rank 0's).

use std::path::Path;

use cappa_data::loader::{
    LoaderConfig, SampleSource, SceneSource, ShardSource, MIN_SAMPLES_FOR_BAD_CHECK,
};
use cappa_data::pipeline::DecodeLimits;
use cappa_data::readers::{expand_paths, WebDataset};
use cappa_data::scene::{SceneWorld, Split};
use cappa_data::tokenizer::Tokenizer;
use cappa_torch_ext::dist::ProcessGroup;
use tch::Device;

use crate::checkpoint::TOKENIZER_FILE;
use crate::config::{ConfigError, DataKind, ExperimentConfig};
use crate::error::TrainError;

/// The loader's settings for batches of `batch_size` images of `image_size` pixels, drawn with
/// `seed`, delivered to `device`.
pub(crate) fn loader_config(
    config: &ExperimentConfig,
    image_size: i64,
    device: Device,
    batch_size: usize,
    seed: u64,
) -> LoaderConfig {
    let d = &config.data;
    let threads = if d.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        d.threads
    };
    LoaderConfig {
        batch_size,
        seq_len: d.seq_len,
        transform: config.train_transform(image_size),
        normalize: d.normalize,
        limits: DecodeLimits {
            max_pixels: d.max_pixels,
        },
        seed,
        threads,
        prefetch: d.prefetch,
        max_bad_fraction: d.max_bad_fraction,
        min_samples_for_bad_check: MIN_SAMPLES_FOR_BAD_CHECK,
        pin_memory: matches!(device, Device::Cuda(_)),
    }
}

/// The training samples of `rank` out of `world_size`.
pub(crate) fn training_source(
    config: &ExperimentConfig,
    rank: usize,
    world_size: usize,
) -> Result<Box<dyn SampleSource>, TrainError> {
    let d = &config.data;
    Ok(match d.kind {
        DataKind::Scene => Box::new(SceneSource::new(
            scene_world(config, Split::Train)?,
            rank,
            world_size,
        )),
        DataKind::Shards => Box::new(ShardSource::new(
            expand_paths(&d.shards)?,
            rank,
            world_size,
            config.seed,
        )?),
    })
}

/// The held-out samples of a run.
pub(crate) struct HeldOut {
    pub source: Box<dyn SampleSource>,
    /// The scene world's evaluation split, for its labels.
    pub world: Option<SceneWorld>,
}

/// The held-out samples: the scene world's evaluation split, or `data.validation_shards`;
/// `None` for shards without validation shards.
pub(crate) fn validation_source(config: &ExperimentConfig) -> Result<Option<HeldOut>, TrainError> {
    let d = &config.data;
    Ok(match d.kind {
        DataKind::Scene => {
            let world = scene_world(config, Split::Eval)?;
            Some(HeldOut {
                source: Box::new(SceneSource::new(world.clone(), 0, 1)),
                world: Some(world),
            })
        }
        DataKind::Shards if !d.validation_shards.is_empty() => Some(HeldOut {
            source: Box::new(ShardSource::new(
                expand_paths(&d.validation_shards)?,
                0,
                1,
                0,
            )?),
            world: None,
        }),
        DataKind::Shards => None,
    })
}

/// The scene world of a config's `split`.
pub(crate) fn scene_world(
    config: &ExperimentConfig,
    split: Split,
) -> Result<SceneWorld, TrainError> {
    SceneWorld::with_split(config.data.scene.clone(), config.seed, split)
        .map_err(|e| ConfigError::new("data.scene", e.to_string()).into())
}

/// The run's tokenizer: the checkpoint's when resuming; else `data.tokenizer` or one trained on
/// the training captions — on rank 0, which sends it to the other ranks of a data-parallel run.
pub(crate) fn run_tokenizer(
    config: &ExperimentConfig,
    resume_from: Option<&Path>,
    dist: Option<&ProcessGroup>,
) -> Result<Tokenizer, TrainError> {
    match (resume_from, &config.data.tokenizer, dist) {
        (Some(checkpoint), _, _) => Ok(Tokenizer::load(checkpoint.join(TOKENIZER_FILE))?),
        (None, _, Some(pg)) if pg.rank() != 0 => {
            let text = crate::parallel::broadcast_text(pg, None)?;
            Ok(Tokenizer::from_json(
                &text,
                Path::new("<rank 0's tokenizer>"),
            )?)
        }
        (None, given, dist) => {
            let tokenizer = match given {
                Some(path) => Tokenizer::load(path)?,
                None => train_tokenizer(config)?,
            };
            if let Some(pg) = dist {
                crate::parallel::broadcast_text(pg, Some(tokenizer.to_json()?))?;
            }
            Ok(tokenizer)
        }
    }
}

/// Trains the byte-level BPE on the first `data.tokenizer_captions` training captions.
fn train_tokenizer(config: &ExperimentConfig) -> Result<Tokenizer, TrainError> {
    let d = &config.data;
    let count = d.tokenizer_captions;
    let captions: Vec<String> = match d.kind {
        DataKind::Scene => {
            let world = scene_world(config, Split::Train)?;
            (0..count as u64)
                .flat_map(|i| {
                    let scene = world.scene(i);
                    let mut captions = world.captions(&scene, i);
                    captions.push(world.training_caption(&scene, i));
                    captions
                })
                .collect()
        }
        DataKind::Shards => WebDataset::new(expand_paths(&d.shards)?)
            .filter_map(Result::ok)
            .flat_map(|sample| sample.captions)
            .take(count)
            .collect(),
    };
    if captions.is_empty() {
        return Err(ConfigError::new(
            "data.shards",
            "no readable caption to train the tokenizer on; give data.tokenizer or check the shards",
        )
        .into());
    }
    Ok(Tokenizer::train_bpe(
        captions.into_iter(),
        d.vocab_size,
        d.lowercase,
    )?)
}
