//! The inbox: which messages a consumer has already finished with.
//!
//! The row is written in the same transaction as the message's effect. If the transaction
//! commits, the message is done for good; if it rolls back, so does the row, and the
//! redelivered message is processed afresh.

use sqlx::PgConnection;

/// How a consumer finished with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect committed.
    Processed,
    /// It could not be processed and went to the dead-letter topic.
    Parked,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Parked => "parked",
        }
    }
}

/// Where a message came from, for the inbox row and for operators reading it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// Claims `event_id` for `consumer` on `conn` (the transaction of the message's effect).
/// Returns `false` when the message was already finished, in which case the caller must not
/// apply its effect again.
pub async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: &str,
    origin: Origin<'_>,
    outcome: Outcome,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        r#"INSERT INTO inbox (consumer, event_id, topic, partition, "offset", outcome, error)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (consumer, event_id) DO NOTHING"#,
    )
    .bind(consumer)
    .bind(event_id)
    .bind(origin.topic)
    .bind(origin.partition)
    .bind(origin.offset)
    .bind(outcome.as_str())
    .bind(error)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
