//! Latency histograms: HDR histograms of microseconds, and the percentile summary that
//! goes into reports.
//!
//! An HDR histogram keeps every value to three significant digits in a fixed, small amount of
//! memory and merges exactly, so one per status code and one per ramp step cost nothing and
//! the run's total is the sum of its parts, not an average of averages.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency kept exactly: one hour. Anything longer is recorded as one hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// A latency histogram with microsecond resolution and three significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // Constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, 3 digits).
        Self(Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("constant, valid bounds"))
    }

    /// Records one latency; a value beyond an hour counts as an hour.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, HIGHEST_MICROS));
    }

    /// Adds every value of `other` to this one.
    pub fn merge(&mut self, other: &Latency) {
        // Both were made by `new` with the same bounds, so `add` cannot run out of range.
        self.0.add(&other.0).expect("histograms share their bounds");
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at `quantile` (0.0 to 1.0); zero when empty.
    pub fn quantile(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(quantile))
    }

    /// Count, mean and the percentiles reports show.
    pub fn summary(&self) -> Summary {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Summary {
            count: self.count(),
            mean_ms: self.0.mean() / 1_000.0,
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// A histogram as reports show it, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(millis: &[u64]) -> Latency {
        let mut h = Latency::new();
        for m in millis {
            h.record(Duration::from_millis(*m));
        }
        h
    }

    #[test]
    fn percentiles_come_out_to_three_significant_digits() {
        let h = of(&(1..=1_000).collect::<Vec<_>>());
        let s = h.summary();
        assert_eq!(s.count, 1_000);
        assert!((s.p50_ms - 500.0).abs() <= 0.5, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_ms - 1_000.0).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn a_merge_is_the_histogram_of_all_values() {
        let mut merged = of(&[1, 2, 3]);
        merged.merge(&of(&[100, 200]));
        let whole = of(&[1, 2, 3, 100, 200]);
        assert_eq!(merged.summary(), whole.summary());
    }

    #[test]
    fn extreme_values_are_clamped_not_lost() {
        let mut h = Latency::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(10 * 3_600));
        assert_eq!(h.count(), 2);
        assert!(h.quantile(1.0) >= Duration::from_secs(3_599));
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        let s = Latency::new().summary();
        assert_eq!(s.count, 0);
        assert_eq!(s.p99_ms, 0.0);
    }
}
