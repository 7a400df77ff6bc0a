//! `CapDecoder::score` (decodes only up to the longest candidate, and the prefix shared by all
//! candidates once per image) against `score_uncached` (every candidate over every position).

use cappa_models::{CapDecoder, DecoderConfig, SpecialTokens};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Pad id of the built-in tokenizer (also the decoder's first input).
const PAD: i64 = 0;
/// EOS id of the built-in tokenizer.
const EOS: i64 = 2;
const VOCAB: i64 = 64;
const MAX_LEN: i64 = 16;
const MEMORY_WIDTH: i64 = 24;

/// libtorch's generator is one per process and the tests run in parallel: each test seeds and
/// draws under this lock, so its weights and inputs are the same on every run.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// A tiny decoder (width 32, 2 layers, 4 heads, memory width 24) whose every variable is
/// perturbed, the zero-initialised head included, so that logits depend on every input.
fn decoder(seed: i64) -> (VarStore, CapDecoder) {
    seeded(seed, || {
        let vs = VarStore::new(Device::Cpu);
        let config = DecoderConfig {
            memory_width: MEMORY_WIDTH,
            ..DecoderConfig::new(SpecialTokens::built_in(VOCAB), MAX_LEN, 32, 4, 4, 64)
        };
        let decoder = CapDecoder::new(vs.root(), &config);
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                let scale = if name.starts_with("head") { 0.5 } else { 0.1 };
                let noise = var.randn_like() * scale;
                let _ = var.g_add_(&noise);
            }
        });
        (vs, decoder)
    })
}

fn image_tokens(seed: i64, batch: i64) -> Tensor {
    seeded(seed, || {
        Tensor::randn([batch, 9, MEMORY_WIDTH], (Kind::Float, Device::Cpu))
    })
}

/// Rows of ids, each padded with `PAD` to `len`: (rows, len).
fn padded(rows: &[&[i64]], len: usize) -> Tensor {
    let mut ids = Vec::with_capacity(rows.len() * len);
    for row in rows {
        assert!(row.len() <= len, "{row:?} is longer than {len}");
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(PAD, len - row.len()));
    }
    Tensor::from_slice(&ids).view([rows.len() as i64, len as i64])
}

/// The fast and the direct scores of `candidates` for `images`: same shape, within 1e-4.
fn check(decoder: &CapDecoder, images: &Tensor, candidates: &Tensor) -> Tensor {
    let (fast, direct) = tch::no_grad(|| {
        (
            decoder.score(images, candidates),
            decoder.score_uncached(images, candidates),
        )
    });
    assert_eq!(fast.size(), direct.size(), "score shapes");
    assert_eq!(fast.kind(), Kind::Float);
    let diff = (&fast - &direct).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4,
        "score and score_uncached differ by {diff} for candidates {candidates:?}:\n{fast}\n{direct}"
    );
    fast
}

/// "a photo of a {c}."-like candidates: a 3-token prefix, suffixes of different lengths,
/// one candidate that is the prefix alone, one with only EOS after the prefix, one with a pad
/// inside, all ending well before L = 12.
fn prompted() -> Tensor {
    padded(
        &[
            &[5, 6, 7, 9, EOS],
            &[5, 6, 7, 10, 11, 12, EOS],
            &[5, 6, 7],
            &[5, 6, 7, EOS],
            &[5, 6, 7, 13, PAD, 14, EOS],
            &[5, 6, 7, 9, 9, 9, 9, 20],
        ],
        12,
    )
}

#[test]
fn shared_candidates_with_a_common_prefix_score_as_without_the_cache() {
    let (_vs, decoder) = decoder(0);
    let candidates = prompted();
    assert_eq!(decoder.shared_prefix_len(&candidates), 3);
    assert_eq!(decoder.scored_len(&candidates), 8);
    let scores = check(&decoder, &image_tokens(1, 3), &candidates);
    assert_eq!(scores.size(), [3, 6]);
    // The scores depend on the image and on the candidate.
    assert!(
        (scores.get(0) - scores.get(1))
            .abs()
            .max()
            .double_value(&[])
            > 1e-3
    );
    assert!(
        (scores.get(0).get(0) - scores.get(0).get(1))
            .abs()
            .double_value(&[])
            > 1e-3
    );
}

#[test]
fn candidates_per_image_score_as_without_the_cache() {
    let (_vs, decoder) = decoder(2);
    // (2, 6, 12): image 0 gets the prompted candidates, image 1 the same prefix with other
    // suffixes, so the prefix is shared across images too.
    let other = padded(
        &[
            &[5, 6, 7, 30, 31, EOS],
            &[5, 6, 7],
            &[5, 6, 7, 40, EOS],
            &[5, 6, 7, 41, 42, 43, 44, 45, 46, 47, 48, EOS],
            &[5, 6, 7, 9, EOS],
            &[5, 6, 7, 50, EOS],
        ],
        12,
    );
    let candidates = Tensor::stack(&[prompted(), other], 0);
    assert_eq!(decoder.shared_prefix_len(&candidates), 3);
    assert_eq!(decoder.scored_len(&candidates), 12);
    let images = image_tokens(3, 2);
    let scores = check(&decoder, &images, &candidates);
    assert_eq!(scores.size(), [2, 6]);
    // The same candidate under image 0 (2-D call) and in image 0's row of a 3-D call.
    let alone = check(&decoder, &images.narrow(0, 0, 1), &prompted());
    assert!((scores.get(0) - alone.get(0)).abs().max().double_value(&[]) <= 1e-4);

    // Per image candidates without a common prefix.
    let unrelated = Tensor::stack(
        &[
            prompted(),
            padded(
                &[&[8, EOS], &[9], &[5, 6], &[], &[5], &[5, 6, 7, 8, EOS]],
                12,
            ),
        ],
        0,
    );
    assert_eq!(decoder.shared_prefix_len(&unrelated), 0);
    let _ = check(&decoder, &images, &unrelated);
}

#[test]
fn candidates_without_a_common_prefix_score_as_without_the_cache() {
    let (_vs, decoder) = decoder(4);
    let images = image_tokens(5, 4);
    let random = seeded(6, || {
        Tensor::randint_low(3, VOCAB, [7, MAX_LEN], (Kind::Int64, Device::Cpu))
    });
    // Different first tokens, then padding after different lengths.
    random
        .narrow(1, 0, 1)
        .copy_(&Tensor::arange_start(3, 10, (Kind::Int64, Device::Cpu)).view([7, 1]));
    for (row, len) in [3, 9, 1, 16, 5, 2, 7].into_iter().enumerate() {
        let _ = random
            .get(row as i64)
            .narrow(0, len, MAX_LEN - len)
            .fill_(PAD);
    }
    assert_eq!(decoder.shared_prefix_len(&random), 0);
    assert_eq!(decoder.scored_len(&random), MAX_LEN);
    let _ = check(&decoder, &images, &random);
    let _ = check(&decoder, &images, &random.narrow(1, 0, 9));
}

#[test]
fn identical_single_and_empty_candidates_score_as_without_the_cache() {
    let (_vs, decoder) = decoder(7);
    let images = image_tokens(8, 2);
    let cases = [
        // All identical: everything is shared, nothing is left for the candidates' own pass.
        padded(&[&[5, 6, 7, EOS], &[5, 6, 7, EOS], &[5, 6, 7, EOS]], 6),
        // Identical and filling L: the prefix is L' itself.
        padded(&[&[5, 6, 7, 8], &[5, 6, 7, 8]], 4),
        // One candidate.
        padded(&[&[5, 6, 7, 8, EOS]], 9),
        // The candidates differ only in their last scored token.
        padded(&[&[5, 6, 7, 8], &[5, 6, 7, 9]], 4),
        // The full max_len.
        padded(&[&[5; 16], &[5, 6]], 16),
        // Only padding: nothing is scored.
        padded(&[&[], &[]], 5),
    ];
    for candidates in &cases {
        let _ = check(&decoder, &images, candidates);
    }
    let empty = check(&decoder, &images, &cases[5]);
    assert_eq!(empty.size(), [2, 2]);
    assert_eq!(empty.abs().max().double_value(&[]), 0.0);
}

#[test]
fn the_shared_prefix_and_scored_length_are_found() {
    let (_vs, decoder) = decoder(9);
    // (rows, L, P, L')
    let cases: [(&[&[i64]], usize, i64, i64); 9] = [
        (&[&[5, 6, 7, 9, EOS], &[5, 6, 7, 10, EOS]], 8, 3, 5),
        (&[&[5, 6, 7], &[5, 6, 7, 10, EOS]], 8, 3, 5),
        (&[&[5, 6, 7, 9, EOS]], 8, 5, 5),
        (&[&[5, 6, EOS], &[5, 6, EOS]], 3, 3, 3),
        (&[&[8, 6, 7], &[5, 6, 7]], 4, 0, 3),
        // The common run stops at padding even when the rows agree after it.
        (&[&[5, 6, PAD, 9], &[5, 6, PAD, 9]], 4, 2, 4),
        // A difference in any row, not only the first two.
        (&[&[5, 6, 7, 8], &[5, 6, 7, 8], &[5, 4, 7, 8]], 4, 1, 4),
        (&[&[], &[5, 6]], 4, 0, 2),
        (&[&[], &[]], 4, 0, 0),
    ];
    for (rows, len, prefix, scored) in cases {
        let candidates = padded(rows, len);
        assert_eq!(decoder.shared_prefix_len(&candidates), prefix, "{rows:?}");
        assert_eq!(decoder.scored_len(&candidates), scored, "{rows:?}");
    }
    // (B, C, L): the prefix common to every image's candidates.
    let per_image = Tensor::stack(
        &[
            padded(&[&[5, 6, 7, 8], &[5, 6, 7, 9]], 6),
            padded(&[&[5, 6, 3], &[5, 6, 7, 9, 9, EOS]], 6),
        ],
        0,
    );
    assert_eq!(decoder.shared_prefix_len(&per_image), 2);
    assert_eq!(decoder.scored_len(&per_image), 6);
}
