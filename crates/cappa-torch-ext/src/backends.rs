//! Process-wide libtorch switches that tch does not expose.

use crate::ffi;

/// Lets CUDA matmuls (cuBLAS) and convolutions (cuDNN) run fp32 inputs in TF32
/// (`torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32` together).
/// No effect on the CPU or on bf16 autocast regions, which are bf16 anyway.
pub fn set_tf32(enabled: bool) {
    // SAFETY: sets two flags of libtorch's global context.
    unsafe { ffi::cappa_set_tf32(enabled.into()) }
}

/// Whether both TF32 switches are on.
pub fn tf32() -> bool {
    // SAFETY: reads two flags of libtorch's global context.
    unsafe { ffi::cappa_tf32() != 0 }
}
