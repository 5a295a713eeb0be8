//! The saga orchestrator: applies an event to an order's saga inside a transaction.
//!
//! [`Orchestrator::apply`] locks the saga and order rows, asks [`crate::saga`] what the
//! event means, and writes the new saga state, the order's status and every resulting
//! command (through the outbox) in the caller's transaction, which also holds the event's
//! inbox row. Either all of it happens or none of it does.
//!
//! [`Orchestrator::sweep`] feeds `DeadlinePassed` to sagas whose step has timed out
//! ([`sweep`]); [`columns`] is how a saga is stored, [`messages`] what it sends, [`metrics`]
//! what is counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use tracing::Instrument;
use tracing::field::Empty;
use uuid::Uuid;

use crate::saga::{Decision, Event, Saga, State};

mod columns;
mod messages;
mod metrics;
mod sweep;

use columns::{SagaRow, from_columns, to_columns};
pub use metrics::SagaMetrics;
pub use sweep::sweep_backoff;

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
    pub currency: String,
    /// When it was placed, for the saga's duration.
    pub created_at: DateTime<Utc>,
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
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
