//! The saga orchestrator: applies an event to an order's saga inside a transaction.
//!
//! [`Orchestrator::apply`] locks the saga and order rows, asks [`crate::saga`] what the
//! event means, and writes the new saga state, the order's status and every resulting
//! command (through the outbox) in the caller's transaction, which also holds the event's
//! inbox row. Either all of it happens or none of it does.
//!
//! [`Orchestrator::sweep`] feeds `DeadlinePassed` to sagas whose step has timed out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use faultline_platform::messaging::publish;
use faultline_proto::common::v1::{LineItem, Money};
use faultline_proto::envelope::Provenance;
use faultline_proto::inventory::v1 as inventory;
use faultline_proto::orders::v1 as orders;
use faultline_proto::payments::v1 as payments;
use faultline_telemetry::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use sqlx::{FromRow, PgConnection, PgPool};
use tracing::Instrument;
use tracing::field::Empty;
use uuid::Uuid;

use crate::saga::{Command, Decision, Event, Saga, State};

/// Service name written into every envelope checkout sends.
pub const PRODUCER: &str = "checkout";

/// Full names of the topics the orchestrator writes to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Where stock commands go.
    pub inventory_commands: String,
    /// Where payment commands go.
    pub payments_commands: String,
    /// Where order outcomes go.
    pub orders_events: String,
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// No saga exists for the order named in the event.
    #[error("no saga for order {0}")]
    UnknownOrder(Uuid),
    /// The stored saga cannot be read; a bug or a manual edit.
    #[error("saga of order {order_id} is unreadable: {detail}")]
    CorruptState {
        /// The order.
        order_id: Uuid,
        /// What is wrong.
        detail: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event did not fit the saga's state and changed nothing.
    Ignored,
    /// The saga moved on; `decision` is set if this event decided the order.
    Changed {
        /// The new state.
        state: State,
        /// The decision taken now, if any.
        decision: Option<Decision>,
    },
}

/// Drives order sagas. Cheap to share.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    topics: Topics,
    step_timeout: Duration,
    max_attempts: u32,
    metrics: SagaMetrics,
}

/// What commands and order events need to know about the order.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct OrderFacts {
    /// Who pays.
    pub customer_id: String,
    /// The amount to authorize.
    pub total_minor: i64,
    /// Its currency.
    pub currency: String,
    /// When it was placed, for the saga's duration.
    pub created_at: DateTime<Utc>,
}

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
    sweep_failures: Counter,
    deadlines_deferred: Counter,
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

    fn record(&self, decision: &Decision, placed_at: DateTime<Utc>) {
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

#[derive(Debug, FromRow)]
struct SagaRow {
    state: String,
    stock_done: bool,
    payment_done: bool,
    attempts: i32,
    #[sqlx(flatten)]
    order: OrderFacts,
}

fn to_columns(state: State) -> (&'static str, bool, bool) {
    match state {
        State::AwaitingStock => ("awaiting_stock", false, false),
        State::AwaitingPayment => ("awaiting_payment", false, false),
        State::Completing {
            stock_committed,
            payment_captured,
        } => ("completing", stock_committed, payment_captured),
        State::Compensating {
            stock_released,
            payment_voided,
        } => ("compensating", stock_released, payment_voided),
        State::Completed => ("completed", true, true),
        State::Compensated => ("compensated", true, true),
    }
}

fn from_columns(state: &str, stock_done: bool, payment_done: bool) -> Option<State> {
    Some(match state {
        "awaiting_stock" => State::AwaitingStock,
        "awaiting_payment" => State::AwaitingPayment,
        "completing" => State::Completing {
            stock_committed: stock_done,
            payment_captured: payment_done,
        },
        "compensating" => State::Compensating {
            stock_released: stock_done,
            payment_voided: payment_done,
        },
        "completed" => State::Completed,
        "compensated" => State::Compensated,
        _ => return None,
    })
}

impl Orchestrator {
    /// An orchestrator writing to `topics`, re-sending a step after `step_timeout`, giving
    /// up on a compensable step after `max_attempts` sends, and counting outcomes in
    /// `metrics`.
    pub fn new(
        topics: Topics,
        step_timeout: Duration,
        max_attempts: u32,
        metrics: SagaMetrics,
    ) -> Self {
        Self {
            topics,
            step_timeout,
            max_attempts,
            metrics,
        }
    }

    fn timeout_ms(&self) -> i64 {
        millis(self.step_timeout)
    }

    /// Starts the saga of a freshly inserted order, in the order's own transaction.
    pub async fn start(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        order: &OrderFacts,
    ) -> Result<(), sqlx::Error> {
        let (saga, command) = Saga::start();
        let (state, stock_done, payment_done) = to_columns(saga.state);
        sqlx::query(
            "INSERT INTO order_sagas (order_id, state, stock_done, payment_done, attempts, deadline_at)
             VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond')",
        )
        .bind(order_id)
        .bind(state)
        .bind(stock_done)
        .bind(payment_done)
        .bind(saga.attempts as i32)
        .bind(self.timeout_ms())
        .execute(&mut *tx)
        .await?;
        self.send(tx, order_id, order, command, None).await
    }

    async fn lock(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
    ) -> Result<SagaRow, OrchestratorError> {
        sqlx::query_as(
            "SELECT s.state, s.stock_done, s.payment_done, s.attempts,
                    o.customer_id, o.total_minor, o.currency, o.created_at
             FROM order_sagas s JOIN orders o ON o.id = s.order_id
             WHERE s.order_id = $1
             FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(OrchestratorError::UnknownOrder(order_id))
    }

    /// Applies `event` to the saga of `order_id` on `tx`. `cause` is the id of the message
    /// that carried the event (none for a deadline).
    pub async fn apply(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        event: &Event,
        cause: Option<&str>,
    ) -> Result<Applied, OrchestratorError> {
        let span = tracing::info_span!(
            "saga.apply",
            otel.name = "saga apply",
            otel.status_code = Empty,
            otel.status_description = Empty,
            "order.id" = %order_id,
            "saga.event" = ?event,
            "saga.state" = Empty,
        );
        let applied = self
            .apply_inner(tx, order_id, event, cause)
            .instrument(span.clone())
            .await;
        match &applied {
            Ok(Applied::Changed { state, decision }) => {
                span.record("saga.state", tracing::field::debug(state));
                // The step that cancels an order is the trace's failed step.
                if let Some(Decision::Cancel { code, reason }) = decision {
                    span.record("otel.status_code", "ERROR");
                    span.record(
                        "otel.status_description",
                        format!("order cancelled ({code}): {reason}"),
                    );
                }
            }
            Ok(Applied::Ignored) => {}
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", error.to_string());
            }
        }
        applied
    }

    async fn apply_inner(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        event: &Event,
        cause: Option<&str>,
    ) -> Result<Applied, OrchestratorError> {
        let row = self.lock(tx, order_id).await?;
        let state =
            from_columns(&row.state, row.stock_done, row.payment_done).ok_or_else(|| {
                OrchestratorError::CorruptState {
                    order_id,
                    detail: format!("unknown state {:?}", row.state),
                }
            })?;
        let saga = Saga {
            state,
            attempts: u32::try_from(row.attempts).unwrap_or(0),
        };
        let Some(transition) = saga.on(event, self.max_attempts) else {
            tracing::debug!(%order_id, ?state, ?event, "event does not apply; ignored");
            return Ok(Applied::Ignored);
        };

        let next = transition.saga;
        let (state_name, stock_done, payment_done) = to_columns(next.state);
        sqlx::query(
            "UPDATE order_sagas SET
                 state = $2, stock_done = $3, payment_done = $4, attempts = $5,
                 deadline_at = CASE
                     WHEN $6 THEN NULL
                     WHEN $7 THEN now() + $8 * interval '1 millisecond'
                     ELSE deadline_at END,
                 updated_at = now()
             WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(state_name)
        .bind(stock_done)
        .bind(payment_done)
        .bind(next.attempts as i32)
        .bind(next.state.is_terminal())
        .bind(transition.restart_deadline)
        .bind(millis(next.step_deadline(self.step_timeout)))
        .execute(&mut *tx)
        .await?;

        if let Some(decision) = &transition.decision {
            self.decide(tx, order_id, &row.order, decision, cause)
                .await?;
        }
        for command in &transition.commands {
            self.send(tx, order_id, &row.order, *command, cause).await?;
        }
        // Counted once every write of the transition has succeeded, so a failed step (rolled
        // back and redelivered) is not counted twice; only a failed commit still can be.
        if let Some(decision) = &transition.decision {
            self.metrics.record(decision, row.order.created_at);
        }
        Ok(Applied::Changed {
            state: next.state,
            decision: transition.decision,
        })
    }

    fn provenance(order_id: Uuid, cause: Option<&str>) -> Provenance {
        Provenance {
            aggregate_id: order_id.to_string(),
            correlation_id: order_id.to_string(),
            causation_id: cause.map(str::to_owned),
            producer: PRODUCER,
        }
    }

    async fn decide(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        order: &OrderFacts,
        decision: &Decision,
        cause: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let topic = &self.topics.orders_events;
        let provenance = Self::provenance(order_id, cause);
        match decision {
            Decision::Confirm => {
                sqlx::query(
                    "UPDATE orders SET status = 'CONFIRMED', updated_at = now() WHERE id = $1",
                )
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
                tracing::info!(%order_id, "order confirmed");
                let event = orders::OrderConfirmed {
                    order_id: order_id.to_string(),
                    customer_id: order.customer_id.clone(),
                    total: Some(Money {
                        amount_minor: order.total_minor,
                        currency: order.currency.clone(),
                    }),
                };
                publish(tx, topic, "order", &event, provenance).await?;
            }
            Decision::Cancel { code, reason } => {
                sqlx::query(
                    "UPDATE orders SET status = 'CANCELLED', cancellation_code = $2,
                            cancellation_reason = $3, updated_at = now()
                     WHERE id = $1",
                )
                .bind(order_id)
                .bind(code.as_str())
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                tracing::info!(%order_id, %code, %reason, "order cancelled");
                let event = orders::OrderCancelled {
                    order_id: order_id.to_string(),
                    customer_id: order.customer_id.clone(),
                    reason: reason.clone(),
                };
                publish(tx, topic, "order", &event, provenance).await?;
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        tx: &mut PgConnection,
        order_id: Uuid,
        order: &OrderFacts,
        command: Command,
        cause: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let id = order_id.to_string();
        let provenance = Self::provenance(order_id, cause);
        let inventory_topic = &self.topics.inventory_commands;
        let payments_topic = &self.topics.payments_commands;
        match command {
            Command::ReserveStock => {
                let lines: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT sku, quantity FROM order_items WHERE order_id = $1 ORDER BY sku",
                )
                .bind(order_id)
                .fetch_all(&mut *tx)
                .await?;
                let items = lines
                    .into_iter()
                    .map(|(sku, quantity)| {
                        u32::try_from(quantity)
                            .map(|quantity| LineItem { sku, quantity })
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let command = inventory::ReserveStock {
                    order_id: id.clone(),
                    items,
                };
                publish(tx, inventory_topic, "order", &command, provenance).await?;
            }
            Command::ReleaseStock => {
                let command = inventory::ReleaseStock {
                    order_id: id.clone(),
                };
                publish(tx, inventory_topic, "order", &command, provenance).await?;
            }
            Command::CommitStock => {
                let command = inventory::CommitStock {
                    order_id: id.clone(),
                };
                publish(tx, inventory_topic, "order", &command, provenance).await?;
            }
            Command::AuthorizePayment => {
                let command = payments::AuthorizePayment {
                    idempotency_key: format!("order:{id}:authorize"),
                    order_id: id.clone(),
                    customer_id: order.customer_id.clone(),
                    amount: Some(Money {
                        amount_minor: order.total_minor,
                        currency: order.currency.clone(),
                    }),
                };
                publish(tx, payments_topic, "order", &command, provenance).await?;
            }
            Command::VoidPayment => {
                let command = payments::VoidPayment {
                    order_id: id.clone(),
                };
                publish(tx, payments_topic, "order", &command, provenance).await?;
            }
            Command::CapturePayment => {
                let command = payments::CapturePayment {
                    order_id: id.clone(),
                };
                publish(tx, payments_topic, "order", &command, provenance).await?;
            }
        }
        Ok(())
    }

    /// Applies `DeadlinePassed` to every saga whose step is overdue, one transaction each;
    /// returns how many were handled. Several checkout instances may sweep at once: each
    /// overdue saga is taken by one of them (`SKIP LOCKED`).
    ///
    /// A saga that cannot be applied (unreadable, or a bug) is pushed back by a delay that
    /// doubles with each failure in a row ([`sweep_backoff`]), counted and logged, and the
    /// sweep goes on: one bad row must not stop deadlines for every other order. Only an
    /// unreachable database ends the sweep early.
    pub async fn sweep(&self, pool: &PgPool) -> Result<usize, OrchestratorError> {
        self.defer_unsent(pool).await?;
        let mut handled = 0;
        loop {
            let mut tx = pool.begin().await?;
            let due: Option<(Uuid, i32)> = sqlx::query_as(
                "SELECT order_id, sweep_failures FROM order_sagas
                 WHERE deadline_at <= now()
                 ORDER BY deadline_at
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some((order_id, failures)) = due else {
                return Ok(handled);
            };
            match self
                .apply(&mut tx, order_id, &Event::DeadlinePassed, None)
                .await
            {
                Ok(applied) => {
                    if failures > 0 {
                        sqlx::query(
                            "UPDATE order_sagas SET sweep_failures = 0 WHERE order_id = $1",
                        )
                        .bind(order_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    tracing::warn!(%order_id, ?applied, "saga step timed out");
                    handled += 1;
                }
                Err(OrchestratorError::Database(error))
                    if faultline_postgres::is_unreachable(&error) =>
                {
                    return Err(error.into());
                }
                Err(error) => {
                    tx.rollback().await?;
                    let failures = u32::try_from(failures).unwrap_or(0).saturating_add(1);
                    let delay = sweep_backoff(self.step_timeout, failures);
                    sqlx::query(
                        "UPDATE order_sagas
                         SET deadline_at = now() + make_interval(secs => $2),
                             sweep_failures = $3
                         WHERE order_id = $1 AND deadline_at IS NOT NULL",
                    )
                    .bind(order_id)
                    .bind(delay.as_secs_f64())
                    .bind(i32::try_from(failures).unwrap_or(i32::MAX))
                    .execute(pool)
                    .await?;
                    self.metrics.sweep_failures.inc();
                    tracing::error!(
                        %order_id,
                        %error,
                        failures,
                        retry_in = ?delay,
                        "cannot apply the saga's deadline; pushed back, sweep goes on"
                    );
                }
            }
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Orchestrator {
    /// Gives every overdue saga whose command is still in the outbox another step timeout,
    /// without counting an attempt: the participant was never asked, so it cannot have
    /// failed to answer. A relay or broker outage then delays orders instead of cancelling
    /// them. Returns how many deadlines were moved.
    async fn defer_unsent(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let deferred = sqlx::query(
            "UPDATE order_sagas s
             SET deadline_at = now() + $2 * interval '1 millisecond'
             WHERE s.deadline_at <= now()
               AND EXISTS (
                   SELECT 1 FROM outbox o
                   WHERE o.aggregateid = s.order_id::text
                     AND o.published_at IS NULL
                     AND o.topic = ANY($1))",
        )
        .bind([
            self.topics.inventory_commands.as_str(),
            self.topics.payments_commands.as_str(),
        ])
        .bind(self.timeout_ms())
        .execute(pool)
        .await?
        .rows_affected();
        if deferred > 0 {
            self.metrics.deadlines_deferred.inc_by(deferred);
            tracing::info!(
                deferred,
                "saga deadlines deferred: their commands are not published yet"
            );
        }
        Ok(deferred)
    }
}

/// How long a saga whose deadline could not be applied waits before the next try: the step
/// timeout, doubled for each failure in a row after the first, at most an hour.
pub fn sweep_backoff(step_timeout: Duration, failures: u32) -> Duration {
    let doubled = step_timeout.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_the_database() {
        let states = [
            State::AwaitingStock,
            State::AwaitingPayment,
            State::Completing {
                stock_committed: true,
                payment_captured: false,
            },
            State::Completing {
                stock_committed: false,
                payment_captured: true,
            },
            State::Compensating {
                stock_released: false,
                payment_voided: true,
            },
            State::Compensating {
                stock_released: true,
                payment_voided: false,
            },
            State::Completed,
            State::Compensated,
        ];
        for state in states {
            let (name, stock, payment) = to_columns(state);
            assert_eq!(from_columns(name, stock, payment), Some(state));
        }
        assert_eq!(from_columns("bogus", false, false), None);
    }

    #[test]
    fn a_failing_saga_waits_longer_each_time_up_to_an_hour() {
        let step = Duration::from_secs(15);
        assert_eq!(sweep_backoff(step, 1), step);
        assert_eq!(sweep_backoff(step, 2), step * 2);
        assert_eq!(sweep_backoff(step, 5), step * 16);
        assert_eq!(sweep_backoff(step, 40), Duration::from_secs(3600));
    }
}
