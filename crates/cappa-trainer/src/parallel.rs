//! Data parallelism over a c10d process group (`cappa-torch-ext`).
//!
//! Every rank holds the whole model and a `batch_size / world_size` share of each global
//! batch, read from its own slice of the data (scene samples `r, r + w, …`; shards
//! `r, r + w, …`). At start the parameters are broadcast from rank 0. Each step:
//! - Cap/CapPa: each rank's loss is its share's mean, backpropagated divided by the world
//!   size, so the **sum** of the ranks' gradients is the gradient of the global batch's mean;
//! - CLIP/SigLIP: the image and text embeddings are all-gathered, this rank's rows keeping
//!   their gradient ([`ProcessGroup::gather_rows_with_local_grad`]), and every rank computes
//!   the loss over the global batch (all negatives); each rank's backward gives its share of
//!   that loss's gradient and, again, the sum over ranks is the whole;
//! - the flat gradient is summed over ranks in buckets of [`GRAD_BUCKET_BYTES`], so every
//!   rank takes the identical AdamW step (clipping sees the global gradient norm);
//! - the reported loss is averaged over ranks, and the decision to skip a non-finite step or
//!   to stop on Ctrl-C is taken by all ranks together (one small all-reduce per step).
//!
//! Only rank 0 writes (run directory, checkpoints, metrics, summary) and shows progress; the
//! checkpoint keeps every rank's data cursor so that a resumed run continues each rank's
//! stream.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use cappa_torch_ext::dist::{Backend, DistError, ProcessGroup, ReduceOp};

use crate::optim::AdamW;

/// Gradient bucket size for the all-reduce (torch DDP's default bucket size).
pub const GRAD_BUCKET_BYTES: i64 = 25 << 20;

/// Copies rank 0's parameters to every rank (identical seeds give identical weights already;
/// broadcasting makes it a guarantee).
pub(crate) fn broadcast_parameters(pg: &ProcessGroup, optimizer: &AdamW) -> Result<(), DistError> {
    let mut params = optimizer.params().shallow_clone();
    tch::no_grad(|| pg.broadcast(&mut params, 0))
}

/// The flat gradient summed over the ranks, in buckets of [`GRAD_BUCKET_BYTES`].
pub(crate) fn summed_gradient(pg: &ProcessGroup, optimizer: &AdamW) -> Result<Tensor, DistError> {
    let mut grad = optimizer.flat_grad();
    let bucket = bucket_elements(grad.kind());
    tch::no_grad(|| pg.all_reduce_buckets(&mut grad, ReduceOp::Sum, bucket))?;
    Ok(grad)
}

/// `parameter` with its gradient divided by `world_size`: every rank computes the same global
/// contrastive loss from the temperature (and bias), so each rank gets 1/world of their
/// gradient and the sum over ranks is theirs once. The value is unchanged.
pub(crate) fn gradient_share(parameter: &Tensor, world_size: usize) -> Tensor {
    let world = world_size as f64;
    parameter.detach() + (parameter - parameter.detach()) / world
}

/// Every rank's `value`, in rank order (JSON through two all-gathers: lengths, then bytes).
pub(crate) fn gather_json<T: Serialize + DeserializeOwned>(
    pg: &ProcessGroup,
    value: &T,
) -> Result<Vec<T>, DistError> {
    let device = scalar_device(pg);
    let bytes = serde_json::to_vec(value).expect("cursors serialise");
    let lengths = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
    let lengths = pg.all_gather(&lengths)?.to_device(Device::Cpu);
    let lengths: Vec<i64> = Vec::try_from(&lengths.flatten(0, -1)).expect("i64 lengths");
    let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
    let mut padded = bytes;
    padded.resize(longest, 0);
    let gathered = pg.all_gather(&Tensor::from_slice(&padded).to_device(device))?;
    let gathered = gathered.to_device(Device::Cpu);
    let rows: Vec<u8> = Vec::try_from(&gathered.flatten(0, -1)).expect("u8 bytes");
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(rank, &len)| {
            let row = &rows[rank * longest..rank * longest + len as usize];
            serde_json::from_slice(row).expect("every rank sends what it serialised")
        })
        .collect())
}

/// Rank 0's `text` on every rank (the others pass `None`).
pub(crate) fn broadcast_text(pg: &ProcessGroup, text: Option<String>) -> Result<String, DistError> {
    let device = scalar_device(pg);
    let bytes = text.unwrap_or_default().into_bytes();
    let mut len = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
    pg.broadcast(&mut len, 0)?;
    let len = len.int64_value(&[0]) as usize;
    let mut padded = bytes;
    padded.resize(len, 0);
    let mut data = Tensor::from_slice(&padded).to_device(device);
    pg.broadcast(&mut data, 0)?;
    let bytes: Vec<u8> = Vec::try_from(&data.to_device(Device::Cpu)).expect("u8 bytes");
    Ok(String::from_utf8(bytes).expect("rank 0 sends UTF-8"))
}

/// `value` averaged over the ranks, and whether `flag` is set on any rank: one collective.
pub(crate) fn mean_and_any(
    pg: &ProcessGroup,
    value: f64,
    flag: bool,
) -> Result<(f64, bool), DistError> {
    let mut t =
        Tensor::from_slice(&[value, f64::from(u8::from(flag))]).to_device(scalar_device(pg));
    pg.all_reduce(&mut t, ReduceOp::Sum)?;
    let world = pg.world_size() as f64;
    Ok((t.double_value(&[0]) / world, t.double_value(&[1]) > 0.0))
}

/// Elements of `kind` in one gradient bucket.
fn bucket_elements(kind: Kind) -> i64 {
    GRAD_BUCKET_BYTES / kind.elt_size_in_bytes() as i64
}

/// Where small host values go for a collective: NCCL reduces only GPU tensors (this rank's
/// GPU, `LOCAL_RANK`), Gloo CPU ones.
fn scalar_device(pg: &ProcessGroup) -> Device {
    match pg.backend() {
        Backend::Nccl => Device::Cuda(pg.local_rank()),
        Backend::Gloo => Device::Cpu,
    }
}
