//! The tokenizer's special ids, not the built-in tokenizer's 0 / 2, decide where the text tower
//! pools, which targets scoring ignores, where the decoder starts and where generation stops.
//! The ids here (pad 5, EOS 7) are where the built-in tokenizer has ordinary tokens.

mod common;

use cappa_models::{
    CapDecoder, ClipConfig, ContrastiveLoss, DecoderConfig, Decoding, GenerateConfig,
    SpecialTokens, TextConfig, TextEncoder, VitConfig,
};
use common::max_abs_diff;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CUSTOM: SpecialTokens = SpecialTokens {
    vocab_size: 64,
    pad_id: 5,
    eos_id: 7,
};

fn ids(rows: &[&[i64]]) -> Tensor {
    let len = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, len])
}

/// libtorch's generator is one per process and the tests run in parallel: each test that
/// draws random numbers seeds and draws under this lock, so its weights are the same on
/// every run.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// A text tower for `tokens`.
fn text_tower(tokens: SpecialTokens) -> (VarStore, TextEncoder) {
    seeded(0, || {
        let vs = VarStore::new(Device::Cpu);
        let text = TextEncoder::new(vs.root(), &TextConfig::new(tokens, 8, 32, 2, 4, 16));
        (vs, text)
    })
}

/// Two towers with the same weights (copied: libtorch's generator is shared by the tests
/// running in parallel, so seeding it would not make two initialisations equal), one with
/// the custom ids and one with the built-in ones.
fn twin_towers() -> ((VarStore, TextEncoder), (VarStore, TextEncoder)) {
    let custom = text_tower(CUSTOM);
    let mut built_in = text_tower(SpecialTokens::built_in(64));
    built_in
        .0
        .copy(&custom.0)
        .expect("the towers have the same variables");
    (custom, built_in)
}

#[test]
fn the_text_tower_pools_at_the_custom_eos_and_before_the_custom_pad() {
    let ((_vs, text), (_vs_default, default_ids)) = twin_towers();
    tch::no_grad(|| {
        let encode = |tower: &TextEncoder, rows: &[&[i64]]| tower.encode_text(&ids(rows), false);
        // Attention is causal, so pooling at position p equals encoding the first p + 1
        // tokens: the tokens after the EOS, and the padding, are ignored.
        let with_eos = encode(&text, &[&[11, 12, 7, 13, 14, 15]]);
        let up_to_eos = encode(&text, &[&[11, 12, 7]]);
        assert!(max_abs_diff(&with_eos, &up_to_eos) < 1e-6);
        let padded = encode(&text, &[&[11, 12, 13, 5, 5, 5]]);
        let unpadded = encode(&text, &[&[11, 12, 13]]);
        assert!(max_abs_diff(&padded, &unpadded) < 1e-6);
        // The same weights with the built-in ids pool at the last token in both rows.
        let last = encode(&default_ids, &[&[11, 12, 7, 13, 14, 15]]);
        assert!(max_abs_diff(&last, &encode(&default_ids, &[&[11, 12, 7]])) > 1e-4);
        let last = encode(&default_ids, &[&[11, 12, 13, 5, 5, 5]]);
        assert!(max_abs_diff(&last, &encode(&default_ids, &[&[11, 12, 13]])) > 1e-4);
        assert!(max_abs_diff(&with_eos, &encode(&default_ids, &[&[11, 12, 7]])) < 1e-6);
    });
}

#[test]
fn the_configs_carry_the_custom_ids() {
    let text = TextConfig::new(CUSTOM, 8, 32, 2, 4, 16);
    assert_eq!((text.pad_id, text.eos_id, text.vocab_size), (5, 7, 64));
    assert_eq!(text.special_tokens(), CUSTOM);
    assert_eq!(
        TextConfig::tiny()
            .with_special_tokens(CUSTOM)
            .special_tokens(),
        CUSTOM
    );
    let clip = ClipConfig::new(VitConfig::tiny(), text, ContrastiveLoss::Softmax);
    clip.validate().unwrap();
    let decoder = DecoderConfig::new(CUSTOM, 8, 32, 2, 4, 64);
    assert_eq!(decoder.special_tokens(), CUSTOM);
    assert_eq!(decoder.bos_id, 5, "the decoder starts from the pad id");
    assert_eq!(decoder.mask_id(), 64);
    decoder.validate().unwrap();
    // The names in config.json stay those of existing checkpoints.
    let json = serde_json::to_value(&decoder).unwrap();
    assert_eq!(
        (json["pad_id"].clone(), json["eos_id"].clone()),
        (5.into(), 7.into())
    );
    assert_eq!(json["bos_id"], 5);
}

#[test]
fn a_decoder_whose_eos_is_its_pad_is_refused() {
    let tokens = SpecialTokens {
        eos_id: 5,
        ..CUSTOM
    };
    let error = DecoderConfig::new(tokens, 8, 32, 2, 4, 64)
        .validate()
        .unwrap_err();
    assert_eq!(error.path(), "decoder.eos_id");
    assert!(
        error.to_string().contains("equals decoder.pad_id"),
        "{error}"
    );
}

/// A decoder for `tokens` over 16 image tokens of width 32, with random (non-zero) head
/// weights so that its logits depend on its inputs.
fn decoder(tokens: SpecialTokens) -> (VarStore, CapDecoder, Tensor) {
    seeded(3, || {
        let vs = VarStore::new(Device::Cpu);
        let decoder = CapDecoder::new(vs.root(), &DecoderConfig::new(tokens, 12, 32, 2, 4, 64));
        tch::no_grad(|| {
            let mut head = vs.variables()["head.weight"].shallow_clone();
            head.copy_(&(Tensor::randn([64, 32], (Kind::Float, Device::Cpu)) * 0.5));
        });
        let image_tokens = Tensor::randn([2, 16, 32], (Kind::Float, Device::Cpu));
        (vs, decoder, image_tokens)
    })
}

#[test]
fn scores_ignore_the_custom_pad() {
    let (_vs, decoder, image_tokens) = decoder(CUSTOM);
    tch::no_grad(|| {
        // Causal decoding: a caption's score is its tokens' log-probabilities, whatever
        // padding follows. Token 0 (the built-in pad) is an ordinary token here.
        let padded = decoder.score(&image_tokens, &ids(&[&[11, 0, 7, 5, 5, 5]]));
        let unpadded = decoder.score(&image_tokens, &ids(&[&[11, 0, 7]]));
        assert!(max_abs_diff(&padded, &unpadded) < 1e-5);
        let with_zeros = decoder.score(&image_tokens, &ids(&[&[11, 0, 7, 0, 0, 0]]));
        assert!(max_abs_diff(&with_zeros, &unpadded) > 1e-3);
    });
}

#[test]
fn the_decoder_starts_from_the_custom_pad() {
    let (vs, decoder, image_tokens) = decoder(CUSTOM);
    tch::no_grad(|| {
        // A large embedding for the pad id, so that the first input steers what follows.
        let table = vs.variables()["token_embedding.weight"].shallow_clone();
        let large = seeded(4, || {
            Tensor::randn([1, 32], (Kind::Float, Device::Cpu)) * 5.0
        });
        table.narrow(0, 5, 1).copy_(&large);
        // Greedy decoding by hand, from a given first input.
        let greedy_from = |start: i64| {
            let mut inputs = Tensor::full([2, 1], start, (Kind::Int64, Device::Cpu));
            for _ in 0..12 {
                let logits = decoder.decode(&image_tokens, &inputs, Decoding::Causal, false);
                let next = logits.select(1, -1).argmax(-1, true); // (B, 1)
                inputs = Tensor::cat(&[&inputs, &next], 1);
            }
            Vec::<Vec<i64>>::try_from(inputs.narrow(1, 1, 12)).unwrap()
        };
        let free = GenerateConfig {
            stop_at_eos: false,
            ..GenerateConfig::greedy(12)
        };
        assert_eq!(decoder.generate(&image_tokens, &free), greedy_from(5));
        assert_ne!(
            greedy_from(5),
            greedy_from(0),
            "the first input must matter here"
        );
        // Scoring shifts the candidates right with the pad id too.
        let candidate = ids(&[&[11, 12, 7]]);
        let expected = |start: i64| {
            let inputs = cappa_models::shift_right(&candidate, start);
            let logp = decoder
                .decode(
                    &image_tokens.narrow(0, 0, 1),
                    &inputs,
                    Decoding::Causal,
                    false,
                )
                .log_softmax(-1, Kind::Float);
            logp.gather(2, &candidate.unsqueeze(2), false)
                .sum(Kind::Float)
        };
        let score = decoder
            .score(&image_tokens.narrow(0, 0, 1), &candidate)
            .view([]);
        assert!(max_abs_diff(&score, &expected(5)) < 1e-5);
        assert!(max_abs_diff(&score, &expected(0)) > 1e-4);
    });
}

#[test]
fn greedy_generation_stops_at_the_custom_eos() {
    let (vs, decoder_without_stop, image_tokens) = decoder(CUSTOM);
    let free = GenerateConfig {
        stop_at_eos: false,
        ..GenerateConfig::greedy(12)
    };
    let sequences = decoder_without_stop.generate(&image_tokens, &free);
    // Make a token the first row generates after its first the EOS of a decoder with the same
    // weights and the same pad id (hence the same first input).
    let eos_id = *sequences[0][1..]
        .iter()
        .find(|&&id| id != CUSTOM.pad_id)
        .expect("the row is not all padding");
    let tokens = SpecialTokens { eos_id, ..CUSTOM };
    let (mut stopping_vs, stopping, _) = decoder(tokens);
    stopping_vs.copy(&vs).unwrap();
    let stopped = stopping.generate(&image_tokens, &GenerateConfig::greedy(12));
    let cut: Vec<Vec<i64>> = sequences
        .iter()
        .map(|row| row.iter().copied().take_while(|&id| id != eos_id).collect())
        .collect();
    assert_eq!(stopped, cut);
    assert!(stopped[0].len() < 12, "the first row stops early");
}

#[test]
fn greedy_and_beam_generation_end_at_a_certain_custom_eos() {
    let (vs, decoder, image_tokens) = decoder(CUSTOM);
    // A head bias that makes the EOS (7) the likeliest next token everywhere.
    tch::no_grad(|| {
        let bias = vs.variables()["head.bias"].shallow_clone();
        let _ = bias.narrow(0, 7, 1).fill_(1e4);
    });
    for beam_size in [1, 3] {
        let config = GenerateConfig::beam(6, beam_size, 0.6);
        assert_eq!(
            decoder.generate(&image_tokens, &config),
            vec![Vec::<i64>::new(); 2],
            "beam {beam_size}"
        );
        let free = GenerateConfig {
            stop_at_eos: false,
            ..config
        };
        assert_eq!(
            decoder.generate(&image_tokens, &free),
            vec![vec![7; 6]; 2],
            "beam {beam_size}"
        );
    }
}
