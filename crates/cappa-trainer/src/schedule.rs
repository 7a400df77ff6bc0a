//! Learning-rate schedules as pure functions of the step.
//!
//! Step `s` counts updates from 0. Warmup is linear and reaches the peak at the end of its
//! last step: factor `(s + 1) / warmup_steps` for `s < warmup_steps`, so the first update is
//! never wasted on a zero learning rate. After warmup:
//! - `cosine`: `end + (1 − end)·½(1 + cos(π·p))` with `p = (s − w) / (total − w)`;
//! - `rsqrt`: `1 / sqrt(1 + (s − w) / timescale)` (big_vision's `rsqrt` with a shift);
//! - `constant`: 1.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Cosine,
    Rsqrt,
    Constant,
}

/// A schedule: multiplies the peak learning rate (and, for decoupled weight decay, the decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    /// Cosine only: the factor reached at the last step (0 decays to zero).
    pub end_factor: f64,
    /// Rsqrt only: steps over which the factor falls to 1/√2.
    pub timescale: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: ScheduleKind::Cosine,
            warmup_steps: 0,
            end_factor: 0.0,
            timescale: 10_000,
        }
    }
}

/// The factor in `[0, 1]` that multiplies the peak learning rate at update `step` (0-based)
/// of a run of `total_steps` updates.
pub fn lr_factor(config: &ScheduleConfig, step: u64, total_steps: u64) -> f64 {
    let warmup = config.warmup_steps;
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let since = (step - warmup) as f64;
    match config.kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Rsqrt => 1.0 / (1.0 + since / config.timescale.max(1) as f64).sqrt(),
        ScheduleKind::Cosine => {
            let span = total_steps.saturating_sub(warmup).max(1) as f64;
            let progress = (since / span).min(1.0);
            let end = config.end_factor;
            end + (1.0 - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_and_reaches_the_peak() {
        let config = ScheduleConfig {
            kind: ScheduleKind::Constant,
            warmup_steps: 4,
            ..ScheduleConfig::default()
        };
        let factors: Vec<f64> = (0..6).map(|s| lr_factor(&config, s, 100)).collect();
        assert_eq!(factors, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_by_hand() {
        // Warmup 2 of 10 steps: after warmup p = (s − 2) / 8.
        let config = ScheduleConfig {
            warmup_steps: 2,
            ..ScheduleConfig::default()
        };
        assert!(close(lr_factor(&config, 2, 10), 1.0));
        // p = 2/8 = 0.25: ½(1 + cos(π/4)) = 0.853553…
        assert!(close(
            lr_factor(&config, 4, 10),
            0.5 * (1.0 + 0.5f64.sqrt())
        ));
        assert!(close(lr_factor(&config, 6, 10), 0.5)); // p = ½
        assert!(close(lr_factor(&config, 10, 10), 0.0));
        let floor = ScheduleConfig {
            end_factor: 0.1,
            ..config
        };
        assert!(close(lr_factor(&floor, 6, 10), 0.1 + 0.9 * 0.5));
        assert!(close(lr_factor(&floor, 50, 10), 0.1));
    }

    #[test]
    fn rsqrt_by_hand() {
        let config = ScheduleConfig {
            kind: ScheduleKind::Rsqrt,
            warmup_steps: 10,
            timescale: 100,
            ..ScheduleConfig::default()
        };
        assert!(close(lr_factor(&config, 10, 1000), 1.0));
        assert!(close(lr_factor(&config, 110, 1000), 1.0 / 2f64.sqrt()));
        assert!(close(lr_factor(&config, 310, 1000), 0.5));
    }

    #[test]
    fn schedules_never_leave_the_unit_interval() {
        for kind in [
            ScheduleKind::Cosine,
            ScheduleKind::Rsqrt,
            ScheduleKind::Constant,
        ] {
            let config = ScheduleConfig {
                kind,
                warmup_steps: 7,
                timescale: 5,
                ..ScheduleConfig::default()
            };
            for step in 0..60 {
                let f = lr_factor(&config, step, 50);
                assert!((0.0..=1.0).contains(&f), "{kind:?} step {step}: {f}");
            }
        }
    }
}
