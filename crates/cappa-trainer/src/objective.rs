//! The training loss of each objective on one micro-batch: CLIP's softmax or SigLIP's sigmoid
//! contrastive loss (over the global batch when data parallel), Cap's next-token loss and
//! CapPa's parallel-prediction loss. The losses themselves live in `cappa-objectives`; this
//! module feeds them the model's outputs.

use cappa_models::{shift_right, CapModel, Clip, Decoding, Model};
use cappa_objectives::{
    caption_loss, caption_losses, contrastive_sigmoid_loss, contrastive_softmax_loss,
    parallel_prediction_inputs, ParallelPrediction,
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
) -> Result<(Tensor, Option<LossSplit>), TrainError> {
    Ok(match model {
        Model::Clip(clip) => (
            contrastive_training_loss(clip, context, images, tokens)?,
            None,
        ),
        Model::Cap(cap) => captioning_loss(cap, context.config, images, tokens, step, micro),
    })
}

/// CapPa's training loss by kind of example: the summed per-caption losses and the counts of
/// the parallel-prediction examples and of the causal ones, so that micro-batches, steps and
/// log windows add up and divide once ([`LossSplit::means`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSplit {
    pub parallel_sum: f64,
    pub parallel_examples: u64,
    pub causal_sum: f64,
    pub causal_examples: u64,
}

impl LossSplit {
    pub fn add(&mut self, other: &LossSplit) {
        self.parallel_sum += other.parallel_sum;
        self.parallel_examples += other.parallel_examples;
        self.causal_sum += other.causal_sum;
        self.causal_examples += other.causal_examples;
    }

    /// The mean loss of the parallel and of the causal examples (`None` for a kind with none).
    pub fn means(&self) -> (Option<f64>, Option<f64>) {
        let mean = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
        (
            mean(self.parallel_sum, self.parallel_examples),
            mean(self.causal_sum, self.causal_examples),
        )
    }

    /// The split of per-caption losses `(B)` by the parallel flags `(B)`.
    fn of(losses: &Tensor, parallel: &Tensor) -> LossSplit {
        let losses = losses.detach().to_kind(Kind::Double);
        let parallel = parallel.to_kind(Kind::Double);
        let n = losses.size()[0] as u64;
        let parallel_examples = parallel.sum(Kind::Double).double_value(&[]).round() as u64;
        let parallel_sum = (&losses * &parallel).sum(Kind::Double).double_value(&[]);
        LossSplit {
            parallel_sum,
            parallel_examples,
            causal_sum: losses.sum(Kind::Double).double_value(&[]) - parallel_sum,
            causal_examples: n - parallel_examples,
        }
    }
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
/// example (all inputs masked, no causal mask), else a causal one, and the loss by kind.
fn captioning_loss(
    cap: &CapModel,
    config: &ExperimentConfig,
    images: &Tensor,
    tokens: &Tensor,
    step: u64,
    micro: u64,
) -> (Tensor, Option<LossSplit>) {
    let decoder = &cap.config().decoder;
    let memory = cap.encode_image(images, true).tokens;
    if config.objective != Objective::CapPa {
        let inputs = shift_right(tokens, decoder.bos_id);
        let logits = cap.decode(&memory, &inputs, Decoding::Causal, true);
        return (caption_loss(&logits, tokens, decoder.pad_id, 0.0), None);
    }
    let pp = ParallelPrediction {
        prob: config.parallel_prediction.prob,
        mask_id: decoder.mask_id(),
        bos_id: decoder.bos_id,
        masking_ratio: config.parallel_prediction.masking_ratio,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(mask_seed(config.seed, step, micro));
    let inputs = parallel_prediction_inputs(tokens, &pp, &mut rng)
        .expect("parallel prediction settings were validated");
    let logits = cap.decode(
        &memory,
        &inputs.inputs,
        Decoding::PerExample(&inputs.parallel),
        true,
    );
    let losses = caption_losses(&logits, tokens, decoder.pad_id, 0.0); // (B)
    let split = LossSplit::of(&losses, &inputs.parallel);
    (losses.mean(losses.kind()), Some(split))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_sums_by_kind_and_adds_up() {
        let losses = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        let parallel = Tensor::from_slice(&[true, false, true, false]);
        let split = LossSplit::of(&losses, &parallel);
        assert_eq!(
            split,
            LossSplit {
                parallel_sum: 4.0,
                parallel_examples: 2,
                causal_sum: 6.0,
                causal_examples: 2,
            }
        );
        let mut total = split;
        total.add(&LossSplit::of(
            &Tensor::from_slice(&[5.0f32]),
            &Tensor::from_slice(&[false]),
        ));
        assert_eq!(total.means(), (Some(2.0), Some(11.0 / 3.0)));
        assert_eq!(LossSplit::default().means(), (None, None));
    }
}
