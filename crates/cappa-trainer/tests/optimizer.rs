//! AdamW against torch.optim.AdamW (fixture from scripts/make_adamw_fixture.py): a decayed
//! matrix and an undecayed bias, six steps with given gradients and learning rates; the
//! op-by-op update and libtorch's fused kernel.

use cappa_trainer::{AdamW, AdamWConfig, WeightDecay};
use serde_json::Value;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// The largest difference from torch's weights over the fixture's steps.
fn worst_difference(fused: bool) -> f64 {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/adamw_torch.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let weight = (&root / "layer").var("weight", &[3, 4], nn::Init::Const(0.0));
    let bias = (&root / "layer").var("bias", &[4], nn::Init::Const(0.0));
    tch::no_grad(|| {
        weight
            .shallow_clone()
            .copy_(&Tensor::from_slice(&floats(&fixture["weight"])).view([3, 4]));
        bias.shallow_clone()
            .copy_(&Tensor::from_slice(&floats(&fixture["bias"])));
    });
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 1e-2,
            beta1: fixture["beta1"].as_f64().unwrap(),
            beta2: fixture["beta2"].as_f64().unwrap(),
            eps: fixture["eps"].as_f64().unwrap(),
            weight_decay: fixture["weight_decay"].as_f64().unwrap(),
            decay: WeightDecay::Torch,
            clip_grad_norm: None,
            fused: Some(fused),
        },
    );
    let mut worst = 0.0f64;
    for (step, lr) in fixture["lrs"].as_array().unwrap().iter().enumerate() {
        let lr = lr.as_f64().unwrap();
        let grads = &fixture["grads"][step];
        let gw = Tensor::from_slice(&floats(&grads["weight"])).view([3, 4]);
        let gb = Tensor::from_slice(&floats(&grads["bias"]));
        // d/dθ Σ θ·G = G exactly.
        ((&weight * &gw).sum(Kind::Float) + (&bias * &gb).sum(Kind::Float)).backward();
        assert!(opt.step(lr, lr / 1e-2).applied);
        let after = &fixture["after"][step];
        for (ours, theirs) in [(&weight, &after["weight"]), (&bias, &after["bias"])] {
            let theirs = Tensor::from_slice(&floats(theirs)).view(ours.size().as_slice());
            let diff = (ours - &theirs).abs().max().double_value(&[]);
            worst = worst.max(diff);
        }
    }
    worst
}

#[test]
fn matches_torch_adamw_step_by_step() {
    let worst = worst_difference(false);
    assert!(worst <= 1e-6, "largest difference from torch: {worst:e}");
    eprintln!("largest difference from torch.optim.AdamW over 6 steps: {worst:e}");
}

#[test]
fn the_fused_kernel_matches_torch_adamw_too() {
    let worst = worst_difference(true);
    assert!(worst <= 1e-6, "largest difference from torch: {worst:e}");
    eprintln!("fused: largest difference from torch.optim.AdamW over 6 steps: {worst:e}");
}
