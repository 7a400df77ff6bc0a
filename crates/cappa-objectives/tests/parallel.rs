//! CapPa's decoder inputs: causal and parallel examples, the share of parallel examples, the
//! partial masking ratio, determinism under a seed, and config validation.

use cappa_objectives::{
    parallel_prediction_inputs, DecoderInputs, ParallelPrediction, ParallelPredictionError,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 10;

fn config(prob: f64, masking_ratio: f64) -> ParallelPrediction {
    ParallelPrediction {
        prob,
        masking_ratio,
        ..ParallelPrediction::cap_pa(VOCAB)
    }
}

fn rows_i64(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).expect("2-D i64 tensor")
}

fn rows_bool(t: &Tensor) -> Vec<Vec<bool>> {
    rows_i64(&t.to_kind(Kind::Int64))
        .into_iter()
        .map(|row| row.into_iter().map(|x| x != 0).collect())
        .collect()
}

fn flags(t: &Tensor) -> Vec<bool> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64))
        .expect("1-D tensor")
        .into_iter()
        .map(|x| x != 0)
        .collect()
}

/// `(B, L)` captions with tokens in 1..VOCAB and trailing pad 0, from a seeded generator.
fn some_targets(batch: usize, length: usize, seed: u64) -> (Vec<Vec<i64>>, Tensor) {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows: Vec<Vec<i64>> = (0..batch)
        .map(|_| {
            let used = rng.random_range(1..=length);
            (0..length)
                .map(|i| {
                    if i < used {
                        rng.random_range(1..VOCAB)
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    let tensor = Tensor::from_slice(&flat).reshape([batch as i64, length as i64]);
    (rows, tensor)
}

fn inputs(targets: &Tensor, config: &ParallelPrediction, seed: u64) -> DecoderInputs {
    parallel_prediction_inputs(targets, config, &mut ChaCha8Rng::seed_from_u64(seed))
        .expect("valid config")
}

#[test]
fn probability_zero_gives_plain_cap_with_the_caption_shifted_right() {
    let targets = Tensor::from_slice2(&[[5i64, 6, 7, 2], [3, 2, 0, 0]]);
    let decoder = inputs(&targets, &ParallelPrediction::cap(VOCAB), 0);
    assert_eq!(rows_i64(&decoder.inputs), [[0, 5, 6, 7], [0, 3, 2, 0]]);
    assert_eq!(flags(&decoder.parallel), [false, false]);
    assert_eq!(rows_bool(&decoder.masked), [[false; 4], [false; 4]]);
    assert_eq!(decoder.inputs.kind(), Kind::Int64);

    // Another BOS id lands in the first column.
    let with_bos = ParallelPrediction {
        bos_id: 1,
        ..ParallelPrediction::cap(VOCAB)
    };
    assert_eq!(
        rows_i64(&inputs(&targets, &with_bos, 0).inputs),
        [[1, 5, 6, 7], [1, 3, 2, 0]]
    );
}

#[test]
fn probability_one_masks_every_position() {
    let (_, targets) = some_targets(16, 6, 1);
    let decoder = inputs(&targets, &config(1.0, 1.0), 0);
    assert_eq!(rows_i64(&decoder.inputs), vec![vec![VOCAB; 6]; 16]);
    assert_eq!(flags(&decoder.parallel), [true; 16]);
    assert_eq!(rows_bool(&decoder.masked), vec![vec![true; 6]; 16]);
}

#[test]
fn the_share_of_parallel_examples_follows_the_probability() {
    // 4000 Bernoulli(0.75) draws: mean 3000, standard deviation √(4000·0.75·0.25) ≈ 27.4.
    let (rows, targets) = some_targets(4000, 5, 2);
    let decoder = inputs(&targets, &ParallelPrediction::cap_pa(VOCAB), 3);
    let parallel = flags(&decoder.parallel);
    let count = parallel.iter().filter(|&&p| p).count() as f64;
    let sigma = (4000.0f64 * 0.75 * 0.25).sqrt();
    assert!(
        (count - 3000.0).abs() < 3.0 * sigma,
        "{count} parallel examples of 4000"
    );
    // Every row is either all mask tokens or the shifted caption, as its flag says.
    for ((input, target), is_parallel) in rows_i64(&decoder.inputs).iter().zip(&rows).zip(&parallel)
    {
        if *is_parallel {
            assert_eq!(input, &vec![VOCAB; 5]);
        } else {
            let shifted: Vec<i64> = [0].into_iter().chain(target[..4].iter().copied()).collect();
            assert_eq!(input, &shifted);
        }
    }
}

#[test]
fn a_seed_fixes_the_inputs() {
    let (_, targets) = some_targets(64, 8, 4);
    let partial = config(0.5, 0.5);
    let first = inputs(&targets, &partial, 11);
    let again = inputs(&targets, &partial, 11);
    let other = inputs(&targets, &partial, 12);
    assert_eq!(rows_i64(&first.inputs), rows_i64(&again.inputs));
    assert_eq!(flags(&first.parallel), flags(&again.parallel));
    assert_eq!(rows_bool(&first.masked), rows_bool(&again.masked));
    assert_ne!(flags(&first.parallel), flags(&other.parallel));
    // Libtorch's generator plays no part.
    tch::manual_seed(99);
    let after_torch_seed = inputs(&targets, &partial, 11);
    assert_eq!(rows_i64(&first.inputs), rows_i64(&after_torch_seed.inputs));
}

#[test]
fn a_partial_masking_ratio_masks_round_ratio_times_length_positions() {
    // L = 10, ratio 0.3: three masked positions per parallel example, the unshifted target
    // elsewhere; causal examples unmasked and shifted.
    let (rows, targets) = some_targets(200, 10, 5);
    let decoder = inputs(&targets, &config(0.5, 0.3), 6);
    let parallel = flags(&decoder.parallel);
    assert!(parallel.iter().any(|&p| p) && parallel.iter().any(|&p| !p));
    let mut masked_sets = std::collections::HashSet::new();
    for (((input, masked), target), is_parallel) in rows_i64(&decoder.inputs)
        .iter()
        .zip(rows_bool(&decoder.masked))
        .zip(&rows)
        .zip(&parallel)
    {
        if *is_parallel {
            assert_eq!(masked.iter().filter(|&&m| m).count(), 3);
            for ((&token, &is_masked), &expected) in input.iter().zip(&masked).zip(target) {
                assert_eq!(token, if is_masked { VOCAB } else { expected });
            }
            masked_sets.insert(masked);
        } else {
            assert!(masked.iter().all(|&m| !m));
            assert_eq!(input[0], 0);
            assert_eq!(input[1..], target[..9]);
        }
    }
    // The subsets are drawn per example, not fixed.
    assert!(
        masked_sets.len() > 10,
        "{} distinct subsets",
        masked_sets.len()
    );

    // round(0.04 · 10) = 0, raised to the minimum of one masked position.
    let decoder = inputs(&targets, &config(1.0, 0.04), 7);
    for masked in rows_bool(&decoder.masked) {
        assert_eq!(masked.iter().filter(|&&m| m).count(), 1);
    }
    // round(0.25 · 10) = 3 (2.5 rounds away from zero).
    let decoder = inputs(&targets, &config(1.0, 0.25), 8);
    for masked in rows_bool(&decoder.masked) {
        assert_eq!(masked.iter().filter(|&&m| m).count(), 3);
    }
}

#[test]
fn out_of_range_configs_are_rejected() {
    let (_, targets) = some_targets(2, 3, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for prob in [-0.1, 1.5, f64::NAN] {
        let error = parallel_prediction_inputs(&targets, &config(prob, 1.0), &mut rng).unwrap_err();
        assert!(
            matches!(error, ParallelPredictionError::Probability(_)),
            "{error}"
        );
    }
    for ratio in [-0.5, 1.2, f64::NAN] {
        let error = config(0.75, ratio).validate().unwrap_err();
        assert!(
            matches!(error, ParallelPredictionError::MaskingRatio(_)),
            "{error}"
        );
    }
    let same_ids = ParallelPrediction {
        mask_id: 0,
        ..ParallelPrediction::cap_pa(VOCAB)
    };
    assert_eq!(
        same_ids.validate(),
        Err(ParallelPredictionError::MaskIsBos(0))
    );
    let negative = ParallelPrediction {
        bos_id: -1,
        ..ParallelPrediction::cap_pa(VOCAB)
    };
    assert!(matches!(
        negative.validate(),
        Err(ParallelPredictionError::NegativeId {
            which: "bos_id",
            id: -1
        })
    ));
    assert_eq!(ParallelPrediction::cap_pa(VOCAB).validate(), Ok(()));
    assert_eq!(ParallelPrediction::cap(VOCAB).validate(), Ok(()));
}

#[test]
fn presets_and_serde() {
    let cap_pa = ParallelPrediction::cap_pa(32_000);
    assert_eq!(
        cap_pa,
        ParallelPrediction {
            prob: 0.75,
            mask_id: 32_000,
            bos_id: 0,
            masking_ratio: 1.0
        }
    );
    assert_eq!(ParallelPrediction::cap(32_000).prob, 0.0);
    let json = serde_json::to_string(&cap_pa).expect("serialise");
    let back: ParallelPrediction = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, cap_pa);
    let unknown = r#"{"prob":0.75,"mask_id":1,"bos_id":0,"masking_ratio":1.0,"ratio":1.0}"#;
    assert!(serde_json::from_str::<ParallelPrediction>(unknown).is_err());
}

#[test]
fn the_inputs_stay_on_the_targets_device() {
    let targets = Tensor::ones([3, 4], (Kind::Int64, Device::Cpu));
    let decoder = inputs(&targets, &ParallelPrediction::cap_pa(VOCAB), 0);
    for tensor in [&decoder.inputs, &decoder.parallel, &decoder.masked] {
        assert_eq!(tensor.device(), Device::Cpu);
    }
    assert_eq!(decoder.parallel.kind(), Kind::Bool);
    assert_eq!(decoder.masked.size(), [3, 4]);
}
