//! `cappa eval` (a checkpoint on every scene-world task), `cappa metrics caption` (caption
//! metrics for anyone's captions) and `cappa probe` (linear probes on anyone's features).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cappa::checkpoint_eval::{EvalPlan, LoadedCheckpoint, OpenedSuite, FEATURE_CACHE_DIR};
use cappa_data::pipeline::Normalize;
use cappa_data::tokenizer::Tokenizer;
use cappa_eval::benchmarks::{BenchmarkResults, SuiteReport};
use cappa_eval::caption_metrics::{read_caption_file, score_captions, CaptionItem};
use cappa_eval::model::Evaluable;
use cappa_eval::probe::{
    few_shot, has_validation_split, linear_probe, load_features, FewShotConfig, LinearProbeConfig,
};
use cappa_eval::report::write_report;

use crate::cli::device::DeviceArg;

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// A checkpoint directory (`config.json`, `model.safetensors`, `tokenizer.json`; a
    /// trainer checkpoint also has `experiment.json`, which gives the scene world, caption
    /// length and normalisation it was trained with), or a run directory, its `checkpoints/`
    /// or its `latest` file: the checkpoint `latest` names.
    checkpoint: PathBuf,
    /// Where to write `results.json` and one JSON per task (default: CHECKPOINT/eval).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    plan: EvalPlan,
    /// Compositional benchmark files in SugarCrepe format (`{id: {filename, caption,
    /// negative_caption}}`) or ARO format (a list with `true_caption` and `false_caption(s)`),
    /// evaluated besides the scene world; needs `--image-root`.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    compositional: Vec<PathBuf>,
    /// Directory the compositional files' image names are relative to.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Evaluate on a suite of benchmarks instead: a built-in one (`scene`: the scene world,
    /// as without this flag; `paper`: the paper's benchmarks at conventional paths under
    /// `data/`) or a suite JSON file. Every path is checked before the model is loaded.
    #[arg(long, value_name = "NAME|FILE")]
    suite: Option<String>,
    /// With --suite: evaluate only these benchmarks of the suite.
    #[arg(long, num_args = 1.., value_name = "BENCH", requires = "suite")]
    only: Vec<String>,
    /// With --suite: the directory benchmark features are cached in (default
    /// CHECKPOINT/feature-cache), per checkpoint weights, benchmark, data and transform.
    #[arg(long, requires = "suite", conflicts_with = "no_cache")]
    cache: Option<PathBuf>,
    /// With --suite: neither read nor write cached features.
    #[arg(long, requires = "suite")]
    no_cache: bool,
}

pub(crate) fn eval(args: &EvalArgs, device: DeviceArg) -> Result<()> {
    if let Some(suite) = &args.suite {
        return eval_suite(args, suite, device);
    }
    let device = device.select()?;
    let loaded = LoadedCheckpoint::load(&args.checkpoint, device)?;
    let mut report = loaded.evaluate_scene(&args.plan)?;
    let (evaluable, tokenizer, with) =
        (loaded.evaluable(), &loaded.tokenizer, &loaded.trained_with);
    if !args.compositional.is_empty() {
        let root = args.image_root.as_deref().context(
            "--compositional needs --image-root, the directory its image file names are relative to",
        )?;
        for file in &args.compositional {
            let (name, accuracy) = compositional_file(
                evaluable,
                tokenizer,
                file,
                root,
                with.seq_len,
                with.normalize,
            )?;
            report.compositional_files.insert(name, accuracy);
        }
    }
    let out = args.out.clone().unwrap_or_else(|| loaded.dir.join("eval"));
    write_report(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
        println!("wrote {}", out.join("results.json").display());
    }
    Ok(())
}

/// `cappa eval --suite`: opens the suite (every path and annotation file checked), then
/// loads the checkpoint and runs every benchmark.
fn eval_suite(args: &EvalArgs, suite: &str, device: DeviceArg) -> Result<()> {
    if !args.compositional.is_empty() {
        bail!(
            "--compositional goes with the scene evaluation; with --suite, list the files in a \
             `compositional` benchmark of the suite"
        );
    }
    let suite = OpenedSuite::open(suite, &args.only)?;
    let device = device.select()?;
    let loaded = LoadedCheckpoint::load(&args.checkpoint, device)?;
    let cache = match (&args.cache, args.no_cache) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => Some(loaded.dir.join(FEATURE_CACHE_DIR)),
    };
    let report = loaded.evaluate_suite(&suite, &args.plan, cache.as_deref())?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| loaded.dir.join("eval").join(&suite.name));
    report
        .write(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_suite_report(&report);
        println!("wrote {}", out.join("results.json").display());
    }
    Ok(())
}

fn print_suite_report(report: &SuiteReport) {
    println!("{} model on suite `{}`", report.model_kind, report.suite);
    for b in &report.benchmarks {
        if let BenchmarkResults::Scene(scene) = &b.results {
            println!("== {} ({:.1} s)", b.name, b.seconds);
            print_report(scene);
            continue;
        }
        let skipped: u64 = b.splits.values().map(|s| s.skipped.total()).sum();
        println!(
            "== {} ({:.1} s, {skipped} samples skipped)",
            b.name, b.seconds
        );
        for (name, value) in b.results.metrics() {
            println!("   {name:<40} {value:.4}");
        }
        if let BenchmarkResults::Retrieval(r) = &b.results {
            if let Some(why) = &r.retrieval_skipped {
                println!("   retrieval skipped: {why}");
            }
        }
    }
    if let Some(bytes) = report.peak_rss_bytes {
        println!(
            "peak resident memory {:.0} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
}

/// Preference accuracy on one SugarCrepe- or ARO-format file (told apart by the top-level
/// JSON: an object is SugarCrepe, a list is ARO), per (true, negative) pair.
fn compositional_file(
    model: Evaluable<'_>,
    tokenizer: &Tokenizer,
    file: &Path,
    image_root: &Path,
    seq_len: usize,
    normalize: Normalize,
) -> Result<(String, std::collections::BTreeMap<String, f64>)> {
    use cappa_data::pipeline::{decode_bytes, to_tensor, DecodeLimits, EvalTransform};
    use cappa_eval::scoring::DEFAULT_BATCH;
    use cappa_eval::tasks::{compositional, PreferenceItem};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let items = if text.trim_start().starts_with('[') {
        cappa_data::readers::read_aro(file, image_root)?
    } else {
        cappa_data::readers::read_sugarcrepe(file, image_root)?
    };
    anyhow::ensure!(!items.is_empty(), "{} holds no item", file.display());
    let transform = EvalTransform::open_clip(model.encoder().image_size() as u32);
    let mut paths: Vec<PathBuf> = items.iter().map(|i| i.image_path.clone()).collect();
    paths.sort();
    paths.dedup();
    let mut images = Vec::with_capacity(paths.len());
    for path in &paths {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
        let image = decode_bytes(&bytes, &DecodeLimits::default())
            .map_err(|why| anyhow::anyhow!("{}: {why:?}", path.display()))?;
        images.push(transform.apply(&image));
    }
    let images = to_tensor(&images, normalize);
    let preference: Vec<PreferenceItem> = items
        .iter()
        .flat_map(|item| {
            let image = paths
                .binary_search(&item.image_path)
                .expect("every path was loaded");
            item.negatives.iter().map(move |negative| PreferenceItem {
                image,
                kind: item.kind.clone(),
                caption: item.caption.clone(),
                negative: negative.clone(),
            })
        })
        .collect();
    let (scorer, batch) = (model.scorer(), DEFAULT_BATCH);
    let accuracy = compositional(scorer, tokenizer, seq_len, &images, &preference, batch);
    Ok((file.display().to_string(), accuracy))
}

fn print_report(report: &cappa_eval::report::EvalReport) {
    println!(
        "{} model, {} held-out test images",
        report.model_kind, report.test_images
    );
    for (set, results) in &report.few_shot {
        let line: Vec<String> = results
            .iter()
            .map(|r| format!("{}-shot {:.3}", r.shots, r.mean_accuracy))
            .collect();
        println!("few-shot {set:<13} {}", line.join("  "));
    }
    for (set, accuracy) in &report.zero_shot {
        println!("zero-shot {set:<12} {accuracy:.3}");
    }
    match (&report.retrieval, &report.retrieval_skipped) {
        (Some(r), _) => println!(
            "retrieval           image→text R@1/5/10 {:.3}/{:.3}/{:.3}  text→image {:.3}/{:.3}/{:.3}",
            r.image_to_text.r1,
            r.image_to_text.r5,
            r.image_to_text.r10,
            r.text_to_image.r1,
            r.text_to_image.r5,
            r.text_to_image.r10
        ),
        (None, Some(why)) => println!("retrieval           skipped: {why}"),
        (None, None) => {}
    }
    for (kind, accuracy) in &report.compositional {
        println!("compositional {kind:<17} {accuracy:.3}");
    }
    for (file, accuracies) in &report.compositional_files {
        for (kind, accuracy) in accuracies {
            println!("compositional {kind:<17} {accuracy:.3}  ({file})");
        }
    }
    for (set, probe) in &report.linear_probe {
        println!(
            "linear probe {set:<11} {:.3} (l2 {:e})",
            probe.test_accuracy, probe.l2
        );
    }
    for (name, scores) in [
        ("greedy", &report.captioning_greedy),
        ("beam", &report.captioning_beam),
    ] {
        if let Some(s) = scores {
            println!(
                "captioning {name:<8} BLEU-4 {:.3}  ROUGE-L {:.3}  CIDEr-D {:.3}",
                s.bleu_4, s.rouge_l, s.cider_d
            );
        }
    }
    if let Some(p) = &report.perplexity {
        println!(
            "perplexity          {:.3} ({} tokens)",
            p.perplexity, p.tokens
        );
    }
    if let Some(t) = &report.transfer {
        println!(
            "transfer            captioning CIDEr-D {:.3}, VQA accuracy {:.3}",
            t.captioning.cider_d, t.vqa_accuracy
        );
    }
    for caption in report.sample_captions.iter().take(3) {
        println!("  e.g. \"{caption}\"");
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum MetricsCommand {
    /// BLEU-1..4, ROUGE-L and CIDEr-D (as pycocoevalcap) of `{id: {"refs": [...], "hyp": "..."}}`.
    Caption {
        file: PathBuf,
        /// Also write the scores as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub(crate) fn metrics(command: &MetricsCommand) -> Result<()> {
    let MetricsCommand::Caption { file, json } = command;
    let items: Vec<CaptionItem> = read_caption_file(file)?
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let scores = score_captions(&items);
    println!(
        "{} images: BLEU-1 {:.4}  BLEU-2 {:.4}  BLEU-3 {:.4}  BLEU-4 {:.4}  ROUGE-L {:.4}  CIDEr-D {:.4}",
        scores.images,
        scores.bleu_1,
        scores.bleu_2,
        scores.bleu_3,
        scores.bleu_4,
        scores.rouge_l,
        scores.cider_d
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&scores)? + "\n")
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ProbeKind {
    /// Ridge regression on standardised features, ±1 targets, l2 1024, k shots per class.
    Fewshot,
    /// Multinomial logistic regression, regularisation chosen on a validation split.
    Linear,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    kind: ProbeKind,
    /// safetensors or .npz with train_features (N,D), train_labels (N), test_features,
    /// test_labels.
    features: PathBuf,
    /// Shots per class (few-shot).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 5, 10, 25])]
    shots: Vec<usize>,
    /// Seeds per shot count (few-shot).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) fn probe(args: &ProbeArgs) -> Result<()> {
    let set = load_features(&args.features)?;
    let value = match args.kind {
        ProbeKind::Fewshot => {
            if args.shots.is_empty() || args.shots.contains(&0) {
                bail!("--shots needs positive shot counts, e.g. --shots 1,5,10,25");
            }
            let config = FewShotConfig {
                shots: args.shots.clone(),
                seeds: args.seeds,
                ..FewShotConfig::default()
            };
            let results = few_shot(
                &set.train_features,
                &set.train_labels,
                &set.test_features,
                &set.test_labels,
                set.num_classes,
                &config,
            );
            for r in &results {
                println!(
                    "{:>3}-shot accuracy {:.4} (seeds: {})",
                    r.shots,
                    r.mean_accuracy,
                    r.accuracies
                        .iter()
                        .map(|a| format!("{a:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            serde_json::to_value(&results)?
        }
        ProbeKind::Linear => {
            let config = LinearProbeConfig::default();
            if !has_validation_split(&set.train_labels, config.validation_fraction) {
                bail!(
                    "{}: no class has enough training examples to hold out a validation split \
                     for choosing the regularisation (at least 3 of one class)",
                    args.features.display()
                );
            }
            let result = linear_probe(
                &set.train_features,
                &set.train_labels,
                &set.test_features,
                &set.test_labels,
                set.num_classes,
                &config,
            );
            println!(
                "linear probe: test accuracy {:.4} (l2 {} chosen at validation accuracy {:.4})",
                result.test_accuracy, result.l2, result.validation_accuracy
            );
            serde_json::to_value(&result)?
        }
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}
