//! `cargo xtask bench`: runs cappa's benchmarks next to their reference implementations on the
//! same machine and libtorch, alternating the two, and writes `target/bench/NAME.json`
//! (`[{name, ours, reference, unit, ratio, target}]`) and `target/bench/NAME.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::libtorch::Libtorch;

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub(crate) enum Which {
    /// Model step time and greedy decoding vs PyTorch eager (scripts/bench_models_reference.py).
    Models,
    /// JPEG → random-resized-crop 224 → normalise → batch vs Pillow + torchvision
    /// (scripts/bench_data_reference.py), at 1 and 2 threads; plus the scene generator.
    Data,
    /// Full trainer steps of CLIP and CapPa vs a PyTorch-eager training loop
    /// (scripts/bench_train_reference.py), and the data-wait fraction with the real loader.
    Train,
    /// Evaluation throughput: CLIP B/16 image features/s vs open_clip's `encode_image` on the
    /// same exported weights and JPEGs (scripts/bench_eval_reference.py); zero-shot scoring,
    /// greedy and beam captioning (no reference); 1000-class zero-shot scoring with and without
    /// the shared-prefix cache.
    Eval,
}

/// Rounds of (ours, reference) runs; each figure keeps its best round.
const ROUNDS: usize = 2;

/// One row of a benchmark table.
#[derive(Debug)]
struct Row {
    name: String,
    ours: f64,
    reference: f64,
    unit: &'static str,
    /// ours / reference.
    ratio: f64,
    /// The goal for the ratio, e.g. "≤ 0.85".
    target: String,
    met: bool,
}

/// The goal for a row's ratio (ours / reference).
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Lower is better (times): the ratio must not exceed this.
    AtMost(f64),
    /// Higher is better (throughputs): the ratio must reach this.
    AtLeast(f64),
    /// The figure itself must stay below the "reference" column, which holds this limit.
    Below,
}

impl Row {
    fn new(name: String, ours: f64, reference: f64, unit: &'static str, goal: Goal) -> Self {
        let ratio = ours / reference;
        let (target, met) = match goal {
            Goal::AtMost(max) => (format!("≤ {max:.2}"), ratio <= max),
            Goal::AtLeast(min) => (format!("≥ {min:.1}"), ratio >= min),
            Goal::Below => (
                format!("< {reference} (a limit, not a run)"),
                ours < reference,
            ),
        };
        Self {
            name,
            ours,
            reference,
            unit,
            ratio,
            target,
            met,
        }
    }
}

/// Every benchmark in turn, then `target/bench/summary.{md,json}` with each figure and its
/// ratio to the reference.
pub(crate) fn run_all(root: &Path, libtorch: &Libtorch) -> Result<()> {
    let all = [Which::Data, Which::Models, Which::Train, Which::Eval];
    for which in all {
        eprintln!("xtask: bench {}", section(which));
        run(which, root, libtorch)?;
    }
    let out_dir = root.join("target").join("bench");
    let mut sections = Vec::new();
    for which in all {
        let path = out_dir.join(format!("{}.json", section(which)));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let rows: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        sections.push((section(which), rows));
    }
    let (json, md) = summary(&sections);
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(out_dir.join("summary.md"), &md)?;
    println!("{md}");
    println!(
        "wrote {} and {}",
        out_dir.join("summary.md").display(),
        out_dir.join("summary.json").display()
    );
    Ok(())
}

fn section(which: Which) -> &'static str {
    match which {
        Which::Models => "models",
        Which::Data => "data",
        Which::Train => "train",
        Which::Eval => "eval",
    }
}

/// The summary of every benchmark's rows: JSON `{sections: [{name, rows}], met, not_met}` and
/// a Markdown table with one line per figure.
fn summary(sections: &[(&str, Value)]) -> (Value, String) {
    let mut md = String::from(
        "# cappa benchmarks\n\nEach figure next to its reference (PyTorch eager, open_clip or \
         Pillow + torchvision on the same machine and libtorch) and the ratio cappa / reference; \
         the captioner's greedy and beam captioning throughput has no reference (its 1000-class zero-shot row is measured against the same scoring without the shared-prefix cache).\n\n\
         | section | benchmark | cappa | reference | unit | ratio | target |\n\
         |---|---|---:|---:|---|---:|---|\n",
    );
    let (mut met, mut not_met) = (0, 0);
    for (name, rows) in sections {
        for row in rows.as_array().into_iter().flatten() {
            let number = |key: &str| {
                row[key]
                    .as_f64()
                    .map_or("–".to_string(), |v| format!("{v:.3}"))
            };
            let target = match row["met"].as_bool() {
                Some(true) => {
                    met += 1;
                    format!("{} (met)", row["target"].as_str().unwrap_or(""))
                }
                Some(false) => {
                    not_met += 1;
                    format!("{} (NOT met)", row["target"].as_str().unwrap_or(""))
                }
                None => "–".to_string(),
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {target} |",
                row["name"].as_str().unwrap_or("?"),
                number("ours"),
                number("reference"),
                row["unit"].as_str().unwrap_or(""),
                number("ratio"),
            );
        }
    }
    let _ = writeln!(md, "\n{met} targets met, {not_met} not met.");
    let json = json!({
        "sections": sections.iter().map(|(n, rows)| json!({"name": n, "rows": rows})).collect::<Vec<_>>(),
        "met": met,
        "not_met": not_met,
    });
    (json, md)
}

pub(crate) fn run(which: Which, root: &Path, libtorch: &Libtorch) -> Result<()> {
    let out_dir = root.join("target").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let python = match libtorch {
        Libtorch::Python { torch, .. } => Some(torch.python.clone()),
        Libtorch::Dir(_) => None,
    };
    if let Which::Eval = which {
        return eval(root, &out_dir, python.as_deref());
    }
    let Some(python) = python else {
        bail!(
            "the PyTorch references need a Python with torch 2.11.0; unset LIBTORCH so that \
             xtask uses (or installs) one"
        )
    };
    match which {
        Which::Data => data(root, &out_dir, &python),
        Which::Train => train(root, &out_dir, &python),
        Which::Eval => unreachable!("handled above"),
        Which::Models => {
            let mut rows = Vec::new();
            for (preset, step_target) in [("tiny", 0.85), ("small", 1.0)] {
                let (ours, reference) = alternate(root, &out_dir, &python, "models", preset)?;
                ensure!(
                    ours[0]["params"] == reference[0]["params"],
                    "preset {preset}: the reference's parameter counts {} differ from cappa's {}: \
                     the two architectures have drifted apart",
                    reference[0]["params"],
                    ours[0]["params"]
                );
                let best_low = |runs: &[Value], key: &str| fold(runs, key, f64::min);
                let best_high = |runs: &[Value], key: &str| fold(runs, key, f64::max);
                for (model, key) in [("CLIP", "clip_step_ms"), ("CapPa", "cappa_step_ms")] {
                    rows.push(Row::new(
                        format!("{preset}: {model} train step (fwd+bwd+AdamW, batch 32)"),
                        best_low(&ours, key)?,
                        best_low(&reference, key)?,
                        "ms",
                        Goal::AtMost(step_target),
                    ));
                }
                let cached = best_high(&ours, "greedy_cached_tokens_per_s")?;
                rows.push(Row::new(
                    format!("{preset}: greedy decoding with KV cache, 8×64 tokens"),
                    cached,
                    best_high(&reference, "greedy_cached_tokens_per_s")?,
                    "tokens/s",
                    Goal::AtLeast(1.0),
                ));
                rows.push(Row::new(
                    format!("{preset}: cached vs uncached decoding (reference = cappa uncached)"),
                    cached,
                    best_high(&ours, "greedy_uncached_tokens_per_s")?,
                    "tokens/s",
                    Goal::AtLeast(10.0),
                ));
            }
            write_outputs(&out_dir, "models", &rows)
        }
    }
}

/// ROUNDS of `cappa bench NAME --preset PRESET` and `scripts/bench_NAME_reference.py`,
/// alternated, on two threads each: (ours, reference) figures per round.
fn alternate(
    root: &Path,
    out_dir: &Path,
    python: &Path,
    name: &str,
    preset: &str,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!(
            "xtask: bench {name} --preset {preset}, round {}/{ROUNDS}",
            round + 1
        );
        let file = out_dir.join(format!("{name}-{preset}-ours.json"));
        let mut cmd = Command::new(root.join("target/release/cappa"));
        cmd.args([
            "--threads",
            "2",
            "bench",
            name,
            "--preset",
            preset,
            "--json",
        ])
        .arg(&file);
        ours.push(run_for_json(&mut cmd, &file)?);
        let file = out_dir.join(format!("{name}-{preset}-reference.json"));
        let mut cmd = Command::new(python);
        cmd.arg(root.join(format!("scripts/bench_{name}_reference.py")))
            .args(["--preset", preset, "--threads", "2", "--json"])
            .arg(&file);
        reference.push(run_for_json(&mut cmd, &file)?);
    }
    Ok((ours, reference))
}

/// The evaluation benchmark: cappa's captioner figures alone, tiny and small, and CLIP B/16
/// image features/s next to open_clip's `encode_image` on the same exported weights and files
/// (`scripts/bench_eval_reference.py`), into `eval.json` and `eval.md`. Without a Python that
/// has (or can install) open_clip the B/16 row has no reference.
fn eval(root: &Path, out_dir: &Path, python: Option<&Path>) -> Result<()> {
    let mut rows = Vec::new();
    for preset in ["tiny", "small"] {
        let file = out_dir.join(format!("eval-{preset}.json"));
        let mut cmd = Command::new(root.join("target/release/cappa"));
        cmd.args([
            "--threads",
            "2",
            "bench",
            "eval",
            "--preset",
            preset,
            "--json",
        ])
        .arg(&file);
        let figures = run_for_json(&mut cmd, &file)?;
        rows.extend(figures.as_array().cloned().unwrap_or_default());
    }
    let reference = match python {
        None => Err(anyhow::anyhow!(
            "LIBTORCH is set, so xtask has no Python with torch 2.11.0"
        )),
        Some(python) => open_clip_ready(python).map(|()| python),
    };
    if let Err(why) = &reference {
        eprintln!(
            "xtask: bench eval: no open_clip reference ({why:#}); cappa's B/16 figures alone"
        );
    }
    let dir = out_dir.join("eval-open-clip");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!(
            "xtask: bench eval --open-clip, round {}/{ROUNDS}",
            round + 1
        );
        let file = out_dir.join("eval-open-clip-ours.json");
        let mut cmd = Command::new(root.join("target/release/cappa"));
        cmd.args(["--threads", "2", "bench", "eval", "--open-clip"])
            .arg(&dir)
            .arg("--json")
            .arg(&file);
        ours.push(run_for_json(&mut cmd, &file)?);
        if let Ok(python) = reference {
            let file = out_dir.join("eval-open-clip-reference.json");
            let mut cmd = Command::new(python);
            cmd.arg(root.join("scripts/bench_eval_reference.py"))
                .arg("--dir")
                .arg(&dir)
                .args(["--threads", "2", "--json"])
                .arg(&file);
            theirs.push(run_for_json(&mut cmd, &file)?);
        }
    }
    let images = ours[0]["images"].as_u64().unwrap_or(0);
    let names = [
        (
            "features_per_s",
            format!(
                "B/16 224: image features/s, {images} JPEGs end to end (decode, resize, encode_image), batch 32"
            ),
        ),
        (
            "model_only_features_per_s",
            "B/16 224: image features/s, encode_image only, batch 32".to_string(),
        ),
    ];
    if theirs.is_empty() {
        for (key, name) in names {
            rows.push(json!({"name": format!("{name} (no open_clip reference)"),
                             "ours": fold(&ours, key, f64::max)?, "unit": "features/s"}));
        }
    } else {
        ensure!(
            ours[0]["params"] == theirs[0]["params"],
            "open_clip's model has {} parameters, cappa's {}: the export has drifted",
            theirs[0]["params"],
            ours[0]["params"]
        );
        eprintln!(
            "xtask: bench eval: open_clip side: {}",
            theirs[0]["preprocess"].as_str().unwrap_or("?")
        );
        for (key, name) in names {
            let row = Row::new(
                format!("{name} vs open_clip"),
                fold(&ours, key, f64::max)?,
                fold(&theirs, key, f64::max)?,
                "features/s",
                Goal::AtLeast(1.0),
            );
            rows.push(json!({
                "name": row.name, "ours": row.ours, "reference": row.reference, "unit": row.unit,
                "ratio": row.ratio, "target": row.target, "met": row.met,
            }));
        }
    }
    let path = out_dir.join("eval.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    let mut table = String::from(
        "| benchmark | cappa | reference | unit | ratio | target |\n|---|---:|---:|---|---:|---|\n",
    );
    for row in &rows {
        let number = |key: &str| row[key].as_f64().map_or("–".into(), |v| format!("{v:.2}"));
        let target = match row["met"].as_bool() {
            Some(met) => format!(
                "{} ({})",
                row["target"].as_str().unwrap_or(""),
                if met { "met" } else { "NOT met" }
            ),
            None => "–".into(),
        };
        writeln!(
            table,
            "| {} | {} | {} | {} | {} | {target} |",
            row["name"].as_str().unwrap_or("?"),
            number("ours"),
            number("reference"),
            row["unit"].as_str().unwrap_or(""),
            number("ratio"),
        )?;
    }
    let md_path = out_dir.join("eval.md");
    std::fs::write(&md_path, &table)?;
    println!("{table}");
    println!("wrote {} and {}", path.display(), md_path.display());
    Ok(())
}

/// Makes sure `python` imports open_clip and Pillow, installing open_clip_torch and
/// torchvision 0.26.0 (the build for torch 2.11.0; torch pinned so pip leaves it alone).
fn open_clip_ready(python: &Path) -> Result<()> {
    let imports = || {
        Command::new(python)
            .args(["-c", "import open_clip, PIL"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if imports() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing open_clip_torch, torchvision==0.26.0 and pillow for the eval reference"
    );
    let status = Command::new(python)
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args([
            "torch==2.11.0",
            "torchvision==0.26.0",
            "open_clip_torch",
            "pillow",
        ])
        .status()
        .context("could not run pip")?;
    ensure!(status.success(), "pip could not install open_clip_torch");
    ensure!(
        imports(),
        "open_clip still does not import after pip install"
    );
    Ok(())
}

/// The trainer benchmark: cappa's trainer steps and PyTorch's loop on the same models.
fn train(root: &Path, out_dir: &Path, python: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for (preset, step_target) in [("tiny", 0.85), ("small", 1.0)] {
        let (ours, reference) = alternate(root, out_dir, python, "train", preset)?;
        ensure!(
            ours[0]["params"] == reference[0]["params"],
            "preset {preset}: the reference's parameter counts {} differ from cappa's {}",
            reference[0]["params"],
            ours[0]["params"]
        );
        for (model, key) in [("CLIP", "clip"), ("CapPa", "cappa")] {
            let step = format!("{key}_step_ms");
            rows.push(Row::new(
                format!("{preset}: {model} trainer step (batch 32, AdamW, clip, schedule)"),
                fold(&ours, &step, f64::min)?,
                fold(&reference, &step, f64::min)?,
                "ms",
                Goal::AtMost(step_target),
            ));
            rows.push(Row::new(
                format!("{preset}: {model} data-wait fraction, scene-world loader"),
                fold(&ours, &format!("{key}_data_wait"), f64::min)?,
                0.05,
                "fraction",
                Goal::Below,
            ));
        }
    }
    write_outputs(out_dir, "train", &rows)
}

/// The data benchmark: cappa's pipeline and Pillow + torchvision on the same JPEGs.
fn data(root: &Path, out_dir: &Path, python: &Path) -> Result<()> {
    // torchvision, Pillow and numpy for the reference; torchvision 0.26.0 is the build for
    // torch 2.11.0, so it is installed without letting pip touch torch.
    let has_reference = Command::new(python)
        .args(["-c", "import numpy, PIL, torchvision.transforms"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_reference {
        eprintln!("xtask: installing torchvision==0.26.0, pillow and numpy for the data reference");
        let status = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .args(["torchvision==0.26.0", "pillow", "numpy"])
            .status()
            .context("could not run pip")?;
        ensure!(
            status.success(),
            "pip could not install torchvision==0.26.0 and pillow"
        );
    }
    let images = out_dir.join("data-images");
    let have = std::fs::read_dir(&images)
        .map(|dir| dir.filter_map(Result::ok).count())
        .unwrap_or(0);
    let mut ours = Vec::new();
    let mut reference = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("xtask: bench data, round {}/{ROUNDS}", round + 1);
        let file = out_dir.join("data-ours.json");
        let mut cmd = Command::new(root.join("target/release/cappa"));
        cmd.args(["bench", "data", "--images"])
            .arg(&images)
            .arg("--json")
            .arg(&file);
        if round == 0 && have < 256 {
            cmd.args(["--make-images", "256"]);
        }
        ours.push(run_for_json(&mut cmd, &file)?);
        let file = out_dir.join("data-reference.json");
        let mut cmd = Command::new(python);
        cmd.arg(root.join("scripts/bench_data_reference.py"))
            .arg("--dir")
            .arg(&images)
            .arg("--json")
            .arg(&file);
        reference.push(run_for_json(&mut cmd, &file)?);
    }
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let key = format!("images_per_s_{threads}");
        rows.push(Row::new(
            format!("JPEG 256 → random-resized-crop 224 → [-1, 1] → batch 32, {threads} thread(s)"),
            fold(&ours, &key, f64::max)?,
            fold(&reference, &key, f64::max)?,
            "images/s",
            Goal::AtLeast(3.0),
        ));
    }
    println!(
        "scene world generator: {:.0} samples/s on one thread (64×64 image, captions, graph)",
        fold(&ours, "scene_samples_per_s", f64::max)?
    );
    write_outputs(out_dir, "data", &rows)
}

fn fold(runs: &[Value], key: &str, pick: fn(f64, f64) -> f64) -> Result<f64> {
    let mut best: Option<f64> = None;
    for run in runs {
        let value = run[key]
            .as_f64()
            .with_context(|| format!("no number `{key}` in {run}"))?;
        best = Some(best.map_or(value, |b| pick(b, value)));
    }
    best.context("no runs")
}

fn run_for_json(command: &mut Command, file: &Path) -> Result<Value> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    let text =
        std::fs::read_to_string(file).with_context(|| format!("{} not written", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

fn write_outputs(out_dir: &Path, name: &str, rows: &[Row]) -> Result<()> {
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "ours": r.ours, "reference": r.reference, "unit": r.unit,
                "ratio": r.ratio, "target": r.target, "met": r.met,
            })
        })
        .collect();
    let json_path = out_dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&json_rows)?)?;
    let mut table = String::from(
        "| benchmark | cappa | reference | unit | ratio | target |\n|---|---:|---:|---|---:|---|\n",
    );
    for r in rows {
        let mark = if r.met { "met" } else { "NOT met" };
        // Fractions need more digits than times and rates.
        let digits = if r.unit == "fraction" { 3 } else { 2 };
        writeln!(
            table,
            "| {} | {:.digits$} | {:.digits$} | {} | {:.2} | {} ({mark}) |",
            r.name, r.ours, r.reference, r.unit, r.ratio, r.target
        )?;
    }
    let md_path = out_dir.join(format!("{name}.md"));
    std::fs::write(&md_path, &table)?;
    println!("{table}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_every_row_and_counts_targets() {
        let train = json!([
            {"name": "step", "ours": 8.0, "reference": 10.0, "unit": "ms", "ratio": 0.8,
             "target": "≤ 0.85", "met": true},
            {"name": "small step", "ours": 11.0, "reference": 10.0, "unit": "ms", "ratio": 1.1,
             "target": "≤ 1.00", "met": false},
        ]);
        let eval = json!([{"name": "captions", "ours": 100.0, "unit": "captions/s"}]);
        let (value, md) = summary(&[("train", train), ("eval", eval)]);
        assert_eq!(
            (value["met"].as_u64(), value["not_met"].as_u64()),
            (Some(1), Some(1))
        );
        assert!(
            md.contains("| train | step | 8.000 | 10.000 | ms | 0.800 | ≤ 0.85 (met) |"),
            "{md}"
        );
        assert!(
            md.contains("| train | small step | 11.000 | 10.000 | ms | 1.100 | ≤ 1.00 (NOT met) |")
        );
        assert!(md.contains("| eval | captions | 100.000 | – | captions/s | – | – |"));
        assert!(md.contains("1 targets met, 1 not met."));
    }

    #[test]
    fn goals_compare_the_ratio_in_the_right_direction() {
        let time = Row::new("t".into(), 8.0, 10.0, "ms", Goal::AtMost(0.85));
        assert!((time.ratio - 0.8).abs() < 1e-12 && time.met && time.target == "≤ 0.85");
        assert!(!Row::new("t".into(), 9.0, 10.0, "ms", Goal::AtMost(0.85)).met);
        let rate = Row::new("r".into(), 30.0, 10.0, "tokens/s", Goal::AtLeast(10.0));
        assert!(!rate.met && rate.target == "≥ 10.0");
        assert!(Row::new("r".into(), 120.0, 10.0, "tokens/s", Goal::AtLeast(10.0)).met);
    }

    #[test]
    fn best_figures_fold_over_rounds() {
        let runs = [json!({"x": 3.0}), json!({"x": 1.5})];
        assert_eq!(fold(&runs, "x", f64::min).unwrap(), 1.5);
        assert_eq!(fold(&runs, "x", f64::max).unwrap(), 3.0);
        assert!(fold(&runs, "missing", f64::min).is_err());
    }
}
