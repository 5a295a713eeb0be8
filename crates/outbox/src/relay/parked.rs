//! Parked outbox rows: what operators see and re-drive.
//!
//! A row the broker refuses for good is parked by the relay (see [`super::round`]), and every
//! later row of its aggregate on its topic waits behind it. Fix the cause (raise the topic's
//! `max.message.bytes`, create the topic, grant the write), then [`redrive`] the row: the next
//! round publishes it and, behind it, its waiting siblings in their order. A row that should
//! never go out is deleted by hand instead (`DELETE FROM outbox WHERE id = ...`), which
//! releases its siblings the same way.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// One parked row and how many rows wait behind it.
#[derive(Debug, Clone, FromRow)]
pub struct ParkedRow {
    /// The outbox row's id (also the Kafka record's `id` header).
    pub id: Uuid,
    /// Where it was going.
    pub topic: String,
    /// Its key.
    pub aggregateid: String,
    /// Its message type.
    #[sqlx(rename = "type")]
    pub message_type: String,
    /// When the relay parked it.
    pub parked_at: DateTime<Utc>,
    /// What the producer or broker said.
    pub park_error: String,
    /// Later rows of the same aggregate on the same topic, held back until this one goes.
    pub waiting: i64,
}

/// Every parked row, oldest first.
pub async fn parked(pool: &PgPool) -> Result<Vec<ParkedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.topic, p.aggregateid, p.type, p.parked_at,
                coalesce(p.park_error, '') AS park_error,
                (SELECT count(*) FROM outbox w
                 WHERE w.topic = p.topic AND w.aggregateid = p.aggregateid
                   AND w.seq > p.seq AND w.published_at IS NULL) AS waiting
         FROM outbox p
         WHERE p.parked_at IS NOT NULL
         ORDER BY p.seq",
    )
    .fetch_all(pool)
    .await
}

/// Makes the parked row `id` pending again, so the next round publishes it before its
/// waiting siblings. False when no such parked row exists.
pub async fn redrive(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET parked_at = NULL, park_error = NULL
         WHERE id = $1 AND parked_at IS NOT NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 {
        tracing::info!(outbox_id = %id, "parked outbox row re-driven");
    }
    Ok(done.rows_affected() == 1)
}
