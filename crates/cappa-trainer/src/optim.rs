//! AdamW over one flat parameter buffer, with weight-decay groups and global-norm clipping.
//!
//! [`AdamW::new`] moves every trainable variable of a `VarStore` into one contiguous buffer
//! (each variable becomes a view of it, so the model and the `VarStore` see the same storage).
//! A step then costs a handful of tensor operations on the whole buffer instead of a handful
//! per variable, and the state (two moment buffers and a step count) is three tensors that a
//! checkpoint stores as they are.
//!
//! The update is torch.optim.AdamW's (`_single_tensor_adamw`, no amsgrad), operation for
//! operation: decay `θ ← θ·(1 − lr·wd)`; `m ← lerp(m, g, 1 − β1)`; `v ← β2·v + (1 − β2)·g²`;
//! `θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`.
//!
//! Weight decay applies to matrices and convolution kernels only — never to biases, norm
//! scales, embeddings (token, position, class), attention-pool probes or the logit scale and
//! bias ([`decays`]). Two forms:
//! - [`WeightDecay::Torch`]: `θ ← θ·(1 − lr·wd)` (torch.optim.AdamW);
//! - [`WeightDecay::Decoupled`]: `θ ← θ·(1 − wd·lr/peak_lr)`, i.e. the decay follows the
//!   schedule but not the learning rate's magnitude (the CapPa reference's 1e-4, which torch's
//!   form would need as wd = 0.1 at lr 1e-3).

use cappa_torch_ext::optim::{fused_adamw_, AdamWStep};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDecay {
    /// `θ ← θ·(1 − lr·wd)`.
    Torch,
    /// `θ ← θ·(1 − wd·lr/peak_lr)`: independent of the peak learning rate.
    Decoupled,
}

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule multiplies it).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decay: WeightDecay,
    /// Clip the global gradient norm to this value; `null` disables clipping.
    pub clip_grad_norm: Option<f64>,
    /// libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`, one kernel per step)
    /// instead of the op-by-op update; `null`: on CUDA only. The op-by-op update is
    /// bit-identical to torch's default AdamW; the fused one agrees to float rounding.
    pub fused: Option<bool>,
}

impl Default for AdamWConfig {
    /// lr 1e-3, β = (0.9, 0.999), ε 1e-8, decoupled decay 1e-4, clipping at 1 (CapPa's
    /// reference settings).
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            decay: WeightDecay::Decoupled,
            clip_grad_norm: Some(1.0),
            fused: None,
        }
    }
}

/// Whether a variable gets weight decay: tensors of rank ≥ 2 (matrices, conv kernels,
/// projections) except embeddings and attention-pool probes.
pub fn decays(name: &str, shape: &[i64]) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    shape.len() >= 2 && !name.contains("embedding") && last != "probe"
}

/// One variable's place in the flat buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<i64>,
    pub offset: i64,
    pub decays: bool,
}

/// A saved optimizer state that does not fit the optimizer (taken over other variables).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("optimizer state `{what}` has shape {shape:?}, the model has {params} parameters")]
pub struct OptimizerStateError {
    /// `exp_avg` or `exp_avg_sq`.
    pub what: &'static str,
    pub shape: Vec<i64>,
    pub params: i64,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the update was applied (false when the gradients were not finite).
    pub applied: bool,
}

/// AdamW on a flat parameter buffer; see the module documentation.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    variables: Vec<Tensor>,
    params: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay_mask: Tensor,
    step: u64,
    /// Whether updates use the fused kernel, which reads the step count from `step_count`.
    fused: bool,
    step_count: Tensor,
}

impl AdamW {
    /// Flattens the trainable variables of `vs` (in name order) into one buffer.
    pub fn new(vs: &VarStore, config: AdamWConfig) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let total: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
        let (kind, device) = named
            .first()
            .map_or((Kind::Float, vs.device()), |(_, t)| (t.kind(), t.device()));
        let params = Tensor::zeros([total], (kind, device));
        let decay_mask = Tensor::zeros([total], (Kind::Bool, device));
        let mut slots = Vec::with_capacity(named.len());
        let mut variables = Vec::with_capacity(named.len());
        let mut offset = 0;
        tch::no_grad(|| {
            for (name, mut var) in named {
                let shape = var.size();
                let numel = var.numel() as i64;
                let view = params.narrow(0, offset, numel).view(shape.as_slice());
                view.shallow_clone().copy_(&var);
                var.set_data(&view);
                let decays = decays(&name, &shape);
                if decays {
                    let _ = decay_mask.narrow(0, offset, numel).fill_(1);
                }
                slots.push(Slot {
                    name,
                    shape,
                    offset,
                    decays,
                });
                variables.push(var);
                offset += numel;
            }
        });
        AdamW {
            config,
            slots,
            variables,
            exp_avg: params.zeros_like(),
            exp_avg_sq: params.zeros_like(),
            params,
            decay_mask,
            step: 0,
            fused: config.fused.unwrap_or(matches!(device, Device::Cuda(_))),
            step_count: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The flat parameter buffer (every variable is a view of it).
    pub fn params(&self) -> &Tensor {
        &self.params
    }

    /// Number of parameters that get weight decay, and of all parameters.
    pub fn decay_counts(&self) -> (i64, i64) {
        let decayed = self
            .slots
            .iter()
            .filter(|s| s.decays)
            .map(|s| s.shape.iter().product::<i64>())
            .sum();
        (decayed, self.params.numel() as i64)
    }

    /// The gradients as one flat tensor (zeros for variables without a gradient).
    pub fn flat_grad(&self) -> Tensor {
        let views: Vec<Tensor> = self
            .variables
            .iter()
            .map(|var| {
                let grad = var.grad();
                if grad.defined() {
                    grad.reshape([-1])
                } else {
                    Tensor::zeros([var.numel() as i64], (var.kind(), var.device()))
                }
            })
            .collect();
        Tensor::cat(&views, 0)
    }

    /// Sets every variable's gradient to zero.
    pub fn zero_grad(&mut self) {
        for var in &mut self.variables {
            var.zero_grad();
        }
    }

    /// L2 norm of all parameters.
    pub fn param_norm(&self) -> f64 {
        tch::no_grad(|| self.params.norm().double_value(&[]))
    }

    /// Clips the gradients to the global norm, then applies one AdamW update at `lr`.
    /// `schedule_factor` is `lr / peak_lr`, used by decoupled weight decay. Gradients that are
    /// not finite leave the parameters and moments untouched (`applied = false`). The
    /// gradients are zeroed either way.
    pub fn step(&mut self, lr: f64, schedule_factor: f64) -> StepReport {
        let grad = self.flat_grad();
        self.step_with_grad(grad, lr, schedule_factor)
    }

    /// [`AdamW::step`] with the flat gradient given (e.g. summed over data-parallel ranks)
    /// instead of read from the variables, whose gradients are zeroed all the same.
    pub fn step_with_grad(&mut self, grad: Tensor, lr: f64, schedule_factor: f64) -> StepReport {
        let mut grad = grad;
        let report = tch::no_grad(|| {
            let grad_norm = grad.norm().double_value(&[]);
            if !grad_norm.is_finite() {
                return StepReport {
                    grad_norm,
                    applied: false,
                };
            }
            if let Some(max_norm) = self.config.clip_grad_norm {
                // torch.nn.utils.clip_grad_norm_'s coefficient.
                let coef = max_norm / (grad_norm + 1e-6);
                if coef < 1.0 {
                    let _ = grad.g_mul_scalar_(coef);
                }
            }
            self.update(&grad, lr, schedule_factor);
            StepReport {
                grad_norm,
                applied: true,
            }
        });
        self.zero_grad();
        report
    }

    /// The AdamW update with a given flat gradient.
    fn update(&mut self, grad: &Tensor, lr: f64, schedule_factor: f64) {
        let c = self.config;
        self.step += 1;
        let decay = match c.decay {
            WeightDecay::Torch => lr * c.weight_decay,
            WeightDecay::Decoupled => schedule_factor * c.weight_decay,
        };
        if decay != 0.0 {
            let factor = Tensor::where_scalar(&self.decay_mask, 1.0 - decay, 1.0)
                .to_kind(self.params.kind());
            let _ = self.params.g_mul_(&factor);
        }
        if self.fused {
            let _ = self.step_count.fill_(self.step as f64);
            let step = AdamWStep {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                weight_decay: 0.0, // applied above, to the decaying slots only
                eps: c.eps,
            };
            let (m, v) = (&self.exp_avg, &self.exp_avg_sq);
            fused_adamw_(&self.params, grad, m, v, &self.step_count, step)
                .expect("the fused AdamW kernel takes the optimizer's own buffers");
            return;
        }
        let _ = self.exp_avg.lerp_(grad, 1.0 - c.beta1);
        let scaled = grad * (1.0 - c.beta2);
        let _ = self
            .exp_avg_sq
            .g_mul_scalar_(c.beta2)
            .addcmul_(&scaled, grad);
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias_correction1;
        let mut denom = self.exp_avg_sq.sqrt() / bias_correction2_sqrt;
        let _ = denom.g_add_scalar_(c.eps);
        let _ = self
            .params
            .addcdiv_(&(&self.exp_avg * (-step_size)), &denom);
    }

    /// The state a checkpoint keeps: `(exp_avg, exp_avg_sq)` and the step count.
    pub fn state(&self) -> (&Tensor, &Tensor, u64) {
        (&self.exp_avg, &self.exp_avg_sq, self.step)
    }

    /// Restores a state taken from an optimiser over the same variables.
    pub fn restore(
        &mut self,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
        step: u64,
    ) -> Result<(), OptimizerStateError> {
        for (what, t) in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
            if t.size() != self.params.size() {
                return Err(OptimizerStateError {
                    what,
                    shape: t.size(),
                    params: self.params.numel() as i64,
                });
            }
        }
        tch::no_grad(|| {
            self.exp_avg.copy_(exp_avg);
            self.exp_avg_sq.copy_(exp_avg_sq);
        });
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};

    #[test]
    fn the_fused_kernel_matches_the_op_by_op_update() {
        let run = |fused: bool| {
            let vs = VarStore::new(Device::Cpu);
            let root = vs.root();
            let w = root.var("w", &[4, 3], nn::Init::Const(0.5));
            let b = root.var("b", &[3], nn::Init::Const(-0.25));
            let config = AdamWConfig {
                fused: Some(fused),
                weight_decay: 0.1,
                decay: WeightDecay::Torch,
                clip_grad_norm: Some(0.5),
                ..AdamWConfig::default()
            };
            let mut opt = AdamW::new(&vs, config);
            for step in 0..6 {
                let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([4, 3]) / 7.0;
                let y = (&w * x.sin() * (step as f64 + 1.0)).sum(Kind::Float)
                    + b.square().sum(Kind::Float);
                y.backward();
                assert!(opt.step(1e-2 / (step as f64 + 1.0), 1.0).applied);
            }
            (
                opt.params().copy(),
                opt.state().0.copy(),
                opt.state().1.copy(),
            )
        };
        let (a, b) = (run(false), run(true));
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "fused and op-by-op differ by {diff}");
        }
        // The update moved the weights at all (the comparison is not of two no-ops).
        assert!((&a.0 - 0.5).abs().max().double_value(&[]) > 1e-3);
    }

    #[test]
    fn decay_groups_follow_the_variable_kind() {
        assert!(decays(
            "visual.transformer.resblocks.0.attn.in_proj_weight",
            &[192, 64]
        ));
        assert!(decays("visual.conv1.weight", &[64, 3, 8, 8]));
        assert!(decays("text_projection", &[64, 64]));
        assert!(!decays(
            "visual.transformer.resblocks.0.attn.in_proj_bias",
            &[192]
        ));
        assert!(!decays("ln_final.weight", &[64]));
        assert!(!decays("token_embedding.weight", &[512, 64]));
        assert!(!decays("visual.positional_embedding", &[16, 64]));
        assert!(!decays("visual.class_embedding", &[64]));
        assert!(!decays("visual.attn_pool.probe", &[1, 1, 64]));
        assert!(!decays("logit_scale", &[]));
    }

    #[test]
    fn variables_become_views_of_the_flat_buffer() {
        let vs = VarStore::new(Device::Cpu);
        let linear = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]);
        let before = linear.forward(&x);
        let opt = AdamW::new(&vs, AdamWConfig::default());
        assert_eq!(opt.params().numel(), 8);
        // The model computes the same thing through the views...
        assert!(linear.forward(&x).equal(&before));
        // ... and writes to the buffer are seen by the model.
        tch::no_grad(|| {
            let _ = opt.params().shallow_clone().fill_(0.5);
        });
        let expected = Tensor::from_slice(&[3.5f32, 3.5]).view([1, 2]);
        assert!(linear.forward(&x).allclose(&expected, 1e-6, 1e-6, false));
        assert_eq!(opt.decay_counts(), (6, 8));
    }

    /// One variable, one step, by hand: Adam's first update moves each weight by −lr·sign(g)
    /// (m̂ = g, v̂ = g²), after decoupled decay θ·(1 − wd·factor).
    #[test]
    fn first_step_by_hand() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                lr: 0.1,
                eps: 0.0,
                weight_decay: 0.5,
                decay: WeightDecay::Decoupled,
                clip_grad_norm: None,
                ..AdamWConfig::default()
            },
        );
        let target = Tensor::from_slice(&[2.0f32, 0.0, 2.0, 0.0]).view([2, 2]);
        (&w - &target).square().sum(Kind::Float).backward();
        // Gradient 2(w − target) = (−2, 2, −2, 2); at factor 0.5 the decay is 1 − 0.25.
        let report = opt.step(0.05, 0.5);
        assert!(report.applied);
        assert!((report.grad_norm - 4.0).abs() < 1e-6);
        let expected = Tensor::from_slice(&[0.75f32 + 0.05, 0.75 - 0.05, 0.8, 0.7]).view([2, 2]);
        assert!(w.allclose(&expected, 1e-6, 1e-6, false), "{w}");
    }

    #[test]
    fn clipping_scales_to_the_global_norm_and_bad_gradients_are_refused() {
        let vs = VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[3], nn::Init::Const(0.0));
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                clip_grad_norm: Some(1.0),
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        );
        // Gradient (3, 4, 0): norm 5, clipped to (0.6, 0.8, 0) before Adam sees it.
        (&a * Tensor::from_slice(&[3.0f32, 4.0, 0.0]))
            .sum(Kind::Float)
            .backward();
        let report = opt.step(1e-3, 1.0);
        assert!((report.grad_norm - 5.0).abs() < 1e-6);
        let m = opt.state().0;
        // m = (1 − β1)·g_clipped.
        let expected = Tensor::from_slice(&[0.06f32, 0.08, 0.0]);
        assert!(m.allclose(&expected, 1e-6, 1e-6, false), "{m}");

        (&a * f64::NAN).sum(Kind::Float).backward();
        let before = opt.params().copy();
        let report = opt.step(1e-3, 1.0);
        assert!(!report.applied && report.grad_norm.is_nan());
        assert!(opt.params().equal(&before));
        assert_eq!(opt.steps(), 1);
    }
}
