//! The `cappa` binary's command line: one module per command (`train`, `eval`, `compare`,
//! …), each a thin layer of argument parsing and printing over the library crates and
//! `cappa`'s own library (`cappa::experiment`, `cappa::checkpoint_eval`).

mod bench;
mod checkpoint;
mod compare;
mod cuda;
mod data;
mod device;
mod eval;
mod export;
mod info;
mod launch;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use device::DeviceArg;

#[derive(Debug, Parser)]
#[command(
    name = "cappa",
    version,
    about = "Contrastive vs. captioning pretraining of image encoders"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every subcommand.
#[derive(Debug, clap::Args)]
struct GlobalArgs {
    /// Where tensors live: `auto` (the first CUDA device if any, else the CPU), `cpu`, `cuda`
    /// or `cuda:N`.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceArg,
    /// CPU threads for libtorch's intra-op parallelism (default: libtorch's own choice).
    #[arg(long, global = true, value_parser = clap::value_parser!(i32).range(1..))]
    threads: Option<i32>,
    /// Seed for libtorch's random number generators.
    #[arg(long, global = true, default_value_t = 0)]
    seed: i64,
}

impl GlobalArgs {
    /// The flags as arguments, for the processes `cappa launch` starts.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--device".into(), self.device.to_string().into()];
        if let Some(threads) = self.threads {
            args.extend(["--threads".into(), threads.to_string().into()]);
        }
        args.extend(["--seed".into(), self.seed.to_string().into()]);
        args
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the tch and libtorch versions, CPU threads, CUDA devices and bf16 support.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures; `cargo xtask bench` runs them next to their references.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write the built-in scene world to disk: webdataset shards (img2dataset layout) and the
    /// evaluation sets in their real formats (Karpathy, ImageFolder, SugarCrepe, VQA).
    Synth(data::SynthArgs),
    /// Train one model (CLIP, SigLIP, Cap or CapPa) from a JSON experiment config; bad
    /// configurations exit with status 2 before anything is written.
    Train(train::TrainArgs),
    /// Run a cappa command as N data-parallel ranks on this machine (what `torchrun
    /// --nproc-per-node N --no-python cappa …` does), e.g. `cappa launch --nproc 2 train …`.
    Launch(launch::LaunchArgs),
    /// Evaluate a checkpoint on every scene-world task (few-shot, zero-shot, retrieval,
    /// compositional, captioning, perplexity, optionally frozen-encoder transfer).
    Eval(eval::EvalArgs),
    /// Train CLIP, Cap and CapPa at matched compute, evaluate every encoder on every task and
    /// write runs/NAME/{report.md,results.json,plots/}; a rerun reuses finished stages.
    Compare(compare::CompareArgs),
    /// Sweep model size × examples seen (and caption noise) for each objective and plot each
    /// task against training compute.
    Scale(compare::ScaleArgs),
    /// Metrics for anyone's outputs.
    #[command(subcommand)]
    Metrics(eval::MetricsCommand),
    /// Linear probes (few-shot ridge or logistic) on anyone's features.
    Probe(eval::ProbeArgs),
    /// Look at datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Check checkpoints: `cappa checkpoint verify RUN_OR_CHECKPOINT_DIR`.
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointCommand),
    /// Convert a checkpoint directory (config.json + model.safetensors) for another library.
    Export {
        /// Target format; `open_clip` writes open_clip_config.json + open_clip_model.safetensors,
        /// loadable with `open_clip.create_model_and_transforms("local-dir:OUT_DIR")`.
        #[arg(long, value_enum, default_value = "open_clip")]
        format: export::Format,
        /// Checkpoint directory of a CLIP model.
        checkpoint: std::path::PathBuf,
        /// Directory to write (created if missing).
        out_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Training-step time and greedy decoding throughput of CLIP and CapPa on the CPU.
    Models(bench::ModelsArgs),
    /// Images/s of JPEG decode → random-resized-crop 224 → normalise → batch, on 1 and 2
    /// threads, and of the scene generator.
    Data(bench::DataArgs),
    /// Full trainer steps of CLIP and CapPa on in-memory data, and the data-wait fraction
    /// with the real scene-world loader.
    Train(bench::TrainArgs),
    /// Evaluation throughput: zero-shot scoring pairs/s, greedy and beam captions/s.
    Eval(bench::EvalArgs),
    /// Trainer steps on synthetic batches on the selected device (GPU: bf16, B/16): samples/s
    /// and MFU; `cargo xtask device-bench` pairs it with the PyTorch eager reference.
    Throughput(bench::ThroughputArgs),
}

/// Parses the command line and runs the command; the process exit status.
pub(crate) fn main() -> ExitCode {
    cappa_torch_ext::backends::keep_freed_memory();
    let cli = Cli::parse();
    if let Command::Launch(args) = &cli.command {
        return match launch::launch(args, &cli.global.to_args()) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(error) => {
                eprintln!("cappa: error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error)
            if error.downcast_ref::<train::Interrupted>().is_some()
                || error
                    .downcast_ref::<cappa::experiment::Interrupted>()
                    .is_some() =>
        {
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("cappa: error: {error:#}");
            if error.downcast_ref::<train::BadConfig>().is_some()
                || error
                    .downcast_ref::<cappa::experiment::PresetError>()
                    .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Under a launcher every rank runs this; only training knows how to share the work.
    let single_process = !matches!(cli.command, Command::Train(_) | Command::Info { .. });
    if single_process && std::env::var("WORLD_SIZE").is_ok_and(|w| w.trim() != "1") {
        anyhow::bail!(
            "only `cappa train` runs data parallel; this command was started as one rank of \
             several (WORLD_SIZE is set): run it as a single process"
        );
    }
    if let Some(threads) = cli.global.threads {
        tch::set_num_threads(threads);
    }
    tch::manual_seed(cli.global.seed);
    match cli.command {
        Command::Info { json } => {
            let info = info::Info::gather(cli.global.device)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{info}");
            }
        }
        Command::Bench(BenchCommand::Models(args)) => bench::models(&args)?,
        Command::Bench(BenchCommand::Data(args)) => bench::data(&args)?,
        Command::Bench(BenchCommand::Train(args)) => bench::train(&args)?,
        Command::Bench(BenchCommand::Eval(args)) => bench::eval(&args)?,
        Command::Bench(BenchCommand::Throughput(args)) => {
            bench::throughput(&args, cli.global.device.select()?)?
        }
        Command::Data(command) => data::run(command)?,
        Command::Train(args) => train::run(&args, cli.global.device)?,
        Command::Launch(_) => unreachable!("handled in main"),
        Command::Eval(args) => eval::eval(&args, cli.global.device)?,
        Command::Compare(args) => compare::compare(&args, cli.global.device)?,
        Command::Scale(args) => compare::scale(&args, cli.global.device)?,
        Command::Metrics(command) => eval::metrics(&command)?,
        Command::Probe(args) => eval::probe(&args)?,
        Command::Synth(args) => data::synth(&args, cli.global.seed)?,
        Command::Checkpoint(command) => checkpoint::run(&command)?,
        Command::Export {
            format,
            checkpoint,
            out_dir,
        } => export::run(format, &checkpoint, &out_dir)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let before = Cli::try_parse_from(["cappa", "--device", "cpu", "--threads", "2", "info"])
            .expect("parses");
        let after =
            Cli::try_parse_from(["cappa", "info", "--json", "--device", "cuda:1"]).expect("parses");
        assert_eq!(before.global.device, DeviceArg::Cpu);
        assert_eq!(before.global.threads, Some(2));
        assert_eq!(after.global.device, DeviceArg::Cuda(1));
        assert!(matches!(after.command, Command::Info { json: true }));
    }

    #[test]
    fn bad_global_flags_are_refused() {
        assert!(Cli::try_parse_from(["cappa", "--threads", "0", "info"]).is_err());
        assert!(Cli::try_parse_from(["cappa", "--device", "tpu", "info"]).is_err());
    }
}
