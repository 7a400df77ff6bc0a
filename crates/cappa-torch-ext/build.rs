//! Compiles `csrc/shim.cpp` against the libtorch headers that torch-sys found.
//!
//! Gloo's headers are not in the torch wheel; they come from Debian's `libgloo-dev`
//! (`cargo xtask setup` installs it) or from `CAPPA_GLOO_INCLUDE`. Without them the shim is
//! built without c10d (autocast still works) and the crate reports why at run time. NCCL is
//! compiled in when the CUDA, CCCL and NCCL headers are found (`cargo xtask setup --cuda`
//! installs them from PyPI) and libtorch has CUDA.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-env-changed=CAPPA_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=CAPPA_NO_NCCL");
    // `cargo xtask setup` installs the optional headers and names what it found here, so that
    // installing them rebuilds the shim (watching files that may not exist would rebuild it
    // on every build instead).
    println!("cargo:rerun-if-env-changed=CAPPA_TORCH_EXT_HEADERS");
    let lib_dir = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default());
    let torch = lib_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let include = torch.join("include");
    // The executables of this crate (tests) find libtorch without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/shim.cpp")
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false);

    let mut missing = Vec::new();
    match gloo_include() {
        Some(dir) => {
            build
                .include(dir)
                .define("USE_C10D_GLOO", None)
                .define("CAPPA_WITH_GLOO", None);
        }
        None => missing.push("gloo (Debian's libgloo-dev: `cargo xtask setup` installs it)"),
    }
    let nccl = nccl_includes(&torch, &lib_dir);
    let with_nccl = nccl.is_some();
    if let Some(dirs) = nccl {
        for dir in dirs {
            build.include(dir);
        }
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("CAPPA_WITH_NCCL", None);
    }
    let why = if missing.is_empty() {
        String::new()
    } else {
        format!("built without the headers of {}", missing.join(", "))
    };
    println!("cargo:rustc-env=CAPPA_TORCH_EXT_MISSING={why}");
    if !why.is_empty() {
        println!("cargo:warning=cappa-torch-ext: {why}; distributed training on CPU is off");
    }
    build.compile("cappa_torch_ext");
    if with_nccl {
        // torch-sys links torch_cuda already; the NCCL process group also uses c10_cuda.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// Whether `file` exists; if so, a change to it rebuilds the shim.
fn watch(file: &Path) -> bool {
    let exists = file.is_file();
    if exists {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    exists
}

fn gloo_include() -> Option<PathBuf> {
    let candidates = std::env::var_os("CAPPA_GLOO_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/include", "/usr/local/include"].map(PathBuf::from));
    candidates
        .into_iter()
        .find(|dir| watch(&dir.join("gloo/config.h")))
}

/// The include directories NCCL's process group needs, from the pip packages beside torch.
fn nccl_includes(torch: &Path, lib_dir: &Path) -> Option<Vec<PathBuf>> {
    if std::env::var_os("CAPPA_NO_NCCL").is_some() || !lib_dir.join("libtorch_cuda.so").is_file() {
        return None;
    }
    let nvidia = torch.parent()?.join("nvidia");
    let runtime = ["cu13", "cuda_runtime"]
        .iter()
        .map(|d| nvidia.join(d).join("include"))
        .find(|d| d.join("cuda_runtime_api.h").is_file())?;
    let nccl = nvidia.join("nccl/include");
    let cccl = [
        nvidia.join("cu13/include/cccl"),
        nvidia.join("cuda_cccl/include"),
    ]
    .into_iter()
    .find(|d| watch(&d.join("cuda/std/version")))?;
    let crt = [runtime.clone(), nvidia.join("cuda_crt/include")]
        .into_iter()
        .find(|d| watch(&d.join("crt/host_config.h")))?;
    watch(&nccl.join("nccl.h")).then(|| vec![runtime, nccl, cccl, crt])
}
