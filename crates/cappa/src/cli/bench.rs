//! `cappa bench models`: training-step time and greedy-decoding throughput of the CLIP and
//! CapPa models at a preset, measured exactly as `scripts/bench_models_reference.py` measures
//! the same architecture in PyTorch eager (`cargo xtask bench models` runs both, alternated).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use cappa_models::{num_params, CapConfig, CapModel, Clip, ClipConfig, Decoding, GenerateConfig};
use cappa_objectives::{
    caption_loss, contrastive_softmax_loss, parallel_prediction_inputs, ParallelPrediction,
};
use rand::SeedableRng;
use serde::Serialize;
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 32;
const GREEDY_BATCH: i64 = 8;
const GREEDY_TOKENS: i64 = 64;
const EOS_ID: i64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Preset {
    Tiny,
    Small,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ModelsArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Timed training steps (default: 20 at tiny, 8 at small).
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed training steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Params {
    clip: i64,
    cappa: i64,
}

#[derive(Debug, Serialize)]
struct Figures {
    preset: Preset,
    threads: i32,
    params: Params,
    clip_step_ms: f64,
    cappa_step_ms: f64,
    greedy_cached_tokens_per_s: f64,
    greedy_uncached_tokens_per_s: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median milliseconds of `steps` calls after `warmup` untimed ones.
fn time_steps(warmup: usize, steps: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        step();
    }
    median(
        (0..steps)
            .map(|_| {
                let start = Instant::now();
                step();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// Tokens per second of a decoding function, median of 3 runs after one warm-up.
fn tokens_per_second(mut decode: impl FnMut() -> Vec<Vec<i64>>) -> f64 {
    let _ = decode();
    median(
        (0..3)
            .map(|_| {
                let start = Instant::now();
                let out = decode();
                let tokens: usize = out.iter().map(Vec::len).sum();
                tokens as f64 / start.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

pub(crate) fn models(args: &ModelsArgs) -> Result<()> {
    let (clip_config, cap_config, seq_len, default_steps) = match args.preset {
        Preset::Tiny => (ClipConfig::tiny(), CapConfig::tiny(), 16, 20),
        Preset::Small => (ClipConfig::small(), CapConfig::small(), 32, 8),
    };
    let steps = args.steps.unwrap_or(default_steps);
    let size = clip_config.vision.image_size;
    let images = Tensor::randn([BATCH, 3, size, size], (Kind::Float, Device::Cpu));
    let clip_vs = VarStore::new(Device::Cpu);
    let clip_step_ms = clip_step_ms(&clip_vs, &clip_config, &images, seq_len, args.warmup, steps)?;
    let cap_vs = VarStore::new(Device::Cpu);
    let cap = CapModel::new(cap_vs.root(), &cap_config);
    let cappa_step_ms = cappa_step_ms(&cap_vs, &cap, &images, seq_len, args.warmup, steps)?;
    let (greedy_cached_tokens_per_s, greedy_uncached_tokens_per_s) =
        greedy_tokens_per_second(&cap, &images);
    let figures = Figures {
        preset: args.preset,
        threads: tch::get_num_threads(),
        params: Params {
            clip: num_params(&clip_vs),
            cappa: num_params(&cap_vs),
        },
        clip_step_ms,
        cappa_step_ms,
        greedy_cached_tokens_per_s,
        greedy_uncached_tokens_per_s,
    };
    println!(
        "cappa bench models --preset {:?}: CLIP step {:.2} ms, CapPa step {:.2} ms, greedy {:.0} tokens/s cached, {:.0} uncached ({} threads)",
        args.preset,
        figures.clip_step_ms,
        figures.cappa_step_ms,
        figures.greedy_cached_tokens_per_s,
        figures.greedy_uncached_tokens_per_s,
        figures.threads
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// Milliseconds per CLIP training step (torch's AdamW) on `images` and captions of random
/// ordinary ids ending in EOS.
fn clip_step_ms(
    vs: &VarStore,
    config: &ClipConfig,
    images: &Tensor,
    seq_len: i64,
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let clip = Clip::new(vs.root(), config);
    let mut optimizer = nn::AdamW::default().build(vs, 1e-3)?;
    let vocab = config.text.vocab_size;
    let text = Tensor::randint_low(3, vocab, [BATCH, seq_len], (Kind::Int64, Device::Cpu));
    let _ = text.narrow(1, seq_len - 1, 1).fill_(EOS_ID);
    Ok(time_steps(warmup, steps, || {
        optimizer.zero_grad();
        let loss = contrastive_softmax_loss(
            &clip.encode_image(images, true),
            &clip.encode_text(&text, true),
            &clip.logit_scale,
        );
        loss.backward();
        optimizer.step();
    }))
}

/// Milliseconds per CapPa training step: three quarters of the examples predict in parallel
/// from mask tokens.
fn cappa_step_ms(
    vs: &VarStore,
    cap: &CapModel,
    images: &Tensor,
    seq_len: i64,
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let mut optimizer = nn::AdamW::default().build(vs, 1e-3)?;
    let vocab = cap.config().decoder.vocab_size;
    let targets = Tensor::randint_low(3, vocab, [BATCH, seq_len], (Kind::Int64, Device::Cpu));
    let prediction = ParallelPrediction::cap_pa(vocab);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    Ok(time_steps(warmup, steps, || {
        optimizer.zero_grad();
        let inputs = parallel_prediction_inputs(&targets, &prediction, &mut rng)
            .expect("the CapPa preset is valid");
        let tokens = cap.encode_image(images, true).tokens;
        let logits = cap.decode(
            &tokens,
            &inputs.inputs,
            Decoding::PerExample(&inputs.parallel),
            true,
        );
        caption_loss(&logits, &targets, 0, 0.0).backward();
        optimizer.step();
    }))
}

/// Greedy decoding of exactly 64 tokens for 8 images, tokens/s with and without the KV cache;
/// the images are encoded once beforehand, so only the decoder is timed.
fn greedy_tokens_per_second(cap: &CapModel, images: &Tensor) -> (f64, f64) {
    let greedy = GenerateConfig {
        stop_at_eos: false,
        ..GenerateConfig::greedy(GREEDY_TOKENS)
    };
    let memory = tch::no_grad(|| {
        cap.encode_image(&images.narrow(0, 0, GREEDY_BATCH), false)
            .tokens
    });
    (
        tokens_per_second(|| cap.decoder.generate(&memory, &greedy)),
        tokens_per_second(|| cap.decoder.greedy_uncached(&memory, &greedy)),
    )
}

#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    /// A directory of `.jpg` files (at least 32), held in memory while timing.
    #[arg(long)]
    images: PathBuf,
    /// First write this many 256×256 JPEGs of scene-world images into `--images`.
    #[arg(long)]
    make_images: Option<u64>,
    /// Timed seconds per setting.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Writes `count` JPEGs (quality 90) of held-out scene-world images, 256×256.
fn make_jpegs(dir: &std::path::Path, count: u64) -> Result<()> {
    use cappa_data::scene::{SceneConfig, SceneWorld, Split};
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let world = SceneWorld::with_split(SceneConfig::default(), 0, Split::Eval)?;
    for index in 0..count {
        let image = world.render_at(&world.scene(index), 256);
        let path = dir.join(format!("{index:06}.jpg"));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&image)?;
        std::fs::write(&path, bytes)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// Images per second of `work` (which returns how many images it handled), over repeated
/// calls for at least `seconds` after one warm-up call.
fn images_per_second(seconds: f64, mut work: impl FnMut() -> usize) -> f64 {
    let _ = work();
    let start = Instant::now();
    let mut images = 0;
    while start.elapsed().as_secs_f64() < seconds {
        images += work();
    }
    images as f64 / start.elapsed().as_secs_f64()
}

pub(crate) fn data(args: &DataArgs) -> Result<()> {
    use cappa_data::pipeline::{
        decode_bytes, write_chw, Crop, DecodeLimits, Normalize, TrainTransform,
    };
    use rand::SeedableRng;
    use rayon::prelude::*;
    const BATCH: usize = 32;
    const SIZE: u32 = 224;

    if let Some(count) = args.make_images {
        make_jpegs(&args.images, count)?;
    }
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(&args.images)
        .with_context(|| format!("could not read {}", args.images.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "jpg"))
        .map(std::fs::read)
        .collect::<std::io::Result<_>>()?;
    files.truncate(files.len() / BATCH * BATCH);
    anyhow::ensure!(
        !files.is_empty(),
        "{} holds fewer than {BATCH} .jpg files: add --make-images 256",
        args.images.display()
    );
    let transform = TrainTransform {
        size: SIZE,
        crop: Crop::random_resized_crop_default(),
        hflip: false,
    };
    let per_image = 3 * (SIZE * SIZE) as usize;
    // One batch: decode, crop, normalise into a (B, 3, H, W) buffer, hand over as a tensor.
    let batch = |index: usize, chunk: &[Vec<u8>]| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(index as u64);
        let mut buffer = vec![0.0f32; BATCH * per_image];
        for (bytes, out) in chunk.iter().zip(buffer.chunks_exact_mut(per_image)) {
            let image = decode_bytes(bytes, &DecodeLimits::default()).expect("valid JPEG");
            write_chw(
                &transform.apply(&image, &mut rng),
                Normalize::MinusOneToOne,
                out,
            );
        }
        Tensor::from_slice(&buffer)
            .view([BATCH as i64, 3, SIZE as i64, SIZE as i64])
            .size()[0] as usize
    };
    let mut figures = serde_json::Map::new();
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let rate = images_per_second(args.seconds, || {
            pool.install(|| {
                files
                    .par_chunks(BATCH)
                    .enumerate()
                    .map(|(index, chunk)| batch(index, chunk))
                    .sum()
            })
        });
        println!("cappa pipeline, {threads} thread(s): {rate:.0} images/s");
        figures.insert(format!("images_per_s_{threads}"), rate.into());
    }
    let world = cappa_data::scene::SceneWorld::new(cappa_data::scene::SceneConfig::default(), 0)?;
    let mut next = 0u64;
    let scene_rate = images_per_second(args.seconds.min(2.0), || {
        for _ in 0..64 {
            std::hint::black_box(world.sample(next));
            next += 1;
        }
        64
    });
    println!("scene world (64×64 image + captions + graph), 1 thread: {scene_rate:.0} samples/s");
    figures.insert("scene_samples_per_s".into(), scene_rate.into());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Timed trainer steps on in-memory data (default: 20 at tiny, 8 at small).
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Steps of the data-wait run with the real scene-world loader (default: 60 at tiny, 20 at
    /// small); the first log window (loader start-up) is not counted.
    #[arg(long)]
    loader_steps: Option<u64>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct TrainFigures {
    preset: Preset,
    threads: i32,
    params: Params,
    /// Median ms of one full trainer step (forward, loss, backward, clipping, AdamW, schedule,
    /// loss and gradient-norm read back), data in memory.
    clip_step_ms: f64,
    cappa_step_ms: f64,
    /// Fraction of step time spent waiting for the real loader (scene world, 2 threads).
    clip_data_wait: f64,
    cappa_data_wait: f64,
}

/// The trainer settings the PyTorch reference loop mirrors: batch 32, AdamW lr 1e-3 with
/// torch-style weight decay 0.1 on matrices, clipping at 1, cosine schedule.
fn bench_config(
    objective: &str,
    preset: Preset,
    extra: &[String],
) -> Result<cappa_trainer::ExperimentConfig> {
    let (name, seq_len) = match preset {
        Preset::Tiny => ("tiny", 16),
        Preset::Small => ("small", 32),
    };
    let mut sets: Vec<String> = vec![
        format!("objective={objective}"),
        format!("model.preset={name}"),
        format!("data.seq_len={seq_len}"),
        "batch_size=32".into(),
        "optim.weight_decay=0.1".into(),
        "optim.decay=torch".into(),
        "budget.steps=1000000".into(),
        "data.tokenizer_captions=500".into(),
        "data.threads=2".into(),
    ];
    sets.extend(extra.iter().cloned());
    Ok(cappa_trainer::config::resolve(None, &sets)?)
}

fn quiet_trainer(
    config: cappa_trainer::ExperimentConfig,
    dir: &std::path::Path,
) -> Result<cappa_trainer::Trainer> {
    let options = cappa_trainer::TrainerOptions {
        progress: cappa_trainer::ProgressMode::Quiet,
        ..cappa_trainer::TrainerOptions::default()
    };
    Ok(cappa_trainer::Trainer::start(config, dir, options)?)
}

/// Mean data-wait fraction of a real run after its first log window.
fn data_wait(objective: &str, preset: Preset, steps: u64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let config = bench_config(
        objective,
        preset,
        &[format!("budget.steps={steps}"), "log_every=5".into()],
    )?;
    let mut trainer = quiet_trainer(config, dir.path())?;
    trainer.run()?;
    let records =
        cappa_trainer::metrics::read_metrics(&dir.path().join(cappa_trainer::METRICS_FILE))?;
    let fractions: Vec<f64> = records
        .iter()
        .skip(1)
        .filter_map(|r| r["data_wait_fraction"].as_f64())
        .collect();
    anyhow::ensure!(!fractions.is_empty(), "the data-wait run logged nothing");
    Ok(fractions.iter().sum::<f64>() / fractions.len() as f64)
}

pub(crate) fn train(args: &TrainArgs) -> Result<()> {
    let (default_steps, default_loader_steps) = match args.preset {
        Preset::Tiny => (20, 60),
        Preset::Small => (8, 20),
    };
    let steps = args.steps.unwrap_or(default_steps);
    let mut step_ms = Vec::new();
    let mut params = Vec::new();
    for objective in ["clip", "cap_pa"] {
        let dir = tempfile::tempdir()?;
        let mut trainer = quiet_trainer(bench_config(objective, args.preset, &[])?, dir.path())?;
        let config = trainer.config().clone();
        let size = trainer.vision_image_size();
        let (batch, seq_len) = (config.batch_size as i64, config.data.seq_len as i64);
        let vocab = trainer.tokenizer().vocab_size() as i64;
        // In-memory data as the reference makes it: random images; random ordinary ids, for
        // CLIP ending in EOS.
        let images = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
        let tokens = Tensor::randint_low(3, vocab, [batch, seq_len], (Kind::Int64, Device::Cpu));
        if objective == "clip" {
            let _ = tokens.narrow(1, seq_len - 1, 1).fill_(EOS_ID);
        }
        let micro = [(images, tokens)];
        let mut failure = None;
        let ms = time_steps(args.warmup, steps, || {
            if let Err(error) = trainer.step_on(&micro) {
                failure.get_or_insert(error);
            }
        });
        if let Some(error) = failure {
            return Err(error.into());
        }
        step_ms.push(ms);
        params.push(num_params(trainer.var_store()));
    }
    let loader_steps = args.loader_steps.unwrap_or(default_loader_steps);
    let figures = TrainFigures {
        preset: args.preset,
        threads: tch::get_num_threads(),
        params: Params {
            clip: params[0],
            cappa: params[1],
        },
        clip_step_ms: step_ms[0],
        cappa_step_ms: step_ms[1],
        clip_data_wait: data_wait("clip", args.preset, loader_steps)?,
        cappa_data_wait: data_wait("cap_pa", args.preset, loader_steps)?,
    };
    println!(
        "cappa bench train --preset {:?}: CLIP step {:.2} ms, CapPa step {:.2} ms; data wait with the scene loader CLIP {:.1}%, CapPa {:.1}% ({} threads)",
        args.preset,
        figures.clip_step_ms,
        figures.cappa_step_ms,
        100.0 * figures.clip_data_wait,
        100.0 * figures.cappa_data_wait,
        figures.threads
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Write the figures as JSON here (`[{name, ours, unit}]`; with `--open-clip`, one object
    /// `{features_per_s, model_only_features_per_s, …}`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of the captioner figures: image features/s of a CLIP B/16 at 224 in open_clip's
    /// layout, end to end on an ImageFolder as evaluation runs it. DIR receives the ImageFolder
    /// (`DIR/images`) and the exported weights (`DIR/model`, `cappa export --format open_clip`
    /// layout) that `scripts/bench_eval_reference.py --dir DIR` times in open_clip.
    #[arg(long, value_name = "DIR")]
    open_clip: Option<PathBuf>,
    /// JPEGs in the ImageFolder (written when fewer are there).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Images per model call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// The CLIP B/16 that `cappa bench eval --open-clip` times: open_clip's ViT-B/16 layout (class
/// token, pre-LN, class-token pooling, 512-wide projection and text tower), exportable.
fn open_clip_b16() -> ClipConfig {
    use cappa_models::{Pooling, VitConfig};
    let vision = VitConfig {
        class_token: true,
        ln_pre: true,
        pooling: Pooling::Cls,
        ..VitConfig::b16()
    };
    ClipConfig::new(
        vision,
        cappa_models::TextConfig::open_clip_b16(),
        cappa_models::ContrastiveLoss::Softmax,
    )
}

/// Writes `count` JPEGs (quality 90) of scene-world images as an ImageFolder of two classes,
/// alternately 320×256 and 256×320, unless `root` already holds that many.
fn make_image_folder(root: &std::path::Path, count: usize) -> Result<()> {
    use cappa_data::pipeline::resize;
    use cappa_data::readers::ImageFolder;
    use cappa_data::scene::{SceneConfig, SceneWorld, Split};
    if ImageFolder::open(root).is_ok_and(|folder| folder.records.len() >= count) {
        return Ok(());
    }
    let world = SceneWorld::with_split(SceneConfig::default(), 0, Split::Eval)?;
    for index in 0..count {
        let dir = root.join(format!("class_{}", index % 2));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let square = world.render_at(&world.scene(index as u64), 320);
        let (width, height) = if index % 2 == 0 {
            (320, 256)
        } else {
            (256, 320)
        };
        let image = resize(&square, width, height);
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&image)?;
        let path = dir.join(format!("{index:06}.jpg"));
        std::fs::write(&path, bytes)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct OpenClipFigures {
    model: &'static str,
    threads: i32,
    images: u64,
    batch: usize,
    /// Decode + `EvalTransform::open_clip` (bilinear) + `to_tensor` + `prepare_images`.
    features_per_s: f64,
    /// `prepare_images` alone on the already prepared batches.
    model_only_features_per_s: f64,
    params: i64,
}

/// `cappa bench eval --open-clip DIR`: image features/s of an untrained CLIP B/16 (the work
/// does not depend on the weights), end to end through `Encoded::compute` as zero-shot
/// classification runs it, and model-only; the weights are exported for the open_clip side.
fn eval_open_clip(args: &EvalArgs, dir: &std::path::Path) -> Result<()> {
    use cappa_data::pipeline::{EvalTransform, Normalize};
    use cappa_data::readers::ImageFolder;
    use cappa_eval::images::{Encoded, ImageSpec, Progress};
    use cappa_eval::model::TextScorer;
    let images_dir = dir.join("images");
    make_image_folder(&images_dir, args.images)?;
    let config = open_clip_b16();
    let vs = VarStore::new(Device::Cpu);
    let clip = Clip::new(vs.root(), &config);
    cappa_models::export::export_open_clip(&vs, &config, &dir.join("model"))?;
    let folder = ImageFolder::open(&images_dir)?;
    let spec = ImageSpec {
        transform: EvalTransform::open_clip(config.vision.image_size as u32),
        normalize: Normalize::MinusOneToOne,
    };
    let quiet = Progress::new("bench", None);
    let run = |limit: Option<usize>| {
        Encoded::compute(
            Box::new(folder.samples()),
            &spec,
            args.batch,
            limit,
            &quiet,
            |_| true,
            |images, _| vec![("embedding".into(), clip.prepare_images(images))],
        )
    };
    // One warm-up batch, then every image once, timed.
    let _ = run(Some(args.batch));
    let start = Instant::now();
    let encoded = run(None);
    let seconds = start.elapsed().as_secs_f64();
    let images = encoded.stats.good;
    anyhow::ensure!(
        images as usize == folder.records.len(),
        "{} of {} images were encoded",
        images,
        folder.records.len()
    );
    // Model only: the same batches, already prepared.
    let mut batches = Vec::new();
    cappa_eval::images::stream(
        Box::new(folder.samples()),
        &spec,
        args.batch,
        None,
        &quiet,
        |_| true,
        |images, _| batches.push(images.shallow_clone()),
    );
    let _ = clip.prepare_images(&batches[0]);
    let start = Instant::now();
    for batch in &batches {
        let _ = clip.prepare_images(batch);
    }
    let model_seconds = start.elapsed().as_secs_f64();
    let figures = OpenClipFigures {
        model: "CLIP B/16 at 224 (open_clip ViT-B-16 layout), fp32",
        threads: tch::get_num_threads(),
        images,
        batch: args.batch,
        features_per_s: images as f64 / seconds,
        model_only_features_per_s: images as f64 / model_seconds,
        params: num_params(&vs),
    };
    println!(
        "cappa bench eval --open-clip: CLIP B/16 image features {:.2}/s end to end (decode + open_clip eval transform, bilinear + encode), {:.2}/s model only; {images} images, batch {} ({} threads)",
        figures.features_per_s, figures.model_only_features_per_s, args.batch, figures.threads
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// Evaluation throughput of an untrained captioner (the work does not depend on the weights):
/// zero-shot scoring in (image, class) pairs/s, greedy and beam captions/s at full length.
pub(crate) fn eval(args: &EvalArgs) -> Result<()> {
    use cappa_eval::model::Captioner;
    use cappa_eval::scoring::{score_streamed, Batches};
    if let Some(dir) = &args.open_clip {
        return eval_open_clip(args, dir);
    }
    let config = match args.preset {
        Preset::Tiny => CapConfig::tiny(),
        Preset::Small => CapConfig::small(),
    };
    let (images_n, classes, seq_len) = (32i64, 32i64, 16i64);
    let vs = VarStore::new(Device::Cpu);
    let cap = CapModel::new(vs.root(), &config);
    let size = config.vision.image_size;
    let vocab = config.decoder.vocab_size;
    let images = Tensor::randn([images_n, 3, size, size], (Kind::Float, Device::Cpu));
    let candidates = Tensor::randint_low(3, vocab, [classes, seq_len], (Kind::Int64, Device::Cpu));
    let seconds = median(
        (0..3)
            .map(|_| {
                let start = Instant::now();
                let _ = score_streamed(&cap, &images, &candidates, Batches::of_images(images_n));
                start.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let pairs_per_s = (images_n * classes) as f64 / seconds;
    let full = |beam: i64| GenerateConfig {
        stop_at_eos: false,
        ..GenerateConfig::beam(seq_len, beam, cappa_eval::report::BEAM_LENGTH_PENALTY)
    };
    let captions_per_s = |config: GenerateConfig| {
        median(
            (0..3)
                .map(|_| {
                    let start = Instant::now();
                    let out = Captioner::generate(&cap, &images.narrow(0, 0, 16), &config);
                    out.len() as f64 / start.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let greedy = captions_per_s(full(1));
    let beam = captions_per_s(full(4));
    let (cached, uncached) = class_name_scoring(&cap, &images.narrow(0, 0, 4), seq_len, vocab);
    let rows = serde_json::json!([
        {"name": format!("{:?}: zero-shot scoring, {images_n} images × {classes} classes of {seq_len} tokens", args.preset),
         "ours": pairs_per_s, "unit": "image-class pairs/s"},
        {"name": format!("{:?}: greedy captions of {seq_len} tokens, batch 16", args.preset),
         "ours": greedy, "unit": "captions/s"},
        {"name": format!("{:?}: beam-4 captions of {seq_len} tokens, batch 16", args.preset),
         "ours": beam, "unit": "captions/s"},
        {"name": format!("{:?}: zero-shot vs {IMAGENET_CLASSES} prompted class names, shared-prefix cache (reference: the same without it)", args.preset),
         "ours": cached, "reference": uncached, "ratio": cached / uncached, "unit": "classes/s per image"},
    ]);
    println!(
        "cappa bench eval --preset {:?}: zero-shot scoring {pairs_per_s:.0} image-class pairs/s, greedy {greedy:.1} captions/s, beam-4 {beam:.1} captions/s; {IMAGENET_CLASSES} class names: {cached:.0} classes/s per image with the shared-prefix cache, {uncached:.0} without ({:.2}×) ({} threads)",
        args.preset,
        cached / uncached,
        tch::get_num_threads()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// Classes in the captioner's zero-shot scoring benchmark, as in ImageNet.
const IMAGENET_CLASSES: i64 = 1000;

/// Candidates shaped like `"a photo of a {c}."` prompts: the same 4-token prefix in every row,
/// a class name of 1–3 tokens, a full stop and EOS, then padding to `seq_len`, for a tokenizer
/// with `vocab` ids (0 pad, 1 BOS, 2 EOS).
fn prompted_class_names(classes: i64, seq_len: i64, vocab: i64) -> Tensor {
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (prefix, stop) = ([3, 4, 5, 6], 7);
    let mut rows = Vec::with_capacity((classes * seq_len) as usize);
    for _ in 0..classes {
        let mut row: Vec<i64> = prefix.to_vec();
        for _ in 0..rng.random_range(1..=3) {
            row.push(rng.random_range(8..vocab));
        }
        row.extend([stop, EOS_ID]);
        row.resize(seq_len as usize, 0);
        rows.extend(row);
    }
    Tensor::from_slice(&rows).view([classes, seq_len])
}

/// Classes/s per image of a captioner's zero-shot scoring of `images` against
/// [`IMAGENET_CLASSES`] prompted class names, batched as classification batches them
/// ([`cappa_eval::scoring::likelihood_images_per_batch`] images per call, each image's side
/// prepared once and scored against every class): with the decoder's shared-prefix cache
/// ([`cappa_models::CapDecoder::score`]) and without it (`score_uncached`, every candidate
/// decoded at full length). Checks that the two agree.
fn class_name_scoring(cap: &CapModel, images: &Tensor, seq_len: i64, vocab: i64) -> (f64, f64) {
    use cappa_eval::model::TextScorer;
    use cappa_eval::scoring::{batched, likelihood_images_per_batch, DEFAULT_BATCH};
    let candidates = prompted_class_names(IMAGENET_CLASSES, seq_len, vocab);
    let b = images.size()[0];
    let per_call = likelihood_images_per_batch(DEFAULT_BATCH, IMAGENET_CLASSES as usize);
    let score = |cached: bool| {
        tch::no_grad(|| {
            batched(b, per_call, |start, len| {
                let side = cap.prepare_images(&images.narrow(0, start, len));
                if cached {
                    cap.decoder.score(&side, &candidates)
                } else {
                    cap.decoder.score_uncached(&side, &candidates)
                }
            })
        })
    };
    let rate = |cached: bool| {
        let _ = score(cached);
        let seconds = median(
            (0..3)
                .map(|_| {
                    let start = Instant::now();
                    let _ = score(cached);
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        );
        // An image's classes take `seconds / b`.
        (b * IMAGENET_CLASSES) as f64 / seconds
    };
    let gap = (score(true) - score(false)).abs().max().double_value(&[]);
    assert!(
        gap < 1e-3,
        "cached and uncached class-name scores differ by {gap}"
    );
    (rate(true), rate(false))
}

#[derive(Debug, clap::Args)]
pub(crate) struct ThroughputArgs {
    /// Model preset (vision tower, CLIP text tower, Cap decoder): tiny, small, b16, l16, …
    #[arg(long, default_value = "b16")]
    preset: String,
    /// Examples per step (one process).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Caption tokens per example.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// `bf16` (autocast) or `fp32`.
    #[arg(long, default_value = "bf16")]
    precision: String,
    /// Objectives to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "clip,cap_pa")]
    objectives: Vec<String>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first (cuDNN autotuning, allocator warm-up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Peak FLOP/s of the device for the MFU (default: by the CUDA device's name, e.g.
    /// 989e12 for an H100/H200).
    #[arg(long)]
    peak_flops: Option<f64>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `cappa bench throughput`: full trainer steps (forward, loss, backward, clipping, AdamW) on
/// synthetic in-memory batches on the selected device, as samples/s and MFU. The PyTorch
/// eager reference is `scripts/bench_train_reference.py --device … --precision … --batch …`
/// (`cargo xtask device-bench` prepares both for a GPU machine).
/// The trainer configuration `cappa bench throughput` times for one objective.
fn throughput_config(
    args: &ThroughputArgs,
    objective: &str,
) -> Result<cappa_trainer::config::ExperimentConfig> {
    let sets = vec![
        format!("objective={objective}"),
        format!("model.preset={}", args.preset),
        format!("data.seq_len={}", args.seq_len),
        format!("batch_size={}", args.batch),
        format!("precision={}", args.precision),
        "optim.weight_decay=0.1".into(),
        "optim.decay=torch".into(),
        "budget.steps=1000000".into(),
        "data.tokenizer_captions=500".into(),
        "eval.every=0".into(),
    ];
    Ok(cappa_trainer::config::resolve(None, &sets)?)
}

/// Milliseconds per full trainer step on synthetic batches made as the reference makes them,
/// already on the device.
fn time_trainer_steps(
    trainer: &mut cappa_trainer::Trainer,
    args: &ThroughputArgs,
    objective: &str,
    device: Device,
) -> Result<f64> {
    let size = trainer.vision_image_size();
    let (batch, seq_len) = (args.batch as i64, args.seq_len as i64);
    let vocab = trainer.tokenizer().vocab_size() as i64;
    let images = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
    let tokens = Tensor::randint_low(3, vocab, [batch, seq_len], (Kind::Int64, device));
    if objective == "clip" || objective == "sigmoid" {
        let _ = tokens.narrow(1, seq_len - 1, 1).fill_(EOS_ID);
    }
    let micro = [(images, tokens)];
    let mut failure = None;
    let ms = time_steps(args.warmup, args.steps, || {
        if let Err(error) = trainer.step_on(&micro) {
            failure.get_or_insert(error);
        }
    });
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(ms),
    }
}

pub(crate) fn throughput(args: &ThroughputArgs, device: Device) -> Result<()> {
    let device_name = crate::cli::device::accelerator_name(device);
    let peak = args.peak_flops.or_else(|| {
        device_name
            .as_deref()
            .and_then(cappa_trainer::peak_flops_for)
    });
    let mut results = serde_json::Map::new();
    let mut vocab = 0;
    for objective in &args.objectives {
        let dir = tempfile::tempdir()?;
        let options = cappa_trainer::TrainerOptions {
            device,
            device_name: device_name.clone(),
            progress: cappa_trainer::ProgressMode::Quiet,
            ..cappa_trainer::TrainerOptions::default()
        };
        let config = throughput_config(args, objective)?;
        let mut trainer = cappa_trainer::Trainer::start(config, dir.path(), options)?;
        vocab = trainer.tokenizer().vocab_size() as i64;
        let ms = time_trainer_steps(&mut trainer, args, objective, device)?;
        let samples_per_s = args.batch as f64 / (ms / 1e3);
        let flops = trainer.train_flops_per_example();
        let mfu = peak.map(|p| samples_per_s * flops / p);
        println!(
            "cappa {objective} {} {} batch {}: {ms:.2} ms/step, {samples_per_s:.1} samples/s, MFU {}",
            args.preset,
            args.precision,
            args.batch,
            mfu.map_or("n/a (unknown peak)".into(), |m| format!("{:.1}%", 100.0 * m)),
        );
        results.insert(
            objective.clone(),
            serde_json::json!({
                "step_ms": ms,
                "samples_per_s": samples_per_s,
                "train_flops_per_example": flops,
                "mfu": mfu,
                "params": num_params(trainer.var_store()),
            }),
        );
    }
    if let Some(path) = &args.json {
        let figures = serde_json::json!({
            "device": crate::cli::device::device_name(device),
            "device_name": device_name,
            "peak_flops": peak,
            "preset": args.preset,
            "precision": args.precision,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "vocab": vocab,
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}
