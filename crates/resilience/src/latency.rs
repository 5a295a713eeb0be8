//! A lock-free latency histogram that answers "what is the p-th percentile of the last
//! period?", for hedging.
//!
//! tower's hedge keeps an HDR histogram behind a mutex that every call locks twice. Here
//! the current period is an array of atomic buckets (log-linear: eight sub-buckets per
//! power of two, so any value is within 12.5% of its bucket's bound); recording is one
//! `fetch_add`. When a period ends, the percentile of the finished period is computed once
//! and frozen, so reading it is one atomic load. Samples racing a rotation may land in
//! the next period; for a hedging delay that is immaterial.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `2 * SUB` microseconds get a bucket each; above, 8 per power of two up to
/// 2^40 µs (about 12 days).
const BUCKETS: usize = (2 * SUB + (40 - SUB_BITS as u64) * SUB) as usize;
const NONE: u64 = u64::MAX;

/// The bucket holding `micros`.
fn bucket(micros: u64) -> usize {
    if micros < 2 * SUB {
        return micros as usize;
    }
    let exp = 63 - u64::from(micros.leading_zeros()); // >= SUB_BITS + 1
    let sub = (micros >> (exp - u64::from(SUB_BITS))) & (SUB - 1);
    let index = 2 * SUB + (exp - u64::from(SUB_BITS) - 1) * SUB + sub;
    (index as usize).min(BUCKETS - 1)
}

/// The largest value in bucket `index` (so a percentile errs towards hedging later).
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let exp = (index - 2 * SUB) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (index - 2 * SUB) % SUB;
    let low = (SUB + sub) << (exp - u64::from(SUB_BITS));
    low + (1 << (exp - u64::from(SUB_BITS))) - 1
}

pub(crate) struct LatencyWindow {
    origin: Instant,
    period: Duration,
    percentile: f64,
    min_samples: u64,
    epoch: AtomicU64,
    counts: Box<[AtomicU64]>,
    /// The frozen percentile of the last complete period, in µs, or `NONE`.
    frozen: AtomicU64,
    rotation: Mutex<()>,
}

impl LatencyWindow {
    pub(crate) fn new(period: Duration, percentile: f64, min_samples: u64) -> Self {
        Self {
            origin: Instant::now(),
            period: period.max(Duration::from_millis(1)),
            percentile: percentile.clamp(0.0, 100.0),
            min_samples: min_samples.max(1),
            epoch: AtomicU64::new(0),
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            frozen: AtomicU64::new(NONE),
            rotation: Mutex::new(()),
        }
    }

    fn epoch_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.period.as_nanos()).unwrap_or(u64::MAX)
    }

    fn rotate_if_due(&self, now: Instant) {
        let epoch = self.epoch_at(now);
        if self.epoch.load(Ordering::Acquire) == epoch {
            return;
        }
        let _guard = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.epoch.load(Ordering::Acquire);
        if current == epoch {
            return;
        }
        let snapshot: Vec<u64> = self
            .counts
            .iter()
            .map(|count| count.swap(0, Ordering::AcqRel))
            .collect();
        // Only the period right before this one says anything about now.
        let frozen = if epoch == current + 1 {
            self.quantile(&snapshot)
        } else {
            NONE
        };
        self.frozen.store(frozen, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
    }

    fn quantile(&self, counts: &[u64]) -> u64 {
        let total: u64 = counts.iter().sum();
        if total < self.min_samples {
            return NONE;
        }
        let rank = ((self.percentile / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound(index);
            }
        }
        NONE
    }

    /// Records the latency of a call that started at `start`, reading the clock once for
    /// both the latency and the period.
    pub(crate) fn record_since(&self, start: Instant) {
        let now = Instant::now();
        self.record_at(now, now.saturating_duration_since(start));
    }

    fn record_at(&self, now: Instant, latency: Duration) {
        self.rotate_if_due(now);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The percentile of the last complete period, if it had enough samples.
    pub(crate) fn threshold(&self) -> Option<Duration> {
        self.threshold_at(Instant::now())
    }

    /// [`LatencyWindow::threshold`] with a clock reading the caller already has.
    pub(crate) fn threshold_at(&self, now: Instant) -> Option<Duration> {
        self.rotate_if_due(now);
        match self.frozen.load(Ordering::Acquire) {
            NONE => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_cover_small_values_exactly() {
        for micros in 0..16 {
            assert_eq!(upper_bound(bucket(micros)), micros);
        }
        assert_eq!(bucket(16), 16);
        assert_eq!(upper_bound(bucket(16)), 17);
    }

    proptest! {
        #[test]
        fn every_value_is_within_an_eighth_of_its_bucket_bound(micros in 0u64..(1 << 40)) {
            let index = bucket(micros);
            let upper = upper_bound(index);
            prop_assert!(upper >= micros);
            prop_assert!((upper - micros) as f64 <= micros as f64 / 8.0 + 1.0);
            if index > 0 {
                prop_assert!(upper_bound(index - 1) < micros);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_percentile_of_the_last_period_is_frozen_at_rotation() {
        let window = LatencyWindow::new(Duration::from_secs(1), 90.0, 10);
        for ms in 1..=10 {
            window.record_at(Instant::now(), Duration::from_millis(ms * 10));
        }
        assert_eq!(window.threshold(), None, "the first period is not over");
        tokio::time::advance(Duration::from_secs(1)).await;
        let p90 = window.threshold().unwrap();
        assert!(p90 >= Duration::from_millis(90) && p90 <= Duration::from_micros(90_000 * 9 / 8));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            window.threshold(),
            None,
            "an empty period has too few samples"
        );
    }
}
