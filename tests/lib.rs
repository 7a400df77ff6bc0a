//! End-to-end tests that cross cappa's crates, plus repository hygiene checks run as ordinary
//! tests (every crate documented, linted and on workspace-pinned dependencies).
//!
//! Run them with `cargo xtask test -p cappa-tests`. This library holds only helpers for the
//! test files beside it.

use std::path::{Path, PathBuf};

/// The workspace root (the directory with the virtual `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives one level below the root")
        .to_path_buf()
}
