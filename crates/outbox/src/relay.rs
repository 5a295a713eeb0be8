//! The relay: moves committed outbox rows to Kafka.
//!
//! One round reads up to `batch_size` rows in write order, hands them all to the producer at
//! once, waits for every acknowledgement, and deletes the acknowledged rows with a single
//! statement in the same transaction that read them.
//!
//! Several instances of a service may run the relay against one database. A
//! transaction-scoped advisory lock lets only one of them publish at a time, which is what
//! keeps rows of one aggregate in order (`SKIP LOCKED` would let two relays publish one
//! aggregate's rows out of order). The lock is released when the round's transaction ends,
//! so a relay that dies mid-round hands over at once.
//!
//! The relay wakes on `NOTIFY faultline_outbox` (sent by a trigger when an outbox insert
//! commits) and also polls, so a lost notification costs latency, never a message.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::postgres::PgListener;
use sqlx::{FromRow, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Channel the outbox trigger notifies.
pub const NOTIFY_CHANNEL: &str = "faultline_outbox";

/// Key of the advisory lock that serialises relays of one database.
const RELAY_LOCK_KEY: i64 = 0x0f0b_0c0d_7265_6c61; // "relay", roughly

/// How the relay batches and waits.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows published per round.
    pub batch_size: i64,
    /// Longest wait between rounds when no notification arrives.
    pub poll_interval: Duration,
    /// Wait after a failed round before the next one.
    pub error_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            error_backoff: Duration::from_secs(1),
        }
    }
}

/// Why a relay round failed. Rows stay in the outbox and the next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or deleting outbox rows failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Some rows were not acknowledged by the broker.
    #[error("{failed} of {total} messages were not acknowledged: {first_error}")]
    Delivery {
        /// Rows that stay in the outbox.
        failed: usize,
        /// Rows in the round.
        total: usize,
        /// The first error seen.
        first_error: KafkaError,
    },
}

#[derive(Debug, FromRow)]
struct Row {
    id: Uuid,
    aggregateid: String,
    #[sqlx(rename = "type")]
    message_type: String,
    topic: String,
    payload: Vec<u8>,
    headers: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
}

/// Publishes outbox rows to Kafka. See the module docs.
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
}

impl Relay {
    /// A relay reading from `pool` and publishing through `producer`, which should be built
    /// from [`crate::kafka::producer_config`].
    pub fn new(pool: PgPool, producer: FutureProducer, config: RelayConfig) -> Self {
        Self {
            pool,
            producer,
            config,
        }
    }

    /// Runs rounds until `shutdown` is cancelled, then flushes the producer.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN; relay falls back to polling");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot open LISTEN connection; relay falls back to polling");
                None
            }
        };

        while !shutdown.is_cancelled() {
            let wait = match self.drain().await {
                Ok(()) => self.config.poll_interval,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay round failed; will retry");
                    self.config.error_backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait_for_notification(listener.as_mut(), wait) => {}
            }
        }

        // Rows acknowledged are already deleted; anything still queued in the producer is
        // flushed so a clean shutdown does not leave a round half-acknowledged.
        if let Err(error) = self.producer.flush(Duration::from_secs(5)) {
            tracing::warn!(%error, "producer flush on shutdown failed");
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes rounds until the outbox is empty (or another relay holds the lock).
    pub async fn drain(&self) -> Result<(), RelayError> {
        while self.relay_once().await? == self.config.batch_size as usize {}
        Ok(())
    }

    /// Publishes one round; returns the number of rows published and deleted.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, aggregateid, type, topic, payload, headers
             FROM outbox ORDER BY seq LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        let results = join_all(rows.iter().map(|row| self.publish(row))).await;

        // Delete an acknowledged row only if no earlier row of the same aggregate failed:
        // the failed row will be published again and its successor must follow it.
        let mut blocked_aggregates = HashSet::new();
        let mut delivered = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) if !blocked_aggregates.contains(row.aggregateid.as_str()) => {
                    delivered.push(row.id);
                }
                Ok(()) => {}
                Err(error) => {
                    blocked_aggregates.insert(row.aggregateid.as_str());
                    first_error.get_or_insert(error);
                }
            }
        }

        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&delivered)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(published = delivered.len(), "outbox round done");

        match first_error {
            None => Ok(delivered.len()),
            Some(first_error) => Err(RelayError::Delivery {
                failed: rows.len() - delivered.len(),
                total: rows.len(),
                first_error,
            }),
        }
    }

    async fn publish(&self, row: &Row) -> Result<(), KafkaError> {
        let id = row.id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(row.headers.len() + 2)
            .insert(Header {
                key: "id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "type",
                value: Some(row.message_type.as_str()),
            });
        for (key, value) in row.headers.iter() {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_str()),
            });
        }
        let record = FutureRecord::to(&row.topic)
            .key(row.aggregateid.as_bytes())
            .payload(row.payload.as_slice())
            .headers(headers);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(error, _record)| error)?;
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _message))) => Err(error),
            Err(_canceled) => Err(KafkaError::Canceled),
        }
    }
}

async fn wait_for_notification(listener: Option<&mut PgListener>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    if let Some(listener) = listener {
        match tokio::time::timeout_at(deadline, listener.try_recv()).await {
            Ok(Ok(Some(_notification))) => return,
            // Timed out: time to poll.
            Err(_elapsed) => return,
            // The LISTEN connection dropped (`Ok(None)`) or failed; it reconnects on the next
            // call. Sleep out the interval so a dead connection cannot spin this loop.
            Ok(Ok(None)) | Ok(Err(_)) => {}
        }
    }
    tokio::time::sleep_until(deadline).await;
}
