//! `cargo xtask`: the project's automation, in Rust and without a libtorch dependency so
//! that it builds on a machine that has nothing but a Rust toolchain and Python 3.
//!
//! Every subcommand first finds or provisions libtorch 2.11.0 (see [`libtorch`]) and then
//! runs cargo with the environment that `torch-sys` needs:
//!
//! ```text
//! cargo xtask setup                 # find or install libtorch (+ Gloo/CUDA headers); then instant
//! cargo xtask test [ARGS…]          # fmt --check, clippy -D warnings, cargo test --workspace ARGS…
//! cargo xtask run -- info --json    # build the `cappa` binary (release) and run it
//! cargo xtask compare [ARGS…]       # the main job: cappa compare (release build)
//! cargo xtask scale [ARGS…]         # cappa scale: size × examples × caption-noise sweeps
//! cargo xtask calibrate             # the world/model calibration sweep → docs/calibration.md
//! cargo xtask bench                 # every benchmark → target/bench/summary.{md,json}
//! cargo xtask bench models          # cappa vs PyTorch eager → target/bench/models.{json,md}
//! cargo xtask device-bench          # build what a GPU machine needs; print how to run it there
//! eval "$(cargo xtask env)"         # export the same environment for plain cargo
//! ```

mod bench;
mod calibrate;
mod libtorch;
mod native;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::libtorch::Libtorch;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "cappa's project automation", version)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Find or provision libtorch 2.11.0 and print where it is; also install the headers that
    /// data parallelism compiles against (Gloo: Debian's libgloo-dev; NCCL: CUDA headers from
    /// PyPI), where possible.
    Setup,
    /// Check formatting, run clippy with warnings denied, then `cargo test --workspace`.
    ///
    /// Extra arguments go to `cargo test`, e.g. `cargo xtask test -p cappa-models -- --nocapture`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the `cappa` binary in release mode and run it with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Train CLIP, Cap and CapPa at matched compute and compare them on every task (the main
    /// job): `cappa compare ARGS…` from a release build; the report is in runs/NAME/.
    Compare {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Sweep model size × examples seen × caption noise: `cappa scale ARGS…` (release build).
    Scale {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The calibration sweep of the built-in comparison: `cappa compare` per setting of
    /// data/calibration/sweep.json (finished ones reused), then docs/calibration.md.
    Calibrate(calibrate::CalibrateArgs),
    /// Run benchmarks next to their references and write target/bench/NAME.{json,md}; without
    /// a name, all of them and target/bench/summary.{md,json}.
    Bench {
        #[command(subcommand)]
        which: Option<bench::Which>,
    },
    /// Build the release `cappa` binary for the GPU checks and print how to run
    /// scripts/device_bench.sh on a CUDA machine (bf16 B/16 throughput and MFU vs PyTorch
    /// eager, NCCL smoke test). `--local` runs the script here on the CPU at the tiny preset,
    /// to check the script itself.
    DeviceBench {
        #[arg(long)]
        local: bool,
    },
    /// Print shell `export` lines that let plain `cargo` build against the provisioned libtorch.
    Env,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    let root = workspace_root();
    match task {
        Task::Setup => {
            let libtorch = libtorch::setup(Verbosity::Report)?;
            println!("{}", libtorch.describe());
            Ok(ExitCode::SUCCESS)
        }
        Task::Env => {
            let libtorch = libtorch::setup(Verbosity::Quiet)?;
            for (key, value) in libtorch.cargo_env() {
                match value {
                    Some(value) => println!("export {key}={}", shell_quote(&value)),
                    None => println!("unset {key}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { args } => test(&root, args),
        Task::Bench { which } => {
            let libtorch = libtorch::setup(Verbosity::Quiet)?;
            if let Some(code) = build_release(&root, &libtorch)? {
                return Ok(code);
            }
            match which {
                Some(which) => bench::run(which, &root, &libtorch)?,
                None => bench::run_all(&root, &libtorch)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::DeviceBench { local } => device_bench(&root, local),
        Task::Run { args } => run_cappa(&root, &[], args),
        Task::Compare { args } => run_cappa(&root, &["compare"], args),
        Task::Scale { args } => run_cappa(&root, &["scale"], args),
        Task::Calibrate(args) => {
            calibrate::calibrate(&root, &args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cargo xtask test`: formatting, clippy with warnings denied, then the workspace's tests.
fn test(root: &Path, args: Vec<OsString>) -> Result<ExitCode> {
    let libtorch = libtorch::setup(Verbosity::Quiet)?;
    let clippy = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    let steps: [(&str, Vec<OsString>); 3] = [
        ("formatting", os_args(&["fmt", "--all", "--", "--check"])),
        ("clippy", os_args(&clippy)),
        ("tests", [os_args(&["test", "--workspace"]), args].concat()),
    ];
    for (name, cargo_args) in steps {
        eprintln!("xtask: {name}: cargo {}", display_args(&cargo_args));
        let code = cargo(root, &libtorch, &cargo_args)?;
        if code != 0 {
            eprintln!("xtask: {name} failed (exit status {code})");
            return Ok(exit_code(code));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the release `cappa` binary; the exit code to return if the build failed.
fn build_release(root: &Path, libtorch: &Libtorch) -> Result<Option<ExitCode>> {
    let build = os_args(&["build", "--quiet", "--release", "--package", "cappa"]);
    let code = cargo(root, libtorch, &build)?;
    Ok((code != 0).then(|| exit_code(code)))
}

/// `cargo xtask device-bench`: a stripped release binary to carry to a GPU machine, and how to
/// run the checks there; `--local` runs the script here on the CPU at the tiny preset.
fn device_bench(root: &Path, local: bool) -> Result<ExitCode> {
    let libtorch = libtorch::setup(Verbosity::Quiet)?;
    if let Some(code) = build_release(root, &libtorch)? {
        return Ok(code);
    }
    let binary = stripped_copy(root)?;
    if !local {
        println!(
            "Built {}. On a machine with a CUDA GPU and torch 2.11 (CUDA) in \
             /opt/torch/.venv (else set TORCH_VENV), from a copy of this tree with that \
             binary carried along, run:\n\n    bash scripts/device_bench.sh\n\n\
             (≈5 minutes on an H200; the device tool: carry \
             [\"target/device-bench/bin/cappa\"], timeout_s 540). Results: \
             $OUT/device-bench.md (OUT defaults to target/device-bench) and JSON beside it.",
            binary.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Libtorch::Python { torch, .. } = &libtorch else {
        anyhow::bail!("--local needs a Python torch (cappa's virtualenv); LIBTORCH is set");
    };
    let venv = torch
        .python
        .parent()
        .and_then(Path::parent)
        .context("the Python's environment")?;
    let status = Command::new("bash")
        .arg(root.join("scripts/device_bench.sh"))
        .current_dir(root)
        .envs([
            ("TORCH_VENV", venv.as_os_str()),
            ("DEVICE", "cpu".as_ref()),
            ("PRESET", "tiny".as_ref()),
            ("BATCHES", "32".as_ref()),
            ("SEQ_LEN", "16".as_ref()),
            ("STEPS", "3".as_ref()),
            ("OUT", root.join("target/device-bench-local").as_os_str()),
        ])
        .status()
        .context("could not run bash")?;
    Ok(exit_code(status.code().unwrap_or(1)))
}

/// A stripped copy of the release binary (≈17 MB instead of ≈150 MB with line tables), to
/// carry to a GPU machine.
fn stripped_copy(root: &Path) -> Result<PathBuf> {
    let release = root.join("target/release/cappa");
    anyhow::ensure!(release.is_file(), "{} was not built", release.display());
    let binary = root.join("target/device-bench/bin/cappa");
    std::fs::create_dir_all(binary.parent().expect("has a parent"))?;
    std::fs::copy(&release, &binary)
        .with_context(|| format!("could not copy {}", release.display()))?;
    if !Command::new("strip")
        .arg(&binary)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!(
            "xtask: `strip` failed; {} keeps its debug lines",
            binary.display()
        );
    }
    Ok(binary)
}

/// Builds the `cappa` binary (release) and runs `cappa SUBCOMMAND… ARGS…`.
fn run_cappa(root: &Path, subcommand: &[&str], args: Vec<OsString>) -> Result<ExitCode> {
    Ok(exit_code(run_cappa_code(root, subcommand, args)?))
}

/// [`run_cappa`], returning the exit code as a number.
pub(crate) fn run_cappa_code(root: &Path, subcommand: &[&str], args: Vec<OsString>) -> Result<i32> {
    let libtorch = libtorch::setup(Verbosity::Quiet)?;
    let cargo_args = [
        os_args(&["run", "--quiet", "--release", "--package", "cappa", "--"]),
        os_args(subcommand),
        args,
    ]
    .concat();
    cargo(root, &libtorch, &cargo_args)
}

/// Whether [`libtorch::setup`] prints what it found when nothing had to be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verbosity {
    Quiet,
    Report,
}

/// Runs `cargo ARGS` in the workspace root with libtorch's environment; returns its exit code.
fn cargo(root: &Path, libtorch: &Libtorch, args: &[OsString]) -> Result<i32> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&program);
    command.args(args).current_dir(root);
    for (key, value) in libtorch.cargo_env() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let status = command
        .status()
        .with_context(|| format!("could not start {}", program.to_string_lossy()))?;
    // A child killed by a signal has no code; report it as a plain failure.
    Ok(status.code().unwrap_or(1))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn display_args(args: &[OsString]) -> String {
    args.iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Quotes a value for a POSIX shell `export` line.
fn shell_quote(value: &std::ffi::OsStr) -> String {
    format!("'{}'", value.to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote("a b".as_ref()), "'a b'");
        assert_eq!(shell_quote("it's".as_ref()), r"'it'\''s'");
    }

    #[test]
    fn cli_passes_hyphenated_arguments_through() {
        let cli = Cli::try_parse_from(["xtask", "test", "-p", "cappa-models", "--", "--nocapture"])
            .expect("parses");
        let Task::Test { args } = cli.command else {
            panic!("expected the test task, got {:?}", cli.command)
        };
        assert_eq!(args, os_args(&["-p", "cappa-models", "--", "--nocapture"]));

        let cli = Cli::try_parse_from(["xtask", "run", "--", "info", "--json"]).expect("parses");
        let Task::Run { args } = cli.command else {
            panic!("expected the run task, got {:?}", cli.command)
        };
        assert_eq!(args, os_args(&["info", "--json"]));
    }
}
