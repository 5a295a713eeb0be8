//! The relay: moves committed outbox rows to Kafka.
//!
//! One round reads up to `batch_size` pending rows in write order, hands them all to the
//! producer at once, waits for every acknowledgement, and deletes (or marks) the acknowledged
//! rows with a single statement.
//!
//! # Several relays, no leader
//!
//! Every outbox row belongs to one of [`SLOTS`] key ranges ("slots", a hash of its aggregate
//! id computed by the database). A relay publishes only the slots it holds a session-level
//! advisory lock on, so one aggregate's rows are never published by two relays at once and
//! its order holds. `SKIP LOCKED` alone would not do: two relays could each take a different
//! row of one aggregate and publish them out of order.
//!
//! Relays announce themselves in `outbox_relays` with a heartbeat. Each works out its fair
//! share, `ceil(SLOTS / live relays)`, and between rounds takes free slots up to that share or
//! gives back what exceeds it. A relay that dies loses its locks with its connection, and the
//! others take its slots once its heartbeat is older than [`RelayConfig::heartbeat_ttl`].
//!
//! If a relay's lock connection drops while a round is in flight, another relay may publish
//! the same rows again. That duplicates, but does not reorder: each relay sends one
//! aggregate's rows in order, so the *first* copy of each row reaches the partition in order,
//! and consumers drop later copies through their inbox.
//!
//! # Waking up
//!
//! The relay wakes on `NOTIFY faultline_outbox` (sent by a trigger when an outbox insert
//! commits) and also polls, so a lost notification costs latency, never a message.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::postgres::PgListener;
use sqlx::{Connection, FromRow, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::trace;

/// Channel the outbox trigger notifies.
pub const NOTIFY_CHANNEL: &str = "faultline_outbox";

/// Number of key ranges; must match the `slot` column's definition in the migrations.
pub const SLOTS: i32 = 64;

/// First key of the advisory locks that guard slots (`pg_advisory_lock(LOCK_CLASS, slot)`).
const LOCK_CLASS: i32 = 0x0f0b_0001;

/// What happens to a row once the broker acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Delete it at once (the default; what change data capture setups do too).
    Delete,
    /// Mark it published and delete it after this long, for audits and replays.
    Keep(Duration),
}

/// How the relay batches, waits and shares slots.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows published per round.
    pub batch_size: i64,
    /// Longest wait between rounds when no notification arrives.
    pub poll_interval: Duration,
    /// Wait after a failed round before the next one.
    pub error_backoff: Duration,
    /// Wake on `NOTIFY` as well as polling. Off only to measure polling alone.
    pub listen: bool,
    /// What happens to published rows.
    pub retention: Retention,
    /// A relay whose heartbeat is older than this no longer counts when shares are computed.
    pub heartbeat_ttl: Duration,
    /// How often the relay heartbeats and rebalances its slots.
    pub rebalance_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            error_backoff: Duration::from_secs(1),
            listen: true,
            retention: Retention::Delete,
            heartbeat_ttl: Duration::from_secs(5),
            rebalance_interval: Duration::from_secs(1),
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

/// How far behind the relays are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Rows not yet published.
    pub pending: i64,
    /// Age of the oldest of them.
    pub oldest: Option<Duration>,
}

/// Rows waiting for a relay, and how old the oldest is; the numbers behind the backlog
/// gauges an operator alerts on.
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (pending, oldest_secs): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        pending,
        oldest: oldest_secs.map(|s| Duration::from_secs_f64(s.max(0.0))),
    })
}

#[derive(Debug, FromRow)]
struct Row {
    id: Uuid,
    aggregateid: String,
    #[sqlx(rename = "type")]
    message_type: String,
    topic: String,
    payload: Vec<u8>,
    headers: sqlx::types::Json<BTreeMap<String, String>>,
}

/// Publishes outbox rows to Kafka. See the module docs.
pub struct Relay {
    id: Uuid,
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
    /// The session that holds this relay's slot locks; `None` after it was lost.
    locks: Option<PgConnection>,
    owned: BTreeSet<i32>,
    last_rebalance: Option<Instant>,
    last_purge: Option<Instant>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("owned_slots", &self.owned.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay reading from `pool` and publishing through `producer`, which should be built
    /// from [`crate::kafka::producer_config`].
    pub fn new(pool: PgPool, producer: FutureProducer, config: RelayConfig) -> Self {
        Self {
            id: Uuid::now_v7(),
            pool,
            producer,
            config,
            locks: None,
            owned: BTreeSet::new(),
            last_rebalance: None,
            last_purge: None,
        }
    }

    /// This relay's id in `outbox_relays`.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The slots this relay currently publishes.
    pub fn owned_slots(&self) -> &BTreeSet<i32> {
        &self.owned
    }

    /// Runs rounds until `shutdown` is cancelled, then gives its slots back and flushes the
    /// producer.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut listener = if self.config.listen {
            listen(&self.pool).await
        } else {
            None
        };

        while !shutdown.is_cancelled() {
            let wait = match self.tick().await {
                Ok(()) => self
                    .config
                    .poll_interval
                    .min(self.config.rebalance_interval),
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
        self.leave().await;
        if let Err(error) = self.producer.flush(Duration::from_secs(5)) {
            tracing::warn!(%error, "producer flush on shutdown failed");
        }
        tracing::info!("outbox relay stopped");
    }

    /// One pass of the loop: rebalance when due, publish until the owned slots are empty,
    /// purge when due.
    pub async fn tick(&mut self) -> Result<(), RelayError> {
        let due = self
            .last_rebalance
            .is_none_or(|at| at.elapsed() >= self.config.rebalance_interval);
        if due {
            self.rebalance().await?;
            self.last_rebalance = Some(Instant::now());
        }
        self.drain().await?;
        if let Retention::Keep(keep) = self.config.retention {
            let due = self
                .last_purge
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
            if due {
                let purged = purge_published(&self.pool, keep).await?;
                if purged > 0 {
                    tracing::info!(purged, "purged published outbox rows");
                }
                self.last_purge = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Heartbeats, then takes free slots up to this relay's fair share or gives back what
    /// exceeds it.
    pub async fn rebalance(&mut self) -> Result<(), sqlx::Error> {
        let ttl_ms = i64::try_from(self.config.heartbeat_ttl.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO outbox_relays (id, heartbeat_at) VALUES ($1, now())
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(self.id)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM outbox_relays WHERE heartbeat_at < now() - 10 * $1 * interval '1 millisecond'",
        )
        .bind(ttl_ms)
        .execute(&self.pool)
        .await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_relays
             WHERE heartbeat_at >= now() - $1 * interval '1 millisecond'",
        )
        .bind(ttl_ms)
        .fetch_one(&self.pool)
        .await?;
        let live = i32::try_from(live.max(1)).unwrap_or(i32::MAX);
        let share = usize::try_from((SLOTS + live - 1) / live).unwrap_or(1);

        if self.locks.is_none() {
            // A new session holds no locks; forget what the old one held.
            self.owned.clear();
            self.locks = Some(self.pool.acquire().await?.detach());
        }
        let result = self.adjust(share).await;
        if result.is_err() {
            // The lock session is unusable; its locks die with it.
            self.locks = None;
            self.owned.clear();
        }
        result
    }

    async fn adjust(&mut self, share: usize) -> Result<(), sqlx::Error> {
        let Some(locks) = self.locks.as_mut() else {
            return Ok(());
        };
        while self.owned.len() > share {
            let Some(slot) = self.owned.pop_last() else {
                break;
            };
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(LOCK_CLASS)
                .bind(slot)
                .execute(&mut *locks)
                .await?;
        }
        if self.owned.len() < share {
            // Start at a relay-specific slot so relays starting together do not all race for
            // slot 0.
            let start = (self.id.as_u128() % SLOTS as u128) as i32;
            for i in 0..SLOTS {
                if self.owned.len() >= share {
                    break;
                }
                let slot = (start + i) % SLOTS;
                if self.owned.contains(&slot) {
                    continue;
                }
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(LOCK_CLASS)
                    .bind(slot)
                    .fetch_one(&mut *locks)
                    .await?;
                if locked {
                    self.owned.insert(slot);
                }
            }
        }
        Ok(())
    }

    /// Publishes rounds until the owned slots have no pending rows.
    pub async fn drain(&self) -> Result<(), RelayError> {
        while self.relay_once().await? == self.config.batch_size as usize {}
        Ok(())
    }

    /// Publishes one round from the owned slots; returns the number of rows published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        if self.owned.is_empty() {
            return Ok(0);
        }
        let slots: Vec<i32> = self.owned.iter().copied().collect();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, aggregateid, type, topic, payload, headers
             FROM outbox
             WHERE published_at IS NULL AND slot = ANY($1)
             ORDER BY seq
             LIMIT $2",
        )
        .bind(&slots)
        .bind(self.config.batch_size)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        let results = join_all(rows.iter().map(|row| self.publish(row))).await;

        // Settle an acknowledged row only if no earlier row of the same aggregate failed:
        // the failed row will be published again and its successors must follow it.
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

        match self.config.retention {
            Retention::Delete => sqlx::query("DELETE FROM outbox WHERE id = ANY($1)"),
            Retention::Keep(_) => {
                sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            }
        }
        .bind(&delivered)
        .execute(&self.pool)
        .await?;
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
        let span = tracing::info_span!(
            "outbox.publish",
            otel.name = %format!("{} publish", row.topic),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            "messaging.system" = "kafka",
            "messaging.operation.type" = "send",
            "messaging.destination.name" = %row.topic,
            "messaging.message.id" = %row.id,
            "messaging.kafka.message.key" = %row.aggregateid,
        );
        trace::adopt(
            &span,
            row.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let carried = trace::headers_of(&span);

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
        // The row's own trace headers are replaced by the relay span's context, which is
        // their child; without one (no OpenTelemetry here) they go out as written, so the
        // consumer still joins the writer's trace.
        for (key, value) in row.headers.iter() {
            if carried.is_empty() || !trace::TRACE_HEADERS.contains(&key.as_str()) {
                headers = headers.insert(Header {
                    key: key.as_str(),
                    value: Some(value.as_str()),
                });
            }
        }
        for (key, value) in &carried {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_str()),
            });
        }
        let record = FutureRecord::to(&row.topic)
            .key(row.aggregateid.as_bytes())
            .payload(row.payload.as_slice())
            .headers(headers);
        let delivered = async {
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
        .instrument(span.clone())
        .await;
        if delivered.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        delivered
    }

    /// Gives the slots back and removes the heartbeat, so peers take over at once.
    async fn leave(&mut self) {
        if let Some(mut locks) = self.locks.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut locks)
                .await;
            let _ = locks.close().await;
        }
        self.owned.clear();
        let _ = sqlx::query("DELETE FROM outbox_relays WHERE id = $1")
            .bind(self.id)
            .execute(&self.pool)
            .await;
    }
}

/// Deletes rows published longer than `keep` ago, in batches; returns how many.
pub async fn purge_published(pool: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let mut purged = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE published_at < now() - $1 * interval '1 millisecond'
                 LIMIT 5000)",
        )
        .bind(keep_ms)
        .execute(pool)
        .await?
        .rows_affected();
        purged += deleted;
        if deleted < 5000 {
            return Ok(purged);
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    match PgListener::connect_with(pool).await {
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
