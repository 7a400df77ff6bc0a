//! The caption decoder's two initialisations: the reference's (big_vision CapPa, the default)
//! and the legacy one, by their parameters' presence, shapes and spread, and the legacy one for
//! stored configurations that do not record an initialisation.

use std::collections::HashMap;

use cappa_models::{CapDecoder, DecoderConfig, DecoderInit, SpecialTokens};
use tch::nn::VarStore;
use tch::{Device, Tensor};

const WIDTH: i64 = 64;
const MLP: i64 = 256;
const VOCAB: i64 = 512;

fn decoder(init: DecoderInit) -> HashMap<String, Tensor> {
    let config = DecoderConfig {
        init,
        ..DecoderConfig::new(SpecialTokens::built_in(VOCAB), 24, WIDTH, 4, 4, MLP)
    };
    let vs = VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let _decoder = CapDecoder::new(vs.root(), &config);
    vs.variables()
}

fn std(t: &Tensor) -> f64 {
    t.std(true).double_value(&[])
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn reference_init_is_big_vision_s() {
    let vars = decoder(DecoderInit::Reference);
    assert!(
        DecoderConfig::new(SpecialTokens::built_in(VOCAB), 24, WIDTH, 4, 4, MLP).init
            == DecoderInit::Reference
    );
    // No attention biases; the final LayerNorm has one.
    assert!(
        !vars
            .keys()
            .any(|k| k.contains("attn") && k.ends_with("bias")),
        "{:?}",
        {
            let mut keys: Vec<_> = vars.keys().collect();
            keys.sort();
            keys
        }
    );
    assert!(vars.contains_key("ln_final.bias"));
    // Token embedding N(0, 1): 513 × 64 draws.
    let emb = std(&vars["token_embedding.weight"]);
    assert!((emb - 1.0).abs() < 0.03, "token embedding std {emb}");
    // Attention: lecun normal, std 1/√64 = 0.125, for every projection (fan-in 64).
    for name in [
        "blocks.0.self_attn.in_proj_weight",
        "blocks.0.self_attn.out_proj.weight",
        "blocks.1.cross_attn.q_proj.weight",
        "blocks.1.cross_attn.kv_proj.weight",
    ] {
        let s = std(&vars[name]);
        assert!((s - 0.125).abs() < 0.01, "{name}: std {s}");
    }
    // MLP: xavier uniform on ±√(6 / (64 + 256)) = ±0.1369, std a/√3 = 0.0791.
    let bound = (6.0f64 / (WIDTH + MLP) as f64).sqrt();
    for name in ["blocks.0.mlp.c_fc.weight", "blocks.1.mlp.c_proj.weight"] {
        let w = &vars[name];
        assert!(max_abs(w) <= bound + 1e-6, "{name} leaves ±{bound}");
        let s = std(w);
        assert!((s - bound / 3f64.sqrt()).abs() < 0.004, "{name}: std {s}");
    }
    // Zero logits layer: every caption starts uniform over the vocabulary.
    assert_eq!(max_abs(&vars["head.weight"]), 0.0);
}

#[test]
fn legacy_init_keeps_the_first_decoder_s_parameters() {
    let legacy = decoder(DecoderInit::Legacy);
    let reference = decoder(DecoderInit::Reference);
    let count = |vars: &HashMap<String, Tensor>| -> i64 {
        vars.values().map(Tensor::numel).map(|n| n as i64).sum()
    };
    // Per layer, biases of self-attention (3·64 + 64) and cross-attention (64 + 2·64 + 64);
    // the reference's final LayerNorm bias (64) is the only parameter the legacy one lacks.
    let per_layer = (3 * WIDTH + WIDTH) + (WIDTH + 2 * WIDTH + WIDTH);
    assert_eq!(count(&legacy) - count(&reference), 2 * per_layer - WIDTH);
    assert!(legacy.contains_key("blocks.0.self_attn.in_proj_bias"));
    assert!(!legacy.contains_key("ln_final.bias"));
    for name in [
        "token_embedding.weight",
        "blocks.0.mlp.c_fc.weight",
        "blocks.1.cross_attn.q_proj.weight",
    ] {
        let s = std(&legacy[name]);
        assert!((s - 0.02).abs() < 0.002, "{name}: std {s}");
    }
}

#[test]
fn a_stored_config_without_init_is_legacy() {
    let config = DecoderConfig::new(SpecialTokens::built_in(VOCAB), 24, WIDTH, 4, 4, MLP);
    let mut json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["init"], "reference");
    json.as_object_mut().unwrap().remove("init");
    let old: DecoderConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.init, DecoderInit::Legacy);
    assert_eq!(
        DecoderConfig {
            init: DecoderInit::Reference,
            ..old
        },
        config
    );
}
