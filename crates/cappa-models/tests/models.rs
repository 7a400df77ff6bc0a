//! Shapes, gradients, masks, the KV cache, scoring and checkpoints of the tiny presets.

mod common;

use cappa_models::checkpoint::{self, Model, ModelConfig};
use cappa_models::{
    num_params, shift_right, CapConfig, CapModel, Clip, ClipConfig, ContrastiveLoss, Decoding,
    GenerateConfig, Pooling, PositionEmbedding, Vit, VitConfig,
};
use common::{caption_loss, clip_loss, images, max_abs_diff, tokens};
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

#[test]
fn encoder_shapes_for_every_pooling_and_mode() {
    tch::manual_seed(0);
    let variants = [
        VitConfig::tiny(),
        VitConfig {
            class_token: true,
            ln_pre: true,
            pooling: Pooling::Cls,
            output_dim: Some(48),
            ..VitConfig::tiny()
        },
        VitConfig {
            pooling: Pooling::Map,
            position_embedding: PositionEmbedding::SinCos2d,
            ..VitConfig::tiny()
        },
    ];
    for config in variants {
        let vs = VarStore::new(Device::Cpu);
        let vit = Vit::new(vs.root(), &config);
        for train in [false, true] {
            let out = vit.encode_image(
                &Tensor::zeros([3, 3, 32, 32], (Kind::Float, Device::Cpu)),
                train,
            );
            assert_eq!(out.tokens.size(), [3, 16, 64], "{config:?}");
            assert_eq!(out.pooled.size(), [3, config.pooled_dim()], "{config:?}");
        }
    }
}

#[test]
fn clip_and_cap_task_methods_have_the_documented_shapes() {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let clip = Clip::new(vs.root(), &ClipConfig::tiny());
    for train in [false, true] {
        let img = clip.encode_image(&images(4, 32), train);
        let txt = clip.encode_text(&tokens(4, 16, 512), train);
        assert_eq!((img.size(), txt.size()), (vec![4, 64], vec![4, 64]));
        // L2-normalised rows.
        let norms = img.norm_scalaropt_dim(2, [-1], false);
        assert!(max_abs_diff(&norms, &Tensor::ones([4], (Kind::Float, Device::Cpu))) < 1e-5);
    }
    let vs = VarStore::new(Device::Cpu);
    let cap = CapModel::new(vs.root(), &CapConfig::tiny());
    let parallel = Tensor::from_slice(&[true, false, true, false]);
    for train in [false, true] {
        let enc = cap.encode_image(&images(4, 32), train);
        for decoding in [
            Decoding::Causal,
            Decoding::Parallel,
            Decoding::PerExample(&parallel),
        ] {
            let logits = cap.decode(&enc.tokens, &tokens(4, 10, 512), decoding, train);
            assert_eq!(logits.size(), [4, 10, 512]);
        }
    }
    assert_eq!(cap.score(&images(2, 32), &tokens(5, 7, 512)).size(), [2, 5]);
    assert_eq!(
        cap.score(&images(2, 32), &tokens(6, 7, 512).view([2, 3, 7]))
            .size(),
        [2, 3]
    );
    let captions = cap.generate(&images(3, 32), &GenerateConfig::beam(6, 3, 0.6));
    assert_eq!(captions.len(), 3);
    assert!(captions.iter().all(|c| c.len() <= 6));
}

#[test]
fn variable_names_follow_open_clip_and_the_decoder_has_a_mask_row() {
    let vs = VarStore::new(Device::Cpu);
    let _clip = Clip::new(vs.root(), &ClipConfig::tiny());
    let vars = vs.variables();
    let shape = |name: &str| {
        vars.get(name)
            .unwrap_or_else(|| panic!("no variable {name}"))
            .size()
    };
    assert_eq!(shape("visual.conv1.weight"), [64, 3, 8, 8]);
    assert_eq!(shape("visual.positional_embedding"), [16, 64]);
    assert_eq!(
        shape("visual.transformer.resblocks.1.attn.in_proj_weight"),
        [192, 64]
    );
    assert_eq!(
        shape("visual.transformer.resblocks.1.attn.out_proj.bias"),
        [64]
    );
    assert_eq!(
        shape("visual.transformer.resblocks.0.mlp.c_fc.weight"),
        [256, 64]
    );
    assert_eq!(shape("visual.ln_post.weight"), [64]);
    assert_eq!(shape("visual.proj"), [64, 64]);
    assert_eq!(shape("token_embedding.weight"), [512, 64]);
    assert_eq!(shape("positional_embedding"), [16, 64]);
    assert_eq!(shape("transformer.resblocks.0.ln_1.bias"), [64]);
    assert_eq!(shape("ln_final.weight"), [64]);
    assert_eq!(shape("text_projection"), [64, 64]);
    assert_eq!(shape("logit_scale"), Vec::<i64>::new());
    assert!(!vars.contains_key("logit_bias"));
    assert!(!vars.contains_key("visual.conv1.bias"));
    assert!(!vars.contains_key("visual.class_embedding"));

    let vs = VarStore::new(Device::Cpu);
    let _cap = CapModel::new(vs.root(), &CapConfig::tiny());
    let vars = vs.variables();
    assert_eq!(vars["decoder.token_embedding.weight"].size(), [513, 64]);
    assert_eq!(
        vars["decoder.blocks.0.cross_attn.kv_proj.weight"].size(),
        [128, 64]
    );
    assert_eq!(vars["decoder.head.weight"].size(), [512, 64]);
    // The decoder's LayerNorms and MLP have no bias; its head starts at zero.
    assert!(!vars.contains_key("decoder.blocks.0.ln_1.bias"));
    assert!(!vars.contains_key("decoder.blocks.0.mlp.c_fc.bias"));
    assert_eq!(
        vars["decoder.head.weight"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    // Tiny decoder: half the encoder's depth.
    assert!(vars.contains_key("decoder.blocks.0.ln_3.weight"));
    assert!(!vars.contains_key("decoder.blocks.1.ln_1.weight"));
}

/// Asserts that every trainable variable received a finite, non-zero gradient.
fn assert_gradients_everywhere(vs: &VarStore, what: &str) {
    for (name, var) in vs.variables() {
        if !var.requires_grad() {
            continue;
        }
        let grad = var.grad();
        assert!(grad.defined(), "{what}: {name} has no gradient");
        let finite = bool::try_from(grad.isfinite().all()).unwrap();
        let norm = grad.norm().double_value(&[]);
        assert!(finite && norm > 0.0, "{what}: {name} gradient norm {norm}");
    }
}

#[test]
fn gradients_reach_every_clip_variable() {
    tch::manual_seed(1);
    for loss in [ContrastiveLoss::Softmax, ContrastiveLoss::Sigmoid] {
        let vs = VarStore::new(Device::Cpu);
        let config = ClipConfig {
            loss,
            ..ClipConfig::tiny()
        };
        let clip = Clip::new(vs.root(), &config);
        let img = clip.encode_image(&images(4, 32), true);
        let txt = clip.encode_text(&tokens(4, 16, 512), true);
        let loss_value = match &clip.logit_bias {
            None => clip_loss(&img, &txt, &clip.logit_scale),
            Some(bias) => {
                let logits = img.matmul(&txt.tr()) * clip.logit_scale.exp() + bias;
                let labels = Tensor::eye(4, (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
                -(logits * labels).log_sigmoid().sum(Kind::Float) / 4.0
            }
        };
        loss_value.backward();
        assert_gradients_everywhere(&vs, &format!("{loss:?}"));
    }
}

#[test]
fn gradients_reach_every_cap_and_cappa_variable() {
    tch::manual_seed(2);
    let parallel = Tensor::from_slice(&[true, false, true, false]);
    for decoding in [Decoding::Causal, Decoding::PerExample(&parallel)] {
        let vs = VarStore::new(Device::Cpu);
        let cap = CapModel::new(vs.root(), &CapConfig::tiny());
        let targets = tokens(4, 10, 512);
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        // The head starts at zero, so gradients reach the rest only after one step.
        for _ in 0..2 {
            opt.zero_grad();
            let inputs = match decoding {
                Decoding::Causal => shift_right(&targets, 0),
                _ => targets.where_scalarother(&parallel.view([4, 1]).logical_not(), 512),
            };
            let enc = cap.encode_image(&images(4, 32), true);
            caption_loss(&cap.decode(&enc.tokens, &inputs, decoding, true), &targets).backward();
            assert!(
                vs.variables()["decoder.head.weight"]
                    .grad()
                    .norm()
                    .double_value(&[])
                    > 0.0
            );
            opt.step();
        }
        opt.zero_grad();
        let enc = cap.encode_image(&images(4, 32), true);
        let inputs = shift_right(&targets, 0);
        caption_loss(&cap.decode(&enc.tokens, &inputs, decoding, true), &targets).backward();
        assert_gradients_everywhere(&vs, &format!("{decoding:?}"));
    }
}

fn trained_cap() -> (VarStore, CapModel) {
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let cap = CapModel::new(vs.root(), &CapConfig::tiny());
    // Give the zero-initialised head weights so the logits depend on the inputs.
    tch::no_grad(|| {
        let mut head = vs.variables()["decoder.head.weight"].shallow_clone();
        head.copy_(&(Tensor::randn([512, 64], (Kind::Float, Device::Cpu)) * 0.5));
    });
    (vs, cap)
}

#[test]
fn causal_decoding_ignores_later_tokens_and_parallel_decoding_does_not() {
    let (_vs, cap) = trained_cap();
    tch::no_grad(|| {
        let enc = cap.encode_image(&images(2, 32), false);
        let inputs = tokens(2, 8, 512);
        let changed = inputs.copy();
        let _ = changed.narrow(1, 5, 1).fill_(7);
        for (decoding, parallel) in [(Decoding::Causal, false), (Decoding::Parallel, true)] {
            let a = cap.decode(&enc.tokens, &inputs, decoding, false);
            let b = cap.decode(&enc.tokens, &changed, decoding, false);
            let before = max_abs_diff(&a.narrow(1, 0, 5), &b.narrow(1, 0, 5));
            assert_eq!(
                before > 1e-4,
                parallel,
                "{decoding:?}: positions < 5 changed by {before}"
            );
            assert!(max_abs_diff(&a.narrow(1, 5, 3), &b.narrow(1, 5, 3)) > 1e-4);
        }
        // Per-example flags: row 0 causal, row 1 parallel.
        let flags = Tensor::from_slice(&[false, true]);
        let mixed_a = cap.decode(&enc.tokens, &inputs, Decoding::PerExample(&flags), false);
        let causal = cap.decode(&enc.tokens, &inputs, Decoding::Causal, false);
        let full = cap.decode(&enc.tokens, &inputs, Decoding::Parallel, false);
        assert!(max_abs_diff(&mixed_a.get(0), &causal.get(0)) < 1e-5);
        assert!(max_abs_diff(&mixed_a.get(1), &full.get(1)) < 1e-5);
    });
}

#[test]
fn cached_decoding_matches_full_recomputation() {
    let (_vs, cap) = trained_cap();
    tch::no_grad(|| {
        let enc = cap.encode_image(&images(3, 32), false);
        let inputs = tokens(3, 12, 512);
        let full = cap.decode(&enc.tokens, &inputs, Decoding::Causal, false);
        // One token at a time, then a chunk of several after a cached prefix.
        let mut cache = cap.decoder.start(&enc.tokens);
        let mut pieces: Vec<Tensor> = (0..5)
            .map(|t| cap.decoder.step(&mut cache, &inputs.narrow(1, t, 1)))
            .collect();
        pieces.push(cap.decoder.step(&mut cache, &inputs.narrow(1, 5, 7)));
        assert_eq!(cache.len(), 12);
        let stepped = Tensor::cat(&pieces, 1);
        let diff = max_abs_diff(&full, &stepped);
        assert!(diff <= 1e-5, "cached logits differ by {diff}");

        let greedy = GenerateConfig {
            stop_at_eos: false,
            ..GenerateConfig::greedy(20)
        };
        let cached = cap.decoder.generate(&enc.tokens, &greedy);
        let uncached = cap.decoder.greedy_uncached(&enc.tokens, &greedy);
        assert_eq!(cached, uncached);
        assert!(cached.iter().all(|c| c.len() == 20));
        let beam1 = cap.decoder.beam_search(
            &enc.tokens,
            &GenerateConfig {
                beam_size: 1,
                ..greedy
            },
        );
        assert_eq!(beam1, cached);
    });
}

#[test]
fn beam_search_finds_at_least_the_greedy_likelihood() {
    let (_vs, cap) = trained_cap();
    tch::no_grad(|| {
        let enc = cap.encode_image(&images(4, 32), false);
        let config = GenerateConfig {
            stop_at_eos: false,
            ..GenerateConfig::greedy(6)
        };
        let greedy = cap.decoder.generate(&enc.tokens, &config);
        let beam = cap.decoder.generate(
            &enc.tokens,
            &GenerateConfig {
                beam_size: 4,
                ..config
            },
        );
        let as_tensor = |seqs: &Vec<Vec<i64>>| Tensor::from_slice(&seqs.concat()).view([4, 1, 6]);
        let greedy_ll = cap.decoder.score(&enc.tokens, &as_tensor(&greedy));
        let beam_ll = cap.decoder.score(&enc.tokens, &as_tensor(&beam));
        let worse = (greedy_ll - beam_ll).max().double_value(&[]);
        assert!(
            worse <= 1e-4,
            "beam search lost {worse} nats against greedy"
        );
    });
}

#[test]
fn score_equals_summed_teacher_forced_log_probabilities() {
    let (_vs, cap) = trained_cap();
    tch::no_grad(|| {
        let imgs = images(2, 32);
        let candidates = tokens(3, 6, 512);
        let _ = candidates.get(1).narrow(0, 4, 2).fill_(0); // a padded candidate
        let scores = cap.score(&imgs, &candidates);
        let enc = cap.encode_image(&imgs, false);
        for i in 0..2 {
            for c in 0..3 {
                let target = candidates.get(c).unsqueeze(0);
                let logp = cap
                    .decode(
                        &enc.tokens.narrow(0, i, 1),
                        &shift_right(&target, 0),
                        Decoding::Causal,
                        false,
                    )
                    .log_softmax(-1, Kind::Float)
                    .get(0);
                let mut expected = 0.0;
                for t in 0..6 {
                    let id = target.int64_value(&[0, t]);
                    if id != 0 {
                        expected += logp.double_value(&[t, id]);
                    }
                }
                let got = scores.double_value(&[i, c]);
                assert!(
                    (got - expected).abs() < 1e-4,
                    "image {i} candidate {c}: {got} vs {expected}"
                );
            }
        }
    });
}

#[test]
fn save_and_load_round_trip_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        ModelConfig::Clip(ClipConfig::tiny()),
        ModelConfig::Cap(CapConfig::tiny()),
    ] {
        tch::manual_seed(4);
        let vs = VarStore::new(Device::Cpu);
        let model = config.build(&vs);
        let path = dir.path().join(format!("{}", num_params(&vs)));
        checkpoint::save(&vs, &config, &path).unwrap();
        tch::manual_seed(5); // the reloaded model starts from other random weights
        let (_vs2, reloaded, config2) = checkpoint::load(&path, Device::Cpu).unwrap();
        assert_eq!(config2, config);
        let imgs = images(2, 32);
        let txt = tokens(2, 8, 512);
        let (a, b) = match (&model, &reloaded) {
            (Model::Clip(a), Model::Clip(b)) => (
                Tensor::cat(
                    &[a.encode_image(&imgs, false), a.encode_text(&txt, false)],
                    1,
                ),
                Tensor::cat(
                    &[b.encode_image(&imgs, false), b.encode_text(&txt, false)],
                    1,
                ),
            ),
            (Model::Cap(a), Model::Cap(b)) => (
                a.decode(
                    &a.encode_image(&imgs, false).tokens,
                    &txt,
                    Decoding::Causal,
                    false,
                ),
                b.decode(
                    &b.encode_image(&imgs, false).tokens,
                    &txt,
                    Decoding::Causal,
                    false,
                ),
            ),
            _ => panic!("the reloaded model is of another kind"),
        };
        assert_eq!(max_abs_diff(&a, &b), 0.0);
        // No temporary files are left behind: the weights, the config and their manifest.
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = checkpoint::MODEL_FILES.to_vec();
        expected.push(checkpoint::MANIFEST_FILE);
        expected.sort();
        assert_eq!(names, expected);
    }
}

#[test]
fn a_checkpoint_with_a_bad_config_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"kind": "cap", "vision": {}, "decoder": {}}"#,
    )
    .unwrap();
    let message = checkpoint::load_config(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("config.json") && message.contains("missing field"),
        "{message}"
    );

    let mut config = CapConfig::tiny();
    config.vision.num_heads = 5;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&ModelConfig::Cap(config)).unwrap(),
    )
    .unwrap();
    let message = checkpoint::load_config(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("vision.width 64 is not divisible by vision.num_heads 5"),
        "{message}"
    );
}
