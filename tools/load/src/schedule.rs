//! The arrival schedule: when each order *should* leave, decided before the run and never
//! by how fast the system answers.
//!
//! This is what makes the generator open-loop. A closed-loop client (send, wait, send) slows
//! down exactly when the system does, so it never sends the requests that would have seen
//! the worst latency: coordinated omission. Here every send time is computed from the start
//! of the phase and the rate alone; the driver measures each request from that intended
//! time, so a send that leaves late (the generator itself was busy) still counts the delay.
//!
//! Two shapes: constant gaps of `1/rate`, and Poisson arrivals (exponential gaps with mean
//! `1/rate`), which is how independent customers arrive and what queues are sensitive to.
//! Poisson gaps come from a seeded, portable generator (xoshiro256++), so a seed names one
//! schedule on every machine.

use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Every `1/rate` seconds exactly.
    Constant,
    /// Exponentially distributed gaps with mean `1/rate`: a Poisson process.
    Poisson,
}

/// The send offsets (from the start of a phase) of an endless stream of arrivals at `rate`
/// per second. Bound it with [`Schedule::within`].
#[derive(Debug, Clone)]
pub struct Schedule {
    arrivals: Arrivals,
    mean_gap: f64,
    next: f64,
    rng: Xoshiro256PlusPlus,
}

impl Schedule {
    /// A schedule at `rate` arrivals per second; `seed` picks the Poisson gaps.
    ///
    /// `rate` must be positive and finite (the command line checks it, see
    /// [`crate::config::parse_rate`]); anything else yields an empty schedule.
    pub fn new(arrivals: Arrivals, rate: f64, seed: u64) -> Self {
        let mean_gap = if rate.is_finite() && rate > 0.0 {
            1.0 / rate
        } else {
            f64::INFINITY
        };
        let mut schedule = Self {
            arrivals,
            mean_gap,
            // An infinite first offset ends the schedule before it starts.
            next: if mean_gap.is_finite() {
                0.0
            } else {
                f64::INFINITY
            },
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        };
        // A Poisson process has no arrival pinned at zero: its first one is a gap away too.
        if arrivals == Arrivals::Poisson {
            schedule.next = schedule.gap();
        }
        schedule
    }

    /// The arrivals that fall before `duration`: a finite schedule for one phase.
    pub fn within(self, duration: Duration) -> impl Iterator<Item = Duration> {
        self.take_while(move |offset| *offset < duration)
    }

    fn gap(&mut self) -> f64 {
        match self.arrivals {
            Arrivals::Constant => self.mean_gap,
            Arrivals::Poisson => {
                // Inverse transform of an exponential: -ln(U) * mean, with U in (0, 1] so
                // the logarithm is finite.
                let uniform: f64 = 1.0 - self.rng.random::<f64>();
                -uniform.ln() * self.mean_gap
            }
        }
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let at = Duration::try_from_secs_f64(self.next).ok()?;
        self.next += self.gap();
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_constant_schedule_sends_rate_times_duration() {
        let offsets: Vec<Duration> = Schedule::new(Arrivals::Constant, 50.0, 1)
            .within(Duration::from_secs(2))
            .collect();
        assert_eq!(offsets.len(), 100);
        assert_eq!(offsets[0], Duration::ZERO);
        assert_eq!(offsets[1], Duration::from_millis(20));
    }

    #[test]
    fn the_same_seed_gives_the_same_poisson_schedule() {
        let a: Vec<Duration> = Schedule::new(Arrivals::Poisson, 80.0, 7).take(50).collect();
        let b: Vec<Duration> = Schedule::new(Arrivals::Poisson, 80.0, 7).take(50).collect();
        let c: Vec<Duration> = Schedule::new(Arrivals::Poisson, 80.0, 8).take(50).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_rate_that_is_not_positive_schedules_nothing() {
        assert_eq!(Schedule::new(Arrivals::Constant, 0.0, 1).count(), 0);
        assert_eq!(Schedule::new(Arrivals::Poisson, f64::NAN, 1).count(), 0);
    }

    proptest! {
        #[test]
        fn a_constant_schedule_is_strictly_increasing_and_even(rate in 1.0f64..5_000.0) {
            let offsets: Vec<Duration> =
                Schedule::new(Arrivals::Constant, rate, 0).take(1_000).collect();
            for pair in offsets.windows(2) {
                prop_assert!(pair[0] < pair[1]);
                let gap = (pair[1] - pair[0]).as_secs_f64();
                prop_assert!((gap - 1.0 / rate).abs() < 1e-6, "gap {gap} at rate {rate}");
            }
        }

        #[test]
        fn poisson_arrivals_keep_their_mean_rate(rate in 1.0f64..5_000.0, seed: u64) {
            // 20 000 exponential gaps: the mean's standard error is 1/sqrt(20 000) ≈ 0.7 %
            // of the mean, so ±5 % is a seven-sigma bound that never flakes.
            const N: usize = 20_000;
            let offsets: Vec<Duration> =
                Schedule::new(Arrivals::Poisson, rate, seed).take(N).collect();
            prop_assert_eq!(offsets.len(), N);
            for pair in offsets.windows(2) {
                prop_assert!(pair[0] <= pair[1]);
            }
            let observed = N as f64 / offsets[N - 1].as_secs_f64();
            prop_assert!((observed / rate - 1.0).abs() < 0.05, "{observed}/s at {rate}/s");
        }
    }
}
