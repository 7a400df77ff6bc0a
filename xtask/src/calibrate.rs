//! `cargo xtask calibrate`: the calibration sweep of the built-in comparison. Every setting of
//! a sweep file (`data/calibration/sweep.json`) is `cappa compare` of one preset with some
//! `--set` overrides, in its own directory (`runs/calibration/NAME`); a rerun reuses every
//! finished training and evaluation, so an interrupted sweep continues where it stopped. The
//! report (`docs/calibration.md`) shows every setting tried: per objective its training time,
//! examples/s and FLOP/s, and its score on every task next to the task's chance level.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The sweep file's contents.
#[derive(Debug)]
struct Sweep {
    description: String,
    preset: String,
    settings: Vec<Setting>,
}

#[derive(Debug)]
struct Setting {
    name: String,
    why: String,
    sets: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CalibrateArgs {
    /// The sweep: a preset and the settings to try on it.
    #[arg(long, default_value = "data/calibration/sweep.json")]
    sweep: PathBuf,
    /// Where each setting's comparison goes (one directory per setting).
    #[arg(long, default_value = "runs/calibration")]
    out: PathBuf,
    /// The Markdown report.
    #[arg(long, default_value = "docs/calibration.md")]
    report: PathBuf,
    /// Only these settings (by name); the report still shows every finished one.
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
    /// Write the report from the settings already finished, without training anything.
    #[arg(long)]
    report_only: bool,
}

pub(crate) fn calibrate(root: &Path, args: &CalibrateArgs) -> Result<()> {
    let sweep_path = root.join(&args.sweep);
    let sweep = read_sweep(&sweep_path)?;
    for name in &args.only {
        if !sweep.settings.iter().any(|s| &s.name == name) {
            bail!(
                "{}: no setting named {name:?} (settings: {})",
                sweep_path.display(),
                names(&sweep)
            );
        }
    }
    let out = root.join(&args.out);
    if !args.report_only {
        for setting in &sweep.settings {
            if !args.only.is_empty() && !args.only.contains(&setting.name) {
                continue;
            }
            eprintln!("calibrate: setting {} ({})", setting.name, setting.why);
            let mut cappa_args: Vec<OsString> =
                vec!["--preset".into(), sweep.preset.clone().into()];
            for set in &setting.sets {
                cappa_args.extend(["--set".into(), set.into()]);
            }
            cappa_args.extend([
                "--out".into(),
                out.join(&setting.name).into(),
                "--progress".into(),
                "plain".into(),
            ]);
            let code = crate::run_cappa_code(root, &["compare"], cappa_args)?;
            if code != 0 {
                bail!(
                    "cappa compare for setting {} exited with {code}; its directory {} keeps \
                     what finished, and a rerun continues from there",
                    setting.name,
                    out.join(&setting.name).display()
                );
            }
        }
    }
    let report = report(&sweep, &args.sweep, &out)?;
    let path = root.join(&args.report);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("calibrate: wrote {}", path.display());
    Ok(())
}

fn names(sweep: &Sweep) -> String {
    let names: Vec<&str> = sweep.settings.iter().map(|s| s.name.as_str()).collect();
    names.join(", ")
}

fn read_sweep(path: &Path) -> Result<Sweep> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let field = |v: &Value, key: &str| -> Result<String> {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("{}: `{key}` must be a string", path.display()))
    };
    let settings = value
        .get("settings")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: `settings` must be a list", path.display()))?;
    let mut out = Vec::new();
    for (i, s) in settings.iter().enumerate() {
        let name = field(s, "name")?;
        if name.is_empty()
            || name.contains(['/', '\\'])
            || out.iter().any(|o: &Setting| o.name == name)
        {
            bail!(
                "{}: settings[{i}].name {name:?} must be a non-empty, unique directory name",
                path.display()
            );
        }
        let sets = s
            .get("set")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: settings[{i}].set must be a list", path.display()))?
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).with_context(|| {
                    format!(
                        "{}: settings[{i}].set holds KEY=VALUE strings",
                        path.display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Setting {
            why: field(s, "why")?,
            name,
            sets,
        });
    }
    Ok(Sweep {
        description: field(&value, "description")?,
        preset: field(&value, "preset")?,
        settings: out,
    })
}

/// One finished setting's comparison (`results.json`).
struct Finished<'a> {
    setting: &'a Setting,
    results: Value,
}

fn report(sweep: &Sweep, sweep_file: &Path, out: &Path) -> Result<String> {
    let mut finished = Vec::new();
    let mut missing = Vec::new();
    for setting in &sweep.settings {
        let path = out.join(&setting.name).join("results.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => finished.push(Finished {
                setting,
                results: serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            }),
            Err(_) => missing.push(setting.name.as_str()),
        }
    }
    let mut md = String::from("# Calibration of the built-in comparison\n\n");
    let _ = writeln!(md, "{}\n", sweep.description);
    let _ = writeln!(
        md,
        "Made by `cargo xtask calibrate --sweep {}` (each setting: `cargo xtask compare --preset \
         {} --set …`, in `runs/calibration/NAME/`). Every setting tried is shown. *Chance* is \
         the score of guessing without the image; a cell in *italics* is not clearly above it \
         (by three times a chance-level model's sampling error on the test images, the seed \
         spread where there are seeds).\n",
        sweep_file.display(),
        sweep.preset
    );
    if !missing.is_empty() {
        let _ = writeln!(md, "Not run yet: {}.\n", missing.join(", "));
    }
    md.push_str("## Settings\n\n| setting | what changes | `--set` |\n|---|---|---|\n");
    for f in &finished {
        let sets: Vec<String> = f.setting.sets.iter().map(|s| format!("`{s}`")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            f.setting.name,
            f.setting.why,
            if sets.is_empty() {
                "–".into()
            } else {
                sets.join(" ")
            }
        );
    }
    md.push_str(
        "\n## Training\n\nPer objective: training seconds, examples/s and achieved training \
         GFLOP/s (3 × forward FLOPs per example × examples/s).\n\n| setting | objective | \
         params | train s | examples/s | GFLOP/s | final loss |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for f in &finished {
        for m in f.results["models"].as_array().into_iter().flatten() {
            let seconds = m["train_seconds"]["mean"].as_f64().unwrap_or(f64::NAN);
            let examples = m["examples_seen"].as_f64().unwrap_or(f64::NAN);
            let per_s = examples / seconds;
            let gflops = per_s * m["train_flops_per_example"].as_f64().unwrap_or(f64::NAN) / 1e9;
            let mean = |key: &str| m[key]["mean"].as_f64();
            let mut loss = mean("final_loss").map_or("–".to_string(), |l| format!("{l:.3}"));
            if let (Some(p), Some(c)) = (mean("final_loss_parallel"), mean("final_loss_causal")) {
                let _ = write!(loss, " (parallel {p:.3}, causal {c:.3})");
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {seconds:.0} | {per_s:.0} | {gflops:.1} | {loss} |",
                f.setting.name,
                m["objective"].as_str().unwrap_or("?"),
                m["params"].as_i64().unwrap_or(0),
            );
        }
    }
    write_tasks(&mut md, &finished);
    Ok(md)
}

/// One table of every task row: a column per setting, each cell the objectives' scores.
fn write_tasks(md: &mut String, finished: &[Finished<'_>]) {
    let Some(first) = finished.first() else {
        return;
    };
    let objectives: Vec<String> = first.results["objectives"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str().map(str::to_string))
        .collect();
    let _ = writeln!(
        md,
        "\n## Tasks\n\nEach cell: {} (one seed each unless `±` shows a spread).\n",
        objectives.join(" / ")
    );
    md.push_str("| task | chance |");
    for f in finished {
        let _ = write!(md, " {} |", f.setting.name);
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---|".repeat(finished.len()));
    md.push('\n');
    let rows: Vec<&Value> = first.results["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["in_table"].as_bool() == Some(true))
        .collect();
    let mut row_count = 0;
    let mut unlearned = vec![0usize; finished.len()];
    for row in rows {
        let id = row["id"].as_str().unwrap_or("?");
        let chance = row["chance"]["level"].as_f64();
        let _ = write!(
            md,
            "| {} | {} |",
            row["label"].as_str().unwrap_or(id),
            chance.map_or("–".to_string(), |c| format!("{c:.3}"))
        );
        if chance.is_some() {
            row_count += 1;
        }
        for (k, f) in finished.iter().enumerate() {
            let Some(same) = f.results["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["id"].as_str() == Some(id))
            else {
                md.push_str(" – |");
                continue;
            };
            let mut cells = Vec::new();
            let mut any_learned = false;
            for o in &objectives {
                let v = &same["values"][o];
                let Some(mean) = v["mean"].as_f64() else {
                    cells.push("–".to_string());
                    continue;
                };
                let std = v["std"].as_f64().unwrap_or(0.0);
                let text = if std > 0.0 {
                    format!("{mean:.2}±{std:.2}")
                } else {
                    format!("{mean:.2}")
                };
                match above_chance(&same["chance"], mean, std) {
                    Some(false) => cells.push(format!("*{text}*")),
                    Some(true) => {
                        any_learned = true;
                        cells.push(text);
                    }
                    None => cells.push(text),
                }
            }
            if chance.is_some() && !any_learned {
                unlearned[k] += 1;
            }
            let _ = write!(md, " {} |", cells.join(" / "));
        }
        md.push('\n');
    }
    md.push_str("| **rows with a chance level at chance for every objective** | |");
    for n in &unlearned {
        let _ = write!(md, " **{n} of {row_count}** |");
    }
    md.push('\n');
}

/// Whether a mean is clearly above the row's chance level (as `cappa compare` decides it);
/// `None` without a chance level.
fn above_chance(chance: &Value, mean: f64, std: f64) -> Option<bool> {
    let p = chance["level"].as_f64()?.clamp(0.0, 1.0);
    let items = chance["items"].as_f64().unwrap_or(1.0).max(1.0);
    let sampling = (p * (1.0 - p) / items).sqrt();
    Some(mean - p > 3.0 * std.max(sampling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_chance_uses_the_larger_of_sampling_error_and_seed_spread() {
        let chance = serde_json::json!({"level": 0.5, "items": 100});
        // 3 × √(0.25 / 100) = 0.15.
        assert_eq!(above_chance(&chance, 0.64, 0.0), Some(false));
        assert_eq!(above_chance(&chance, 0.66, 0.0), Some(true));
        assert_eq!(above_chance(&chance, 0.66, 0.1), Some(false));
        assert_eq!(above_chance(&Value::Null, 0.9, 0.0), None);
    }

    #[test]
    fn the_sweep_file_parses_and_bad_names_are_refused() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let sweep = read_sweep(&root.join("data/calibration/sweep.json")).unwrap();
        assert_eq!(sweep.preset, "default");
        assert!(
            sweep.settings.iter().any(|s| s.sets.is_empty()),
            "a baseline setting"
        );
        let dir = std::env::temp_dir().join(format!("xtask-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("sweep.json");
        std::fs::write(
            &bad,
            r#"{"description": "d", "preset": "test", "settings": [
                {"name": "a", "why": "w", "set": []}, {"name": "a", "why": "w", "set": []}]}"#,
        )
        .unwrap();
        let error = read_sweep(&bad).unwrap_err().to_string();
        assert!(error.contains("settings[1].name"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
