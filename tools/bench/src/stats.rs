//! Small statistics over timing samples: medians across repeats, per-op percentiles, and the
//! paired ratio that makes side-by-side measurements on a noisy, shared machine meaningful.
//!
//! Why paired ratios: each repeat measures the engine and its baseline back to back, so a burst
//! of noise from a neighbour slows both sides of that repeat alike. The median of the per-repeat
//! ratios is therefore steadier than the ratio of two medians taken at different moments.

use std::time::{Duration, Instant};

/// The median of `values` (the mean of the two middle ones for an even count). Panics on an
/// empty slice: every caller measures at least one repeat.
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "a median needs at least one value");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// The `p`-th percentile (0..=100) of `values`, nearest-rank: the smallest sample with at least
/// `p`% of the samples at or below it.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    assert!(!values.is_empty(), "a percentile needs at least one value");
    assert!((0.0..=100.0).contains(&p), "percentile {p} is outside 0..=100");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median over repeats of `numerator[i] / denominator[i]`.
pub fn paired_ratio(numerator: &[f64], denominator: &[f64]) -> f64 {
    assert_eq!(numerator.len(), denominator.len(), "paired samples come in pairs");
    let ratios: Vec<f64> = numerator.iter().zip(denominator).map(|(n, d)| n / d).collect();
    median(&ratios)
}

/// Microseconds in `d`, as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Mean microseconds per call of `op`, run `calls` times back to back.
pub fn mean_us_per_call(calls: usize, mut op: impl FnMut()) -> f64 {
    assert!(calls > 0, "time at least one call");
    let start = Instant::now();
    for _ in 0..calls {
        op();
    }
    us(start.elapsed()) / calls as f64
}

/// Rounds to `digits` decimals, so the JSON stays readable.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentile_pick_the_expected_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 100.0), 100.0);
        assert_eq!(percentile(&hundred, 0.0), 1.0);
        assert_eq!(paired_ratio(&[2.0, 9.0, 4.0], &[1.0, 3.0, 4.0]), 2.0);
    }
}
