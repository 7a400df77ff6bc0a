//! The loader over real webdataset shards: batches do not depend on the number of decoding
//! threads, a run resumed from a batch's cursor continues with exactly the next batch, bad
//! samples are skipped and counted, and too many bad samples stop the run.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use cappa_data::error::DataError;
use cappa_data::loader::{
    Loader, LoaderConfig, SampleSource, ShardSource, SourceCursor, MIN_SAMPLES_FOR_BAD_CHECK,
};
use cappa_data::pipeline::{Crop, TrainTransform};
use cappa_data::tokenizer::Tokenizer;
use cappa_data::{BadSample, ImageData, Sample, SkipReason};
use common::{caption, write_shards};
use tch::Tensor;

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::train_bpe((0..64).map(caption), 300, true).unwrap())
}

fn config(threads: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        seq_len: 12,
        transform: TrainTransform {
            size: 8,
            crop: Crop::random_resized_crop_default(),
            hflip: true,
        },
        seed: 7,
        threads,
        prefetch: 2,
        max_bad_fraction: 0.5,
        min_samples_for_bad_check: 8,
        ..LoaderConfig::default()
    }
}

fn batches(
    shards: &[PathBuf],
    config: LoaderConfig,
    n: usize,
) -> Vec<(Tensor, Tensor, Vec<String>)> {
    let source = ShardSource::new(shards.to_vec(), 0, 1, 3).unwrap();
    Loader::start(Box::new(source), tokenizer(), config, None)
        .unwrap()
        .take(n)
        .map(|b| {
            let b = b.unwrap();
            (b.images, b.tokens, b.keys)
        })
        .collect()
}

#[test]
fn batches_are_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), 3, 5, &[]);
    // Six batches of four from fifteen samples: crosses an epoch boundary, reshuffled.
    let one = batches(&shards, config(1), 6);
    let two = batches(&shards, config(2), 6);
    assert_eq!(one.len(), 6);
    for ((ia, ta, ka), (ib, tb, kb)) in one.iter().zip(&two) {
        assert_eq!(ka, kb);
        assert!(ia.equal(ib) && ta.equal(tb));
    }
    assert_eq!(one[0].0.size(), [4, 3, 8, 8]);
    assert_eq!(one[0].1.size(), [4, 12]);
    let values = one[0].0.abs().max().double_value(&[]);
    assert!(
        values <= 1.0 && values > 0.0,
        "images normalised to [-1, 1]: {values}"
    );
    // Every key of the first epoch appears once in its first 15 samples.
    let mut first_epoch: Vec<String> = one.iter().flat_map(|b| b.2.clone()).take(15).collect();
    first_epoch.sort();
    first_epoch.dedup();
    assert_eq!(first_epoch.len(), 15);
}

#[test]
fn resuming_from_a_cursor_continues_with_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), 2, 7, &[3]);
    let source = ShardSource::new(shards.clone(), 0, 1, 3).unwrap();
    let full: Vec<_> = Loader::start(Box::new(source), tokenizer(), config(2), None)
        .unwrap()
        .take(6)
        .map(Result::unwrap)
        .collect();
    let cursor = full[2].cursor.clone();
    let source = ShardSource::new(shards, 0, 1, 3).unwrap();
    let resumed: Vec<_> = Loader::start(Box::new(source), tokenizer(), config(1), Some(cursor))
        .unwrap()
        .take(3)
        .map(Result::unwrap)
        .collect();
    for (a, b) in full[3..].iter().zip(&resumed) {
        assert_eq!(a.keys, b.keys);
        assert!(a.images.equal(&b.images) && a.tokens.equal(&b.tokens));
        assert_eq!(a.cursor, b.cursor);
    }
}

#[test]
fn bad_samples_are_skipped_and_counted_and_too_many_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), 1, 12, &[1, 5]);
    let batch = batches_with_cursor(&shards, config(2));
    assert_eq!(batch.cursor.skipped.get(SkipReason::UndecodableImage), 2);
    assert_eq!(batch.cursor.seen, 10);
    assert!(!batch
        .keys
        .iter()
        .any(|k| k == "000000001" || k == "000000005"));

    let all_bad: Vec<u32> = (0..12).collect();
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), 1, 12, &all_bad);
    let source = ShardSource::new(shards, 0, 1, 3).unwrap();
    let first = Loader::start(Box::new(source), tokenizer(), config(2), None)
        .unwrap()
        .next()
        .unwrap();
    let message = first.unwrap_err().to_string();
    assert!(message.contains("samples were bad"), "{message}");
}

/// The second batch of a loader (so that both bad samples have been met).
fn batches_with_cursor(shards: &[PathBuf], config: LoaderConfig) -> cappa_data::loader::Batch {
    let source = ShardSource::new(shards.to_vec(), 0, 1, 3).unwrap();
    Loader::start(Box::new(source), tokenizer(), config, None)
        .unwrap()
        .nth(1)
        .unwrap()
        .unwrap()
}

#[test]
fn ranks_read_disjoint_shards() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), 4, 2, &[]);
    let keys = |rank| {
        let source = ShardSource::new(shards.clone(), rank, 2, 3).unwrap();
        let mut keys: Vec<String> = Loader::start(Box::new(source), tokenizer(), config(1), None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .keys;
        keys.sort();
        keys
    };
    let (a, b) = (keys(0), keys(1));
    assert!(a.iter().all(|k| !b.contains(k)), "{a:?} vs {b:?}");
    assert!(ShardSource::new(shards[..1].to_vec(), 1, 2, 3).is_err());
}

#[test]
fn the_scene_world_streams_deterministically_and_resumes_exactly() {
    use cappa_data::loader::SceneSource;
    use cappa_data::scene::{SceneConfig, SceneWorld};
    let world = || {
        SceneWorld::new(
            SceneConfig {
                image_size: 16,
                ..SceneConfig::default()
            },
            11,
        )
        .unwrap()
    };
    let mut config = config(2);
    config.transform = TrainTransform::cappa(16);
    let run = |resume, threads| {
        let mut config = config.clone();
        config.threads = threads;
        let source = SceneSource::new(world(), 0, 1);
        Loader::start(Box::new(source), tokenizer(), config, resume)
            .unwrap()
            .take(3)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let a = run(None, 1);
    let b = run(None, 2);
    let resumed = run(Some(a[0].cursor.clone()), 2);
    assert_eq!(a[0].keys, ["0", "1", "2", "3"]);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.images.equal(&y.images) && x.tokens.equal(&y.tokens));
    }
    assert_eq!(resumed[0].keys, a[1].keys);
    assert!(resumed[1].images.equal(&a[2].images));
}

/// `bad` bad samples, then good ones (tiny blank images) for ever.
struct BadThenGood {
    bad: u64,
    position: u64,
}

impl SampleSource for BadThenGood {
    fn next_sample(&mut self) -> Option<Result<Sample, BadSample>> {
        let index = self.position;
        self.position += 1;
        Some(if index < self.bad {
            Err(BadSample {
                reason: SkipReason::UndecodableImage,
                location: index.to_string(),
                detail: "made bad by the test".into(),
            })
        } else {
            Ok(Sample {
                key: index.to_string(),
                image: ImageData::Rgb(image::RgbImage::new(4, 4)),
                captions: vec![caption(index as u32)],
                meta: serde_json::Value::Null,
            })
        })
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

#[test]
fn the_default_config_checks_the_bad_fraction_once_a_thousand_samples_were_seen() {
    assert_eq!(MIN_SAMPLES_FOR_BAD_CHECK, 1000);
    let config = LoaderConfig {
        threads: 2,
        transform: TrainTransform::cappa(8),
        ..LoaderConfig::default()
    };
    assert_eq!((config.batch_size, config.max_bad_fraction), (32, 0.1));
    // 200 bad samples first: batch k has seen 200 + 32 k samples, so batches 1 to 24 (at most
    // 968 seen) come although far more than 10 % were bad, and batch 25 (1000 seen, 20 % bad)
    // stops the run.
    let source = BadThenGood {
        bad: 200,
        position: 0,
    };
    let results: Vec<_> = Loader::start(Box::new(source), tokenizer(), config, None)
        .unwrap()
        .take(26)
        .collect();
    assert_eq!(results.len(), 25, "the loader ends after its error");
    for (k, batch) in results[..24].iter().enumerate() {
        let batch = batch.as_ref().unwrap();
        assert_eq!(batch.cursor.seen, 200 + 32 * (k as u64 + 1));
    }
    assert!(
        matches!(
            results[24],
            Err(DataError::TooManyBad {
                bad: 200,
                seen: 1000,
                ..
            })
        ),
        "{:?}",
        results[24].as_ref().err()
    );
}
