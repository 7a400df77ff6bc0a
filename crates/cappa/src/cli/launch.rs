//! `cappa launch --nproc N COMMAND…`: start N copies of `cappa COMMAND…` on this machine as
//! the ranks of one data-parallel job, with the environment torchrun sets (`RANK`,
//! `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, `MASTER_PORT`).
//! When a rank fails the others get `--grace-s` seconds to notice (their collectives fail
//! at once when a peer's connection closes) and are then killed; the exit status is the
//! first failing rank's.

use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, clap::Args)]
pub(crate) struct LaunchArgs {
    /// Processes to start (on CUDA: one per GPU, rank r on cuda:r).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    nproc: u16,
    /// Rendezvous port on 127.0.0.1 (default: a free one).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds the other ranks get to exit after one fails, before they are killed.
    #[arg(long, default_value_t = 30)]
    grace_s: u64,
    /// The cappa command every rank runs, e.g. `train --config exp.json`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<OsString>,
}

/// The exit status of the job: 0, or the first failing rank's.
pub(crate) fn launch(args: &LaunchArgs, global: &[OsString]) -> Result<i32> {
    if args.command.first().is_some_and(|c| c == "launch") {
        bail!("cappa launch: the command to launch cannot be `launch` itself");
    }
    let port = match args.master_port {
        Some(port) => port,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cappa launch: finding a free port for the rendezvous")?
            .port(),
    };
    let exe = std::env::current_exe().context("cappa launch: locating the cappa binary")?;
    let world = args.nproc.to_string();
    // Ctrl-C reaches every rank from the terminal; the launcher waits for them to stop.
    ctrlc::set_handler(|| {}).context("cappa launch: installing the Ctrl-C handler")?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..usize::from(args.nproc) {
        let child = Command::new(&exe)
            .args(global)
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("GROUP_RANK", "0")
            .env("WORLD_SIZE", &world)
            .env("LOCAL_WORLD_SIZE", &world)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("cappa launch: starting rank {rank}"))?;
        children.push((rank, child));
    }
    let mut first_failure: Option<(usize, i32)> = None;
    let mut failed_at: Option<Instant> = None;
    while !children.is_empty() {
        let mut still = Vec::with_capacity(children.len());
        for (rank, mut child) in children {
            match child.try_wait()? {
                Some(status) => {
                    let code = status.code().unwrap_or(1);
                    if code != 0 && first_failure.is_none() {
                        eprintln!("cappa launch: rank {rank} exited with status {code}");
                        first_failure = Some((rank, code));
                        failed_at = Some(Instant::now());
                    }
                }
                None => still.push((rank, child)),
            }
        }
        children = still;
        if failed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(args.grace_s)) {
            for (rank, child) in &mut children {
                eprintln!("cappa launch: killing rank {rank}, still running after the failure");
                let _ = child.kill();
                let _ = child.wait();
            }
            children.clear();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(first_failure.map_or(0, |(_, code)| code))
}
