//! Build script shared by every crate whose executables (binaries, tests, benches) link
//! libtorch. Referenced from each such crate's `Cargo.toml` as `build = "../../build/rpath.rs"`
//! (`"../build/rpath.rs"` from `tests/`); the crate must depend on `torch-sys` directly to
//! receive `DEP_TCH_LIBTORCH_LIB`.
//!
//! - Gives the executables an rpath to the libtorch library directory, so they run without
//!   `LD_LIBRARY_PATH`.
//! - Exports `CAPPA_LIBTORCH_VERSION` (from the libtorch tree) and `CAPPA_TCH_VERSION` (from
//!   the workspace's Cargo.lock) to the crate's code, for `cappa info`.

use std::path::Path;

fn main() {
    // The workspace root: the nearest directory above the package with a Cargo.lock.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = Path::new(&manifest_dir)
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(Path::new(&manifest_dir))
        .to_path_buf();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("build/rpath.rs").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    if !lib_dir.is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    let libtorch_version =
        libtorch_version(Path::new(&lib_dir)).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CAPPA_LIBTORCH_VERSION={libtorch_version}");
    let tch_version = std::fs::read_to_string(root.join("Cargo.lock"))
        .ok()
        .and_then(|lock| locked_version(&lock, "tch"))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CAPPA_TCH_VERSION={tch_version}");
}

/// A pip wheel keeps `__version__ = '2.11.0+cu130'` in `torch/version.py` beside `torch/lib`;
/// an unpacked libtorch keeps `build-version` beside `lib`.
fn libtorch_version(lib_dir: &Path) -> Option<String> {
    let parent = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(parent.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_owned());
    }
    let text = std::fs::read_to_string(parent.join("build-version")).ok()?;
    Some(text.trim().to_owned())
}

/// The version of `name` recorded in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    lines.find(|line| line.trim() == wanted)?;
    let line = lines.next()?.trim();
    Some(
        line.strip_prefix("version = \"")?
            .strip_suffix('"')?
            .to_owned(),
    )
}
