//! Headers that `cappa-torch-ext` needs beyond the torch wheel, provisioned by `cargo xtask
//! setup` (and by every task that builds):
//! - Gloo's (CPU data parallelism): Debian's `libgloo-dev`, through `apt-get`;
//! - the CUDA runtime, CCCL and NCCL headers (NCCL data parallelism), only for a CUDA build
//!   of torch in cappa's own virtualenv: `nvidia-cuda-cccl` and `nvidia-cuda-crt` from PyPI
//!   (the runtime and NCCL headers come with torch's own dependencies).
//!
//! Neither is fatal when it cannot be installed: the shim is then built without that backend
//! and says why at run time (`cappa info` lists both).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::libtorch::Libtorch;

/// Which optional header sets are present: `gloo=yes|no,nccl=yes|no`. Passed to cargo as
/// `CAPPA_TORCH_EXT_HEADERS`, so that installing headers rebuilds the shim.
pub(crate) fn fingerprint(libtorch: &Libtorch) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!(
        "gloo={},nccl={}",
        yes(gloo_present()),
        yes(cuda_headers(libtorch).is_some_and(|h| h.missing().is_empty()))
    )
}

fn gloo_present() -> bool {
    std::env::var_os("CAPPA_GLOO_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/include", "/usr/local/include"].map(PathBuf::from))
        .any(|dir| dir.join("gloo/config.h").is_file())
}

/// The CUDA header directories beside a CUDA build of torch.
struct CudaHeaders {
    nvidia: PathBuf,
}

impl CudaHeaders {
    /// The pip packages whose headers are missing.
    fn missing(&self) -> Vec<&'static str> {
        let include = self.nvidia.join("cu13/include");
        let mut missing = Vec::new();
        if !include.join("cccl/cuda/std/version").is_file() {
            missing.push("nvidia-cuda-cccl==13.0.*");
        }
        if !include.join("crt/host_config.h").is_file() {
            missing.push("nvidia-cuda-crt==13.0.*");
        }
        missing
    }
}

/// `Some` for a torch wheel with CUDA 13 libraries (the cu130 build cappa installs).
fn cuda_headers(libtorch: &Libtorch) -> Option<CudaHeaders> {
    let Libtorch::Python { torch, .. } = libtorch else {
        return None;
    };
    let lib_dir = torch.lib_dir.as_deref()?;
    let nvidia = lib_dir.parent()?.parent()?.join("nvidia");
    (lib_dir.join("libtorch_cuda.so").is_file()
        && nvidia.join("cu13/include/cuda_runtime_api.h").is_file()
        && nvidia.join("nccl/include/nccl.h").is_file())
    .then_some(CudaHeaders { nvidia })
}

/// Installs what is missing; reports what could not be installed and what that turns off.
pub(crate) fn provision(libtorch: &Libtorch) {
    if !gloo_present() {
        install_gloo();
    }
    if let Some(headers) = cuda_headers(libtorch) {
        let missing = headers.missing();
        if !missing.is_empty() {
            install_cuda_headers(libtorch, &missing);
        }
    }
}

fn install_gloo() {
    let apt_get = ["/usr/bin/apt-get", "/bin/apt-get"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    let Some(apt_get) = apt_get else {
        eprintln!(
            "xtask: Gloo's headers are missing and this machine has no apt-get: CPU data \
             parallelism (cappa launch, torchrun) is off. Install gloo's headers and set \
             CAPPA_GLOO_INCLUDE to their directory to turn it on"
        );
        return;
    };
    // Root runs apt-get itself; anyone else through a password-less sudo, if there is one.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new(apt_get)
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("-n").arg(apt_get);
            sudo
        };
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("xtask: installing Gloo's headers (Debian's libgloo-dev) for CPU data parallelism");
    let install = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "libgloo-dev",
    ];
    let ok = apt(&install) || (apt(&["update", "-q"]) && apt(&install));
    if !ok || !gloo_present() {
        eprintln!(
            "xtask: could not install libgloo-dev (`apt-get install libgloo-dev` needs root): \
             CPU data parallelism (cappa launch, torchrun) is off until it is installed"
        );
    }
}

fn install_cuda_headers(libtorch: &Libtorch, missing: &[&str]) {
    let Libtorch::Python {
        torch,
        venv: Some(_),
    } = libtorch
    else {
        eprintln!(
            "xtask: NCCL data parallelism needs {} in the Python environment of your torch; \
             `pip install` them there (cappa does not change an environment it does not own)",
            missing.join(" ")
        );
        return;
    };
    eprintln!(
        "xtask: installing the CUDA headers NCCL data parallelism compiles against: {}",
        missing.join(" ")
    );
    let ok = Command::new(&torch.python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
        ])
        .args(["--no-deps"])
        .args(missing)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "xtask: could not install {}: NCCL data parallelism is off in this build",
            missing.join(" ")
        );
    }
}
