//! `cappa eval` on tiny trained checkpoints (a captioner and a CLIP model), `cappa metrics
//! caption` and `cappa probe` on files written here.

use std::path::Path;
use std::process::{Command, Output};

use cappa::checkpoint_eval::{EvalPlan, LoadedCheckpoint};

fn cappa(args: &[&str], paths: &[&Path]) -> Output {
    let out = cappa_status(args, paths);
    assert!(
        out.status.success(),
        "cappa {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn train_tiny(dir: &Path, objective: &str) -> std::path::PathBuf {
    let sets = [
        format!("objective={objective}"),
        "budget.steps=30".into(),
        "batch_size=16".into(),
        "data.scene.image_size=32".into(),
        "data.threads=1".into(),
        "data.tokenizer_captions=300".into(),
        "schedule.warmup_steps=3".into(),
        "optim.lr=3e-3".into(),
    ];
    let mut args = vec!["train", "--progress", "quiet"];
    for set in &sets {
        args.extend(["--set", set]);
    }
    args.push("--out");
    cappa(&args, &[dir]);
    dir.join("checkpoints/step-00000030")
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap()
}

fn in_unit(value: &serde_json::Value) -> bool {
    value.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v))
}

/// A report without its wall-clock timings (`seconds`), the only part that may differ
/// between two evaluations of the same checkpoint.
fn without_timings(mut report: serde_json::Value) -> serde_json::Value {
    report
        .as_object_mut()
        .expect("a report is an object")
        .remove("seconds")
        .expect("reports time their tasks");
    report
}

/// libtorch's generator is one per process and the tests run in parallel: whatever draws
/// from it in this process does so under this lock.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The same evaluation in this process, through the library, with the CLI's global settings
/// (one thread, libtorch seed 0): what `cappa eval` must have computed and written.
fn library_report(checkpoint: &Path, plan: &EvalPlan) -> serde_json::Value {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let loaded = LoadedCheckpoint::load(checkpoint, tch::Device::Cpu).unwrap();
    let report = loaded.evaluate_scene(plan).unwrap();
    without_timings(serde_json::to_value(&report).unwrap())
}

#[test]
fn a_tiny_captioner_is_evaluated_on_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = train_tiny(&dir.path().join("run"), "cap_pa");
    let out = dir.path().join("eval");
    let args = [
        "eval",
        "--test",
        "24",
        "--pool",
        "48",
        "--beam",
        "2",
        "--transfer",
        "--transfer-steps",
        "15",
        "--out",
    ];
    cappa(&args, &[&out, &checkpoint]);
    let r = results(&out);
    // Every flag reached the plan: the CLI computed exactly what the library computes with it.
    let plan = EvalPlan {
        test: 24,
        pool: 48,
        beam: 2,
        transfer: true,
        transfer_steps: 15,
        ..EvalPlan::default()
    };
    assert_eq!(
        without_timings(r.clone()),
        library_report(&checkpoint, &plan)
    );
    assert_eq!(r["model_kind"], "captioner");
    assert_eq!(r["test_images"], 24);
    for key in ["captioning_greedy", "captioning_beam"] {
        assert_eq!(r[key]["images"], 24);
    }
    assert!(r["perplexity"]["perplexity"].as_f64().unwrap() > 1.0);
    // Each task's file holds exactly that section of results.json.
    for task in [
        "few_shot",
        "zero_shot",
        "retrieval",
        "compositional",
        "captioning_beam",
        "transfer",
    ] {
        let path = out.join(format!("{task}.json"));
        let section: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(section, r[task], "{task}.json");
    }
}

#[test]
fn a_tiny_clip_model_is_evaluated_without_captioning() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = train_tiny(&dir.path().join("run"), "clip");
    let out = cappa(
        &["eval", "--test", "24", "--pool", "48", "--json"],
        &[&checkpoint],
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = EvalPlan {
        test: 24,
        pool: 48,
        ..EvalPlan::default()
    };
    assert_eq!(
        without_timings(r.clone()),
        library_report(&checkpoint, &plan)
    );
    assert_eq!(r["model_kind"], "contrastive");
    assert!(r["captioning_greedy"].is_null() && r["perplexity"].is_null());
    // Without --out the report goes beside the checkpoint, and equals what was printed.
    assert_eq!(results(&checkpoint.join("eval")), r);

    // The scene world written as files: its SugarCrepe-format compositional sets evaluate too.
    let data = dir.path().join("synth");
    cappa(
        &[
            "synth",
            "--samples",
            "8",
            "--eval-samples",
            "16",
            "--image-size",
            "32",
            "--out",
        ],
        &[&data],
    );
    let attribute = data.join("eval/compositional/attribute_swap.json");
    let word = data.join("eval/compositional/word_order.json");
    let out = cappa(
        &[
            "eval",
            "--test",
            "8",
            "--pool",
            "16",
            "--json",
            "--image-root",
        ],
        &[
            &data.join("eval/images"),
            &checkpoint,
            Path::new("--compositional"),
            &attribute,
            &word,
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = r["compositional_files"].as_object().unwrap();
    assert_eq!(files.len(), 2);
    for (file, accuracies) in files {
        // The accuracy over all pairs is a pair-weighted mean of the kinds' accuracies, so it
        // lies between the smallest and the largest of them.
        let all = accuracies["all"].as_f64().unwrap();
        let kinds: Vec<f64> = (accuracies.as_object().unwrap().iter())
            .filter(|(kind, _)| kind.as_str() != "all")
            .map(|(_, v)| v.as_f64().unwrap())
            .collect();
        assert!(!kinds.is_empty(), "{file}: no per-kind accuracy");
        let (lo, hi) = kinds
            .iter()
            .fold((1.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(
            (lo..=hi).contains(&all),
            "{file}: all {all} outside [{lo}, {hi}]"
        );
    }
}

#[test]
fn metrics_and_probes_work_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let captions = dir.path().join("captions.json");
    std::fs::write(
        &captions,
        r#"{"1": {"refs": ["a red star", "one red star"], "hyp": "a red star"},
            "2": {"refs": ["two blue rings"], "hyp": "a blue ring"}}"#,
    )
    .unwrap();
    let json = dir.path().join("scores.json");
    cappa(&["metrics", "caption"], &[&captions]);
    cappa(&["metrics", "caption", "--json"], &[&json, &captions]);
    let scores: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(scores["images"], 2);
    assert!(in_unit(&scores["bleu_1"]) && in_unit(&scores["rouge_l"]));

    // Features: class c at 3·onehot(c) plus small noise, 4 classes, 10 per class.
    let labels: Vec<i64> = (0..40).map(|i| i % 4).collect();
    let y = tch::Tensor::from_slice(&labels);
    let noise = {
        let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        tch::Tensor::randn([40, 4], (tch::Kind::Float, tch::Device::Cpu))
    };
    let x = y.one_hot(4).to_kind(tch::Kind::Float) * 3.0 + noise * 0.1;
    let features = dir.path().join("features.safetensors");
    tch::Tensor::write_safetensors(
        &[
            ("train_features", &x),
            ("train_labels", &y),
            ("test_features", &x),
            ("test_labels", &y),
        ],
        &features,
    )
    .unwrap();
    let out_json = dir.path().join("probe.json");
    cappa(
        &["probe", "fewshot", "--shots", "1,5", "--json"],
        &[&out_json, &features],
    );
    let probe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert_eq!(probe[1]["mean_accuracy"], 1.0);
    cappa(&["probe", "linear", "--json"], &[&out_json, &features]);
    let probe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert_eq!(probe["test_accuracy"], 1.0);
}

fn cappa_status(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cappa"));
    command.args(["--threads", "1"]).args(args);
    for path in paths {
        command.arg(path);
    }
    command
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("cappa starts")
}

#[test]
fn a_suite_of_real_benchmarks_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    // A missing path is named before any checkpoint is read (there is none here).
    let suite = dir.path().join("suite.json");
    std::fs::write(
        &suite,
        r#"{"name": "mine", "benchmarks": [{"name": "shapes", "task": "classification",
            "data": {"format": "image_folder", "test": "val", "train": "train"},
            "few_shot": {"shots": [1, 2], "seeds": 1}, "linear": {"l2": 0.001}}]}"#,
    )
    .unwrap();
    let missing = cappa_status(
        &["eval", "--suite", suite.to_str().unwrap()],
        &[&dir.path().join("no-checkpoint")],
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("data.test") && stderr.contains("val"),
        "{stderr}"
    );

    // ImageFolder splits of solid colours.
    for (split, count) in [("val", 3), ("train", 4)] {
        for (name, colour) in [("red", [230u8, 20, 20]), ("blue", [20, 20, 230])] {
            let class = dir.path().join(split).join(name);
            std::fs::create_dir_all(&class).unwrap();
            for k in 0..count {
                let shade = 10 * k as u8;
                let pixel = image::Rgb([
                    colour[0].saturating_sub(shade),
                    colour[1] + shade,
                    colour[2],
                ]);
                image::RgbImage::from_pixel(40, 30, pixel)
                    .save(class.join(format!("{k}.png")))
                    .unwrap();
            }
        }
    }
    let checkpoint = train_tiny(&dir.path().join("run"), "clip");
    let out = dir.path().join("suite-eval");
    let args = ["eval", "--suite", suite.to_str().unwrap(), "--out"];
    let printed = cappa(&args, &[&out, &checkpoint]);
    let report = results(&out);
    let shapes = &report["benchmarks"][0];
    assert_eq!(shapes["name"], "shapes");
    let results = &shapes["results"];
    assert_eq!(results["task"], "classification");
    assert_eq!(results["test_images"], 6);
    assert!(in_unit(&results["zero_shot"]["acc1"]));
    assert!(in_unit(
        &results["linear"]["metrics"]["mean_per_class_recall"]
    ));
    assert_eq!(results["few_shot"].as_array().unwrap().len(), 2);
    assert!(out.join("report.md").exists() && out.join("shapes.json").exists());
    assert!(String::from_utf8_lossy(&printed.stdout).contains("zero_shot/acc1"));
    // The rerun reads its features from the cache and gives the same numbers.
    let cache = checkpoint.join("feature-cache");
    assert!(std::fs::read_dir(&cache).unwrap().count() >= 2);
    let again = dir.path().join("again");
    let rerun = cappa(&args, &[&again, &checkpoint]);
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("feature cache"));
    assert_eq!(results, &crate::results(&again)["benchmarks"][0]["results"]);
}
