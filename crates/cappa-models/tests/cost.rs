//! Parameter and FLOP counts against hand-computed values and the published figures in
//! REFERENCE.md (within 3 %).

use cappa_models::{num_params, train_flops, CapConfig, SpecialTokens, TextConfig, Vit, VitConfig};
use tch::nn::VarStore;
use tch::Device;

fn assert_within(got: f64, published: f64, tolerance: f64, what: &str) {
    let error = (got - published).abs() / published;
    assert!(
        error <= tolerance,
        "{what}: {got:.4e} vs published {published:.4e} ({:.1} %)",
        error * 100.0
    );
}

#[test]
fn vit_b16_forward_flops_match_the_published_figure() {
    assert_within(
        VitConfig::b16().forward_flops(),
        35.1e9,
        0.03,
        "ViT-B/16 @224",
    );
}

#[test]
fn text_tower_flops_match_the_published_figures() {
    let open_clip = TextConfig::open_clip_b16();
    assert_within(
        open_clip.forward_flops(77),
        6.0e9,
        0.03,
        "text w512 L12 T77",
    );
    assert_within(
        TextConfig::b16().forward_flops(64),
        11.0e9,
        0.03,
        "text w768 L12 T64",
    );
}

#[test]
fn cap_and_clip_star_b16_training_compute_match_the_paper() {
    let cap = CapConfig::new(VitConfig::b16(), SpecialTokens::built_in(32_000), 64);
    assert_eq!(cap.decoder.depth, 6);
    assert_within(train_flops(cap.forward_flops()), 143e9, 0.03, "Cap B/16");
    let clip_star = VitConfig::b16().forward_flops() + TextConfig::b16().forward_flops(64);
    assert_within(train_flops(clip_star), 139e9, 0.03, "CLIP* B/16");
}

#[test]
fn vit_b16_parameter_count_matches_the_hand_count() {
    // conv 768·3·16·16 + positions 196·768 + 12 blocks × (2 LN 4·768 + qkv 3·768² + 3·768
    // + out 768² + 768 + MLP 2·768·3072 + 3072 + 768) + final LN 2·768.
    let block = 4 * 768 + 3 * 768 * 768 + 3 * 768 + 768 * 768 + 768 + 2 * 768 * 3072 + 3072 + 768;
    let expected = 768 * 3 * 16 * 16 + 196 * 768 + 12 * block + 2 * 768;
    assert_eq!(expected, 85_796_352);
    let vs = VarStore::new(Device::Cpu);
    let _vit = Vit::new(vs.root(), &VitConfig::b16());
    assert_eq!(num_params(&vs), expected);
}

#[test]
fn small_flops_follow_the_formula_by_hand() {
    // Tiny ViT: 16 patches of 8·8·3, width 64, 2 blocks with MLP 256.
    let patch = 2.0 * 16.0 * 192.0 * 64.0;
    let block = 2.0 * 16.0 * (4.0 * 64.0 * 64.0 + 2.0 * 64.0 * 256.0) + 4.0 * 16.0 * 16.0 * 64.0;
    assert_eq!(VitConfig::tiny().forward_flops(), patch + 2.0 * block);
}
