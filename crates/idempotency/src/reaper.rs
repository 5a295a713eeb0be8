//! Deleting expired keys, on a schedule.
//!
//! Expired keys are also ignored at claim time, so the reaper only keeps the table small; it
//! deletes in batches to keep each statement (and its locks) short.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 5_000;

/// Deletes every expired key; returns how many.
pub async fn reap(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN (
                 SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
        )
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += batch;
        if batch < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Runs [`reap`] every `interval` until `shutdown` is cancelled.
pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match reap(&pool).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(%error, "idempotency reaper failed; will retry"),
        }
    }
}
