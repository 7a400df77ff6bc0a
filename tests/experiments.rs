//! The experiments end to end: `compare --preset test` trains, evaluates and reports, a rerun
//! reuses every stage, an interrupted comparison continues to the same results, and `scale
//! --preset test` sweeps both axes. Each report's numbers are checked against its
//! results.json, results.json must parse back into the results bit for bit, and every plot
//! must decode as a PNG.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use cappa::experiment::{
    compare, scale, CompareOptions, CompareResults, Interrupted, Preset, ScalePreset, ScaleResults,
    REPORT_FILE, RESULTS_FILE,
};
use cappa_trainer::{Objective, ProgressMode};
use serde_json::Value;

fn options(out: &Path) -> CompareOptions {
    let mut options = CompareOptions::new(out.to_path_buf(), tch::Device::Cpu);
    options.progress = ProgressMode::Quiet;
    options
}

/// The results file in `dir`, parsed as `$type`; it must be exactly `$written` serialised
/// (pretty, with a final newline) and parse back to the same bytes: nothing is lost or
/// reformatted on the way.
macro_rules! read_results {
    ($dir:expr, $written:expr, $type:ty) => {{
        let text = std::fs::read_to_string($dir.join(RESULTS_FILE)).expect("results.json");
        let pretty = |value: &$type| serde_json::to_string_pretty(value).expect("JSON") + "\n";
        assert_eq!(pretty($written), text, "results.json is the results");
        let parsed: $type = serde_json::from_str(&text).expect("results.json parses");
        assert_eq!(pretty(&parsed), text, "results.json round-trips");
        parsed
    }};
}

/// Every plot the results list exists and decodes as a PNG of a sensible size.
fn assert_plots(dir: &Path, plots: &[String], expected: &[&str]) {
    for name in expected {
        assert!(
            plots.iter().any(|p| p == name),
            "{name} missing from {plots:?}"
        );
    }
    for plot in plots {
        let bytes = std::fs::read(dir.join(plot)).expect("the plot exists");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{plot} is a PNG");
        let image =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("decodes");
        assert!(image.width() >= 400 && image.height() >= 300, "{plot}");
    }
}

/// The report's table cell for `label` and column `column` (0: chance, then the objectives;
/// bold removed).
fn report_cell(report: &str, group: &str, label: &str, column: usize) -> String {
    let prefix = format!("| {group} | {label} |");
    let line = report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row {prefix} in the report"));
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    cells[2 + column].trim_matches('*').to_string()
}

/// Every table number of the report is the one in results.json, and a dash where an
/// objective has no value.
fn assert_table_matches(results: &CompareResults, report: &str) {
    let mut checked = 0;
    for row in results.metrics.iter().filter(|r| r.in_table) {
        let (group, label) = (row.group.name(), row.label.as_str());
        // The chance column: the row's level, and whether any objective clears it.
        let chance = report_cell(report, group, label, 0);
        match &row.chance {
            Some(c) => {
                let learned = row.values.values().any(|v| c.exceeded_by(v));
                let expected = format!("{:.3}", c.level);
                if learned {
                    assert_eq!(chance, expected, "{group} {label}");
                } else {
                    assert_eq!(chance, format!("{expected} · not learned at this budget"));
                }
            }
            None => assert_eq!(chance, "–", "{group} {label}"),
        }
        for (k, objective) in results.objectives.iter().enumerate() {
            let cell = report_cell(report, group, label, k + 1);
            match row.values.get(*objective) {
                Some(v) => {
                    assert_eq!(
                        cell,
                        format!("{:.3}", v.mean),
                        "{group} {label} {objective:?}"
                    );
                    assert!((0.0..=10.0).contains(&v.mean));
                    checked += 1;
                }
                None => assert_eq!(cell, "–", "{group} {label} {objective:?}"),
            }
        }
    }
    assert!(checked >= 60, "only {checked} numbers checked");
    // The scene world's classification and compositional rows know their chance level.
    for row in &results.metrics {
        let known = ["few_shot/", "linear_probe/", "zero_shot/", "compositional/"];
        if known.iter().any(|k| row.id.starts_with(k)) {
            assert!(row.chance.is_some(), "{} has no chance level", row.id);
        }
    }
}

/// Captioning applies to captioners only; retrieval, compositional and few-shot to all three.
fn assert_rows_cover_the_objectives(results: &CompareResults) {
    let row = |id: &str| {
        results
            .metrics
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no metric {id}"))
    };
    let cider = row("captioning/greedy/cider_d");
    assert!(!cider.values.contains(Objective::Clip));
    assert!(cider.values.contains(Objective::Cap));
    for id in [
        "compositional/relation_swap",
        "retrieval/image_to_text/r1",
        "few_shot/10/colour",
    ] {
        assert_eq!(row(id).values.len(), 3, "{id}");
    }
}

/// Matched compute: same encoder, same examples, FLOPs per example within a text layer; the
/// report states every model's size.
fn assert_matched_compute(results: &CompareResults, report: &str) {
    let models = &results.models;
    assert_eq!(models.len(), 3);
    let flops: Vec<f64> = models.iter().map(|m| m.train_flops_per_example).collect();
    assert!(models.iter().all(|m| m.examples_seen == 320));
    assert!(
        flops.iter().all(|f| (f / flops[1] - 1.0).abs() < 0.15),
        "{flops:?}"
    );
    assert!(models[0].matched_text_depth.is_some());
    for m in models {
        let params = m.params.to_string();
        assert!(
            report.contains(&params),
            "the report states {params} parameters"
        );
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A rerun reuses every stage: neither a checkpoint nor an evaluation is rewritten, and the
/// results are the same.
fn assert_rerun_reuses_every_stage(preset: &Preset, out: &Path, results: &CompareResults) {
    let step = out.join("seed-0/cap/checkpoints/step-00000020");
    let (weights, evaluation) = (
        step.join("model.safetensors"),
        step.join("eval/results.json"),
    );
    let before = (modified(&weights), modified(&evaluation));
    let again = compare(preset, &options(out)).expect("rerun");
    assert_eq!((modified(&weights), modified(&evaluation)), before);
    assert_eq!(metrics_json(&again), metrics_json(results));
}

/// Interrupted in its first training stage, the comparison stops with a checkpoint; run
/// again, it continues and ends with the same numbers as the uninterrupted one.
fn assert_interrupted_run_continues(preset: &Preset, out: &Path, results: &CompareResults) {
    let mut stopped = options(out);
    stopped.interrupt = Some(Arc::new(AtomicBool::new(true)));
    let error = compare(preset, &stopped).expect_err("stops");
    assert!(error.downcast_ref::<Interrupted>().is_some(), "{error:#}");
    assert!(out.join("seed-0/clip/checkpoints/step-00000001").is_dir());
    let resumed = compare(preset, &options(out)).expect("continues");
    assert_eq!(metrics_json(&resumed), metrics_json(results));
}

fn metrics_json(results: &CompareResults) -> Value {
    serde_json::to_value(&results.metrics).expect("serialises")
}

#[test]
fn compare_reports_what_results_json_holds_and_reuses_or_continues_its_stages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("compare");
    let preset = Preset::named("test").expect("built-in");
    let results = compare(&preset, &options(&out)).expect("compare runs");

    let json = read_results!(out, &results, CompareResults);
    let report = std::fs::read_to_string(out.join(REPORT_FILE)).expect("report.md");
    assert_eq!(
        json.objectives,
        [Objective::Clip, Objective::Cap, Objective::CapPa]
    );
    assert_table_matches(&json, &report);
    assert_rows_cover_the_objectives(&json);
    assert_matched_compute(&json, &report);
    assert_eq!(json.findings.len(), 3);
    assert_plots(
        &out,
        &json.plots,
        &[
            "plots/loss_curves.png",
            "plots/results.png",
            "plots/compositional.png",
            "plots/captions.png",
        ],
    );
    assert_rerun_reuses_every_stage(&preset, &out, &results);
    assert_interrupted_run_continues(&preset, &dir.path().join("interrupted"), &results);
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
    let Some(cappa::experiment::PresetError::OtherExperiment { dir, fields }) =
        error.downcast_ref()
    else {
        panic!("not refused as another experiment: {error:#}");
    };
    assert_eq!(
        (dir, fields.as_slice()),
        (&out.join("seed-0/clip"), &["optim.lr".to_string()][..])
    );
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
    let json = read_results!(out, &results, ScaleResults);
    let flops = |model: &str, examples: u64| {
        json.points
            .iter()
            .find(|p| p.model == model && p.examples == examples && p.objective == Objective::Cap)
            .expect("point")
            .train_flops
    };
    // Compute grows with examples (×2) and with model size.
    assert!((flops("w16-d1", 192) / flops("w16-d1", 96) - 2.0).abs() < 0.2);
    assert!(flops("w32-d1", 96) > flops("w16-d1", 96));
    assert!(json
        .points
        .iter()
        .any(|p| p.caption_noise == 0.5 && p.model == "w16-d1" && p.examples == 192));
    let report = std::fs::read_to_string(out.join(REPORT_FILE)).expect("report");
    for p in &json.points {
        for v in p.metrics.values() {
            assert!(report.contains(&format!("{v:.3}")), "{v} in the report");
        }
    }
    assert_plots(
        &out,
        &json.plots,
        &["plots/compute.png", "plots/caption_noise.png"],
    );
}

/// An ImageFolder classification suite of solid colours in `dir`, as a suite file.
fn colour_suite(dir: &Path) -> std::path::PathBuf {
    for (split, count) in [("val", 2), ("train", 3)] {
        for (name, colour) in [("red", [230u8, 20, 20]), ("blue", [20, 20, 230])] {
            let class = dir.join(split).join(name);
            std::fs::create_dir_all(&class).unwrap();
            for k in 0..count {
                image::RgbImage::from_pixel(24, 24, image::Rgb(colour))
                    .save(class.join(format!("{k}.png")))
                    .unwrap();
            }
        }
    }
    let suite = dir.join("suite.json");
    std::fs::write(
        &suite,
        r#"{"name": "colours", "benchmarks": [{"name": "colours", "task": "classification",
            "data": {"format": "image_folder", "test": "val", "train": "train"},
            "few_shot": {"shots": [1], "seeds": 2}, "linear": {"l2": 0.01}}]}"#,
    )
    .unwrap();
    suite
}

#[test]
fn compare_evaluates_every_model_on_a_suite_and_reports_each_benchmark() {
    let dir = tempfile::tempdir().expect("temp dir");
    let suite = colour_suite(dir.path());
    let mut preset = Preset::named("test").expect("built-in");
    preset.objectives = vec![Objective::Clip, Objective::Cap];
    preset.train["budget"] = serde_json::json!({"steps": 2});
    preset.train["schedule"]["warmup_steps"] = serde_json::json!(1);
    preset.eval.transfer = false;

    // A suite with a missing path is refused before anything is trained.
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"name": "b", "benchmarks": [{"name": "x", "task": "classification",
            "data": {"format": "image_folder", "test": "nowhere"}}]}"#,
    )
    .unwrap();
    let out = dir.path().join("refused");
    let mut refused = options(&out);
    refused.suite = Some(broken.display().to_string());
    let error = format!("{:#}", compare(&preset, &refused).expect_err("refused"));
    assert!(
        error.contains("data.test") && error.contains("nowhere"),
        "{error}"
    );
    assert!(!out.join("seed-0").exists(), "nothing was trained");

    let out = dir.path().join("compare");
    let mut with_suite = options(&out);
    with_suite.suite = Some(suite.display().to_string());
    let results = compare(&preset, &with_suite).expect("compare runs");
    let json = read_results!(out, &results, CompareResults);
    let colours = &json.benchmarks["colours"];
    for metric in [
        "zero_shot/acc1",
        "linear/mean_per_class_recall",
        "few_shot/1shot",
    ] {
        let row = &colours[metric];
        for objective in [Objective::Clip, Objective::Cap] {
            let spread = row.get(objective).expect("every objective");
            assert!((0.0..=1.0).contains(&spread.mean), "{metric}");
            assert_eq!(spread.per_seed.len(), 1);
        }
    }
    let report = std::fs::read_to_string(out.join(REPORT_FILE)).expect("report.md");
    assert!(report.contains("## Real benchmarks") && report.contains("### colours"));
    let clip = colours["zero_shot/acc1"].get(Objective::Clip).unwrap();
    assert!(
        report.contains(&format!("| zero_shot/acc1 | {} |", clip.display())),
        "{report}"
    );
    assert!(json
        .plots
        .contains(&"plots/benchmark_colours.png".to_string()));
    assert!(out.join("plots/benchmark_colours.png").exists());
    // Each model's suite report sits beside its scene evaluation.
    assert!(out
        .join("seed-0/cap/checkpoints/step-00000002/eval/suite-colours/results.json")
        .exists());
}
