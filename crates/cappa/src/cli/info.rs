//! `cappa info`: what this build of cappa runs on.

use std::fmt;

use anyhow::Result;
use serde::Serialize;
use tch::Device;

use cappa_torch_ext::dist::Backend;

use crate::cli::cuda::{self, CudaDevice};
use crate::cli::device::{device_name, DeviceArg};

/// Facts about the build and the machine, printed as text or JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Info {
    pub(crate) cappa_version: &'static str,
    pub(crate) tch_version: &'static str,
    pub(crate) libtorch_version: &'static str,
    /// Intra-op threads libtorch uses on the CPU.
    pub(crate) cpu_threads: i32,
    pub(crate) cuda_available: bool,
    /// Why no device details could be read, when CUDA is available but the driver query failed
    /// or when there is no CUDA at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cuda_note: Option<String>,
    pub(crate) cuda_devices: Vec<CudaDevice>,
    pub(crate) cudnn_available: bool,
    /// cuDNN version as libtorch reports it (e.g. 91900), when cuDNN is available.
    pub(crate) cudnn_version: Option<i64>,
    /// The device `--device auto` picks on this machine.
    pub(crate) auto_device: String,
    /// The device the given `--device` flag resolves to.
    pub(crate) selected_device: String,
    /// Whether bf16 autocast (`precision = "bf16"`) is recommended on the selected device
    /// (CUDA with compute capability ≥ 8.0); it also runs on the CPU, where fp32 is the default.
    pub(crate) bf16: bool,
    pub(crate) bf16_reason: String,
    /// Data-parallel backends of this build: `gloo` (CPU), `nccl` (CUDA), each `available` or
    /// why not.
    pub(crate) distributed: Vec<(String, String)>,
}

impl Info {
    pub(crate) fn gather(requested: DeviceArg) -> Result<Self> {
        let cuda_available = tch::Cuda::is_available();
        let visible = if cuda_available {
            tch::Cuda::device_count() as usize
        } else {
            0
        };
        let (cuda_devices, cuda_note) = if cuda_available {
            match cuda::devices() {
                Ok(devices) => (devices, None),
                Err(why) => (Vec::new(), Some(why)),
            }
        } else {
            (
                Vec::new(),
                Some(
                    "libtorch sees no CUDA device (no GPU, no driver, or a CPU-only build)".into(),
                ),
            )
        };
        let selected = requested.resolve(visible)?;
        let cudnn_available = cuda_available && tch::Cuda::cudnn_is_available();
        let (bf16, bf16_reason) = bf16_support(selected, &cuda_devices);
        Ok(Self {
            cappa_version: env!("CARGO_PKG_VERSION"),
            tch_version: env!("CAPPA_TCH_VERSION"),
            libtorch_version: env!("CAPPA_LIBTORCH_VERSION"),
            cpu_threads: tch::get_num_threads(),
            cuda_available,
            cuda_note,
            cuda_devices,
            cudnn_available,
            cudnn_version: cudnn_available.then(tch::utils::version_cudnn),
            auto_device: device_name(DeviceArg::Auto.resolve(visible)?),
            selected_device: device_name(selected),
            bf16,
            bf16_reason,
            distributed: [("gloo", Backend::Gloo), ("nccl", Backend::Nccl)]
                .into_iter()
                .map(|(name, backend)| {
                    let state = match backend.check_available() {
                        Ok(()) => "available".to_string(),
                        Err(why) => why.to_string(),
                    };
                    (name.to_string(), state)
                })
                .collect(),
        })
    }
}

/// Whether bf16 mixed precision applies on `device`, and why.
fn bf16_support(device: Device, cuda_devices: &[CudaDevice]) -> (bool, String) {
    match device {
        Device::Cuda(index) => match cuda_devices.iter().find(|d| d.index == index) {
            Some(d) if d.supports_bf16() => (
                true,
                format!(
                    "compute capability {}.{} has bf16 tensor cores",
                    d.compute_capability.0, d.compute_capability.1
                ),
            ),
            Some(d) => (
                false,
                format!(
                    "compute capability {}.{} is below 8.0 (Ampere); training runs in fp32",
                    d.compute_capability.0, d.compute_capability.1
                ),
            ),
            None => (
                false,
                "the device's compute capability could not be read".into(),
            ),
        },
        _ => (
            false,
            "precision = \"bf16\" autocasts on the CPU too, but pays off only on CPUs with bf16 \
             units; CPU runs default to fp32"
                .into(),
        ),
    }
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cappa      {}", self.cappa_version)?;
        writeln!(f, "tch        {}", self.tch_version)?;
        writeln!(f, "libtorch   {}", self.libtorch_version)?;
        writeln!(f, "cpu        {} threads", self.cpu_threads)?;
        if self.cuda_devices.is_empty() {
            let note = self.cuda_note.as_deref().unwrap_or("no devices");
            writeln!(f, "cuda       none ({note})")?;
        }
        for d in &self.cuda_devices {
            writeln!(
                f,
                "cuda:{:<6}{}, {:.1} GiB, compute capability {}.{}",
                d.index,
                d.name,
                d.total_memory_bytes as f64 / (1u64 << 30) as f64,
                d.compute_capability.0,
                d.compute_capability.1
            )?;
        }
        match self.cudnn_version {
            Some(version) => writeln!(f, "cudnn      available (version {version})")?,
            None => writeln!(f, "cudnn      not available")?,
        }
        writeln!(f, "auto       --device auto picks {}", self.auto_device)?;
        writeln!(f, "selected   {}", self.selected_device)?;
        let bf16 = if self.bf16 { "yes" } else { "no" };
        writeln!(f, "bf16       {bf16}: {}", self.bf16_reason)?;
        for (backend, state) in &self.distributed {
            writeln!(f, "{backend:<11}{state}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: usize, major: i32) -> CudaDevice {
        CudaDevice {
            index,
            name: "gpu".into(),
            total_memory_bytes: 1 << 30,
            compute_capability: (major, 0),
        }
    }

    #[test]
    fn bf16_follows_the_selected_device() {
        let devices = [gpu(0, 9), gpu(1, 7)];
        assert!(bf16_support(Device::Cuda(0), &devices).0);
        let (usable, reason) = bf16_support(Device::Cuda(1), &devices);
        assert!(!usable && reason.contains("7.0"), "{reason}");
        let (usable, reason) = bf16_support(Device::Cpu, &devices);
        assert!(!usable && reason.contains("fp32"), "{reason}");
        assert!(!bf16_support(Device::Cuda(2), &devices).0);
    }

    #[test]
    fn gathers_facts_consistent_with_libtorch() {
        let info = Info::gather(DeviceArg::Cpu).expect("cpu always resolves");
        assert_eq!(info.selected_device, "cpu");
        assert!(info.cpu_threads >= 1);
        assert!(
            info.libtorch_version.starts_with("2.11.0"),
            "{}",
            info.libtorch_version
        );
        assert_eq!(info.tch_version, "0.24.0");
        assert_eq!(info.cuda_available, tch::Cuda::is_available());
        let expected_auto = if info.cuda_available { "cuda:0" } else { "cpu" };
        assert_eq!(info.auto_device, expected_auto);
        let gloo = &info.distributed[0];
        assert_eq!(gloo.0, "gloo");
        assert_eq!(
            gloo.1 == "available",
            Backend::Gloo.check_available().is_ok()
        );
    }
}
