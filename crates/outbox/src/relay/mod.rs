//! The relay: moves committed outbox rows to Kafka.
//!
//! One round ([`round`]) reads up to `batch_size` pending rows in write order, hands them
//! all to the producer at once, waits for every acknowledgement, and deletes (or marks) the
//! acknowledged rows with a single statement. A row the broker refuses for good is parked
//! ([`parked`]) instead of blocking every round after it.
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
//! share, `ceil(SLOTS / live relays)`, and takes free slots up to that share or gives back
//! what exceeds it ([`slots`]). A relay that dies loses its locks with its session: at once
//! when its connection closes, and within [`RelayConfig::lock_session_idle_timeout`] when it
//! froze or was cut off without a word (the server ends a lock session that goes idle). The
//! others take its slots once its heartbeat is older than [`RelayConfig::heartbeat_ttl`].
//! Each round reads only from slots its session holds at that moment, so a relay that lost
//! its session stops publishing with its next statement.
//!
//! If a relay's lock session is lost while a round is in flight, another relay may publish
//! the same rows again. That duplicates, but does not reorder: each relay sends one
//! aggregate's rows in order, so the *first* copy of each row reaches the partition in order,
//! and consumers drop later copies through their inbox.
//!
//! # Waking up
//!
//! The relay wakes on `NOTIFY faultline_outbox` (sent by a trigger when an outbox insert
//! commits) and also polls, so a lost notification costs latency, never a message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod parked;
mod round;
mod slots;

pub use parked::{ParkedRow, parked, redrive};
pub use round::{RoundOutcome, is_permanent};

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
    /// The server ends the lock session after it was idle this long, freeing the slots of a
    /// relay that froze or lost its network. Peers take those slots over within about this
    /// plus `heartbeat_ttl`. Must exceed `delivery_patience` and the time between rounds.
    pub lock_session_idle_timeout: Duration,
    /// While a round waits for the broker, how often it checks (and so touches) its lock
    /// session and logs that it is still waiting.
    pub delivery_patience: Duration,
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
            lock_session_idle_timeout: Duration::from_secs(10),
            delivery_patience: Duration::from_secs(2),
        }
    }
}

/// Why a relay round failed. Rows stay in the outbox and the next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or deleting outbox rows failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The session holding the slot locks failed (terminated, reset, ended by the server
    /// while this process was frozen): its slots may be another relay's now, so this one
    /// publishes nothing until it has locked slots again.
    #[error("the slot lock session was lost: {0}")]
    LockSessionLost(#[source] sqlx::Error),
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
    /// Rows not yet published (parked ones not included).
    pub pending: i64,
    /// Age of the oldest of them.
    pub oldest: Option<Duration>,
    /// Rows the broker refused for good, waiting for an operator ([`parked`]).
    pub parked: i64,
}

/// Rows waiting for a relay, how old the oldest is, and how many are parked; the numbers
/// behind the backlog gauges an operator alerts on.
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (pending, oldest_secs, parked): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE parked_at IS NULL),
                extract(epoch FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL))::float8,
                count(*) FILTER (WHERE parked_at IS NOT NULL)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        pending,
        oldest: oldest_secs.map(|s| Duration::from_secs_f64(s.max(0.0))),
        parked,
    })
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
            // A round waits for the broker as long as it is away (see `round`); shutdown
            // abandons it, and the rows it had sent stay pending for whoever comes next.
            let ticked = tokio::select! {
                _ = shutdown.cancelled() => break,
                ticked = self.tick() => ticked,
            };
            let wait = match ticked {
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
        if self.rebalance_due() {
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

    /// Publishes rounds until the owned slots have no pending rows, rebalancing when due
    /// on the way, so a long backlog neither keeps slots a newcomer should get nor publishes
    /// from a lock session that was lost meanwhile.
    pub async fn drain(&mut self) -> Result<(), RelayError> {
        loop {
            let outcome = self.relay_once().await?;
            if outcome.read < self.config.batch_size as usize {
                return Ok(());
            }
            if self.rebalance_due() {
                self.rebalance().await?;
                self.last_rebalance = Some(Instant::now());
            }
        }
    }

    fn rebalance_due(&self) -> bool {
        self.last_rebalance
            .is_none_or(|at| at.elapsed() >= self.config.rebalance_interval)
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
