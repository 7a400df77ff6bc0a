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

/// The layers of ARCHITECTURE.md's dependency direction, lowest first: a crate may depend
/// only on crates of lower layers ("nothing points up", no cycles). Cargo forbids cycles but
/// not a library crate reaching up (the trainer depending on the evaluators, say).
const LAYERS: &[&[&str]] = &[
    &["cappa-io", "cappa-torch-ext"],
    &["cappa-data", "cappa-models"],
    &["cappa-objectives"],
    &["cappa-trainer", "cappa-eval"],
    &["cappa"],
];

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&name))
}

/// The workspace crates a manifest's `[dependencies]` name.
fn workspace_dependencies(manifest: &str) -> Vec<String> {
    manifest_entries(manifest)
        .into_iter()
        .filter(|(section, _)| section == "dependencies")
        .filter_map(|(_, line)| {
            let name = line.split(['.', ' ', '=']).next()?.to_owned();
            layer_of(&name).map(|_| name)
        })
        .collect()
}

#[test]
fn library_crates_depend_only_downwards() {
    let root = workspace_root();
    for package in packages()
        .iter()
        .filter(|p| p.starts_with(root.join("crates")))
    {
        let name = package.file_name().unwrap().to_string_lossy().into_owned();
        let own = layer_of(&name)
            .unwrap_or_else(|| panic!("crates/{name} is in no layer of ARCHITECTURE.md: add it"));
        for dependency in workspace_dependencies(&read(&package.join("Cargo.toml"))) {
            let theirs = layer_of(&dependency).expect("filtered to known crates");
            assert!(
                theirs < own,
                "crates/{name} depends on {dependency}, which is not below it in \
                 ARCHITECTURE.md's dependency direction"
            );
        }
    }
}

#[test]
fn the_layer_check_reads_manifests() {
    // The check above passes vacuously if the manifest reader finds nothing: pin it.
    let manifest = "[package]\nname = \"x\"\n[dependencies]\ncappa-data.workspace = true\n\
                    serde.workspace = true\ncappa-models = { workspace = true }\n\
                    [dev-dependencies]\ncappa.workspace = true\n";
    assert_eq!(
        workspace_dependencies(manifest),
        ["cappa-data", "cappa-models"]
    );
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

/// The README's two set-up commands: the lines of the fenced block under "## The two
/// commands", without their comments.
fn readme_commands(readme: &str) -> Vec<String> {
    let section = readme
        .split("## The two commands")
        .nth(1)
        .expect("README.md has a section \"## The two commands\"");
    let block = section
        .split("```")
        .nth(1)
        .expect("that section opens with a fenced code block");
    block
        .lines()
        .skip(1) // the fence's language tag
        .map(|line| line.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

/// The commands `.ci/run` executes: its lines without comments, `exec` dropped.
fn executed_lines(script: &str) -> Vec<String> {
    script
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .map(|line| line.strip_prefix("exec ").unwrap_or(line).trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = workspace_root();
    let commands = readme_commands(&read(&root.join("README.md")));
    assert_eq!(
        commands,
        ["cargo xtask compare", "cargo xtask test"],
        "README.md's two commands: the main job and the tests"
    );
    let ci = executed_lines(&read(&root.join(".ci/run")));
    assert!(
        ci.iter().any(|line| line == &commands[1]),
        ".ci/run must execute the README's test command `{}` (not only mention it); it runs {ci:?}",
        commands[1]
    );
}

#[test]
fn the_ci_check_ignores_comments() {
    let script = "#!/usr/bin/env bash\n# runs cargo xtask test\nset -e\nexec cargo xtask test\n";
    assert_eq!(executed_lines(script), ["set -e", "cargo xtask test"]);
    assert!(!executed_lines("# cargo xtask test\n").contains(&"cargo xtask test".to_owned()));
}
