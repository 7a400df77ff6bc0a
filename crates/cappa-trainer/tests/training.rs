//! Training on the scene world with the tiny presets: interrupted runs resume bit-identically
//! (also past a damaged newest checkpoint), accumulation is exact for Cap, non-finite steps
//! stop cleanly, bad configs write nothing.

use std::fs;
use std::path::Path;

use cappa_trainer::checkpoint::{Checkpoints, LATEST_FILE};
use cappa_trainer::metrics::read_metrics;
use cappa_trainer::{
    config, verify_checkpoints, ExperimentConfig, ProgressMode, Resume, ResumeError, RunSummary,
    TrainError, Trainer, TrainerOptions, METRICS_FILE,
};
use tch::{Device, Kind, Tensor};

fn tiny(objective: &str, steps: u64, extra: &[&str]) -> ExperimentConfig {
    let mut sets: Vec<String> = [
        format!("objective={objective}"),
        format!("budget.steps={steps}"),
        "batch_size=16".into(),
        "data.scene.image_size=32".into(),
        "data.threads=1".into(),
        "data.tokenizer_captions=300".into(),
        "log_every=1".into(),
        "checkpoint_every=1000".into(),
        "schedule.warmup_steps=3".into(),
    ]
    .into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::resolve(None, &sets).unwrap()
}

fn options(resume: Resume) -> TrainerOptions {
    TrainerOptions {
        progress: ProgressMode::Quiet,
        resume,
        ..TrainerOptions::default()
    }
}

/// Trains `config` from scratch into `run` to the end of its budget.
fn train(config: ExperimentConfig, run: &Path) -> RunSummary {
    Trainer::start(config, run, options(Resume::Never))
        .unwrap()
        .run()
        .unwrap()
}

fn logged(run: &Path, key: &str) -> Vec<f64> {
    read_metrics(&run.join(METRICS_FILE))
        .unwrap()
        .iter()
        .filter(|v| v.get("event").is_none())
        .map(|v| v[key].as_f64().unwrap())
        .collect()
}

fn final_weights(run: &Path) -> Vec<u8> {
    let (_, dir) = Checkpoints::new(run, 1).latest().unwrap();
    fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn an_interrupted_run_resumes_bit_identically() {
    let extra = ["checkpoint_every=4", "eval.every=5"];
    let whole = tempfile::tempdir().unwrap();
    train(tiny("cap_pa", 10, &extra), whole.path());

    let parts = tempfile::tempdir().unwrap();
    let mut first = Trainer::start(
        tiny("cap_pa", 10, &extra),
        parts.path(),
        options(Resume::Never),
    )
    .unwrap();
    let interrupted = first.run_until(6).unwrap();
    assert!(!interrupted.finished && interrupted.steps == 6);
    drop(first);
    // Starting again without --resume is refused; with it the run continues at step 6.
    let refused = Trainer::start(
        tiny("cap_pa", 10, &extra),
        parts.path(),
        options(Resume::Never),
    );
    assert!(matches!(
        refused,
        Err(TrainError::RunExists { step: 6, .. })
    ));
    let mut second = Trainer::start(
        tiny("cap_pa", 10, &extra),
        parts.path(),
        options(Resume::Auto),
    )
    .unwrap();
    assert_eq!(second.state().step, 6);
    assert!(second.run().unwrap().finished);

    assert_eq!(logged(whole.path(), "loss"), logged(parts.path(), "loss"));
    assert_eq!(
        logged(whole.path(), "grad_norm"),
        logged(parts.path(), "grad_norm")
    );
    assert!(final_weights(whole.path()) == final_weights(parts.path()));
}

/// CapPa's logged loss is the mean of its parallel and causal examples' losses, weighted by
/// their counts; both kinds occur at prob 0.5, only causal ones at prob 0.
#[test]
fn cap_pa_logs_its_parallel_and_causal_losses_apart() {
    let run = tempfile::tempdir().unwrap();
    let summary = train(
        tiny("cap_pa", 6, &["parallel_prediction.prob=0.5"]),
        run.path(),
    );
    let records = read_metrics(&run.path().join(METRICS_FILE)).unwrap();
    let mut parallel_total = 0;
    for r in records.iter().filter(|v| v.get("event").is_none()) {
        let np = r["parallel_examples"].as_u64().unwrap();
        let nc = r["causal_examples"].as_u64().unwrap();
        assert_eq!(np + nc, 16, "{r}");
        let p = r["loss_parallel_mean"].as_f64().unwrap_or(0.0);
        let c = r["loss_causal_mean"].as_f64().unwrap_or(0.0);
        let mixed = (p * np as f64 + c * nc as f64) / 16.0;
        let loss = r["loss"].as_f64().unwrap();
        assert!((mixed - loss).abs() < 1e-4 * loss, "{mixed} vs {loss}: {r}");
        parallel_total += np;
    }
    // 96 examples at prob 0.5: far from none and from all.
    assert!(
        (20..=76).contains(&parallel_total),
        "{parallel_total} parallel of 96"
    );
    assert!(summary.final_loss_parallel.is_some() && summary.final_loss_causal.is_some());

    let causal_only = tempfile::tempdir().unwrap();
    let summary = train(
        tiny("cap_pa", 3, &["parallel_prediction.prob=0"]),
        causal_only.path(),
    );
    assert_eq!(summary.final_loss_parallel, None);
    assert_eq!(logged(causal_only.path(), "parallel_examples"), [0.0; 3]);
    let causal = logged(causal_only.path(), "loss_causal_mean");
    for (c, loss) in causal.iter().zip(logged(causal_only.path(), "loss")) {
        assert!((c - loss).abs() < 1e-5 * loss, "{c} vs {loss}");
    }
    // Cap logs no split at all.
    let cap = tempfile::tempdir().unwrap();
    train(tiny("cap", 3, &[]), cap.path());
    let records = read_metrics(&cap.path().join(METRICS_FILE)).unwrap();
    assert!(records
        .iter()
        .all(|r| r.get("loss_parallel_mean").is_none()));
}

/// Two micro-batches of 4 give the update of one batch of 8 for Cap's per-caption loss.
#[test]
fn accumulation_matches_one_large_batch_for_cap() {
    let images = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mut rows = Vec::new();
    for i in 0..8i64 {
        let len = 3 + i % 5;
        let mut row: Vec<i64> = (0..len).map(|t| 4 + (i * 31 + t * 7) % 300).collect();
        row.push(2);
        row.resize(24, 0);
        rows.extend(row);
    }
    let tokens = Tensor::from_slice(&rows).view([8, 24]);
    let mut params = Vec::new();
    for accumulation in [1i64, 2] {
        let run = tempfile::tempdir().unwrap();
        let config = tiny(
            "cap",
            5,
            &["batch_size=8", &format!("accumulation={accumulation}")],
        );
        let mut trainer = Trainer::start(config, run.path(), options(Resume::Never)).unwrap();
        let micro: Vec<(Tensor, Tensor)> = (0..accumulation)
            .map(|k| {
                let b = 8 / accumulation;
                (images.narrow(0, k * b, b), tokens.narrow(0, k * b, b))
            })
            .collect();
        let outcome = trainer.step_on(&micro).unwrap();
        assert!(outcome.applied);
        params.push((trainer.optimizer().params().copy(), outcome.loss));
    }
    let diff = (&params[0].0 - &params[1].0).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "parameters differ by {diff}");
    assert!((params[0].1 - params[1].1).abs() < 1e-5);
}

#[test]
fn a_non_finite_step_stops_with_the_last_good_weights() {
    let images = Tensor::full([4, 3, 32, 32], f64::NAN, (Kind::Float, Device::Cpu));
    let tokens = Tensor::from_slice(&[5i64, 6, 2, 0])
        .repeat([4, 6])
        .view([4, 24]);
    let good = Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu));

    let run = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::start(
        tiny("cap", 5, &["batch_size=4"]),
        run.path(),
        options(Resume::Never),
    )
    .unwrap();
    trainer
        .step_on(&[(good.shallow_clone(), tokens.shallow_clone())])
        .unwrap();
    let before = trainer.optimizer().params().copy();
    let error = trainer
        .step_on(&[(images.shallow_clone(), tokens.shallow_clone())])
        .unwrap_err();
    let TrainError::NonFinite {
        step, checkpoint, ..
    } = &error
    else {
        panic!("expected NonFinite, got {error}")
    };
    assert_eq!(*step, 1);
    assert!(error.to_string().contains("step 1"));
    // The checkpoint holds the weights after step 1, the last good ones.
    assert!(checkpoint.ends_with("step-00000001"));
    let (vs, _, _) = cappa_models::checkpoint::load(checkpoint, Device::Cpu).unwrap();
    let saved: f64 = vs
        .variables()
        .values()
        .map(|t| t.square().sum(Kind::Double).double_value(&[]))
        .sum();
    let expected = before.square().sum(Kind::Double).double_value(&[]);
    assert!((saved - expected).abs() <= 1e-9 * expected);

    // With max_bad_steps = 1 the first bad step is skipped and the parameters stay put.
    let run = tempfile::tempdir().unwrap();
    let config = tiny("cap", 5, &["batch_size=4", "max_bad_steps=1"]);
    let mut trainer = Trainer::start(config, run.path(), options(Resume::Never)).unwrap();
    let before = trainer.optimizer().params().copy();
    let skipped = trainer
        .step_on(&[(images.shallow_clone(), tokens.shallow_clone())])
        .unwrap();
    assert!(!skipped.applied);
    assert!(trainer.optimizer().params().equal(&before));
    assert_eq!(trainer.state().bad_steps, 1);
    assert!(matches!(
        trainer.step_on(&[(images, tokens)]),
        Err(TrainError::NonFinite { step: 1, .. })
    ));
}

#[test]
fn bad_configs_are_refused_before_anything_is_written() {
    let parent = tempfile::tempdir().unwrap();
    let run = parent.path().join("run");
    for (sets, field) in [
        (vec!["optim.lr=-0.1"], "optim.lr"),
        (
            vec!["schedule.warmup_steps=50", "budget.steps=10"],
            "schedule.warmup_steps",
        ),
        (
            vec!["data.kind=shards", "data.shards=[\"/no/such/*.tar\"]"],
            "data.shards",
        ),
        (vec!["batch_size=6", "world_size=4"], "batch_size"),
    ] {
        let mut config = tiny("clip", 10, &[]);
        for set in sets {
            let mut value = serde_json::to_value(&config).unwrap();
            config::apply_override(&mut value, set).unwrap();
            config = config::from_value(value).unwrap();
        }
        let error = Trainer::start(config, &run, options(Resume::Never)).unwrap_err();
        assert!(error.is_config(), "{error}");
        let TrainError::Config(config_error) = &error else {
            panic!("{error}")
        };
        assert_eq!(config_error.field, field);
        assert!(!run.exists(), "{field}: the run directory was created");
    }
}

#[test]
fn bf16_autocast_trains_close_to_fp32() {
    for objective in ["cap", "clip"] {
        let mut third = Vec::new();
        for precision in ["fp32", "bf16"] {
            let dir = tempfile::tempdir().unwrap();
            let config = tiny(objective, 3, &[&format!("precision={precision}")]);
            let summary = Trainer::start(config, dir.path(), options(Resume::Never))
                .unwrap()
                .run()
                .unwrap();
            assert!(summary.finished);
            let losses = logged(dir.path(), "loss");
            assert!(
                losses.iter().all(|l| l.is_finite()),
                "{precision}: {losses:?}"
            );
            third.push(losses[2]);
        }
        // Same initial weights and batches: after two updates the losses differ by bf16
        // rounding — which must be there (autocast on), and small. (Not at the first step:
        // Cap's zero-initialised head gives uniform logits, in any precision.)
        let (fp32, bf16) = (third[0], third[1]);
        let relative = (fp32 - bf16).abs() / fp32.abs();
        assert!(
            relative > 1e-7 && relative < 0.02,
            "{objective}: fp32 {fp32} vs bf16 {bf16}"
        );
    }
}

/// Copies a run directory (files and directories only).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Damage done to a checkpoint directory.
type Damage = fn(&Path);

fn truncate_weights(checkpoint: &Path) {
    let path = checkpoint.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
}

fn flip_a_weight_byte(checkpoint: &Path) {
    // The last byte lies in the tensor data (safetensors puts its header first).
    let path = checkpoint.join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    fs::write(&path, bytes).unwrap();
}

fn remove_optimizer_state(checkpoint: &Path) {
    fs::remove_file(checkpoint.join("optimizer.safetensors")).unwrap();
}

/// The newest of three checkpoints is damaged three ways; each time `--resume auto` continues
/// from the older intact one, keeps the damaged one, and ends bit-identical to the run that
/// was never interrupted (which passed through that older checkpoint).
#[test]
fn resume_steps_over_a_damaged_checkpoint_and_ends_bit_identically() {
    let extra = ["checkpoint_every=2", "keep_checkpoints=3"];
    let whole = tempfile::tempdir().unwrap();
    let run = |dir: &Path, resume| Trainer::start(tiny("cap", 8, &extra), dir, options(resume));
    run(whole.path(), Resume::Never).unwrap().run().unwrap();
    let interrupted = tempfile::tempdir().unwrap();
    run(interrupted.path(), Resume::Never)
        .unwrap()
        .run_until(6)
        .unwrap();

    let damages: [(Damage, &str); 3] = [
        (truncate_weights, "model.safetensors has "),
        (
            flip_a_weight_byte,
            "model.safetensors has the size that was written but other bytes",
        ),
        (remove_optimizer_state, "optimizer.safetensors is missing"),
    ];
    for (damage, problem) in damages {
        let parts = tempfile::tempdir().unwrap();
        copy_dir(interrupted.path(), parts.path());
        let checkpoints = Checkpoints::new(parts.path(), 3);
        let steps: Vec<u64> = checkpoints.list().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [2, 4, 6]);
        let newest = checkpoints.latest().unwrap().1;
        damage(&newest);
        let report = verify_checkpoints(&newest).unwrap().remove(0).to_string();
        assert!(
            report.starts_with("damaged  ") && report.contains(problem),
            "{report}"
        );
        // `cappa eval` and `export` load through here: they refuse it with the same reason.
        let refused = cappa_models::checkpoint::load(&newest, Device::Cpu).unwrap_err();
        assert!(refused.to_string().contains(problem), "{refused}");

        let mut resumed = run(parts.path(), Resume::Auto).unwrap();
        assert_eq!(resumed.state().step, 4, "{problem}");
        let aside = checkpoints.dir().join("step-00000006.damaged");
        assert!(aside.is_dir(), "the damaged checkpoint is kept");
        let latest = fs::read_to_string(checkpoints.dir().join(LATEST_FILE)).unwrap();
        assert_eq!(latest.trim(), "step-00000004");
        assert!(resumed.run().unwrap().finished);

        assert_eq!(logged(whole.path(), "loss"), logged(parts.path(), "loss"));
        assert_eq!(
            logged(whole.path(), "grad_norm"),
            logged(parts.path(), "grad_norm")
        );
        assert!(final_weights(whole.path()) == final_weights(parts.path()));
        // Pruning kept the newest three of the resumed run and never touched the damaged one.
        let steps: Vec<u64> = checkpoints.list().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [4, 6, 8]);
        assert!(verify_checkpoints(&aside).unwrap()[0]
            .to_string()
            .contains(problem));
        assert!(verify_checkpoints(parts.path())
            .unwrap()
            .iter()
            .all(|r| r.is_intact()));
    }
}

/// Without an intact checkpoint a run is not continued (nor restarted over its checkpoints),
/// and nothing is changed; a checkpoint without a manifest says why it cannot be trusted.
#[test]
fn a_run_without_an_intact_checkpoint_is_not_resumed() {
    let parts = tempfile::tempdir().unwrap();
    let config = || tiny("clip", 4, &[]);
    Trainer::start(config(), parts.path(), options(Resume::Never))
        .unwrap()
        .run_until(2)
        .unwrap();
    let checkpoint = Checkpoints::new(parts.path(), 2).latest().unwrap().1;
    fs::remove_file(checkpoint.join("manifest.json")).unwrap();
    let error = Trainer::start(config(), parts.path(), options(Resume::Auto)).unwrap_err();
    let TrainError::Resume(ResumeError::NoIntactCheckpoint { failures, .. }) = &error else {
        panic!("{error}")
    };
    assert_eq!(failures.len(), 1);
    let message = error.to_string();
    assert!(
        message.contains("has no manifest.json") && message.contains("older than checkpoint"),
        "{message}"
    );
    assert!(checkpoint.join("model.safetensors").is_file());
    assert_eq!(Checkpoints::new(parts.path(), 2).list().len(), 1);
}
