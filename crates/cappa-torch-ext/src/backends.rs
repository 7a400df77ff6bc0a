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

/// Keeps freed CPU tensor memory inside the process instead of handing it back to the kernel
/// after every step (glibc only; a no-op elsewhere). Returns whether glibc took the setting.
///
/// libtorch allocates CPU tensors with plain `malloc`. glibc serves blocks above its dynamic
/// mmap threshold (128 KiB at first) with fresh `mmap`s and trims the heap top beyond 128 KiB,
/// so a training step's activations (a few hundred KiB to a few MiB each) come back as
/// zero-filled pages every step: page faults, `clear_page` and cgroup accounting were ≈11 % of
/// a default CPU step's profile. Raising both thresholds to 1 GiB (glibc's limit for the mmap
/// threshold is 32 MiB on 64-bit; the larger value is tried first) makes glibc reuse the
/// freed blocks — the same effect as
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…:glibc.malloc.trim_threshold=…`.
/// Call it once at start-up, before the first tensor; the `cappa` binary does.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        const MMAP_MAX: libc::c_int = 32 << 20;
        // SAFETY: mallopt only changes glibc's allocator parameters; it is thread safe.
        unsafe {
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, GIB) == 1;
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, GIB) == 1
                || libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_MAX) == 1;
            trim && mmap
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
