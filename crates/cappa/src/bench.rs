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
    let device = Device::Cpu;
    let (clip_config, cap_config, seq_len, default_steps) = match args.preset {
        Preset::Tiny => (ClipConfig::tiny(), CapConfig::tiny(), 16, 20),
        Preset::Small => (ClipConfig::small(), CapConfig::small(), 32, 8),
    };
    let steps = args.steps.unwrap_or(default_steps);
    let size = clip_config.vision.image_size;
    let vocab = clip_config.text.vocab_size;

    // CLIP: images, captions of random ordinary ids ending in EOS.
    let clip_vs = VarStore::new(device);
    let clip = Clip::new(clip_vs.root(), &clip_config);
    let mut clip_opt = nn::AdamW::default().build(&clip_vs, 1e-3)?;
    let images = Tensor::randn([BATCH, 3, size, size], (Kind::Float, device));
    let text = Tensor::randint_low(3, vocab, [BATCH, seq_len], (Kind::Int64, device));
    let _ = text.narrow(1, seq_len - 1, 1).fill_(EOS_ID);
    let clip_step_ms = time_steps(args.warmup, steps, || {
        clip_opt.zero_grad();
        let loss = contrastive_softmax_loss(
            &clip.encode_image(&images, true),
            &clip.encode_text(&text, true),
            &clip.logit_scale,
        );
        loss.backward();
        clip_opt.step();
    });

    // CapPa: three quarters of the examples predict in parallel from mask tokens.
    let cap_vs = VarStore::new(device);
    let cap = CapModel::new(cap_vs.root(), &cap_config);
    let mut cap_opt = nn::AdamW::default().build(&cap_vs, 1e-3)?;
    let targets = Tensor::randint_low(3, vocab, [BATCH, seq_len], (Kind::Int64, device));
    let prediction = ParallelPrediction::cap_pa(cap_config.decoder.vocab_size);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let cappa_step_ms = time_steps(args.warmup, steps, || {
        cap_opt.zero_grad();
        let inputs = parallel_prediction_inputs(&targets, &prediction, &mut rng)
            .expect("the CapPa preset is valid");
        let tokens = cap.encode_image(&images, true).tokens;
        let logits = cap.decode(
            &tokens,
            &inputs.inputs,
            Decoding::PerExample(&inputs.parallel),
            true,
        );
        caption_loss(&logits, &targets, 0, 0.0).backward();
        cap_opt.step();
    });

    // Greedy decoding of exactly 64 tokens for 8 images, with and without the KV cache; the
    // images are encoded once beforehand, so only the decoder is timed.
    let greedy = GenerateConfig {
        stop_at_eos: false,
        ..GenerateConfig::greedy(GREEDY_TOKENS)
    };
    let memory = tch::no_grad(|| {
        cap.encode_image(&images.narrow(0, 0, GREEDY_BATCH), false)
            .tokens
    });
    let greedy_cached_tokens_per_s = tokens_per_second(|| cap.decoder.generate(&memory, &greedy));
    let greedy_uncached_tokens_per_s =
        tokens_per_second(|| cap.decoder.greedy_uncached(&memory, &greedy));

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
