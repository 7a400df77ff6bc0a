//! `cappa train`: one training run from a JSON experiment config with `--set` overrides.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cappa_torch_ext::dist::{Backend, DistEnv, ProcessGroup};
use cappa_trainer::{
    config, ProgressMode, Resume, RunSummary, Trainer, TrainerOptions, EXPERIMENT_FILE,
};

use crate::cli::device::DeviceArg;

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// Experiment config (JSON). Without it: the defaults (tiny CapPa on the scene world); on
    /// `--resume auto` of an existing run: that run's saved config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config value, e.g. `--set optim.lr=3e-4 --set budget.examples=100000`
    /// (values are JSON; anything else is a string). Repeatable.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    sets: Vec<String>,
    /// Run directory (default: runs/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// `auto` continues the run directory from its newest checkpoint (or starts it); `never`
    /// refuses a directory that already has checkpoints.
    #[arg(long, value_enum, default_value = "never")]
    resume: ResumeArg,
    /// Progress on stderr: a bar on a terminal (`auto`), plain lines, or nothing.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
    /// Print the resolved configuration as JSON and exit without training.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ResumeArg {
    Auto,
    Never,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ProgressArg {
    Auto,
    Plain,
    Quiet,
}

impl ProgressArg {
    pub(crate) fn mode(self) -> ProgressMode {
        match self {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Plain => ProgressMode::Plain,
            ProgressArg::Quiet => ProgressMode::Quiet,
        }
    }
}

/// The run stopped on Ctrl-C with a checkpoint: `main` exits with status 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub(crate) struct Interrupted;

/// A configuration error: `main` exits with status 2 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadConfig(pub(crate) String);

/// A flag that Ctrl-C sets: training stops after the current step with a checkpoint; a
/// second Ctrl-C exits at once.
pub(crate) fn interrupt_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupt);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
    })?;
    Ok(interrupt)
}

/// The timeout of the rendezvous and of every collective: `CAPPA_DIST_TIMEOUT_S`, default
/// 600 s (a rank that falls behind longer than this, e.g. in a long evaluation, fails the job).
fn dist_timeout() -> Result<Duration> {
    match std::env::var("CAPPA_DIST_TIMEOUT_S") {
        Err(_) => Ok(Duration::from_secs(600)),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(seconds) if seconds > 0.0 && seconds.is_finite() => {
                Ok(Duration::from_secs_f64(seconds))
            }
            _ => Err(bad_config(format!(
                "CAPPA_DIST_TIMEOUT_S: `{text}` is not a positive number of seconds"
            ))),
        },
    }
}

fn bad_config(error: impl std::fmt::Display) -> anyhow::Error {
    BadConfig(error.to_string()).into()
}

pub(crate) fn run(args: &TrainArgs, device: DeviceArg) -> Result<()> {
    let resume = matches!(args.resume, ResumeArg::Auto);
    let dist_env = DistEnv::from_env().map_err(bad_config)?;
    let config = resolved_config(args, resume, dist_env.as_ref())?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    config.validate().map_err(bad_config)?;
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&config.name));
    let (device, dist) = device_and_group(device, dist_env.as_ref())?;
    let main_rank = dist.as_ref().is_none_or(|pg| pg.rank() == 0);
    let options = TrainerOptions {
        interrupt: Some(interrupt_on_ctrl_c()?),
        device,
        device_name: crate::cli::device::accelerator_name(device),
        progress: args.progress.mode(),
        resume: if resume { Resume::Auto } else { Resume::Never },
        dist,
    };
    let mut trainer = Trainer::start(config, &run_dir, options).map_err(|e| {
        if e.is_config() {
            bad_config(e)
        } else {
            e.into()
        }
    })?;
    if !main_rank {
        // Rank 0 reports; the others only train (and print their errors).
        let summary = trainer.run()?;
        return if summary.finished {
            Ok(())
        } else {
            Err(Interrupted.into())
        };
    }
    announce(&trainer, &run_dir);
    let summary = trainer.run()?;
    report(&summary, trainer.config().world_size, &run_dir)
}

/// The configuration: `--config` (or, resuming without one, the run's own saved config) with
/// the `--set` overrides; under a launcher, the launcher's world size unless the config
/// names one (then they must agree; the trainer says so if not).
fn resolved_config(
    args: &TrainArgs,
    resume: bool,
    dist_env: Option<&DistEnv>,
) -> Result<config::ExperimentConfig> {
    let mut base = args.config.clone();
    if base.is_none() && resume {
        if let Some(out) = &args.out {
            let saved = out.join(EXPERIMENT_FILE);
            if saved.is_file() {
                base = Some(saved);
            }
        }
    }
    let mut config = config::resolve(base.as_deref(), &args.sets).map_err(bad_config)?;
    if let Some(env) = dist_env {
        if config.world_size == 1 {
            config.world_size = env.world_size;
        }
    }
    Ok(config)
}

/// The device of this process and, under a launcher, its process group (one GPU per rank:
/// `LOCAL_RANK`'s).
fn device_and_group(
    device: DeviceArg,
    dist_env: Option<&DistEnv>,
) -> Result<(tch::Device, Option<Arc<ProcessGroup>>)> {
    let mut device = device.select()?;
    let Some(env) = dist_env else {
        return Ok((device, None));
    };
    if let tch::Device::Cuda(_) = device {
        device = DeviceArg::Cuda(env.local_rank).select()?;
    }
    let pg = ProcessGroup::new(env, Backend::for_device(device), dist_timeout()?)?;
    Ok((device, Some(Arc::new(pg))))
}

/// What is about to happen, on stderr.
fn announce(trainer: &Trainer, run_dir: &Path) {
    if trainer.state().step > 0 {
        eprintln!(
            "resuming {} at step {} of {}",
            run_dir.display(),
            trainer.state().step,
            trainer.total_steps()
        );
    }
    let ranks = match trainer.config().world_size {
        1 => String::new(),
        n => format!(" on {n} ranks"),
    };
    eprintln!(
        "training {} ({}) for {} steps of {} examples{ranks}, {:.3e} training FLOPs per example → {}",
        trainer.config().name,
        trainer.config().objective.name(),
        trainer.total_steps(),
        trainer.config().batch_size,
        trainer.train_flops_per_example(),
        run_dir.display()
    );
}

/// The end of a run on stderr: done, or interrupted with the command that continues it.
fn report(summary: &RunSummary, world_size: usize, run_dir: &Path) -> Result<()> {
    if !summary.finished {
        let launch = match world_size {
            1 => String::new(),
            n => format!("launch --nproc {n} "),
        };
        eprintln!(
            "interrupted at step {} of {}; checkpoint {}. Continue with: cappa {launch}train --out {} --resume auto",
            summary.steps,
            summary.total_steps,
            summary.checkpoint.display(),
            run_dir.display()
        );
        return Err(Interrupted.into());
    }
    eprintln!(
        "done: {} steps, {} examples in {:.1} s ({:.0} examples/s), final loss {}, {} bad samples; checkpoint {}",
        summary.steps,
        summary.examples_seen,
        summary.seconds,
        summary.examples_per_second,
        summary
            .final_loss
            .map_or("n/a".into(), |l| format!("{l:.4}")),
        summary.bad_samples,
        summary.checkpoint.display()
    );
    Ok(())
}
