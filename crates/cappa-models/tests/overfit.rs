//! Tiny overfit runs: 8 image–caption pairs, at most 300 steps. CLIP reaches in-batch
//! retrieval accuracy 1.0; Cap and CapPa reach teacher-forced token accuracy 1.0 and greedy
//! decoding reproduces every caption.

mod common;

use cappa_models::{shift_right, CapConfig, CapModel, Clip, ClipConfig, Decoding, GenerateConfig};
use common::{caption_loss, clip_loss, images};
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

const PAIRS: i64 = 8;
const EOS: i64 = 2;

/// Eight distinct captions of 3–6 tokens, then EOS, then padding to 10.
fn captions() -> Tensor {
    let mut rows = Vec::new();
    for i in 0..PAIRS {
        let len = 3 + i % 4;
        let mut row: Vec<i64> = (0..len).map(|t| 3 + (i * 7 + t * 13) % 500).collect();
        row.push(EOS);
        row.resize(10, 0);
        rows.extend(row);
    }
    Tensor::from_slice(&rows).view([PAIRS, 10])
}

fn argmax_accuracy(logits: &Tensor, targets: &Tensor) -> f64 {
    let keep = targets.ne(0);
    let hits = logits
        .argmax(-1, false)
        .eq_tensor(targets)
        .logical_and(&keep);
    hits.sum(Kind::Float).double_value(&[]) / keep.sum(Kind::Float).double_value(&[])
}

#[test]
fn clip_overfits_eight_pairs() {
    tch::manual_seed(10);
    let vs = VarStore::new(Device::Cpu);
    let clip = Clip::new(vs.root(), &ClipConfig::tiny());
    let (imgs, text) = (images(PAIRS, 32), captions());
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let mut accuracy = 0.0;
    for _ in 0..300 {
        let (img, txt) = (
            clip.encode_image(&imgs, true),
            clip.encode_text(&text, true),
        );
        opt.backward_step(&clip_loss(&img, &txt, &clip.logit_scale));
        let hits = img
            .matmul(&txt.tr())
            .argmax(1, false)
            .eq_tensor(&Tensor::arange(PAIRS, (Kind::Int64, Device::Cpu)));
        accuracy = hits
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        if accuracy == 1.0 {
            break;
        }
    }
    assert_eq!(accuracy, 1.0);
}

fn overfit_cap(parallel_prob: f64) {
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let cap = CapModel::new(vs.root(), &CapConfig::tiny());
    let (imgs, targets) = (images(PAIRS, 32), captions());
    let causal_inputs = shift_right(&targets, 0);
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let mut accuracy = 0.0;
    for step in 0..300 {
        let parallel = Tensor::rand([PAIRS], (Kind::Float, Device::Cpu)).lt(parallel_prob);
        let inputs = causal_inputs.where_scalarother(&parallel.view([PAIRS, 1]).logical_not(), 512);
        let enc = cap.encode_image(&imgs, true);
        let logits = cap.decode(&enc.tokens, &inputs, Decoding::PerExample(&parallel), true);
        opt.backward_step(&caption_loss(&logits, &targets));
        if step % 10 == 9 {
            let logits = tch::no_grad(|| {
                cap.decode(
                    &cap.encode_image(&imgs, false).tokens,
                    &causal_inputs,
                    Decoding::Causal,
                    false,
                )
            });
            accuracy = argmax_accuracy(&logits, &targets);
            if accuracy == 1.0 {
                break;
            }
        }
    }
    assert_eq!(accuracy, 1.0, "teacher-forced token accuracy");
    let generated = cap.generate(&imgs, &GenerateConfig::greedy(10));
    let expected: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(targets)
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().take_while(|&t| t != EOS).collect())
        .collect();
    assert_eq!(generated, expected);
}

#[test]
fn cap_overfits_eight_pairs() {
    overfit_cap(0.0);
}

#[test]
fn cappa_overfits_eight_pairs() {
    overfit_cap(0.75);
}
