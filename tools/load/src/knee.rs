//! The knee of a ramp: the highest offered rate the system still served within its SLO.
//!
//! A ramp offers rising rates, one step each. A step *holds* when its p99 is within the
//! latency objective and its failure rate (refusals, errors and orders left unfinished, over
//! orders sent) within the error objective. The knee is the last step that held before the
//! first that did not; the ramp stops at that first breach, since every step above it only
//! digs the backlog deeper. Pure, so the rule is tested without a system.

use std::time::Duration;

use serde::Serialize;

/// The service-level objective a step must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// Largest acceptable p99.
    pub p99: Duration,
    /// Largest acceptable share of failed orders (0.0 to 1.0).
    pub max_failure_rate: f64,
}

/// What one step measured, as far as the SLO cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMeasure {
    /// Orders per second offered.
    pub offered_rate: f64,
    /// The p99 the SLO is judged on.
    pub p99: Duration,
    /// Failed orders over orders sent.
    pub failure_rate: f64,
}

/// Why a step breaks the SLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breach {
    /// Its p99 is above the objective.
    Latency,
    /// Too many of its orders failed.
    Failures,
    /// Both.
    LatencyAndFailures,
}

impl Slo {
    /// Whether `step` breaks this objective, and how.
    pub fn breach(&self, step: &StepMeasure) -> Option<Breach> {
        let slow = step.p99 > self.p99;
        // NaN (no orders sent) counts as failing: a step that measured nothing held nothing.
        let failing = step.failure_rate.is_nan() || step.failure_rate > self.max_failure_rate;
        match (slow, failing) {
            (false, false) => None,
            (true, false) => Some(Breach::Latency),
            (false, true) => Some(Breach::Failures),
            (true, true) => Some(Breach::LatencyAndFailures),
        }
    }
}

/// Where the ramp found the knee.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Knee {
    /// `rate` held and `broke_at`, the next step, did not.
    Found {
        /// The highest rate that held.
        rate: f64,
        /// The first rate that broke the SLO.
        broke_at: f64,
        /// How it broke.
        breach: Breach,
    },
    /// Even the first step broke the SLO: the knee is below `broke_at`.
    BelowFirstStep {
        /// The first, already breaking, rate.
        broke_at: f64,
        /// How it broke.
        breach: Breach,
    },
    /// Every step held: the knee is above `highest_held`; ramp higher to find it.
    NotReached {
        /// The highest rate tried (0 when no step ran).
        highest_held: f64,
    },
}

/// The knee of `steps` (in the order they ran) under `slo`. Steps after the first breach are
/// ignored: a system recovering at a higher rate after breaking is still broken.
pub fn find_knee(steps: &[StepMeasure], slo: &Slo) -> Knee {
    let mut held: Option<f64> = None;
    for step in steps {
        if let Some(breach) = slo.breach(step) {
            return match held {
                Some(rate) => Knee::Found {
                    rate,
                    broke_at: step.offered_rate,
                    breach,
                },
                None => Knee::BelowFirstStep {
                    broke_at: step.offered_rate,
                    breach,
                },
            };
        }
        held = Some(step.offered_rate);
    }
    Knee::NotReached {
        highest_held: held.unwrap_or(0.0),
    }
}

impl Knee {
    /// The rate to quote as the knee: the highest that held (0 when none did).
    pub fn rate(&self) -> f64 {
        match *self {
            Knee::Found { rate, .. } => rate,
            Knee::BelowFirstStep { .. } => 0.0,
            Knee::NotReached { highest_held } => highest_held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Slo = Slo {
        p99: Duration::from_millis(500),
        max_failure_rate: 0.01,
    };

    fn step(rate: f64, p99_ms: u64, failure_rate: f64) -> StepMeasure {
        StepMeasure {
            offered_rate: rate,
            p99: Duration::from_millis(p99_ms),
            failure_rate,
        }
    }

    #[test]
    fn the_knee_is_the_last_step_before_the_first_breach() {
        let steps = [
            step(25.0, 80, 0.0),
            step(50.0, 120, 0.0),
            step(75.0, 900, 0.0),
        ];
        assert_eq!(
            find_knee(&steps, &SLO),
            Knee::Found {
                rate: 50.0,
                broke_at: 75.0,
                breach: Breach::Latency
            }
        );
    }

    #[test]
    fn failures_break_the_slo_even_when_latency_is_fine() {
        let steps = [step(25.0, 80, 0.0), step(50.0, 90, 0.2)];
        assert_eq!(
            find_knee(&steps, &SLO),
            Knee::Found {
                rate: 25.0,
                broke_at: 50.0,
                breach: Breach::Failures
            }
        );
    }

    #[test]
    fn steps_after_the_first_breach_do_not_move_the_knee() {
        let steps = [
            step(25.0, 80, 0.0),
            step(50.0, 900, 0.5),
            step(75.0, 80, 0.0),
        ];
        assert_eq!(find_knee(&steps, &SLO).rate(), 25.0);
    }

    #[test]
    fn a_first_step_that_breaks_puts_the_knee_below_it() {
        let steps = [step(25.0, 900, 0.5)];
        assert_eq!(
            find_knee(&steps, &SLO),
            Knee::BelowFirstStep {
                broke_at: 25.0,
                breach: Breach::LatencyAndFailures
            }
        );
    }

    #[test]
    fn a_ramp_that_never_breaks_reports_its_highest_rate() {
        let steps = [step(25.0, 80, 0.0), step(50.0, 90, 0.005)];
        assert_eq!(
            find_knee(&steps, &SLO),
            Knee::NotReached { highest_held: 50.0 }
        );
        assert_eq!(find_knee(&[], &SLO), Knee::NotReached { highest_held: 0.0 });
    }

    #[test]
    fn a_step_that_sent_nothing_does_not_hold() {
        assert_eq!(SLO.breach(&step(25.0, 0, f64::NAN)), Some(Breach::Failures));
    }
}
