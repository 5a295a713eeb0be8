//! Additive-increase/multiplicative-decrease for an adaptive concurrency limit (pure math).
//!
//! The rule of Netflix's `concurrency-limits` AIMD limiter: when a request completes in
//! time while the server was using at least half its limit, the limit grows by one; when
//! one signals overload (it took longer than the latency threshold), the limit shrinks by a
//! factor. The limit thus probes upwards while there is demand and backs off quickly when
//! queueing starts, without anyone choosing the "right" fixed number.

use std::time::Duration;

/// The AIMD rule with its bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Aimd {
    min: u32,
    max: u32,
    backoff_ratio: f64,
}

impl Aimd {
    /// A rule keeping the limit within `min..=max`, multiplying it by `backoff_ratio`
    /// (in `(0, 1)`) on overload.
    pub(crate) fn new(min: u32, max: u32, backoff_ratio: f64) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
            backoff_ratio: if backoff_ratio > 0.0 && backoff_ratio < 1.0 {
                backoff_ratio
            } else {
                0.9
            },
        }
    }

    /// The next limit after a request that completed with `inflight` requests in flight
    /// (itself included); `overloaded` when it signalled overload.
    pub(crate) fn update(&self, limit: u32, inflight: u32, overloaded: bool) -> u32 {
        let next = if overloaded {
            // Floor, so the limit always drops by at least one while above the minimum.
            (f64::from(limit) * self.backoff_ratio).floor() as u32
        } else if u64::from(inflight) * 2 >= u64::from(limit) {
            limit.saturating_add(1)
        } else {
            limit
        };
        next.clamp(self.min, self.max)
    }

    /// Whether a request that took `latency` signals overload, for `threshold`.
    pub(crate) fn is_overload(latency: Duration, threshold: Duration) -> bool {
        latency >= threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_under_demand_and_backs_off_on_overload() {
        let aimd = Aimd::new(4, 100, 0.9);
        assert_eq!(aimd.update(20, 10, false), 21, "half used: probe upwards");
        assert_eq!(aimd.update(20, 9, false), 20, "little demand: hold");
        assert_eq!(aimd.update(20, 20, true), 18);
        assert_eq!(aimd.update(5, 5, true), 4);
        assert_eq!(aimd.update(4, 4, true), 4, "never below the minimum");
        assert_eq!(aimd.update(100, 100, false), 100, "never above the maximum");
    }

    proptest! {
        #[test]
        fn stays_in_bounds_and_moves_the_right_way(
            min in 1u32..50, span in 0u32..500, limit in 0u32..1_000, inflight in 0u32..1_000,
            ratio in 0.01f64..0.99, overloaded: bool,
        ) {
            let aimd = Aimd::new(min, min + span, ratio);
            let limit = limit.clamp(min, min + span);
            let next = aimd.update(limit, inflight, overloaded);
            prop_assert!(next >= min && next <= min + span);
            if overloaded {
                prop_assert!(next <= limit);
                prop_assert!(next < limit || limit == min);
            } else {
                prop_assert!(next == limit || next == limit + 1);
            }
        }
    }
}
