//! Capped exponential backoff with full or decorrelated jitter (pure arithmetic).
//!
//! Both schedules come from the AWS Architecture Blog's "Exponential Backoff and Jitter":
//! - **Full jitter**: `random(0, min(cap, base * 2^(n-1)))` for the `n`th retry. Spreads
//!   retries of callers that failed together over the whole interval.
//! - **Decorrelated jitter**: `min(cap, random(base, previous * 3))`. Each delay depends on
//!   the last, not on the attempt count, which keeps growing waits without synchronising.
//!
//! The random draw is a parameter (`unit` in `[0, 1)`), so the schedule is a pure function
//! and tested as one; the retry layer supplies `rand::rng()`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which jitter a [`Backoff`] applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// `random(0, min(cap, base * 2^(n-1)))`.
    #[default]
    Full,
    /// `min(cap, random(base, previous * 3))`.
    Decorrelated,
}

/// A capped exponential backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// A schedule starting at `base`, never above `cap` (`cap` is raised to `base` if lower).
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Self {
            base,
            cap: cap.max(base),
            jitter,
        }
    }

    /// The un-jittered ceiling for the `retry`th retry (1-based): `min(cap, base * 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let nanos = (self.base.as_nanos()).saturating_mul(u128::from(factor));
        let cap = self.cap.as_nanos();
        Duration::from_nanos(u64::try_from(nanos.min(cap)).unwrap_or(u64::MAX))
    }

    /// The delay before the `retry`th retry (1-based). `previous` is the delay before the
    /// last retry (zero before the first); `unit` is a uniform random draw from `[0, 1)`.
    pub fn delay(&self, retry: u32, previous: Duration, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.jitter {
            Jitter::Full => self.ceiling(retry).mul_f64(unit),
            Jitter::Decorrelated => {
                let upper = previous.max(self.base).saturating_mul(3);
                let span = upper.saturating_sub(self.base);
                (self.base + span.mul_f64(unit)).min(self.cap)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_then_cap() {
        let b = Backoff::new(MS * 10, MS * 100, Jitter::Full);
        let ceilings: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [MS * 10, MS * 20, MS * 40, MS * 80, MS * 100, MS * 100]
        );
        assert_eq!(b.ceiling(u32::MAX), MS * 100);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let b = Backoff::new(MS * 10, MS * 100, Jitter::Full);
        assert_eq!(b.delay(3, Duration::ZERO, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, Duration::ZERO, 0.5), MS * 20);
    }

    #[test]
    fn decorrelated_jitter_grows_from_the_previous_delay() {
        let b = Backoff::new(MS * 10, MS * 1_000, Jitter::Decorrelated);
        assert_eq!(b.delay(1, Duration::ZERO, 0.0), MS * 10);
        assert_eq!(b.delay(1, Duration::ZERO, 0.5), MS * 20);
        assert_eq!(b.delay(2, MS * 100, 0.5), MS * 155);
        assert_eq!(b.delay(9, MS * 900, 0.99), MS * 1_000);
    }

    proptest! {
        #[test]
        fn full_jitter_stays_within_zero_and_the_capped_ceiling(
            base in 1u64..10_000, cap in 1u64..100_000, retry in 1u32..100, unit in 0.0f64..1.0,
        ) {
            let b = Backoff::new(MS * base as u32, MS * cap as u32, Jitter::Full);
            let d = b.delay(retry, Duration::ZERO, unit);
            prop_assert!(d <= b.ceiling(retry));
            prop_assert!(d <= (MS * cap as u32).max(MS * base as u32));
        }

        #[test]
        fn decorrelated_jitter_stays_between_base_cap_and_three_times_previous(
            base in 1u64..10_000, cap in 1u64..100_000, previous in 0u64..100_000,
            unit in 0.0f64..1.0,
        ) {
            let (base, cap, previous) = (MS * base as u32, MS * cap as u32, MS * previous as u32);
            let b = Backoff::new(base, cap, Jitter::Decorrelated);
            let d = b.delay(2, previous, unit);
            prop_assert!(d >= base.min(cap.max(base)));
            prop_assert!(d <= cap.max(base));
            prop_assert!(d <= previous.max(base) * 3);
        }
    }
}
