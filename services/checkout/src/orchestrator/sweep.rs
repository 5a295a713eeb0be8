//! The sweeper: feeds `DeadlinePassed` to sagas whose step is overdue, isolating each one,
//! and first gives more time to steps whose command never left the outbox.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{Orchestrator, OrchestratorError};
use crate::saga::Event;

impl Orchestrator {
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
    fn a_failing_saga_waits_longer_each_time_up_to_an_hour() {
        let step = Duration::from_secs(15);
        assert_eq!(sweep_backoff(step, 1), step);
        assert_eq!(sweep_backoff(step, 2), step * 2);
        assert_eq!(sweep_backoff(step, 5), step * 16);
        assert_eq!(sweep_backoff(step, 40), Duration::from_secs(3600));
    }
}
