//! Contrastive losses between image and text embeddings: the softmax (CLIP) form and the
//! sigmoid (SigLIP) form, each for one process and for a global batch gathered from data
//! parallel ranks.
//!
//! CLIP: Radford et al. 2021, <https://arxiv.org/abs/2103.00020>; reference code
//! open_clip `src/open_clip/loss.py` (`ClipLoss`). SigLIP: Zhai et al. 2023,
//! <https://arxiv.org/abs/2303.15343>; reference code big_vision
//! `trainers/proj/image_text/siglip.py`.
//!
//! Dimension letters: `B` local batch, `W` world size (number of ranks), `N = W·B` global
//! batch, `D` embedding width.

use tch::{Kind, Reduction, Tensor};

/// The largest logit scale the softmax loss uses: `exp(t)` is clamped to at most 100, as in
/// CLIP and open_clip.
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// The shape of a 0-dimensional tensor.
const SCALAR_SHAPE: [i64; 0] = [];

/// CLIP's softmax contrastive loss over one batch of paired embeddings.
///
/// `image` and `text` are `(B, D)` and already L2-normalised; row `i` of one is paired with
/// row `i` of the other. `log_scale` is the learnable scalar `t`. The logits are
/// `min(exp(t), 100) · image · textᵀ` and the loss is the mean of the image→text and the
/// text→image cross-entropy with labels `0..B`. Returns a scalar (shape `[]`).
///
/// As with `torch.clamp`, `t` receives no gradient while `exp(t)` exceeds the clamp; open_clip
/// instead clamps the parameter itself after each step, which keeps the same forward value.
/// Half-precision logits are upcast to `f32` before the cross-entropy.
///
/// # Panics
/// If `image` and `text` are not 2-D with equal shapes, or `log_scale` has more than one element.
pub fn contrastive_softmax_loss(image: &Tensor, text: &Tensor, log_scale: &Tensor) -> Tensor {
    check_features("contrastive_softmax_loss", image, text);
    check_scalar("contrastive_softmax_loss", "log_scale", log_scale);
    softmax_loss(image, text, log_scale)
}

/// SigLIP's sigmoid contrastive loss over one batch of paired embeddings.
///
/// `image` and `text` are `(B, D)` and already L2-normalised; `log_scale` is the learnable `t`
/// (SigLIP initialises it to ln 10) and `bias` the learnable `b` (initialised to −10). The
/// logits are `exp(t) · image · textᵀ + b`; the labels are +1 on the diagonal and −1
/// elsewhere; the loss is `−Σᵢⱼ log σ(labelᵢⱼ · logitᵢⱼ) / B` with `B` the number of image
/// rows. Returns a scalar (shape `[]`). Unlike the softmax loss, the scale is not clamped.
///
/// # Panics
/// If `image` and `text` are not 2-D with equal shapes, or `log_scale` or `bias` has more than
/// one element.
pub fn contrastive_sigmoid_loss(
    image: &Tensor,
    text: &Tensor,
    log_scale: &Tensor,
    bias: &Tensor,
) -> Tensor {
    check_features("contrastive_sigmoid_loss", image, text);
    check_scalar("contrastive_sigmoid_loss", "log_scale", log_scale);
    check_scalar("contrastive_sigmoid_loss", "bias", bias);
    sigmoid_loss(image, text, log_scale, bias)
}

/// Every rank's embeddings, gathered without gradient, for the global-batch losses.
///
/// `image` and `text` are `(N, D)` with `N = W·B`: rank `r`'s `(B, D)` block occupies rows
/// `r·B..(r+1)·B`, in rank order, as an all-gather lays them out. `rank` is the rank of the
/// process computing the loss. Gradients never flow into these tensors (they are detached
/// before use), so they may come straight from a collective.
#[derive(Debug, Clone, Copy)]
pub struct Gathered<'a> {
    /// `(N, D)` image embeddings of all ranks.
    pub image: &'a Tensor,
    /// `(N, D)` text embeddings of all ranks.
    pub text: &'a Tensor,
    /// This process's rank, in `0..W`.
    pub rank: i64,
}

/// Puts this rank's `(B, D)` embeddings back into their slot of the gathered `(N, D)` tensor:
/// rows `rank·B..(rank+1)·B` come from `local` (and carry its gradient), every other row comes
/// from `gathered`, detached. Returns an `(N, D)` tensor.
///
/// # Panics
/// If the tensors are not 2-D, their widths differ, `N` is not a multiple of `B`, `B` is 0, or
/// `rank` lies outside `0..N/B`.
pub fn splice_local(gathered: &Tensor, local: &Tensor, rank: i64) -> Tensor {
    let world_size = world_size("splice_local", gathered, local, rank);
    let batch = local.size()[0];
    debug_assert_eq!(world_size * batch, gathered.size()[0]);
    let gathered = gathered.detach().to_kind(local.kind());
    // (N, D) with rows rank·B..(rank+1)·B replaced by local's (B, D).
    gathered.slice_scatter(local, 0, rank * batch, (rank + 1) * batch, 1)
}

/// [`contrastive_softmax_loss`] over the global batch of `W` data-parallel ranks.
///
/// `local_image` and `local_text` are this rank's `(B, D)` embeddings (with gradient);
/// `gathered` holds every rank's `(N, D)` embeddings. The local embeddings are spliced back
/// into their slot ([`splice_local`]) and the loss is computed over all `N` pairs, so its value
/// equals the single-process loss over the global batch on every rank.
///
/// Gradients: each rank's gradient reaches only its own embeddings (and through them its own
/// copy of the towers), and `log_scale` receives `1/W` of its gradient. So **the gradients of
/// the `W` ranks must be SUMMED** (all-reduce sum) to equal the single-process gradient — for
/// every parameter, `log_scale` included. With a framework that averages gradients across
/// ranks, multiply this loss by `W` before the backward pass.
///
/// # Panics
/// As [`splice_local`] for either modality, or if the local or gathered shapes of image and
/// text differ, or `log_scale` has more than one element.
pub fn contrastive_softmax_loss_global(
    local_image: &Tensor,
    local_text: &Tensor,
    gathered: &Gathered<'_>,
    log_scale: &Tensor,
) -> Tensor {
    const NAME: &str = "contrastive_softmax_loss_global";
    check_features(NAME, local_image, local_text);
    check_features(NAME, gathered.image, gathered.text);
    check_scalar(NAME, "log_scale", log_scale);
    let world_size = world_size(NAME, gathered.image, local_image, gathered.rank);
    let image = splice_local(gathered.image, local_image, gathered.rank); // (N, D)
    let text = splice_local(gathered.text, local_text, gathered.rank); // (N, D)
    softmax_loss(&image, &text, &share_gradient(log_scale, world_size))
}

/// [`contrastive_sigmoid_loss`] over the global batch of `W` data-parallel ranks.
///
/// As [`contrastive_softmax_loss_global`]: the local `(B, D)` embeddings are spliced into the
/// gathered `(N, D)` ones, the loss is the full `N × N` sigmoid loss divided by `N` (equal to
/// the single-process loss on every rank), `log_scale` and `bias` receive `1/W` of their
/// gradient, and **the gradients of the `W` ranks must be SUMMED** to equal the single-process
/// gradient (or the loss multiplied by `W` before gradients are averaged across ranks).
///
/// This computes the whole `N × N` matrix on every rank; big_vision's chunked form, which
/// passes text blocks around a ring, computes the same gradients with less memory.
///
/// # Panics
/// As [`contrastive_softmax_loss_global`], or if `bias` has more than one element.
pub fn contrastive_sigmoid_loss_global(
    local_image: &Tensor,
    local_text: &Tensor,
    gathered: &Gathered<'_>,
    log_scale: &Tensor,
    bias: &Tensor,
) -> Tensor {
    const NAME: &str = "contrastive_sigmoid_loss_global";
    check_features(NAME, local_image, local_text);
    check_features(NAME, gathered.image, gathered.text);
    check_scalar(NAME, "log_scale", log_scale);
    check_scalar(NAME, "bias", bias);
    let world_size = world_size(NAME, gathered.image, local_image, gathered.rank);
    let image = splice_local(gathered.image, local_image, gathered.rank); // (N, D)
    let text = splice_local(gathered.text, local_text, gathered.rank); // (N, D)
    sigmoid_loss(
        &image,
        &text,
        &share_gradient(log_scale, world_size),
        &share_gradient(bias, world_size),
    )
}

fn softmax_loss(image: &Tensor, text: &Tensor, log_scale: &Tensor) -> Tensor {
    let count = image.size()[0];
    let scale = log_scale
        .exp()
        .clamp_max(MAX_LOGIT_SCALE)
        .reshape(SCALAR_SHAPE);
    // (N, D) · (D, N) → (N, N): row i scores image i against every text.
    let logits_per_image = upcast(image.matmul(&text.tr())) * scale;
    // (N, N): row j scores text j against every image.
    let logits_per_text = logits_per_image.tr();
    let labels = Tensor::arange(count, (Kind::Int64, image.device()));
    let image_to_text = cross_entropy(&logits_per_image, &labels);
    let text_to_image = cross_entropy(&logits_per_text, &labels);
    (image_to_text + text_to_image) / 2.0
}

fn sigmoid_loss(image: &Tensor, text: &Tensor, log_scale: &Tensor, bias: &Tensor) -> Tensor {
    let count = image.size()[0];
    // (N, D) · (D, N) → (N, N), then scaled and shifted.
    let logits = upcast(image.matmul(&text.tr())) * log_scale.exp().reshape(SCALAR_SHAPE)
        + bias.reshape(SCALAR_SHAPE);
    // (N, N): +1 for the matching pairs on the diagonal, −1 for every other pair.
    let labels = Tensor::eye(count, (logits.kind(), logits.device())) * 2.0 - 1.0;
    -(logits * labels).log_sigmoid().sum(None::<Kind>) / count as f64
}

fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// Half-precision logits go through the loss in `f32`; `f32` and `f64` stay as they are.
pub(crate) fn upcast(tensor: Tensor) -> Tensor {
    match tensor.kind() {
        Kind::Half | Kind::BFloat16 => tensor.to_kind(Kind::Float),
        _ => tensor,
    }
}

/// The same value as `parameter`, with `1/world_size` of the gradient: every rank computes the
/// full global loss, so summing the ranks' gradients then gives the full gradient once.
fn share_gradient(parameter: &Tensor, world_size: i64) -> Tensor {
    let constant = parameter.detach();
    // (parameter − constant) is exactly zero, so the value is exactly `parameter`'s.
    &constant + (parameter - &constant) / world_size as f64
}

/// The number of ranks `W = N / B`, after checking that the shapes allow it.
fn world_size(name: &str, gathered: &Tensor, local: &Tensor, rank: i64) -> i64 {
    let (gathered_size, local_size) = (gathered.size(), local.size());
    assert!(
        gathered_size.len() == 2 && local_size.len() == 2 && gathered_size[1] == local_size[1],
        "{name}: gathered embeddings {gathered_size:?} and local embeddings {local_size:?} must \
         be (N, D) and (B, D)"
    );
    let (global_batch, batch) = (gathered_size[0], local_size[0]);
    assert!(
        batch > 0 && global_batch % batch == 0,
        "{name}: gathered embeddings {gathered_size:?} must hold a whole number of local \
         batches {local_size:?}"
    );
    let world_size = global_batch / batch;
    assert!(
        (0..world_size).contains(&rank),
        "{name}: rank {rank} lies outside 0..{world_size} (gathered {gathered_size:?}, local \
         {local_size:?})"
    );
    world_size
}

fn check_features(name: &str, image: &Tensor, text: &Tensor) {
    let (image_size, text_size) = (image.size(), text.size());
    assert!(
        image_size.len() == 2 && image_size == text_size,
        "{name}: image embeddings {image_size:?} and text embeddings {text_size:?} must both \
         be (B, D) with equal shapes"
    );
}

fn check_scalar(name: &str, what: &str, tensor: &Tensor) {
    assert!(
        tensor.numel() == 1,
        "{name}: {what} must be a scalar, got shape {:?}",
        tensor.size()
    );
}
