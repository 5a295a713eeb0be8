//! What the orchestrator counts: how orders end and why, how long deciding took, and the
//! sweeper's failures and deferred deadlines.

use chrono::{DateTime, Utc};
use faultline_telemetry::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;

use crate::saga::Decision;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
    code: String,
}

/// `saga_outcomes_total{outcome, code}` and `saga_decision_duration_seconds{outcome, code}`:
/// how orders end, why, and how long the decision took from placement.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    pub(super) sweep_failures: Counter,
    pub(super) deadlines_deferred: Counter,
}

fn decision_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
}

impl Default for SagaMetrics {
    /// Metrics that are kept but not exposed (tests, tools).
    fn default() -> Self {
        Self {
            outcomes: Family::default(),
            duration: Family::new_with_constructor(decision_histogram),
            sweep_failures: Counter::default(),
            deadlines_deferred: Counter::default(),
        }
    }
}

impl SagaMetrics {
    /// Registers the saga families in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let saga = Self::default();
        metrics.register(
            "saga_outcomes",
            "Orders decided, by outcome and cancellation code",
            saga.outcomes.clone(),
        );
        metrics.register_with_unit(
            "saga_decision_duration",
            "Time from placing an order to its decision",
            Unit::Seconds,
            saga.duration.clone(),
        );
        metrics.register(
            "saga_sweep_failures",
            "Overdue sagas whose deadline could not be applied and were pushed back",
            saga.sweep_failures.clone(),
        );
        metrics.register(
            "saga_deadlines_deferred",
            "Overdue saga steps given more time because their command was not published yet",
            saga.deadlines_deferred.clone(),
        );
        saga
    }

    pub(super) fn record(&self, decision: &Decision, placed_at: DateTime<Utc>) {
        let labels = match decision {
            Decision::Confirm => OutcomeLabels {
                outcome: "confirmed".into(),
                code: String::new(),
            },
            Decision::Cancel { code, .. } => OutcomeLabels {
                outcome: "cancelled".into(),
                code: code.as_str().into(),
            },
        };
        self.outcomes.get_or_create(&labels).inc();
        let seconds = (Utc::now() - placed_at).num_milliseconds().max(0) as f64 / 1000.0;
        self.duration.get_or_create(&labels).observe(seconds);
    }
}
