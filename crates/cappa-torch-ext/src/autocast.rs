//! Autocast with a chosen dtype (tch's `autocast` is CUDA-only and always fp16).

use std::ffi::c_int;

use tch::Device;

use crate::ffi::{self, ShimError};

/// The lower precision autocast computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    BFloat16,
    Float16,
}

/// libtorch refused to switch autocast (on a device type this build does not support, for
/// example CUDA without a CUDA libtorch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not {} autocast on {}: {source}", if *enabled { "enable" } else { "disable" }, device_type_name(*cuda))]
pub struct AutocastError {
    /// Whether the switch was for CUDA (else the CPU).
    pub cuda: bool,
    /// Whether autocast was being enabled (else disabled).
    pub enabled: bool,
    pub source: ShimError,
}

fn device_type_name(cuda: bool) -> &'static str {
    if cuda {
        "CUDA"
    } else {
        "the CPU"
    }
}

/// Autocast switched on (or off) for one device type while the guard lives; dropping it restores the
/// previous switch and dtype and, when the outermost guard ends, frees autocast's weight cache
/// (as `torch.autocast`'s `__exit__` does). Guards are per thread, like autocast itself.
#[derive(Debug)]
pub struct Autocast {
    cuda: bool,
    was_enabled: bool,
    was_bf16: bool,
}

impl Autocast {
    /// Enables autocast in `dtype` for `device`'s type (CPU or CUDA).
    pub fn new(device: Device, dtype: AutocastDtype) -> Result<Self, AutocastError> {
        Self::set(device, true, dtype)
    }

    /// Disables autocast for `device`'s type while the guard lives (a full-precision region
    /// inside an autocast one, like `torch.autocast(enabled=False)`).
    pub fn off(device: Device) -> Result<Self, AutocastError> {
        Self::set(device, false, AutocastDtype::BFloat16)
    }

    fn set(device: Device, enabled: bool, dtype: AutocastDtype) -> Result<Self, AutocastError> {
        let cuda = matches!(device, Device::Cuda(_));
        let failed = |source| AutocastError {
            cuda,
            enabled,
            source,
        };
        let (mut was_enabled, mut was_bf16): (c_int, c_int) = (0, 0);
        ffi::checked(
            |error| unsafe {
                ffi::cappa_autocast_set(
                    cuda.into(),
                    enabled.into(),
                    (dtype == AutocastDtype::BFloat16).into(),
                    &mut was_enabled,
                    &mut was_bf16,
                    error,
                )
            },
            |ok| *ok,
        )
        .map_err(failed)?;
        let mut depth: c_int = 0;
        ffi::checked(
            |error| unsafe { ffi::cappa_autocast_nesting(1, &mut depth, error) },
            |ok| *ok,
        )
        .map_err(failed)?;
        Ok(Autocast {
            cuda,
            was_enabled: was_enabled != 0,
            was_bf16: was_bf16 != 0,
        })
    }

    /// bf16 autocast on `device` for the duration of `f`.
    pub fn bf16<T>(device: Device, f: impl FnOnce() -> T) -> Result<T, AutocastError> {
        let _guard = Autocast::new(device, AutocastDtype::BFloat16)?;
        Ok(f())
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        let mut depth: c_int = 0;
        let (mut enabled, mut bf16): (c_int, c_int) = (0, 0);
        // Restoring cannot fail for a device type that was set a moment ago; nothing to report.
        let _ = ffi::checked(
            |error| unsafe { ffi::cappa_autocast_nesting(0, &mut depth, error) },
            |ok| *ok,
        );
        let _ = ffi::checked(
            |error| unsafe {
                ffi::cappa_autocast_set(
                    self.cuda.into(),
                    self.was_enabled.into(),
                    self.was_bf16.into(),
                    &mut enabled,
                    &mut bf16,
                    error,
                )
            },
            |ok| *ok,
        );
    }
}
