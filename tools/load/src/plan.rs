//! What to offer: one steady rate or a ramp, and how many orders that is at most (to size
//! the stock).

use crate::config::{Ramp, Steady};
use crate::driver::{Driver, Phase};
use crate::ramp::{self, rates};
use crate::report::Mode;

/// The load of one invocation.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// One rate.
    Steady(Steady),
    /// Steps to the knee.
    Ramp(Ramp),
}

impl Plan {
    /// The most orders this plan can send (every ramp step run to the end).
    pub fn max_orders(&self) -> u64 {
        let orders = match self {
            Plan::Steady(steady) => steady.rate * steady.duration.as_secs_f64(),
            Plan::Ramp(ramp) => rates(ramp.start_rate, ramp.rate_step, ramp.max_rate)
                .map(|rate| rate * ramp.step_duration.as_secs_f64())
                .sum(),
        };
        orders.ceil() as u64
    }

    /// Runs the plan on `driver`.
    pub async fn drive(&self, driver: &Driver) -> Mode {
        match self {
            Plan::Steady(steady) => {
                let phase = Phase {
                    label: format!("{:.0}/s", steady.rate),
                    rate: steady.rate,
                    duration: steady.duration,
                    seed: driver.workload.seed,
                };
                Mode::Run {
                    run: Box::new(driver.run(&phase).await),
                }
            }
            Plan::Ramp(spec) => Mode::Ramp {
                ramp: ramp::run(driver, spec).await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::SloLatency;

    #[test]
    fn the_most_orders_is_rate_times_duration_summed_over_steps() {
        let steady = Plan::Steady(Steady {
            rate: 50.0,
            duration: Duration::from_secs(60),
        });
        assert_eq!(steady.max_orders(), 3_000);
        let ramp = Plan::Ramp(Ramp {
            start_rate: 10.0,
            rate_step: 10.0,
            max_rate: 30.0,
            step_duration: Duration::from_secs(10),
            slo_p99: Duration::from_secs(1),
            slo_failure_rate: 0.01,
            slo_on: SloLatency::Terminal,
        });
        assert_eq!(ramp.max_orders(), 600);
    }
}
