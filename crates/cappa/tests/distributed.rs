//! Data-parallel training with real processes and Gloo on 127.0.0.1: two ranks × b examples
//! train the same model as one process × 2b (Cap: the weights; CLIP and SigLIP: the
//! global-batch loss), through `cappa launch` and through torchrun; a killed rank fails the
//! job with a clear error instead of a hang; only rank 0 writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tch::Tensor;

const TINY: &[&str] = &[
    "batch_size=8",
    "data.scene.image_size=32",
    "data.threads=1",
    "data.tokenizer_captions=300",
    "log_every=1",
    "schedule.warmup_steps=2",
];

fn cappa() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cappa"));
    command.env_remove("LD_LIBRARY_PATH");
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        command.env_remove(var);
    }
    command
}

/// `cappa --threads 1 [PREFIX…] train … --out OUT` with the tiny settings and `sets`.
fn train_args(command: &mut Command, out: &Path, sets: &[&str]) {
    command
        .args(["--threads", "1", "train", "--progress", "quiet", "--out"])
        .arg(out);
    for set in TINY.iter().chain(sets) {
        command.args(["--set", set]);
    }
}

fn succeed(mut command: Command) -> Output {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}{}",
        command,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn one_process(out: &Path, sets: &[&str]) {
    let mut command = cappa();
    train_args(&mut command, out, sets);
    succeed(command);
}

fn launched(out: &Path, sets: &[&str]) -> Output {
    launched_with(out, sets, &[])
}

fn launched_with(out: &Path, sets: &[&str], train_flags: &[&str]) -> Output {
    let mut command = cappa();
    command.args(["--threads", "1", "launch", "--nproc", "2"]);
    command
        .args(["train", "--progress", "quiet"])
        .args(train_flags)
        .arg("--out")
        .arg(out);
    for set in TINY.iter().chain(sets) {
        command.args(["--set", set]);
    }
    succeed(command)
}

fn checkpoint(run: &Path) -> PathBuf {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    run.join("checkpoints").join(latest.trim())
}

fn max_weight_difference(a: &Path, b: &Path) -> f64 {
    let read = |run: &Path| {
        let mut named =
            Tensor::read_safetensors(checkpoint(run).join("model.safetensors")).unwrap();
        named.sort_by(|x, y| x.0.cmp(&y.0));
        named
    };
    let (a, b) = (read(a), read(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("event").is_none())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn rank_cursors(run: &Path) -> usize {
    let state = std::fs::read_to_string(checkpoint(run).join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    state["rank_cursors"].as_array().map_or(0, Vec::len)
}

#[test]
fn two_ranks_train_cap_like_one_process_with_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (single, double) = (dir.path().join("w1"), dir.path().join("w2"));
    let sets = ["objective=cap", "budget.steps=4"];
    one_process(&single, &sets);
    let out = launched(&double, &sets);
    let diff = max_weight_difference(&single, &double);
    // Float summation order only: 1.06e-6 with the reference decoder initialisation (its
    // larger weights and N(0, 1) token embedding), against an lr of 1e-3 per step.
    assert!(diff <= 1e-5, "weights differ by {diff}");
    // Rank 0 alone reports and writes: one metrics line per step, one summary line.
    assert_eq!(losses(&double).len(), 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("done: 4 steps").count(), 1, "{stderr}");
    assert!(stderr.contains("on 2 ranks"), "{stderr}");
    assert_eq!(rank_cursors(&double), 2);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(double.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["examples_seen"], 32);
}

#[test]
fn the_global_batch_contrastive_loss_equals_the_single_process_loss() {
    for objective in ["clip", "sigmoid"] {
        let dir = tempfile::tempdir().unwrap();
        let (single, double) = (dir.path().join("w1"), dir.path().join("w2"));
        let sets = [format!("objective={objective}"), "budget.steps=4".into()];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        one_process(&single, &sets);
        launched(&double, &sets);
        let (a, b) = (losses(&single), losses(&double));
        assert_eq!(a.len(), 4);
        // Each rank's loss uses all 8 examples' negatives; a per-rank loss over 4 would differ
        // in the first digit.
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs(),
                "{objective} step {step}: {x} alone vs {y} on two ranks"
            );
        }
        let diff = max_weight_difference(&single, &double);
        assert!(diff <= 1e-4, "{objective}: weights differ by {diff}");
    }
}

#[test]
fn a_data_parallel_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    // A constant schedule, so that the shorter first budget does not change the learning rates.
    let sets = |steps| ["objective=cap_pa", "schedule.kind=constant", steps];
    launched(&whole, &sets("budget.steps=6"));
    launched(&parts, &sets("budget.steps=3"));
    launched_with(&parts, &sets("budget.steps=6"), &["--resume", "auto"]);
    assert_eq!(max_weight_difference(&whole, &parts), 0.0);
    assert_eq!(losses(&whole), losses(&parts));
}

#[test]
fn torchrun_launches_cappa_without_python() {
    // torchrun is `python -m torch.distributed.run` of the Python whose torch cappa builds on.
    let Some(python) = std::env::var_os("CAPPA_PYTHON") else {
        assert!(
            std::env::var_os("LIBTORCH").is_some(),
            "CAPPA_PYTHON (set by `cargo xtask test` and `cargo xtask env`) names the Python \
             with torch that runs torchrun"
        );
        eprintln!(
            "skipped: libtorch comes from LIBTORCH, so there is no Python torch to run torchrun"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (single, double) = (dir.path().join("w1"), dir.path().join("w2"));
    let sets = ["objective=cap", "budget.steps=3"];
    one_process(&single, &sets);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut command = Command::new(python);
    command
        .env_remove("LD_LIBRARY_PATH")
        .args([
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
        ])
        .arg(port.to_string())
        .arg("--no-python")
        .arg(env!("CARGO_BIN_EXE_cappa"));
    train_args(&mut command, &double, &sets);
    succeed(command);
    let diff = max_weight_difference(&single, &double);
    // Float summation order only: 1.06e-6 with the reference decoder initialisation (its
    // larger weights and N(0, 1) token embedding), against an lr of 1e-3 per step.
    assert!(diff <= 1e-5, "weights differ by {diff}");
    assert_eq!(rank_cursors(&double), 2);
}

fn spawn_rank(rank: usize, port: u16, out: &Path) -> Child {
    let mut command = cappa();
    command
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("CAPPA_DIST_TIMEOUT_S", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    train_args(&mut command, out, &["objective=cap", "budget.steps=100000"]);
    command.spawn().expect("a rank starts")
}

#[test]
fn a_killed_rank_stops_the_others_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut survivor = spawn_rank(0, port, &out);
    let mut victim = spawn_rank(1, port, &out);
    // Wait until training is under way (rank 0 logs every step).
    let started = Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = survivor.try_wait().unwrap() {
            break status;
        }
        if killed.elapsed() > Duration::from_secs(90) {
            let _ = survivor.kill();
            panic!("rank 0 still running 90 s after its peer died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = {
        use std::io::Read;
        let mut text = String::new();
        survivor
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    assert!(!status.success(), "rank 0 exited successfully:\n{stderr}");
    assert!(
        stderr.contains("rank 0 of 2") && stderr.contains("another rank probably died"),
        "{stderr}"
    );
    // Well before the 60 s collective timeout: the closed connection is noticed at once.
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn a_world_size_without_a_launcher_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut command = cappa();
    train_args(&mut command, &out, &["world_size=2", "budget.steps=1"]);
    let result = command.output().unwrap();
    assert_eq!(result.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("world_size") && stderr.contains("cappa launch --nproc 2"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written for a bad config");
}

#[test]
fn other_commands_refuse_to_run_as_one_of_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let result = cappa()
        .args(["compare", "--preset", "test", "--out"])
        .arg(dir.path().join("cmp"))
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("only `cappa train` runs data parallel"),
        "{stderr}"
    );
    assert!(!dir.path().join("cmp").exists());
}
