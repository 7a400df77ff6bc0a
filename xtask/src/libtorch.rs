//! Finding or provisioning libtorch 2.11.0, the version `tch` 0.24 is built against.
//!
//! Sources, in order of precedence:
//! 1. the `LIBTORCH` environment variable (a libtorch directory with `lib/` and `include/`);
//! 2. a `python3` on `PATH` whose installed `torch` is 2.11.0;
//! 3. a virtual environment in the per-user cache (`$CAPPA_CACHE/torch-2.11.0`, else
//!    `$XDG_CACHE_HOME/cappa/torch-2.11.0`, else `~/.cache/cappa/torch-2.11.0`), created with
//!    `python3 -m venv` and filled by `pip install torch==2.11.0` on first use.
//!
//! Gathering the facts ([`probe`]) is kept apart from deciding what to do with them
//! ([`decide`]) so that the precedence rules are unit-tested without installing anything.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::Verbosity;

/// The libtorch release that `tch` 0.24 binds.
pub(crate) const TORCH_VERSION: &str = "2.11.0";

/// Written into the cached environment once `pip install` has finished, so that an
/// interrupted install is recognised and redone rather than used half-made.
const COMPLETE_MARKER: &str = ".cappa-complete";

const REMEDIES: &str = "install Python 3 with pip and venv (Debian/Ubuntu: `apt-get install \
python3-venv python3-pip`), or set LIBTORCH to an unpacked libtorch 2.11.0 directory";

/// A version string as torch prints it: `2.11.0`, `2.11.0+cu130`, `2.11.0a0+git1234`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TorchVersion {
    /// `major.minor.patch`, without pre-release or local parts.
    pub(crate) release: (u32, u32, u32),
    /// What follows the release number (`a0`, `+cu130`, ...), possibly empty.
    pub(crate) suffix: String,
}

impl TorchVersion {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (release, suffix) = text.split_at(end);
        let mut parts = release.split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(patch) => patch.ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            release: (major, minor, patch),
            suffix: suffix.to_owned(),
        })
    }

    /// True for a final 2.11.0 release with any local build tag (`+cpu`, `+cu130`).
    pub(crate) fn is_supported(&self) -> bool {
        let wanted = Self::parse(TORCH_VERSION).expect("TORCH_VERSION parses");
        self.release == wanted.release && (self.suffix.is_empty() || self.suffix.starts_with('+'))
    }
}

/// A Python interpreter and what it says about its `torch` package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PythonTorch {
    pub(crate) python: PathBuf,
    /// `torch.__version__` as installed, `None` when torch is not installed.
    pub(crate) version: Option<String>,
    /// `site-packages/torch/lib`.
    pub(crate) lib_dir: Option<PathBuf>,
}

impl PythonTorch {
    fn is_usable(&self) -> bool {
        self.lib_dir.is_some()
            && self
                .version
                .as_deref()
                .and_then(TorchVersion::parse)
                .is_some_and(|v| v.is_supported())
    }
}

/// A directory named by `LIBTORCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LibtorchDir {
    pub(crate) path: PathBuf,
    /// Content of its `build-version` file, when it has one.
    pub(crate) version: Option<String>,
    /// Whether `lib/` holds the torch libraries.
    pub(crate) has_libraries: bool,
}

/// Everything the environment offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidates {
    pub(crate) libtorch_env: Option<LibtorchDir>,
    /// `python3` from `PATH`; `None` when there is no such program.
    pub(crate) system_python: Option<PythonTorch>,
    /// The cached virtual environment's interpreter, when the environment is complete.
    pub(crate) cached_venv: Option<PythonTorch>,
    pub(crate) venv_dir: PathBuf,
}

/// What to do, as decided from [`Candidates`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    UseLibtorchDir(PathBuf),
    UseSystemPython(PythonTorch),
    UseVenv(PythonTorch),
    /// Create the cached virtual environment with this `python3` and install torch into it.
    Install {
        python: PathBuf,
        venv_dir: PathBuf,
    },
}

/// Applies the precedence rules; errors say what the user can do.
pub(crate) fn decide(candidates: &Candidates) -> Result<Decision> {
    if let Some(dir) = &candidates.libtorch_env {
        let shown = dir.path.display();
        if !dir.has_libraries {
            bail!(
                "LIBTORCH={shown} has no lib/libtorch_cpu.so: point LIBTORCH at an unpacked \
                 libtorch {TORCH_VERSION} directory (the one that holds lib/ and include/), \
                 or unset it to let xtask install torch=={TORCH_VERSION} with pip"
            );
        }
        if let Some(version) = &dir.version {
            if !TorchVersion::parse(version).is_some_and(|v| v.is_supported()) {
                bail!(
                    "LIBTORCH={shown} is libtorch {}, but tch 0.24 needs {TORCH_VERSION}: point \
                     LIBTORCH at a {TORCH_VERSION} build, or unset it to let xtask install \
                     torch=={TORCH_VERSION} with pip",
                    version.trim()
                );
            }
        }
        return Ok(Decision::UseLibtorchDir(dir.path.clone()));
    }
    if let Some(python) = candidates.system_python.as_ref().filter(|p| p.is_usable()) {
        return Ok(Decision::UseSystemPython(python.clone()));
    }
    if let Some(python) = candidates.cached_venv.as_ref().filter(|p| p.is_usable()) {
        return Ok(Decision::UseVenv(python.clone()));
    }
    match &candidates.system_python {
        Some(python) => Ok(Decision::Install {
            python: python.python.clone(),
            venv_dir: candidates.venv_dir.clone(),
        }),
        None => bail!(
            "no libtorch {TORCH_VERSION} found and no python3 on PATH to install it: {REMEDIES}"
        ),
    }
}

/// The directory that holds cappa's cached downloads, from the environment.
pub(crate) fn cache_root(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("CAPPA_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("cappa"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".cache").join("cappa"));
    }
    bail!("cannot place the libtorch cache: set CAPPA_CACHE (or HOME) to a writable directory")
}

/// The libtorch that cargo will build against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Libtorch {
    Dir(PathBuf),
    Python {
        torch: PythonTorch,
        /// The virtual environment the interpreter belongs to, when it is cappa's own.
        venv: Option<PathBuf>,
    },
}

impl Libtorch {
    /// Variables to set (`Some`) or remove (`None`) for cargo so that `torch-sys` finds
    /// libtorch, plus which optional headers `cappa-torch-ext` finds (see [`crate::native`]) and
    /// the Python with torch (`CAPPA_PYTHON`, for tests that run torchrun).
    pub(crate) fn cargo_env(&self) -> Vec<(&'static str, Option<OsString>)> {
        let mut env = self.libtorch_env();
        env.push((
            "CAPPA_TORCH_EXT_HEADERS",
            Some(crate::native::fingerprint(self).into()),
        ));
        let python = match self {
            Libtorch::Python { torch, .. } => Some(torch.python.clone().into_os_string()),
            Libtorch::Dir(_) => None,
        };
        env.push(("CAPPA_PYTHON", python));
        env
    }

    fn libtorch_env(&self) -> Vec<(&'static str, Option<OsString>)> {
        match self {
            Libtorch::Dir(path) => vec![
                ("LIBTORCH", Some(path.clone().into_os_string())),
                ("LIBTORCH_USE_PYTORCH", None),
            ],
            Libtorch::Python { venv: None, .. } => vec![
                ("LIBTORCH", None),
                ("LIBTORCH_USE_PYTORCH", Some("1".into())),
                // torch-sys runs `python` inside a virtualenv and `python3` otherwise; the
                // interpreter probed here is the `python3` on PATH.
                ("VIRTUAL_ENV", None),
            ],
            Libtorch::Python {
                venv: Some(venv), ..
            } => {
                let bin = venv.join("bin");
                let path = std::env::var_os("PATH").unwrap_or_default();
                let joined =
                    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
                        .expect("the venv path holds no PATH separator");
                vec![
                    ("LIBTORCH", None),
                    ("LIBTORCH_USE_PYTORCH", Some("1".into())),
                    ("VIRTUAL_ENV", Some(venv.clone().into_os_string())),
                    ("PATH", Some(joined)),
                ]
            }
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Libtorch::Dir(path) => format!("libtorch: LIBTORCH={}", path.display()),
            Libtorch::Python { torch, venv } => format!(
                "libtorch: torch {} from {} ({}), libraries in {}",
                torch.version.as_deref().unwrap_or("?"),
                torch.python.display(),
                if venv.is_some() {
                    "cappa's cached virtualenv"
                } else {
                    "python3 on PATH"
                },
                torch
                    .lib_dir
                    .as_deref()
                    .map_or("?".into(), |d| d.display().to_string()),
            ),
        }
    }
}

/// Finds libtorch, installing it into the cache when nothing suitable exists.
pub(crate) fn setup(verbosity: Verbosity) -> Result<Libtorch> {
    let root = cache_root(|name| std::env::var_os(name))?;
    let venv_dir = root.join(format!("torch-{TORCH_VERSION}"));
    let candidates = probe(venv_dir)?;
    let found = match decide(&candidates)? {
        Decision::UseLibtorchDir(path) => Libtorch::Dir(path),
        Decision::UseSystemPython(torch) => Libtorch::Python { torch, venv: None },
        Decision::UseVenv(torch) => Libtorch::Python {
            torch,
            venv: Some(candidates.venv_dir.clone()),
        },
        Decision::Install { python, venv_dir } => {
            if let Some(other) = candidates
                .system_python
                .as_ref()
                .and_then(|p| p.version.as_deref())
            {
                eprintln!(
                    "xtask: python3 has torch {other}, not {TORCH_VERSION}; using a separate environment"
                );
            }
            let torch = install(&python, &root, &venv_dir)?;
            let found = Libtorch::Python {
                torch,
                venv: Some(venv_dir),
            };
            eprintln!("xtask: installed {}", found.describe());
            crate::native::provision(&found);
            return Ok(found);
        }
    };
    if verbosity == Verbosity::Report {
        eprintln!("xtask: found an existing libtorch, nothing to install");
    }
    crate::native::provision(&found);
    Ok(found)
}

/// Gathers the candidates from the real environment. Installs nothing.
fn probe(venv_dir: PathBuf) -> Result<Candidates> {
    let libtorch_env = std::env::var_os("LIBTORCH")
        .filter(|value| !value.is_empty())
        .map(|value| {
            let path = PathBuf::from(value);
            LibtorchDir {
                version: fs::read_to_string(path.join("build-version")).ok(),
                has_libraries: path.join("lib").join("libtorch_cpu.so").exists()
                    || path.join("lib").join("torch_cpu.dll").exists()
                    || path.join("lib").join("libtorch_cpu.dylib").exists(),
                path,
            }
        });
    let system_python = if libtorch_env.is_some() {
        None
    } else {
        probe_python(Path::new("python3"))?
    };
    let venv_python = venv_dir.join("bin").join("python");
    let cached_venv = if venv_dir.join(COMPLETE_MARKER).exists() && venv_python.exists() {
        probe_python(&venv_python)?
    } else {
        None
    };
    Ok(Candidates {
        libtorch_env,
        system_python,
        cached_venv,
        venv_dir,
    })
}

/// Asks an interpreter for its torch version and library directory without importing torch
/// (an import takes seconds; reading the package metadata takes milliseconds).
/// `None` when the interpreter does not exist.
fn probe_python(python: &Path) -> Result<Option<PythonTorch>> {
    const SCRIPT: &str = r#"
import importlib.metadata as metadata, importlib.util as util, os
try:
    version = metadata.version("torch")
except metadata.PackageNotFoundError:
    version = ""
spec = util.find_spec("torch") if version else None
print(version)
print(os.path.join(spec.submodule_search_locations[0], "lib") if spec else "")
"#;
    let output = match Command::new(python).arg("-c").arg(SCRIPT).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("could not run {}", python.display()))
        }
    };
    if !output.status.success() {
        bail!(
            "{} failed while reporting its torch version: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Some(parse_probe_output(
        python,
        &String::from_utf8_lossy(&output.stdout),
    )))
}

pub(crate) fn parse_probe_output(python: &Path, stdout: &str) -> PythonTorch {
    let mut lines = stdout.lines().map(str::trim);
    let version = lines.next().filter(|v| !v.is_empty()).map(str::to_owned);
    let lib_dir = lines.next().filter(|d| !d.is_empty()).map(PathBuf::from);
    PythonTorch {
        python: python.to_path_buf(),
        version,
        lib_dir,
    }
}

/// Creates `venv_dir` with `python -m venv` and installs torch into it, under a lock so that
/// two concurrent runs do not install twice.
fn install(python: &Path, root: &Path, venv_dir: &Path) -> Result<PythonTorch> {
    fs::create_dir_all(root)
        .with_context(|| format!("could not create the cache directory {}", root.display()))?;
    let lock_path = root.join(".install.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("could not create {}", lock_path.display()))?;
    eprintln!(
        "xtask: waiting for the install lock {}",
        lock_path.display()
    );
    lock.lock()
        .with_context(|| format!("could not lock {}", lock_path.display()))?;

    let venv_python = venv_dir.join("bin").join("python");
    // Another run may have finished the install while this one waited for the lock.
    if venv_dir.join(COMPLETE_MARKER).exists() {
        if let Some(torch) = probe_python(&venv_python)?.filter(PythonTorch::is_usable) {
            return Ok(torch);
        }
    }
    if venv_dir.exists() {
        eprintln!(
            "xtask: removing the incomplete environment {}",
            venv_dir.display()
        );
        fs::remove_dir_all(venv_dir)
            .with_context(|| format!("could not remove {}", venv_dir.display()))?;
    }

    eprintln!(
        "xtask: installing torch=={TORCH_VERSION} from PyPI into {} (once; ≈4.7 GB with its CUDA \
         libraries, which libtorch links even on CPU machines)",
        venv_dir.display()
    );
    run_step(
        Command::new(python).args(["-m", "venv"]).arg(venv_dir),
        "create the virtual environment",
    )?;
    run_step(
        Command::new(&venv_python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            &format!("torch=={TORCH_VERSION}"),
        ]),
        &format!("pip install torch=={TORCH_VERSION}"),
    )?;
    let torch = probe_python(&venv_python)?
        .filter(PythonTorch::is_usable)
        .with_context(|| {
            format!(
                "torch=={TORCH_VERSION} was installed into {} but is not importable there",
                venv_dir.display()
            )
        })?;
    fs::write(venv_dir.join(COMPLETE_MARKER), TORCH_VERSION)
        .with_context(|| format!("could not write the marker in {}", venv_dir.display()))?;
    Ok(torch)
}

fn run_step(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not {what}: {REMEDIES}"))?;
    if !status.success() {
        bail!("could not {what} ({status}): {REMEDIES}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(version: Option<&str>) -> PythonTorch {
        PythonTorch {
            python: PathBuf::from("/usr/bin/python3"),
            version: version.map(str::to_owned),
            lib_dir: version.map(|_| PathBuf::from("/site/torch/lib")),
        }
    }

    fn venv(version: &str) -> PythonTorch {
        PythonTorch {
            python: PathBuf::from("/cache/torch-2.11.0/bin/python"),
            version: Some(version.to_owned()),
            lib_dir: Some(PathBuf::from("/cache/torch-2.11.0/lib/torch/lib")),
        }
    }

    fn candidates() -> Candidates {
        Candidates {
            libtorch_env: None,
            system_python: None,
            cached_venv: None,
            venv_dir: PathBuf::from("/cache/torch-2.11.0"),
        }
    }

    #[test]
    fn versions_parse_with_local_and_prerelease_parts() {
        let v = TorchVersion::parse("2.11.0+cu130").unwrap();
        assert_eq!(v.release, (2, 11, 0));
        assert_eq!(v.suffix, "+cu130");
        assert!(v.is_supported());
        assert!(TorchVersion::parse("2.11.0").unwrap().is_supported());
        assert!(TorchVersion::parse(" 2.11.0+cpu\n").unwrap().is_supported());
        assert!(TorchVersion::parse("2.11").unwrap().is_supported());
        // A pre-release or another release is not what tch 0.24 was generated from.
        assert!(!TorchVersion::parse("2.11.0a0+git12ab")
            .unwrap()
            .is_supported());
        assert!(!TorchVersion::parse("2.1.10").unwrap().is_supported());
        assert!(!TorchVersion::parse("2.13.0").unwrap().is_supported());
        assert_eq!(TorchVersion::parse("2.11.0.1"), None);
        assert_eq!(TorchVersion::parse("torch"), None);
        assert_eq!(TorchVersion::parse(""), None);
    }

    #[test]
    fn libtorch_env_wins_over_everything() {
        let c = Candidates {
            libtorch_env: Some(LibtorchDir {
                path: PathBuf::from("/opt/libtorch"),
                version: Some("2.11.0+cu130\n".into()),
                has_libraries: true,
            }),
            system_python: Some(python(Some("2.11.0"))),
            cached_venv: Some(venv("2.11.0")),
            ..candidates()
        };
        assert_eq!(
            decide(&c).unwrap(),
            Decision::UseLibtorchDir(PathBuf::from("/opt/libtorch"))
        );
    }

    #[test]
    fn a_wrong_or_empty_libtorch_env_is_refused_with_a_remedy() {
        let mut c = candidates();
        c.libtorch_env = Some(LibtorchDir {
            path: PathBuf::from("/opt/libtorch"),
            version: Some("2.10.0".into()),
            has_libraries: true,
        });
        let message = decide(&c).unwrap_err().to_string();
        assert!(
            message.contains("2.10.0") && message.contains("unset it"),
            "{message}"
        );

        c.libtorch_env = Some(LibtorchDir {
            path: PathBuf::from("/nowhere"),
            version: None,
            has_libraries: false,
        });
        let message = decide(&c).unwrap_err().to_string();
        assert!(
            message.contains("/nowhere") && message.contains("lib/"),
            "{message}"
        );
    }

    #[test]
    fn system_python_with_the_right_torch_comes_before_the_cache() {
        let c = Candidates {
            system_python: Some(python(Some("2.11.0+cpu"))),
            cached_venv: Some(venv("2.11.0")),
            ..candidates()
        };
        assert_eq!(
            decide(&c).unwrap(),
            Decision::UseSystemPython(python(Some("2.11.0+cpu")))
        );
    }

    #[test]
    fn a_system_torch_of_another_version_falls_through_to_the_cache() {
        let c = Candidates {
            system_python: Some(python(Some("2.13.0"))),
            cached_venv: Some(venv("2.11.0")),
            ..candidates()
        };
        assert_eq!(decide(&c).unwrap(), Decision::UseVenv(venv("2.11.0")));
    }

    #[test]
    fn nothing_usable_means_install_with_the_system_python() {
        for system in [python(None), python(Some("2.13.0"))] {
            let c = Candidates {
                system_python: Some(system),
                cached_venv: Some(venv("2.10.0")),
                ..candidates()
            };
            assert_eq!(
                decide(&c).unwrap(),
                Decision::Install {
                    python: PathBuf::from("/usr/bin/python3"),
                    venv_dir: PathBuf::from("/cache/torch-2.11.0"),
                }
            );
        }
    }

    #[test]
    fn no_python_and_no_libtorch_names_the_remedies() {
        let message = decide(&candidates()).unwrap_err().to_string();
        assert!(message.contains("python3-venv"), "{message}");
        assert!(message.contains("LIBTORCH"), "{message}");
    }

    #[test]
    fn cache_root_precedence() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        }
        let all = [
            ("CAPPA_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_root(env(&all)).unwrap(), PathBuf::from("/c"));
        assert_eq!(
            cache_root(env(&[
                ("CAPPA_CACHE", ""),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ]))
            .unwrap(),
            PathBuf::from("/x/cappa")
        );
        assert_eq!(
            cache_root(env(&[("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.cache/cappa")
        );
        assert!(cache_root(env(&[])).is_err());
    }

    #[test]
    fn probe_output_parses_with_and_without_torch() {
        let p = Path::new("python3");
        assert_eq!(
            parse_probe_output(p, "2.11.0+cu130\n/s/torch/lib\n"),
            PythonTorch {
                python: p.into(),
                version: Some("2.11.0+cu130".into()),
                lib_dir: Some("/s/torch/lib".into()),
            }
        );
        let none = parse_probe_output(p, "\n\n");
        assert_eq!((none.version, none.lib_dir), (None, None));
    }

    #[test]
    fn venv_environment_puts_its_python_first_and_clears_libtorch() {
        let found = Libtorch::Python {
            torch: venv("2.11.0"),
            venv: Some(PathBuf::from("/cache/torch-2.11.0")),
        };
        let env = found.cargo_env();
        let get = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        assert_eq!(get("LIBTORCH"), Some(None));
        assert_eq!(get("LIBTORCH_USE_PYTORCH"), Some(Some("1".into())));
        let path = get("PATH").flatten().unwrap();
        assert_eq!(
            std::env::split_paths(&path).next().unwrap(),
            PathBuf::from("/cache/torch-2.11.0/bin")
        );
    }
}
