//! Circuit breakers made visible: every state change is logged, and `/metrics` shows each
//! breaker's state, window and refusals.

use faultline_resilience::{CircuitBreaker, State};
use faultline_telemetry::metrics::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `circuit_breaker_state` values: 0 closed, 1 half-open, 2 open (forced states count as
/// their unforced kin), so "greater than zero" means "not passing everything".
fn state_value(state: State) -> i64 {
    match state {
        State::Closed | State::ForcedClosed => 0,
        State::HalfOpen => 1,
        State::Open | State::ForcedOpen => 2,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    name: String,
}

#[derive(Debug)]
struct BreakerCollector {
    name: String,
    breaker: CircuitBreaker,
}

impl Collector for BreakerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.breaker.metrics();
        let labels = BreakerLabels {
            name: self.name.clone(),
        };
        let gauges = [
            (
                "circuit_breaker_state",
                "0 closed, 1 half-open, 2 open",
                state_value(snapshot.state) as f64,
            ),
            (
                "circuit_breaker_failure_rate",
                "Failure percentage in the breaker's window",
                snapshot.failure_rate,
            ),
            (
                "circuit_breaker_slow_call_rate",
                "Slow-call percentage in the breaker's window",
                snapshot.slow_call_rate,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(family.encode_family(&labels)?)?;
        }
        let counters = [
            (
                "circuit_breaker_not_permitted",
                "Calls the breaker refused",
                snapshot.not_permitted,
            ),
            (
                "circuit_breaker_transitions",
                "State changes of the breaker",
                snapshot.transitions,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Registers `breaker` under `name` in `metrics` and logs its state changes until `stop`.
pub fn observe(
    name: &str,
    breaker: &CircuitBreaker,
    metrics: &Metrics,
    stop: CancellationToken,
) -> JoinHandle<()> {
    metrics.register_collector(BreakerCollector {
        name: name.to_owned(),
        breaker: breaker.clone(),
    });
    let mut changes = breaker.subscribe();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(change) => match change.to {
                    State::Closed | State::ForcedClosed => {
                        tracing::info!(breaker = %change.breaker, from = ?change.from, to = ?change.to, "circuit breaker closed")
                    }
                    _ => {
                        tracing::warn!(breaker = %change.breaker, from = ?change.from, to = ?change.to, "circuit breaker changed state")
                    }
                },
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "missed circuit breaker events")
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}
