//! The C ABI of `csrc/shim.cpp`. Every fallible call returns `false` (or null) and sets
//! `error` to a malloc'ed message that [`take_error`] turns into a [`ShimError`] and frees.

use std::ffi::{c_char, c_int, CStr};

use torch_sys::C_tensor;

#[repr(C)]
pub(crate) struct CappaPg {
    _private: [u8; 0],
}

extern "C" {
    pub(crate) fn cappa_free_string(s: *mut c_char);
    pub(crate) fn cappa_has_gloo() -> c_int;
    pub(crate) fn cappa_has_nccl() -> c_int;
    pub(crate) fn cappa_set_tf32(enabled: c_int);
    pub(crate) fn cappa_tf32() -> c_int;
    pub(crate) fn cappa_autocast_set(
        cuda: c_int,
        enabled: c_int,
        bf16: c_int,
        was_enabled: *mut c_int,
        was_bf16: *mut c_int,
        error: *mut *mut c_char,
    ) -> bool;
    pub(crate) fn cappa_autocast_nesting(
        increment: c_int,
        depth: *mut c_int,
        error: *mut *mut c_char,
    ) -> bool;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cappa_fused_adamw(
        param: *const C_tensor,
        grad: *const C_tensor,
        exp_avg: *const C_tensor,
        exp_avg_sq: *const C_tensor,
        step: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        error: *mut *mut c_char,
    ) -> bool;
    pub(crate) fn cappa_pg_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world_size: c_int,
        host_store: c_int,
        backend_nccl: c_int,
        timeout_ms: c_int,
        error: *mut *mut c_char,
    ) -> *mut CappaPg;
    pub(crate) fn cappa_pg_free(pg: *mut CappaPg);
    pub(crate) fn cappa_pg_all_reduce(
        pg: *mut CappaPg,
        tensor: *const C_tensor,
        op: c_int,
        error: *mut *mut c_char,
    ) -> bool;
    pub(crate) fn cappa_pg_all_gather(
        pg: *mut CappaPg,
        input: *const C_tensor,
        output: *mut *mut C_tensor,
        error: *mut *mut c_char,
    ) -> bool;
    pub(crate) fn cappa_pg_broadcast(
        pg: *mut CappaPg,
        tensor: *const C_tensor,
        root: c_int,
        error: *mut *mut c_char,
    ) -> bool;
    pub(crate) fn cappa_pg_barrier(pg: *mut CappaPg, error: *mut *mut c_char) -> bool;
}

/// A libtorch call through the shim failed; `message` is libtorch's (the text of the C++
/// exception the shim caught).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShimError {
    pub message: String,
}

/// Runs a shim call that reports failure through an error string.
pub(crate) fn checked<T>(
    call: impl FnOnce(*mut *mut c_char) -> T,
    ok: impl Fn(&T) -> bool,
) -> Result<T, ShimError> {
    let mut error: *mut c_char = std::ptr::null_mut();
    let value = call(&mut error);
    if ok(&value) {
        Ok(value)
    } else {
        Err(take_error(error))
    }
}

fn take_error(error: *mut c_char) -> ShimError {
    if error.is_null() {
        return ShimError {
            message: "unknown error in the libtorch shim".into(),
        };
    }
    // SAFETY: the shim returns a NUL-terminated malloc'ed string that we own and free here.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { cappa_free_string(error) };
    ShimError { message }
}
