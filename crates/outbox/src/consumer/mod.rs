//! The consumer loop: Kafka records in, one database transaction per record.
//!
//! For each record the loop opens a transaction, claims the record's event id in the inbox,
//! lets the [`Handler`] apply the effect (and write replies to the outbox) on that same
//! transaction, and commits. Only then does it store the record's offset, which the client
//! commits to the broker in the background. Whatever crashes where, a record is either
//! finished exactly once in the database or delivered again and finished then.
//!
//! Failures are sorted by what retrying can achieve:
//! - [`HandlerError::Permanent`] (the record cannot be decoded, or names something that can
//!   never be valid): parked at once.
//! - The database is unreachable, or the handler says a dependency is
//!   ([`HandlerError::Unavailable`]): retried with capped exponential backoff for as long as
//!   it takes. The partition waits, which is the right backpressure: nothing else could be
//!   processed either.
//! - Anything else (a deadlock, a bug tripping a constraint): retried up to
//!   [`ConsumerSettings::max_attempts`] times, then parked, so one bad record cannot stall
//!   its partition forever.
//! - A handler that panics: parked at once with the panic's message, counted
//!   ([`ConsumerStats::panics`]) and logged; the lane goes on with the next record.
//!
//! Parking writes the inbox row (outcome `parked`) and an outbox row for the dead-letter
//! topic, carrying the original bytes and the error in headers, in one transaction. The
//! record is logged with its offset, never silently dropped.
//!
//! Each partition has its own lane: a task that processes the partition's records one at a
//! time, in order, so per-key order holds while partitions proceed in parallel. A lane holds
//! at most [`ConsumerSettings::max_in_flight_per_partition`] records. When it is full the
//! partition is paused, the few records the client had already fetched are held back, and
//! the partition resumes once the lane has drained to half: a slow database slows
//! consumption instead of growing memory.
//!
//! A [watchdog](watchdog) beside the loop notices a group member that has work and makes no
//! progress, or partitions nobody consumes, and replaces the Kafka consumer with a new
//! member; if that does not help, [`ConsumerHealth`] fails readiness and then liveness.
//!
//! The parts: [`lanes`] (one task per partition), [`worker`] (one record: transaction,
//! retries, parking), [`group`] (what the client reports), [`watchdog`] and [`probe`].

mod group;
mod lanes;
mod probe;
pub mod watchdog;
mod worker;

pub use group::{ConsumerObserver, ConsumerStats, GroupState, KafkaConsumer, StatsSnapshot};
pub use watchdog::{ConsumerHealth, StallPolicy};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::inbox::Origin;
use lanes::Lanes;
use watchdog::Watchdog;
use worker::Worker;

/// A record received from Kafka, owned so the handler can keep it across awaits.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The record key, if any.
    pub key: Option<Vec<u8>>,
    /// The record value (empty for a tombstone).
    pub payload: Vec<u8>,
    /// Headers in record order; values that are not present are left out.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The inbox key: the `id` header written by [`crate::Relay`], or
    /// `topic:partition:offset` for records that came from elsewhere.
    pub event_id: String,
}

impl Incoming {
    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let mut headers = Vec::new();
        if let Some(borrowed) = message.headers() {
            for header in borrowed.iter() {
                if let Some(value) = header.value {
                    headers.push((header.key.to_owned(), value.to_vec()));
                }
            }
        }
        let event_id = headers
            .iter()
            .find(|(key, _)| key == "id")
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "{}:{}:{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            });
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            event_id,
        }
    }

    /// The first header called `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    fn origin(&self) -> Origin<'_> {
        Origin {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Why a handler could not process a record.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Retrying can never succeed: park the record.
    #[error("{0}")]
    Permanent(String),
    /// Might succeed later: retry, then park after too many attempts.
    #[error("{0}")]
    Transient(String),
    /// A dependency the handler needs is down (a payment provider, say): retry without
    /// limit, like an unreachable database. The partition waits.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// A database error; retried, without limit if the database is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Applies one record's effect, in two steps.
///
/// 1. [`Handler::prepare`] runs first, with no transaction open and no connection held: the
///    place for a call to another system (a payment provider). It may run more than once
///    for one record (a redelivery, a retry, a duplicate that step 2 then skips), so it must
///    be idempotent by the record, with its own recovery points if it writes. Most handlers
///    need nothing here: `type Prepared = ()`.
/// 2. [`Handler::handle`] gets what `prepare` returned and the record's transaction, which
///    also holds its inbox row. It must do all its writes on `tx` and nothing irreversible
///    outside it; the loop commits. Replies go through [`crate::enqueue`] on the same `tx`.
///
/// The split is what keeps a slow dependency from holding a pooled connection per lane:
/// with as many busy partitions as connections, a handler that called out inside `tx` and
/// needed a second connection would deadlock the pool.
pub trait Handler: Send + Sync {
    /// What `prepare` found out, for `handle`.
    type Prepared: Send;

    /// The record's work outside the database (see the trait docs).
    fn prepare(
        &self,
        message: &Incoming,
    ) -> impl Future<Output = Result<Self::Prepared, HandlerError>> + Send;

    /// Processes `message` on `tx`.
    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How the loop names itself, where it parks records and how it retries.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The inbox's consumer name; one per logical consumer (usually the group id).
    pub name: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Where parked records go.
    pub dead_letter_topic: String,
    /// Attempts for errors that are neither permanent nor an unreachable database.
    pub max_attempts: u32,
    /// First retry delay; doubled each attempt up to `max_backoff`, with full jitter.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Records a partition's lane holds before the partition is paused.
    pub max_in_flight_per_partition: usize,
    /// Where the loop counts what it did; clone it before [`run`] to read it while it runs.
    pub stats: Arc<ConsumerStats>,
    /// When a member that makes no progress is replaced, and when it gives up.
    pub stall: StallPolicy,
    /// The watchdog's verdict, for readiness and liveness; clone it before [`run`].
    pub health: Arc<ConsumerHealth>,
}

impl ConsumerSettings {
    /// Settings with the default retry policy (5 attempts, 100 ms doubling to 5 s), 64
    /// records in flight per partition and the default [`StallPolicy`].
    pub fn new(
        name: impl Into<String>,
        topics: Vec<String>,
        dead_letter_topic: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            topics,
            dead_letter_topic: dead_letter_topic.into(),
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_in_flight_per_partition: 64,
            stats: Arc::default(),
            stall: StallPolicy::default(),
            health: Arc::default(),
        }
    }
}

/// Why the loop stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The Kafka consumer could not be created from its configuration.
    #[error("cannot create the kafka consumer: {0}")]
    Create(KafkaError),
    /// Subscribing failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(KafkaError),
}

/// How one group member's session ended.
enum Ended {
    Shutdown,
    Replace,
}

/// Consumes `settings.topics` until `shutdown` is cancelled; see the module docs.
///
/// `config` should come from [`crate::kafka::consumer_config`]; the loop creates the Kafka
/// consumer from it with `observer` as its context, and creates it again whenever the
/// watchdog replaces the member. On shutdown the loop stops fetching, every partition lane
/// finishes the record in hand (one still waiting on a retry is left for redelivery, as are
/// records queued behind it), stored offsets are committed synchronously, and the consumer
/// leaves its group (unless it is a static member, `group.instance.id`: that one keeps its
/// membership for the process that starts next under the same id).
pub async fn run<H: Handler + 'static>(
    mut config: ClientConfig,
    observer: ConsumerObserver,
    pool: PgPool,
    handler: H,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> Result<Arc<ConsumerStats>, ConsumerError> {
    let stats = settings.stats.clone();
    let mut watchdog = Watchdog::new(settings.stall, Instant::now());
    let worker = Arc::new(Worker {
        pool,
        handler,
        settings,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        in_hand: AtomicUsize::new(0),
    });
    let static_id = config.get("group.instance.id").map(str::to_owned);
    let mut replaced = 0_u32;
    loop {
        // A replacement must be a new member. Under the old static id the coordinator hands
        // the old membership and assignment back without a rebalance, and a rebalance is
        // what the watchdog replaces the member to get; the old id expires with its session.
        if let (Some(id), 1..) = (&static_id, replaced) {
            config.set("group.instance.id", format!("{id}.{replaced}"));
        }
        observer.state().reset();
        worker.in_hand.store(0, Ordering::Relaxed);
        let consumer: KafkaConsumer = config
            .create_with_context(observer.clone())
            .map_err(ConsumerError::Create)?;
        let topics: Vec<&str> = worker.settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(ConsumerError::Subscribe)?;
        tracing::info!(consumer = %worker.settings.name, topics = ?worker.settings.topics, "consumer started");

        let consumer = Arc::new(consumer);
        let (ended, returned) = session(&consumer, &worker, &observer, watchdog).await;
        watchdog = returned;
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "final offset commit failed"),
        }
        consumer.unsubscribe();
        // Closing a consumer waits for the broker to acknowledge the leave: not on a
        // runtime thread.
        if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::warn!(%error, "closing the kafka consumer failed");
        }
        match ended {
            Ended::Shutdown => break,
            Ended::Replace => {
                ConsumerStats::bump(&stats.recreations);
                replaced = replaced.saturating_add(1);
            }
        }
    }
    let done = stats.snapshot();
    tracing::info!(
        processed = done.processed,
        duplicates = done.duplicates,
        parked = done.parked,
        pauses = done.pauses,
        recreations = done.recreations,
        "consumer stopped"
    );
    Ok(stats)
}

/// Runs one group member: receives records into lanes until shutdown or until the watchdog
/// asks for a new member, then stops the lanes accordingly.
async fn session<H: Handler + 'static>(
    consumer: &Arc<KafkaConsumer>,
    worker: &Arc<Worker<H>>,
    observer: &ConsumerObserver,
    watchdog: Watchdog,
) -> (Ended, Watchdog) {
    let shutdown = worker.shutdown.clone();
    let (stop_watching, replace) = (CancellationToken::new(), CancellationToken::new());
    let watcher = tokio::spawn(probe::watch(
        consumer.clone(),
        worker.clone(),
        observer.state(),
        watchdog,
        stop_watching.clone(),
        replace.clone(),
    ));
    let mut lanes = Lanes::new(worker.clone(), consumer.clone());
    let mut resume_check = tokio::time::interval(Duration::from_millis(20));
    resume_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let ended = loop {
        tokio::select! {
            // Shutdown wins over a ready record, so none is dispatched after it was asked for.
            biased;
            _ = shutdown.cancelled() => break Ended::Shutdown,
            _ = replace.cancelled() => break Ended::Replace,
            _ = resume_check.tick() => lanes.resume_drained(),
            received = consumer.recv() => match received {
                Ok(message) => lanes.dispatch(&message),
                Err(error) => {
                    // Broker-side trouble (a partition leader moving, a broker restarting) is
                    // reported here; librdkafka reconnects by itself, and the watchdog acts
                    // if it never does.
                    tracing::warn!(%error, "kafka receive error");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ended::Shutdown,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            },
        }
    };
    match &ended {
        Ended::Shutdown => lanes.finish().await,
        Ended::Replace => lanes.abandon().await,
    }
    stop_watching.cancel();
    let watchdog = match watcher.await {
        Ok(watchdog) => watchdog,
        Err(error) => {
            tracing::error!(%error, "consumer watchdog panicked; starting a new one");
            Watchdog::new(worker.settings.stall, Instant::now())
        }
    };
    (ended, watchdog)
}
