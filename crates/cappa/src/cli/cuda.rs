//! CUDA device properties that tch does not expose (name, memory, compute capability), read
//! through the CUDA driver API (`libcuda.so.1`, loaded at run time so that CPU-only machines
//! need no driver).

use std::ffi::{c_char, c_int, c_uint, CStr};

use libloading::Library;
use serde::Serialize;

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CudaDevice {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) total_memory_bytes: u64,
    /// `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub(crate) compute_capability: (i32, i32),
}

impl CudaDevice {
    /// bf16 tensor-core arithmetic needs compute capability 8.0 (Ampere) or newer.
    pub(crate) fn supports_bf16(&self) -> bool {
        self.compute_capability.0 >= 8
    }
}

type CuResult = c_int;
type CuDevice = c_int;
const CUDA_SUCCESS: CuResult = 0;
const ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// Describes every device the driver sees; `Err` explains why none could be read.
pub(crate) fn devices() -> Result<Vec<CudaDevice>, String> {
    // SAFETY: loading the CUDA driver runs no initialisers with preconditions of ours, and
    // each symbol below is declared with the C signature the driver API documents.
    unsafe {
        let lib = Library::new("libcuda.so.1")
            .map_err(|error| format!("CUDA driver not loadable: {error}"))?;
        let init = lib
            .get::<unsafe extern "C" fn(c_uint) -> CuResult>(b"cuInit")
            .map_err(|e| e.to_string())?;
        let count = lib
            .get::<unsafe extern "C" fn(*mut c_int) -> CuResult>(b"cuDeviceGetCount")
            .map_err(|e| e.to_string())?;
        let get = lib
            .get::<unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult>(b"cuDeviceGet")
            .map_err(|e| e.to_string())?;
        let name = lib
            .get::<unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult>(
                b"cuDeviceGetName",
            )
            .map_err(|e| e.to_string())?;
        let total_mem = lib
            .get::<unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult>(b"cuDeviceTotalMem_v2")
            .map_err(|e| e.to_string())?;
        let attribute = lib
            .get::<unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult>(
                b"cuDeviceGetAttribute",
            )
            .map_err(|e| e.to_string())?;

        let check = |what: &str, result: CuResult| {
            if result == CUDA_SUCCESS {
                Ok(())
            } else {
                Err(format!("{what} failed with CUDA error {result}"))
            }
        };
        check("cuInit", init(0))?;
        let mut n = 0;
        check("cuDeviceGetCount", count(&mut n))?;
        let mut out = Vec::new();
        for index in 0..n {
            let mut device = 0;
            check("cuDeviceGet", get(&mut device, index))?;
            let mut buffer: [c_char; 256] = [0; 256];
            check("cuDeviceGetName", name(buffer.as_mut_ptr(), 255, device))?;
            let mut bytes = 0usize;
            check("cuDeviceTotalMem", total_mem(&mut bytes, device))?;
            let (mut major, mut minor) = (0, 0);
            check(
                "cuDeviceGetAttribute",
                attribute(&mut major, ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device),
            )?;
            check(
                "cuDeviceGetAttribute",
                attribute(&mut minor, ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device),
            )?;
            out.push(CudaDevice {
                index: index as usize,
                name: CStr::from_ptr(buffer.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                total_memory_bytes: bytes as u64,
                compute_capability: (major, minor),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_needs_ampere_or_newer() {
        let device = |major, minor| CudaDevice {
            index: 0,
            name: "test".into(),
            total_memory_bytes: 0,
            compute_capability: (major, minor),
        };
        assert!(!device(7, 5).supports_bf16());
        assert!(device(8, 0).supports_bf16());
        assert!(device(9, 0).supports_bf16());
    }

    #[test]
    fn the_driver_agrees_with_libtorch_about_the_device_count() {
        match devices() {
            Ok(devices) => assert_eq!(devices.len() as i64, tch::Cuda::device_count()),
            Err(why) => {
                assert!(!tch::Cuda::is_available(), "libtorch sees CUDA but: {why}");
                eprintln!("skipped: {why}");
            }
        }
    }
}
