//! The `--device` flag: `auto | cpu | cuda | cuda:N`, resolved against what libtorch sees.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use tch::Device;

/// A device as the user names it, before it is checked against the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceArg {
    /// The first CUDA device when there is one, else the CPU.
    Auto,
    Cpu,
    /// `cuda` is `cuda:0`.
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(Self::Cuda(index)),
                _ => Err(format!(
                    "unknown device '{text}': use auto, cpu, cuda or cuda:N (N = 0, 1, …)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceArg {
    /// The device to use on this machine (asks libtorch how many CUDA devices it sees).
    pub(crate) fn select(self) -> Result<Device> {
        let visible = if tch::Cuda::is_available() {
            tch::Cuda::device_count() as usize
        } else {
            0
        };
        self.resolve(visible)
    }

    /// The device to use, given how many CUDA devices libtorch sees.
    pub(crate) fn resolve(self, cuda_devices: usize) -> Result<Device> {
        match self {
            Self::Auto if cuda_devices > 0 => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(index) if index < cuda_devices => Ok(Device::Cuda(index)),
            Self::Cuda(_) if cuda_devices == 0 => bail!(
                "--device {self}: libtorch sees no CUDA device here; use --device cpu (or auto)"
            ),
            Self::Cuda(_) => bail!(
                "--device {self}: libtorch sees only {cuda_devices} CUDA device(s), \
                 cuda:0 to cuda:{}",
                cuda_devices - 1
            ),
        }
    }
}

/// How a resolved device is written in reports: `cpu` or `cuda:N`.
/// The CUDA device's name (for the MFU estimate's peak FLOP/s); `None` on the CPU.
pub(crate) fn accelerator_name(device: Device) -> Option<String> {
    match device {
        Device::Cuda(index) => crate::cli::cuda::devices()
            .ok()
            .and_then(|devices| devices.into_iter().find(|d| d.index == index))
            .map(|d| d.name),
        _ => None,
    }
}

pub(crate) fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        for (text, want) in [
            ("auto", DeviceArg::Auto),
            ("CPU", DeviceArg::Cpu),
            ("cuda", DeviceArg::Cuda(0)),
            ("cuda:3", DeviceArg::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceArg>(), Ok(want), "{text}");
            assert_eq!(want.to_string().parse::<DeviceArg>(), Ok(want));
        }
        for bad in ["", "cuda:", "cuda:-1", "cuda:x", "mps", "cuda:1:2"] {
            let error = bad.parse::<DeviceArg>().unwrap_err();
            assert!(error.contains("cuda:N"), "{bad}: {error}");
        }
    }

    #[test]
    fn resolves_against_the_visible_devices() {
        assert_eq!(DeviceArg::Auto.resolve(0).unwrap(), Device::Cpu);
        assert_eq!(DeviceArg::Auto.resolve(2).unwrap(), Device::Cuda(0));
        assert_eq!(DeviceArg::Cpu.resolve(2).unwrap(), Device::Cpu);
        assert_eq!(DeviceArg::Cuda(1).resolve(2).unwrap(), Device::Cuda(1));
        let none = DeviceArg::Cuda(0).resolve(0).unwrap_err().to_string();
        assert!(
            none.contains("no CUDA device") && none.contains("--device cpu"),
            "{none}"
        );
        let past = DeviceArg::Cuda(2).resolve(2).unwrap_err().to_string();
        assert!(past.contains("only 2") && past.contains("cuda:1"), "{past}");
    }

    #[test]
    fn names_devices_like_the_flag() {
        assert_eq!(device_name(Device::Cpu), "cpu");
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
    }
}
