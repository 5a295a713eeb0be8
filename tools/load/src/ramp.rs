//! The ramp: rates `start`, `start + step`, ... up to `max`, each held for one step and
//! drained before the next, until a step breaks the SLO. Draining between steps keeps each
//! step's figures its own: a backlog left by one rate is not blamed on the next.

use std::time::Duration;

use serde::Serialize;

use crate::config::{Ramp, SloLatency};
use crate::driver::{Driver, Phase};
use crate::knee::{Breach, Knee, Slo, StepMeasure, find_knee};
use crate::stats::PhaseReport;

/// Steps tried at most, whatever the rates say.
const MAX_STEPS: u64 = 200;

/// A ramp's result.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    /// The SLO's p99 bound, in milliseconds.
    pub slo_p99_ms: f64,
    /// The SLO's failure-rate bound.
    pub slo_failure_rate: f64,
    /// Which latency the p99 was judged on.
    pub slo_on: SloLatency,
    /// Where the knee is.
    pub knee: Knee,
    /// Each step, in order.
    pub steps: Vec<Step>,
}

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// How it broke the SLO, if it did.
    pub breach: Option<Breach>,
    /// What it measured.
    #[serde(flatten)]
    pub phase: PhaseReport,
}

/// The rates of a ramp: at most [`MAX_STEPS`], none above `max` (give or take rounding).
pub fn rates(start: f64, step: f64, max: f64) -> impl Iterator<Item = f64> {
    (0..MAX_STEPS)
        .map(move |k| start + k as f64 * step)
        .take_while(move |rate| *rate <= max * (1.0 + 1e-9))
}

/// Ramps `driver` as `ramp` says; stops at the first step that breaks the SLO or on Ctrl-C.
pub async fn run(driver: &Driver, ramp: &Ramp) -> RampReport {
    let slo = Slo {
        p99: ramp.slo_p99,
        max_failure_rate: ramp.slo_failure_rate,
    };
    let mut steps = Vec::new();
    let mut measures = Vec::new();
    for (k, rate) in rates(ramp.start_rate, ramp.rate_step, ramp.max_rate).enumerate() {
        let phase = Phase {
            label: format!("ramp {rate:.0}/s"),
            rate,
            duration: ramp.step_duration,
            // Each step its own schedule, all named by the one seed.
            seed: driver.workload.seed.wrapping_add(k as u64),
        };
        let report = driver.run(&phase).await;
        let p99_ms = match ramp.slo_on {
            SloLatency::Terminal => report.terminal.p99_ms,
            SloLatency::Post => report.post_all.p99_ms,
        };
        let measure = StepMeasure {
            offered_rate: rate,
            p99: Duration::from_secs_f64(p99_ms / 1_000.0),
            failure_rate: report.failure_rate,
        };
        let breach = slo.breach(&measure);
        eprintln!(
            "  step {rate:>7.1}/s: accepted {:>7.1}/s completed {:>7.1}/s p99 {p99_ms:>8.1} ms failures {:>5.1} %{}",
            report.accepted_per_s,
            report.completed_per_s,
            report.failure_rate * 100.0,
            breach
                .map(|b| format!("  breaks the SLO ({b:?})"))
                .unwrap_or_default()
        );
        measures.push(measure);
        steps.push(Step {
            breach,
            phase: report,
        });
        if breach.is_some() || driver.stop.is_cancelled() {
            break;
        }
    }
    RampReport {
        slo_p99_ms: ramp.slo_p99.as_secs_f64() * 1_000.0,
        slo_failure_rate: ramp.slo_failure_rate,
        slo_on: ramp.slo_on,
        knee: find_knee(&measures, &slo),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_step_up_to_the_maximum() {
        let r: Vec<f64> = rates(25.0, 25.0, 100.0).collect();
        assert_eq!(r, vec![25.0, 50.0, 75.0, 100.0]);
        let r: Vec<f64> = rates(0.1, 0.1, 0.3).collect();
        assert_eq!(r.len(), 3, "{r:?}: rounding must not drop the last step");
    }

    #[test]
    fn a_ramp_has_a_bounded_number_of_steps() {
        assert_eq!(rates(1.0, 1e-9, 100_000.0).count() as u64, MAX_STEPS);
    }
}
