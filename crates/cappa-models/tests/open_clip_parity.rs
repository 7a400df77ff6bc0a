//! Parity with open_clip: tiny open_clip CLIP models with fixed weights, their inputs and their
//! outputs were saved by `scripts/make_open_clip_fixture.py` (open_clip 3.3.0, torch 2.11.0);
//! the same weights loaded here by name must give the same embeddings (≤ 1e-5).

use std::path::Path;

use cappa_models::{
    Clip, ClipConfig, ContrastiveLoss, Pooling, PositionEmbedding, SpecialTokens, TextConfig,
    VitConfig,
};
use tch::nn::VarStore;
use tch::{Device, Tensor};

fn tiny_open_clip(pooling: Pooling) -> ClipConfig {
    let vision = VitConfig {
        image_size: 32,
        patch_size: 8,
        width: 32,
        depth: 2,
        num_heads: 4,
        mlp_dim: 128,
        class_token: true,
        ln_pre: true,
        position_embedding: PositionEmbedding::Learned,
        pooling,
        output_dim: None,
        dropout: 0.0,
    };
    // open_clip pools at the largest id, the EOT token.
    let tokens = SpecialTokens {
        vocab_size: 64,
        pad_id: 0,
        eos_id: 63,
    };
    let text = TextConfig {
        mlp_dim: 128,
        ..TextConfig::new(tokens, 8, 32, 2, 4, 16)
    };
    ClipConfig::new(vision, text, ContrastiveLoss::Softmax)
}

fn check(variant: &str, pooling: Pooling) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("open_clip_tiny_{variant}.safetensors"));
    let mut vs = VarStore::new(Device::Cpu);
    let clip = Clip::new(vs.root(), &tiny_open_clip(pooling));
    vs.load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    tch::no_grad(|| {
        let image = clip
            .visual
            .encode_image(&tensors["input.images"], false)
            .pooled;
        let text = clip.text.encode_text(&tensors["input.text"], false);
        for (name, ours, theirs) in [
            ("image", image, &tensors["output.image_features"]),
            ("text", text, &tensors["output.text_features"]),
        ] {
            assert_eq!(ours.size(), theirs.size());
            let diff = (&ours - theirs).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5,
                "{variant} {name} features differ from open_clip by {diff}"
            );
        }
    });
}

#[test]
fn class_token_pooling_matches_open_clip() {
    check("tok", Pooling::Cls);
}

#[test]
fn average_pooling_matches_open_clip() {
    check("avg", Pooling::Gap);
}
