//! A small C++ shim over libtorch for what `tch` does not bind: autocast with a chosen dtype
//! (bf16) on CPU or CUDA, the TF32 switches, the fused AdamW kernel, and torch.distributed's c10d process groups (Gloo on CPU, NCCL on
//! CUDA) with a TCPStore rendezvous driven by the environment that torchrun, `cappa launch`
//! and SLURM wrappers set (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`).
//!
//! Boundaries: used by `cappa-trainer` and the `cappa` binary; no model or training logic.
//! The C++ side (`csrc/shim.cpp`) catches every exception, so failures (a timeout, a dead
//! peer, a missing backend) arrive as [`dist::DistError`]s, never as aborts.
//!
//! ```no_run
//! use std::time::Duration;
//! use cappa_torch_ext::autocast::Autocast;
//! use cappa_torch_ext::dist::{Backend, ProcessGroup, ReduceOp};
//! use tch::{Device, Kind, Tensor};
//!
//! // Started by `cappa launch --nproc 2 …` or `torchrun --nproc-per-node 2 --no-python …`.
//! let pg = ProcessGroup::from_env(Backend::Gloo, Duration::from_secs(60))?
//!     .expect("WORLD_SIZE is set by the launcher");
//! let mut t = Tensor::from_slice(&[pg.rank() as f32 + 1.0]);
//! pg.all_reduce(&mut t, ReduceOp::Sum)?; // 1 + 2 + … on every rank
//!
//! let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
//! let y = Autocast::bf16(Device::Cpu, || a.matmul(&a)).expect("autocast");
//! assert_eq!(y.kind(), Kind::BFloat16);
//! # Ok::<(), cappa_torch_ext::dist::DistError>(())
//! ```

pub mod autocast;
pub mod backends;
pub mod dist;
mod ffi;
pub mod optim;

pub use ffi::ShimError;
