//! Every random stream of a run, derived from the run seed and counters (SplitMix64), so that
//! the step and the data cursor determine all randomness and a resumed run needs no saved
//! generator state:
//! - the initial weights: libtorch's generator seeded with [`init_seed`];
//! - dropout at step `t`: libtorch's generator reseeded with [`dropout_seed`] before the step;
//! - CapPa's parallel-prediction masks of micro-batch `k` of step `t`: [`mask_seed`];
//! - the loader's augmentations on rank `r`: [`loader_seed`] (the loader then derives one
//!   stream per sample position).

/// Guards libtorch's process-wide random generator while it is seeded and used.
static TORCH_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A well-mixed 64-bit seed from a run seed and two counters: SplitMix64's output for the
/// state `seed + a·γ + b·δ` (γ is SplitMix64's increment).
pub(crate) fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// libtorch's seed for the initial weights.
pub(crate) fn init_seed(seed: u64) -> u64 {
    mix(seed, u64::MAX, 0)
}

/// libtorch's seed for the dropout masks of `step`.
pub(crate) fn dropout_seed(seed: u64, step: u64) -> u64 {
    mix(seed, step, u64::MAX)
}

/// The seed of CapPa's masks for micro-batch `micro` of `step`.
pub(crate) fn mask_seed(seed: u64, step: u64, micro: u64) -> u64 {
    mix(seed, step, micro)
}

/// The loader's seed on `rank`: rank 0 uses the run seed, rank r > 0 its own stream.
pub(crate) fn loader_seed(seed: u64, rank: usize) -> u64 {
    match rank {
        0 => seed,
        rank => mix(seed, rank as u64, u64::MAX - 1),
    }
}

/// Seeds libtorch's process-wide generator with `seed` and runs `f` while holding it, so that
/// trainers started side by side (tests, sweeps) draw reproducibly.
/// Seeds libtorch's generator for the draws that follow in this thread (dropout's).
pub(crate) fn seed_torch(seed: u64) {
    with_torch_seed(seed, || ());
}

pub(crate) fn with_torch_seed<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _generator = TORCH_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_is_splitmix64() {
        // SplitMix64 from state 0 outputs e220a8397b1dcdaf, 6e789e6aa1b965f4, 06c45d188009454f
        // (Vigna's reference implementation): mix(0, k, 0) is its k-th output.
        assert_eq!(mix(0, 1, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix(0, 2, 0), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(mix(0, 3, 0), 0x06C4_5D18_8009_454F);
        // The seed shifts the state: seed γ with counter 1 is the state 2γ.
        assert_eq!(mix(0x9E37_79B9_7F4A_7C15, 1, 0), mix(0, 2, 0));
        // The second counter has its own multiplier, so (a, b) and (b, a) differ.
        assert_eq!(mix(0, 0, 1), 0x8209_B480_FAED_1B10);
        assert_ne!(mix(0, 1, 0), mix(0, 0, 1));
    }

    #[test]
    fn the_streams_of_a_run_are_distinct() {
        let seed = 7;
        let seeds = [
            init_seed(seed),
            dropout_seed(seed, 0),
            dropout_seed(seed, 1),
            mask_seed(seed, 0, 0),
            mask_seed(seed, 0, 1),
            mask_seed(seed, 1, 0),
            loader_seed(seed, 1),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(loader_seed(seed, 0), seed);
    }
}
