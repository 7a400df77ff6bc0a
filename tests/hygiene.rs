//! Repository hygiene, as tests: what STYLE.md and DEVELOPERS.md ask of every crate.

use std::fs;
use std::path::PathBuf;

use cappa_tests::workspace_root;

/// Every package directory: `crates/*`, `xtask`, `tests`.
fn packages() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("crates/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    dirs.push(root.join("xtask"));
    dirs.push(root.join("tests"));
    dirs
}

fn read(path: &PathBuf) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(section, line)` for every key line of a manifest, with sections as written (`dependencies`).
fn manifest_entries(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_owned();
        } else if !line.is_empty() && !line.starts_with('#') {
            entries.push((section.clone(), line.to_owned()));
        }
    }
    entries
}

#[test]
fn the_workspace_has_every_crate_of_the_architecture() {
    let root = workspace_root();
    for name in [
        "cappa-data",
        "cappa-models",
        "cappa-objectives",
        "cappa-trainer",
        "cappa-eval",
        "cappa-torch-ext",
        "cappa",
    ] {
        assert!(
            root.join("crates").join(name).join("Cargo.toml").exists(),
            "crates/{name} missing"
        );
    }
}

#[test]
fn every_crate_root_opens_with_a_doc_comment() {
    for package in packages() {
        let root_file = ["src/lib.rs", "src/main.rs", "lib.rs"]
            .iter()
            .map(|file| package.join(file))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("{} has no crate root", package.display()));
        let text = read(&root_file);
        assert!(
            text.starts_with("//!"),
            "{} must open with a //! comment saying what the crate is for",
            root_file.display()
        );
    }
}

#[test]
fn every_package_uses_the_workspace_lints_and_dependencies() {
    for package in packages() {
        let manifest = package.join("Cargo.toml");
        let entries = manifest_entries(&read(&manifest));
        assert!(
            entries.contains(&("lints".into(), "workspace = true".into())),
            "{}: add `[lints] workspace = true`",
            manifest.display()
        );
        for (section, line) in &entries {
            if section.ends_with("dependencies") {
                assert!(
                    line.contains(".workspace = true") || line.contains("workspace = true"),
                    "{}: [{section}] `{line}` must come from [workspace.dependencies]",
                    manifest.display()
                );
            }
        }
    }
}

#[test]
fn workspace_dependencies_are_pinned_to_a_full_version() {
    let manifest = workspace_root().join("Cargo.toml");
    for (section, line) in manifest_entries(&read(&manifest)) {
        if section != "workspace.dependencies" || line.contains("path =") {
            continue;
        }
        let version = line
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("no version in `{line}`"));
        let numbers = version.trim_start_matches('=');
        assert_eq!(
            numbers
                .split('.')
                .filter(|part| part.parse::<u32>().is_ok())
                .count(),
            3,
            "`{line}`: pin major.minor.patch"
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = workspace_root();
    let ci = read(&root.join(".ci/run"));
    let readme = read(&root.join("README.md"));
    assert!(
        ci.contains("cargo xtask test"),
        ".ci/run must call `cargo xtask test`"
    );
    for command in ["cargo xtask test", "cargo xtask compare"] {
        assert!(readme.contains(command), "README.md must show `{command}`");
    }
}
