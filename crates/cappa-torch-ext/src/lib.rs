//! A small C++ shim over libtorch for what `tch` does not bind: the bf16 autocast dtype and
//! torch.distributed's c10d process groups (Gloo on CPU, NCCL on CUDA) with a TCPStore
//! rendezvous that torchrun-style launchers can drive.
//!
//! Boundaries: used by `cappa-trainer` and nothing else; no model or training logic here.
//!
//! The code arrives with the "Scale out and speed up" issue; a usage example will stand here
//! with it.
