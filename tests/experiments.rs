//! The experiments end to end: `compare --preset test` trains, evaluates and reports, a rerun
//! reuses every stage, an interrupted comparison continues to the same results, and `scale
//! --preset test` sweeps both axes. Each report's numbers are checked against its
//! results.json, and every plot must decode as a PNG.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cappa::experiment::{
    compare, scale, CompareOptions, CompareResults, Interrupted, Preset, ScalePreset,
};
use cappa_trainer::ProgressMode;
use serde_json::Value;

fn options(out: &Path) -> CompareOptions {
    let mut options = CompareOptions::new(out.to_path_buf(), tch::Device::Cpu);
    options.progress = ProgressMode::Quiet;
    options
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("readable")).expect("JSON")
}

/// Every plot the results list exists and decodes as a PNG of a sensible size.
fn assert_plots(dir: &Path, plots: &Value, expected: &[&str]) {
    let plots: Vec<&str> = plots
        .as_array()
        .expect("a list of plots")
        .iter()
        .map(|p| p.as_str().expect("a path"))
        .collect();
    for name in expected {
        assert!(plots.contains(name), "{name} missing from {plots:?}");
    }
    for plot in plots {
        let bytes = std::fs::read(dir.join(plot)).expect("the plot exists");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{plot} is a PNG");
        let image =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("decodes");
        assert!(image.width() >= 400 && image.height() >= 300, "{plot}");
    }
}

/// The report's table cell for `label` and column `column` (bold removed).
fn report_cell(report: &str, group: &str, label: &str, column: usize) -> String {
    let prefix = format!("| {group} | {label} |");
    let line = report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row {prefix} in the report"));
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    cells[2 + column].trim_matches('*').to_string()
}

#[test]
fn compare_reports_what_results_json_holds_and_reuses_or_continues_its_stages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("compare");
    let preset = Preset::named("test").expect("built-in");
    let results = compare(&preset, &options(&out)).expect("compare runs");

    let json = read_json(&out.join("results.json"));
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    let objectives: Vec<String> = serde_json::from_value(json["objectives"].clone()).expect("list");
    assert_eq!(objectives, ["clip", "cap", "cap_pa"]);
    // Every table number of the report is the one in results.json.
    let mut checked = 0;
    for row in json["metrics"].as_array().expect("metrics") {
        if row["in_table"] != true {
            continue;
        }
        let (group, label) = (
            row["group"].as_str().unwrap(),
            row["label"].as_str().unwrap(),
        );
        for (k, objective) in objectives.iter().enumerate() {
            let cell = report_cell(&report, group, label, k);
            match row["values"].get(objective) {
                Some(v) => {
                    let mean = v["mean"].as_f64().expect("mean");
                    assert_eq!(cell, format!("{mean:.3}"), "{group} {label} {objective}");
                    assert!((0.0..=10.0).contains(&mean));
                    checked += 1;
                }
                None => assert_eq!(cell, "–", "{group} {label} {objective}"),
            }
        }
    }
    assert!(checked >= 60, "only {checked} numbers checked");
    // Captioning applies to captioners only; retrieval and compositional to all three.
    let row = |id: &str| {
        json["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no metric {id}"))
            .clone()
    };
    assert!(row("captioning/greedy/cider_d")["values"]
        .get("clip")
        .is_none());
    for id in [
        "compositional/relation_swap",
        "retrieval/image_to_text/r1",
        "few_shot/10/colour",
    ] {
        assert_eq!(row(id)["values"].as_object().unwrap().len(), 3, "{id}");
    }
    // Matched compute: same encoder, same examples, FLOPs per example within a text layer.
    let models = json["models"].as_array().expect("models");
    assert_eq!(models.len(), 3);
    let flops: Vec<f64> = models
        .iter()
        .map(|m| m["train_flops_per_example"].as_f64().unwrap())
        .collect();
    assert!(models.iter().all(|m| m["examples_seen"] == 320));
    assert!(
        flops.iter().all(|f| (f / flops[1] - 1.0).abs() < 0.15),
        "{flops:?}"
    );
    assert!(models[0]["matched_text_depth"].as_i64().is_some());
    for m in models {
        let params = m["params"].as_i64().unwrap().to_string();
        assert!(
            report.contains(&params),
            "the report states {params} parameters"
        );
    }
    assert_eq!(json["findings"].as_array().unwrap().len(), 3);
    assert_plots(
        &out,
        &json["plots"],
        &[
            "plots/loss_curves.png",
            "plots/results.png",
            "plots/compositional.png",
            "plots/captions.png",
        ],
    );

    // A rerun reuses every stage: no checkpoint is rewritten and the results are the same.
    let weights = |root: &Path| {
        let path = root.join("seed-0/cap/checkpoints/step-00000020/model.safetensors");
        std::fs::metadata(path)
            .expect("weights")
            .modified()
            .expect("mtime")
    };
    let before = weights(&out);
    let again = compare(&preset, &options(&out)).expect("rerun");
    assert_eq!(weights(&out), before);
    assert_eq!(metrics_json(&again), metrics_json(&results));

    // Interrupted in its first training stage, the comparison stops with a checkpoint; run
    // again, it continues and ends with the same numbers as the uninterrupted one.
    let other = dir.path().join("interrupted");
    let mut stopped = options(&other);
    stopped.interrupt = Some(Arc::new(AtomicBool::new(true)));
    let error = compare(&preset, &stopped).expect_err("stops");
    assert!(error.downcast_ref::<Interrupted>().is_some(), "{error:#}");
    assert!(other.join("seed-0/clip/checkpoints/step-00000001").is_dir());
    let resumed = compare(&preset, &options(&other)).expect("continues");
    assert_eq!(metrics_json(&resumed), metrics_json(&results));
}

fn metrics_json(results: &CompareResults) -> Value {
    serde_json::to_value(&results.metrics).expect("serialises")
}

#[test]
fn a_preset_that_changed_is_refused_in_the_old_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("compare");
    let mut preset = Preset::named("test").expect("built-in");
    preset.objectives.truncate(1);
    preset.train["budget"] = serde_json::json!({"steps": 2});
    preset.train["schedule"]["warmup_steps"] = serde_json::json!(1);
    preset.eval.transfer = false;
    compare(&preset, &options(&out)).expect("runs");
    preset.train["optim"]["lr"] = serde_json::json!(0.01);
    let error = compare(&preset, &options(&out)).expect_err("refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("optim.lr") && message.contains("--out"),
        "{message}"
    );
}

#[test]
fn scale_sweeps_size_examples_and_caption_noise() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("scale");
    let preset = ScalePreset::named("test").expect("built-in");
    let results = scale(&preset, &options(&out)).expect("scale runs");
    // 2 sizes × 2 budgets at the first noise level, plus 1 more noise level: 5 points × 2.
    assert_eq!(results.points.len(), 10);
    let json = read_json(&out.join("results.json"));
    assert_eq!(json["points"].as_array().unwrap().len(), 10);
    let flops = |model: &str, examples: u64| {
        results
            .points
            .iter()
            .find(|p| p.model == model && p.examples == examples && p.objective == "cap")
            .expect("point")
            .train_flops
    };
    // Compute grows with examples (×2) and with model size.
    assert!((flops("w16-d1", 192) / flops("w16-d1", 96) - 2.0).abs() < 0.2);
    assert!(flops("w32-d1", 96) > flops("w16-d1", 96));
    assert!(results
        .points
        .iter()
        .any(|p| p.caption_noise == 0.5 && p.model == "w16-d1" && p.examples == 192));
    let report = std::fs::read_to_string(out.join("report.md")).expect("report");
    for p in &results.points {
        for v in p.metrics.values() {
            assert!(report.contains(&format!("{v:.3}")), "{v} in the report");
        }
    }
    assert_plots(
        &out,
        &json["plots"],
        &["plots/compute.png", "plots/caption_noise.png"],
    );
}
