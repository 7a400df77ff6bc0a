//! The loader: samples from a [`SampleSource`] become batches — images decoded, transformed
//! and normalised in parallel (rayon), captions tokenised — on a background thread that keeps
//! a bounded queue of batches ready.
//!
//! Determinism: samples are read in source order on one thread; every random choice for a
//! sample (crop, flip, which caption) comes from an RNG keyed by (seed, epoch, position of the
//! sample), so the batches are identical whatever the number of decoding threads. A batch
//! carries the [`LoaderCursor`] just after it: restarting from that cursor continues with
//! exactly the next batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::DataError;
use crate::pipeline::{decode, write_chw, DecodeLimits, Normalize, TrainTransform};
use crate::readers::WebDataset;
use crate::sample::{BadSample, Sample, SkipCounts, SkipReason};
use crate::tokenizer::Tokenizer;

/// Where a source stands: the epoch and the number of samples (good or bad) consumed in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCursor {
    pub epoch: u64,
    pub position: u64,
}

/// A stream of samples in a deterministic order that can be resumed from a cursor.
pub trait SampleSource: Send {
    /// The next sample, a skipped one, or `None` when a finite source is exhausted.
    fn next_sample(&mut self) -> Option<Result<Sample, BadSample>>;
    /// The position just after the last sample returned.
    fn cursor(&self) -> SourceCursor;
    /// Continues from a cursor taken earlier from a source built the same way.
    fn restore(&mut self, cursor: SourceCursor) -> Result<(), DataError>;
}

/// Samples a loader must have seen before it checks the fraction of bad ones, so that a few
/// broken files at the start of a stream (one bad image among the first ten would be 10 %) do
/// not stop a run whose data is fine on the whole.
pub const MIN_SAMPLES_FOR_BAD_CHECK: u64 = 1000;

/// Settings of a [`Loader`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Caption tokens per example (EOS included, padded).
    pub seq_len: usize,
    pub transform: TrainTransform,
    pub normalize: Normalize,
    pub limits: DecodeLimits,
    pub seed: u64,
    /// Decoding threads (rayon); batches do not depend on it.
    pub threads: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Stop with an error once more than this fraction of the samples seen were bad (checked
    /// after at least `min_samples_for_bad_check` samples).
    pub max_bad_fraction: f64,
    /// See [`MIN_SAMPLES_FOR_BAD_CHECK`], the default.
    pub min_samples_for_bad_check: u64,
    /// Build batches in page-locked memory (for a CUDA consumer: asynchronous copies to the
    /// GPU that overlap with its compute). Needs libtorch with CUDA.
    #[serde(default)]
    pub pin_memory: bool,
}

impl Default for LoaderConfig {
    /// Batches of 32 images of 64 × 64 pixels (the scene world's size, resized as CapPa does,
    /// in [-1, 1]) with 24 caption tokens; one decoding thread per core, 4 batches ahead; stop
    /// when more than 10 % of the samples are bad; no pinned memory.
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            seq_len: 24,
            transform: TrainTransform::cappa(64),
            normalize: Normalize::MinusOneToOne,
            limits: DecodeLimits::default(),
            seed: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 4,
            max_bad_fraction: 0.1,
            min_samples_for_bad_check: MIN_SAMPLES_FOR_BAD_CHECK,
            pin_memory: false,
        }
    }
}

/// Where a loader stands after a batch: restart from it to continue with the next batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderCursor {
    pub source: SourceCursor,
    pub batches: u64,
    /// Samples seen (good and bad) and bad ones by reason, since the start of the run.
    pub seen: u64,
    pub skipped: SkipCounts,
}

/// A batch ready for a model.
#[derive(Debug)]
pub struct Batch {
    /// (B, 3, H, W) f32.
    pub images: Tensor,
    /// (B, L) i64 caption tokens.
    pub tokens: Tensor,
    /// The caption each row was tokenised from.
    pub captions: Vec<String>,
    pub keys: Vec<String>,
    /// The position just after this batch.
    pub cursor: LoaderCursor,
    /// Seconds the producer spent building this batch.
    pub build_seconds: f64,
}

/// Batches from a source, prepared on a background thread.
#[derive(Debug)]
pub struct Loader {
    receiver: Option<Receiver<Result<Batch, DataError>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts the background thread. With `resume`, the source is restored to that cursor and
    /// the first batch is the one that followed it.
    pub fn start(
        mut source: Box<dyn SampleSource>,
        tokenizer: Arc<Tokenizer>,
        config: LoaderConfig,
        resume: Option<LoaderCursor>,
    ) -> Result<Self, DataError> {
        let mut cursor = resume.unwrap_or_default();
        source.restore(cursor.source)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .thread_name(|i| format!("cappa-decode-{i}"))
            .build()
            .expect("a rayon pool with a positive thread count starts");
        let (sender, receiver) = bounded(config.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("cappa-loader".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = pool
                        .install(|| next_batch(source.as_mut(), &tokenizer, &config, &mut cursor));
                    let done = !matches!(result, Ok(Some(_)));
                    let item = match result {
                        Ok(Some(mut batch)) => {
                            batch.build_seconds = started.elapsed().as_secs_f64();
                            Ok(batch)
                        }
                        Ok(None) => break,
                        Err(error) => Err(error),
                    };
                    if sender.send(item).is_err() || done {
                        break;
                    }
                }
            })
            .expect("the loader thread starts");
        Ok(Self {
            receiver: Some(receiver),
            stop,
            handle: Some(handle),
        })
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full queue.
        self.receiver.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The RNG for everything random about one sample.
fn sample_rng(seed: u64, cursor: SourceCursor) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(cursor.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ cursor.position);
    rng
}

struct Prepared {
    pixels: Vec<f32>,
    caption: String,
    key: String,
}

/// Reads, decodes and tokenises the next batch; `None` when a finite source ran out before a
/// full batch (the remainder is dropped, as a training loader does).
fn next_batch(
    source: &mut dyn SampleSource,
    tokenizer: &Tokenizer,
    config: &LoaderConfig,
    cursor: &mut LoaderCursor,
) -> Result<Option<Batch>, DataError> {
    let size = config.transform.size as usize;
    let pixels_per_image = 3 * size * size;
    let mut prepared: Vec<Prepared> = Vec::with_capacity(config.batch_size);
    while prepared.len() < config.batch_size {
        // Read what is still missing, in source order, then prepare those in parallel.
        let missing = config.batch_size - prepared.len();
        let mut raw = Vec::with_capacity(missing);
        while raw.len() < missing {
            let position = source.cursor();
            match source.next_sample() {
                None => return Ok(None),
                Some(Ok(sample)) => raw.push((position, sample)),
                Some(Err(bad)) => {
                    cursor.seen += 1;
                    cursor.skipped.add(bad.reason);
                }
            }
        }
        let results: Vec<_> = raw
            .into_par_iter()
            .map(|(position, sample)| prepare(&sample, position, config, pixels_per_image))
            .collect();
        for result in results {
            cursor.seen += 1;
            match result {
                Ok(p) => prepared.push(p),
                Err(reason) => cursor.skipped.add(reason),
            }
        }
        check_bad_fraction(config, cursor)?;
    }
    cursor.source = source.cursor();
    cursor.batches += 1;
    let b = config.batch_size as i64;
    let mut pixels = Vec::with_capacity(config.batch_size * pixels_per_image);
    let mut captions = Vec::with_capacity(config.batch_size);
    let mut keys = Vec::with_capacity(config.batch_size);
    let mut token_ids = Vec::with_capacity(config.batch_size * config.seq_len);
    for p in prepared {
        pixels.extend_from_slice(&p.pixels);
        token_ids.extend(tokenizer.encode(&p.caption, config.seq_len));
        captions.push(p.caption);
        keys.push(p.key);
    }
    let s = size as i64;
    let mut images = Tensor::from_slice(&pixels).view([b, 3, s, s]);
    let mut tokens = Tensor::from_slice(&token_ids).view([b, config.seq_len as i64]);
    if config.pin_memory {
        images = images.pin_memory(tch::Device::Cuda(0));
        tokens = tokens.pin_memory(tch::Device::Cuda(0));
    }
    Ok(Some(Batch {
        images,
        tokens,
        captions,
        keys,
        cursor: cursor.clone(),
        build_seconds: 0.0,
    }))
}

fn prepare(
    sample: &Sample,
    position: SourceCursor,
    config: &LoaderConfig,
    pixels_per_image: usize,
) -> Result<Prepared, SkipReason> {
    let mut rng = sample_rng(config.seed, position);
    let image = decode(&sample.image, &config.limits)?;
    let image = config.transform.apply(&image, &mut rng);
    let caption = match sample.captions.len() {
        0 => return Err(SkipReason::MissingCaption),
        n => sample.captions[rng.random_range(0..n)].clone(),
    };
    let mut pixels = vec![0f32; pixels_per_image];
    write_chw(&image, config.normalize, &mut pixels);
    Ok(Prepared {
        pixels,
        caption,
        key: sample.key.clone(),
    })
}

fn check_bad_fraction(config: &LoaderConfig, cursor: &LoaderCursor) -> Result<(), DataError> {
    let bad = cursor.skipped.total();
    if cursor.seen >= config.min_samples_for_bad_check
        && bad as f64 > config.max_bad_fraction * cursor.seen as f64
    {
        return Err(DataError::TooManyBad {
            bad,
            seen: cursor.seen,
            threshold: config.max_bad_fraction,
        });
    }
    Ok(())
}

/// Webdataset shards as an endless stream: each rank reads its own shards (every
/// `world_size`-th, starting at `rank`), in an order reshuffled every epoch from the seed.
#[derive(Debug)]
pub struct ShardSource {
    shards: Vec<std::path::PathBuf>,
    seed: u64,
    cursor: SourceCursor,
    reader: WebDataset,
}

impl ShardSource {
    /// Fails when this rank would get no shard.
    pub fn new(
        all_shards: Vec<std::path::PathBuf>,
        rank: usize,
        world_size: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        let shards: Vec<_> = all_shards
            .into_iter()
            .skip(rank)
            .step_by(world_size.max(1))
            .collect();
        if shards.is_empty() {
            return Err(DataError::format(
                "shards",
                format!(
                    "rank {rank} of {world_size} gets no shard: give at least {world_size} shards"
                ),
            ));
        }
        let reader = WebDataset::new(epoch_order(&shards, seed, 0));
        Ok(Self {
            shards,
            seed,
            cursor: SourceCursor::default(),
            reader,
        })
    }
}

/// The shard order of an epoch: a seeded Fisher–Yates shuffle.
fn epoch_order(shards: &[std::path::PathBuf], seed: u64, epoch: u64) -> Vec<std::path::PathBuf> {
    let mut order = shards.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

impl SampleSource for ShardSource {
    fn next_sample(&mut self) -> Option<Result<Sample, BadSample>> {
        // An epoch that yields nothing at all would loop forever; give up after one empty pass.
        for _ in 0..2 {
            if let Some(item) = self.reader.next() {
                self.cursor.position += 1;
                return Some(item);
            }
            let empty_epoch = self.cursor.position == 0;
            self.cursor = SourceCursor {
                epoch: self.cursor.epoch + 1,
                position: 0,
            };
            self.reader = WebDataset::new(epoch_order(&self.shards, self.seed, self.cursor.epoch));
            if empty_epoch {
                return None;
            }
        }
        None
    }

    fn cursor(&self) -> SourceCursor {
        self.cursor
    }

    fn restore(&mut self, cursor: SourceCursor) -> Result<(), DataError> {
        self.reader = WebDataset::new(epoch_order(&self.shards, self.seed, cursor.epoch));
        self.cursor = SourceCursor {
            epoch: cursor.epoch,
            position: 0,
        };
        while self.cursor.position < cursor.position {
            if self.reader.next().is_none() {
                return Err(DataError::format(
                    "shards",
                    format!(
                        "cannot resume at sample {} of epoch {}: the shards changed since the checkpoint",
                        cursor.position, cursor.epoch
                    ),
                ));
            }
            self.cursor.position += 1;
        }
        Ok(())
    }
}

/// The built-in scene world as an endless stream: rank `r` of `w` takes samples
/// `r, r + w, r + 2w, …` of the world's training split. Every sample is generated from its
/// index alone, so resuming is exact and free.
#[derive(Debug)]
pub struct SceneSource {
    world: crate::scene::SceneWorld,
    rank: u64,
    world_size: u64,
    position: u64,
}

impl SceneSource {
    pub fn new(world: crate::scene::SceneWorld, rank: usize, world_size: usize) -> Self {
        Self {
            world,
            rank: rank as u64,
            world_size: world_size.max(1) as u64,
            position: 0,
        }
    }
}

impl SampleSource for SceneSource {
    fn next_sample(&mut self) -> Option<Result<Sample, BadSample>> {
        let index = self.position * self.world_size + self.rank;
        self.position += 1;
        let mut sample = self.world.sample(index);
        // Train on the (possibly noisy) training caption; the references are for evaluation.
        if let Some(caption) = sample.meta.get("training_caption").and_then(|c| c.as_str()) {
            sample.captions = vec![caption.to_owned()];
        }
        Some(Ok(sample))
    }

    fn cursor(&self) -> SourceCursor {
        SourceCursor {
            epoch: 0,
            position: self.position,
        }
    }

    fn restore(&mut self, cursor: SourceCursor) -> Result<(), DataError> {
        self.position = cursor.position;
        Ok(())
    }
}
