//! libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`), which tch does not bind.

use tch::Tensor;

use crate::ffi::{self, ShimError};

/// libtorch's fused AdamW kernel refused the update (tensors of different shapes, devices or
/// dtypes, or a device without the kernel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libtorch's fused AdamW kernel failed: {source}")]
pub struct FusedAdamWError {
    pub source: ShimError,
}

/// The moments and hyper-parameters of one fused AdamW update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// torch's form: `θ ← θ·(1 − lr·weight_decay)`, inside the kernel.
    pub weight_decay: f64,
    pub eps: f64,
}

/// One AdamW update of `param` in place, in a single kernel (CUDA, and CPU since torch 2.4):
/// `exp_avg`, `exp_avg_sq` are updated too; `step` is a one-element float tensor on the same
/// device holding the step count *including* this update (the bias corrections use it).
pub fn fused_adamw_(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    step: &Tensor,
    h: AdamWStep,
) -> Result<(), FusedAdamWError> {
    ffi::checked(
        |error| unsafe {
            ffi::cappa_fused_adamw(
                param.as_ptr(),
                grad.as_ptr(),
                exp_avg.as_ptr(),
                exp_avg_sq.as_ptr(),
                step.as_ptr(),
                h.lr,
                h.beta1,
                h.beta2,
                h.weight_decay,
                h.eps,
                error,
            )
        },
        |ok| *ok,
    )
    .map(drop)
    .map_err(|source| FusedAdamWError { source })
}
