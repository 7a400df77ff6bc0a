//! torch.distributed's c10d engine from Rust: a process group over a TCPStore rendezvous,
//! configured by the environment that torchrun, `cappa launch` and SLURM wrappers set.

use std::ffi::{c_int, CString};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::ffi;

/// The collective backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, TCP transport.
    Gloo,
    /// CUDA tensors.
    Nccl,
}

impl Backend {
    /// NCCL for CUDA devices, Gloo for the CPU.
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether this build has the backend; the error says how to get it.
    pub fn check_available(self) -> Result<(), DistError> {
        // SAFETY: plain queries without arguments.
        let present = unsafe {
            match self {
                Backend::Gloo => ffi::cappa_has_gloo(),
                Backend::Nccl => ffi::cappa_has_nccl(),
            }
        } != 0;
        if present {
            return Ok(());
        }
        let why = match option_env!("CAPPA_TORCH_EXT_MISSING") {
            Some(why) if !why.is_empty() => why,
            _ => "its headers were missing when cappa-torch-ext was compiled",
        };
        let how = match self {
            Backend::Gloo => {
                "install Debian's libgloo-dev (`cargo xtask setup` does it) and rebuild"
            }
            Backend::Nccl => {
                "run `cargo xtask setup --cuda` (CUDA, CCCL and NCCL headers from PyPI) and rebuild"
            }
        };
        Err(DistError::Unavailable {
            backend: self.name(),
            why: why.to_owned(),
            how,
        })
    }
}

/// A failed rendezvous or collective.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistError {
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("the {backend} backend is not available ({why}): {how}")]
    Unavailable {
        backend: &'static str,
        why: String,
        how: &'static str,
    },
    #[error(
        "rank {rank} of {world_size}: could not join the process group at {addr}:{port}: \
         {message} (check MASTER_ADDR/MASTER_PORT and that every rank was started)"
    )]
    Rendezvous {
        rank: usize,
        world_size: usize,
        addr: String,
        port: u16,
        message: String,
    },
    #[error(
        "rank {rank} of {world_size}: {op} failed: {message} (another rank probably died or \
         stopped; see its output)"
    )]
    Collective {
        rank: usize,
        world_size: usize,
        op: &'static str,
        message: String,
    },
}

/// Where this process sits in the job, as launchers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// The process's index on its node (its GPU).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Whether the launcher already hosts the TCPStore at the master address (torchrun's
    /// agent does, and says so with `TORCHELASTIC_USE_AGENT_STORE=True`); otherwise rank 0
    /// hosts it.
    pub agent_store: bool,
}

impl DistEnv {
    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` and
    /// `TORCHELASTIC_USE_AGENT_STORE`. `None` when
    /// `WORLD_SIZE` is unset (a plain single-process run); an error names a missing or
    /// malformed variable.
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`DistEnv::from_env`] over any variable lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        fn parse<T: std::str::FromStr>(
            name: &'static str,
            value: Option<String>,
        ) -> Result<T, DistError> {
            let value = value.ok_or_else(|| DistError::Env {
                name,
                message: "is not set, but WORLD_SIZE is: start the processes with `cappa \
                          launch`, torchrun or a launcher that sets RANK, WORLD_SIZE, \
                          MASTER_ADDR and MASTER_PORT"
                    .into(),
            })?;
            value.trim().parse().map_err(|_| DistError::Env {
                name,
                message: format!("`{value}` is not a valid number"),
            })
        }
        let world_size: usize = parse("WORLD_SIZE", Some(world))?;
        let rank: usize = parse("RANK", get("RANK"))?;
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env {
                name: "RANK",
                message: format!("{rank} is not below WORLD_SIZE {world_size}"),
            });
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = parse("MASTER_PORT", get("MASTER_PORT"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            agent_store,
        }))
    }
}

/// A reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The mean over ranks (Gloo: a sum, then a division).
    Avg,
    Max,
}

/// A c10d process group; collectives block until done or until the group's timeout.
#[derive(Debug)]
pub struct ProcessGroup {
    pg: *mut ffi::CappaPg,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    backend: Backend,
}

// SAFETY: the handle owns its c10d objects and may move between threads; c10d backends accept
// collectives from any thread (torch's DDP issues them from autograd threads).
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by cappa_pg_new, freed once.
        unsafe { ffi::cappa_pg_free(self.pg) }
    }
}

impl ProcessGroup {
    /// Joins (rank 0: hosts) the TCPStore at `MASTER_ADDR:MASTER_PORT` and builds the group.
    /// `timeout` bounds the rendezvous and every collective.
    pub fn new(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<Self, DistError> {
        backend.check_available()?;
        let host = CString::new(env.master_addr.clone()).map_err(|_| DistError::Env {
            name: "MASTER_ADDR",
            message: "contains a NUL byte".into(),
        })?;
        let timeout_ms = timeout.as_millis().clamp(1, c_int::MAX as u128) as c_int;
        let pg = ffi::checked(
            |error| unsafe {
                ffi::cappa_pg_new(
                    host.as_ptr(),
                    c_int::from(env.master_port),
                    env.rank as c_int,
                    env.world_size as c_int,
                    c_int::from(!env.agent_store),
                    c_int::from(backend == Backend::Nccl),
                    timeout_ms,
                    error,
                )
            },
            |pg| !pg.is_null(),
        )
        .map_err(|error| DistError::Rendezvous {
            rank: env.rank,
            world_size: env.world_size,
            addr: env.master_addr.clone(),
            port: env.master_port,
            message: error.message,
        })?;
        Ok(ProcessGroup {
            pg,
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            backend,
        })
    }

    /// The group of the launcher's environment, if any (see [`DistEnv::from_env`]).
    pub fn from_env(backend: Backend, timeout: Duration) -> Result<Option<Self>, DistError> {
        DistEnv::from_env()?
            .map(|env| Self::new(&env, backend, timeout))
            .transpose()
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    /// The process's index on its node (its GPU).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn collective(&self, op: &'static str, error: ffi::ShimError) -> DistError {
        DistError::Collective {
            rank: self.rank,
            world_size: self.world_size,
            op,
            message: error.message,
        }
    }

    /// Reduces `tensor` over all ranks, in place (contiguous tensors only).
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Max => 2,
        };
        ffi::checked(
            |error| unsafe { ffi::cappa_pg_all_reduce(self.pg, tensor.as_mut_ptr(), op, error) },
            |ok| *ok,
        )
        .map(drop)
        .map_err(|m| self.collective("all_reduce", m))
    }

    /// Every rank's `tensor`, stacked in rank order: shape `(world_size, *tensor.shape)`.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let mut output: *mut torch_sys::C_tensor = std::ptr::null_mut();
        ffi::checked(
            |error| unsafe {
                ffi::cappa_pg_all_gather(self.pg, tensor.as_ptr(), &mut output, error)
            },
            |ok| *ok,
        )
        .map_err(|m| self.collective("all_gather", m))?;
        // SAFETY: on success the shim hands over a new at::Tensor that we now own.
        Ok(unsafe { Tensor::from_ptr(output) })
    }

    /// Copies rank `root`'s `tensor` into every rank's, in place.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        ffi::checked(
            |error| unsafe {
                ffi::cappa_pg_broadcast(self.pg, tensor.as_mut_ptr(), root as c_int, error)
            },
            |ok| *ok,
        )
        .map(drop)
        .map_err(|m| self.collective("broadcast", m))
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<(), DistError> {
        ffi::checked(
            |error| unsafe { ffi::cappa_pg_barrier(self.pg, error) },
            |ok| *ok,
        )
        .map(drop)
        .map_err(|m| self.collective("barrier", m))
    }

    /// Every rank's `local` rows concatenated in rank order, with this rank's rows being
    /// `local` itself, so gradients flow into them (and only them) — the global batch of a
    /// contrastive loss. Each rank's backward then yields its share of the global gradient,
    /// and summing the ranks' gradients gives the whole.
    pub fn gather_rows_with_local_grad(&self, local: &Tensor) -> Result<Tensor, DistError> {
        let gathered = self.all_gather(&local.detach())?;
        let parts: Vec<Tensor> = (0..self.world_size)
            .map(|r| {
                if r == self.rank {
                    local.shallow_clone()
                } else {
                    gathered.get(r as i64)
                }
            })
            .collect();
        Ok(Tensor::cat(&parts, 0))
    }

    /// Sums `flat` (a 1-D tensor) over all ranks in buckets of at most `bucket_elements`, in
    /// place: a few large collectives instead of one per parameter tensor.
    pub fn all_reduce_buckets(
        &self,
        flat: &mut Tensor,
        op: ReduceOp,
        bucket_elements: i64,
    ) -> Result<(), DistError> {
        let total = flat.numel() as i64;
        let bucket = bucket_elements.max(1);
        let mut start = 0;
        while start < total {
            let len = bucket.min(total - start);
            let mut chunk = flat.narrow(0, start, len);
            self.all_reduce(&mut chunk, op)?;
            start += len;
        }
        Ok(())
    }
}
