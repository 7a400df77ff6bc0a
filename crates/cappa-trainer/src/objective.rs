//! The training loss of each objective on one micro-batch: CLIP's softmax or SigLIP's sigmoid
//! contrastive loss (over the global batch when data parallel), Cap's next-token loss and
//! CapPa's parallel-prediction loss. The losses themselves live in `cappa-objectives`; this
//! module feeds them the model's outputs.

use cappa_models::{shift_right, CapModel, Clip, Decoding, Model};
use cappa_objectives::{
    caption_loss, contrastive_sigmoid_loss, contrastive_softmax_loss, parallel_prediction_inputs,
    ParallelPrediction,
};
use cappa_torch_ext::autocast::Autocast;
use cappa_torch_ext::dist::ProcessGroup;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::config::{ExperimentConfig, Objective, Precision};
use crate::error::TrainError;
use crate::parallel;
use crate::random::mask_seed;

/// What a loss needs besides the model and the batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossContext<'a> {
    pub config: &'a ExperimentConfig,
    pub device: Device,
    /// The data-parallel group, if any.
    pub dist: Option<&'a ProcessGroup>,
}

/// The training loss of one micro-batch (images `(b, 3, H, W)`, tokens `(b, L)`). `micro`
/// numbers the micro-batches of a step, so that CapPa's random masks depend only on (seed,
/// step, micro-batch).
pub(crate) fn micro_loss(
    model: &Model,
    context: LossContext<'_>,
    images: &Tensor,
    tokens: &Tensor,
    step: u64,
    micro: u64,
) -> Result<Tensor, TrainError> {
    Ok(match model {
        Model::Clip(clip) => contrastive_training_loss(clip, context, images, tokens)?,
        Model::Cap(cap) => captioning_loss(cap, context.config, images, tokens, step, micro),
    })
}

/// The divisor of a micro-batch's loss beyond the micro-batch count, so that the ranks'
/// gradients sum to the global batch's: a per-example loss (Cap) is this rank's share of the
/// global mean, so it is divided by the world size; a contrastive loss already is the global
/// batch's (see [`crate::parallel`]).
pub(crate) fn rank_share(model: &Model, world_size: usize) -> f64 {
    match model {
        Model::Cap(_) => world_size as f64,
        Model::Clip(_) => 1.0,
    }
}

fn contrastive_training_loss(
    clip: &Clip,
    context: LossContext<'_>,
    images: &Tensor,
    tokens: &Tensor,
) -> Result<Tensor, TrainError> {
    let image = clip.encode_image(images, true).to_kind(Kind::Float);
    let text = clip.encode_text(tokens, true).to_kind(Kind::Float);
    // The similarity matrix and the loss in fp32, whatever the towers ran in.
    let _fp32 = match context.config.precision {
        Precision::Bf16 => Some(Autocast::off(context.device)?),
        Precision::Fp32 => None,
    };
    Ok(match context.dist {
        None => contrastive_loss(clip, &image, &text),
        Some(pg) => {
            let image = pg.gather_rows_with_local_grad(&image)?;
            let text = pg.gather_rows_with_local_grad(&text)?;
            let world = pg.world_size();
            let bias = (clip.logit_bias.as_ref()).map(|b| parallel::gradient_share(b, world));
            let scale = parallel::gradient_share(&clip.logit_scale, world);
            contrastive_loss_of(&image, &text, &scale, bias.as_ref())
        }
    })
}

/// Cap: teacher-forced next-token loss; CapPa: with probability `prob` a parallel-prediction
/// example (all inputs masked, no causal mask), else a causal one.
fn captioning_loss(
    cap: &CapModel,
    config: &ExperimentConfig,
    images: &Tensor,
    tokens: &Tensor,
    step: u64,
    micro: u64,
) -> Tensor {
    let decoder = &cap.config().decoder;
    let memory = cap.encode_image(images, true).tokens;
    let logits = if config.objective == Objective::CapPa {
        let pp = ParallelPrediction {
            prob: config.parallel_prediction.prob,
            mask_id: decoder.mask_id(),
            bos_id: decoder.bos_id,
            masking_ratio: config.parallel_prediction.masking_ratio,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mask_seed(config.seed, step, micro));
        let inputs = parallel_prediction_inputs(tokens, &pp, &mut rng)
            .expect("parallel prediction settings were validated");
        cap.decode(
            &memory,
            &inputs.inputs,
            Decoding::PerExample(&inputs.parallel),
            true,
        )
    } else {
        let inputs = shift_right(tokens, decoder.bos_id);
        cap.decode(&memory, &inputs, Decoding::Causal, true)
    };
    caption_loss(&logits, tokens, decoder.pad_id, 0.0)
}

/// The loss the CLIP model was configured for: sigmoid when it has a logit bias, else softmax.
pub(crate) fn contrastive_loss(clip: &Clip, image: &Tensor, text: &Tensor) -> Tensor {
    contrastive_loss_of(image, text, &clip.logit_scale, clip.logit_bias.as_ref())
}

/// Sigmoid loss with a logit bias, softmax without.
fn contrastive_loss_of(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Tensor {
    match bias {
        Some(bias) => contrastive_sigmoid_loss(image, text, scale, bias),
        None => contrastive_softmax_loss(image, text, scale),
    }
}
