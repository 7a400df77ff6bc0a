//! `cappa compare` and `cappa scale`: the command lines of the experiments in the library.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cappa::experiment::{
    compare as run_compare, scale as run_scale, CompareOptions, Overrides, Preset, ScalePreset,
};

use crate::cli::device::DeviceArg;
use crate::cli::train::{interrupt_on_ctrl_c, ProgressArg};

/// What both experiments take besides their preset.
#[derive(Debug, clap::Args)]
pub(crate) struct CommonArgs {
    /// Training data: `synth` (the built-in scene world, generated on the fly) or webdataset
    /// shard files/globs/brace ranges (img2dataset layout), used instead of the preset's.
    #[arg(long, num_args = 1.., value_name = "synth|PATH")]
    data: Vec<String>,
    /// Override one training-config value for every model, e.g. `--set optim.lr=3e-4`.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    sets: Vec<String>,
    /// The experiment's directory (default: runs/PRESET-NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Progress on stderr: stage lines and a bar per training run (`auto`), plain lines, or
    /// nothing.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
    /// Also evaluate every model on this suite of real benchmarks (`paper` or a suite JSON
    /// file; see `cappa eval --suite`), instead of the preset's `suite`. Every path is
    /// checked before training.
    #[arg(long, value_name = "NAME|FILE")]
    suite: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// `default` (≈15 min on 2 CPU cores), `cpu-quick` (≈3 min), `test` (a smoke test),
    /// `cc3m-b16` (the paper's setup on your shards) or a preset JSON file.
    #[arg(long, default_value = "default")]
    preset: String,
    /// Seeds 0..N (default: the preset's); tables report mean ± standard deviation.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: Option<u64>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// `default` (hours on a CPU, minutes on a GPU), `test` (a smoke test) or a preset file.
    #[arg(long, default_value = "default")]
    preset: String,
    #[command(flatten)]
    common: CommonArgs,
}

fn options(common: &CommonArgs, name: &str, device: DeviceArg) -> Result<CompareOptions> {
    let device = device.select()?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(name));
    let mut options = CompareOptions::new(out, device);
    options.device_name = crate::cli::device::accelerator_name(device);
    options.overrides = Overrides {
        data: common
            .data
            .iter()
            .filter(|d| d.as_str() != "synth")
            .cloned()
            .collect(),
        sets: common.sets.clone(),
    };
    if common.data.iter().any(|d| d == "synth") {
        options.overrides.sets.push("data.kind=scene".into());
        if common.data.len() > 1 {
            anyhow::bail!(cappa::experiment::PresetError::CommandLine {
                option: "--data",
                why: "takes either `synth` or shard paths, not both".into(),
            });
        }
    }
    options.progress = common.progress.mode();
    options.suite = common.suite.clone();
    options.interrupt = Some(interrupt_on_ctrl_c()?);
    Ok(options)
}

pub(crate) fn compare(args: &CompareArgs, device: DeviceArg) -> Result<()> {
    let preset = Preset::named(&args.preset)?;
    let mut options = options(&args.common, &preset.name, device)?;
    options.seeds = args.seeds;
    let results = run_compare(&preset, &options)?;
    println!("{}", results.table_markdown());
    for finding in &results.findings {
        let verdict = match finding.reproduced {
            Some(true) => "reproduced",
            Some(false) => "NOT reproduced",
            None => "not checked",
        };
        println!("{verdict}: {} ({})", finding.claim, finding.evidence);
    }
    println!(
        "\nwrote {} and {} ({} plots) in {:.1} min",
        options.out.join("report.md").display(),
        options.out.join("results.json").display(),
        results.plots.len(),
        results.wall_seconds / 60.0
    );
    Ok(())
}

pub(crate) fn scale(args: &ScaleArgs, device: DeviceArg) -> Result<()> {
    let preset = ScalePreset::named(&args.preset)?;
    let options = options(&args.common, &format!("scale-{}", preset.name), device)?;
    let results = run_scale(&preset, &options)?;
    println!(
        "{} runs; wrote {} and {} ({} plots) in {:.1} min",
        results.points.len(),
        options.out.join("report.md").display(),
        options.out.join("results.json").display(),
        results.plots.len(),
        results.wall_seconds / 60.0
    );
    Ok(())
}
