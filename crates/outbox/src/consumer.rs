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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::inbox::{self, Origin, Outcome};
use crate::message::{OutboxMessage, enqueue};
use crate::trace;

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

/// Applies one record's effect inside the transaction it is given.
///
/// The handler must do all its writes on `tx` and nothing irreversible outside it; the loop
/// commits. Replies go through [`crate::enqueue`] on the same `tx`.
pub trait Handler: Send + Sync {
    /// Processes `message` on `tx`.
    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
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
}

impl ConsumerSettings {
    /// Settings with the default retry policy (5 attempts, 100 ms doubling to 5 s) and 64
    /// records in flight per partition.
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
        }
    }
}

/// What the consumer's client reported about its group membership and lag, shared with
/// readiness checks and metrics.
#[derive(Debug, Default)]
pub struct GroupState {
    joined: AtomicBool,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl GroupState {
    /// True once the consumer has joined its group and received an assignment (possibly
    /// empty, when the group has more members than partitions).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// Records behind the end of each assigned partition, from the client's last statistics
    /// (`statistics.interval.ms`).
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        self.lag.lock().map(|lag| lag.clone()).unwrap_or_default()
    }
}

/// The consumer context [`run`] expects: logs partition assignments, which is most of what
/// an operator wants to know when a group rebalances, and keeps [`GroupState`] current.
#[derive(Debug, Default, Clone)]
pub struct ConsumerObserver {
    state: Arc<GroupState>,
}

impl ConsumerObserver {
    /// The state this observer keeps.
    pub fn state(&self) -> Arc<GroupState> {
        self.state.clone()
    }
}

impl ClientContext for ConsumerObserver {
    fn stats(&self, statistics: Statistics) {
        let mut lag = BTreeMap::new();
        for (topic, stats) in statistics.topics {
            for (partition, stats) in stats.partitions {
                // Partition -1 is the client's internal "unassigned" bucket; a lag of -1
                // means not known yet.
                if partition >= 0 && stats.consumer_lag >= 0 {
                    lag.insert((topic.clone(), partition), stats.consumer_lag);
                }
            }
        }
        if let Ok(mut current) = self.state.lag.lock() {
            *current = lag;
        }
    }
}

impl ConsumerContext for ConsumerObserver {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.state.joined.store(true, Ordering::Relaxed);
                tracing::info!(partitions = %describe(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a consumer loop did, for logs, metrics and tests. Counters only grow.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Records whose effect committed.
    pub processed: AtomicU64,
    /// Redeliveries skipped because the inbox already had them.
    pub duplicates: AtomicU64,
    /// Records parked on the dead-letter topic.
    pub parked: AtomicU64,
    /// Times a partition was paused because its lane was full.
    pub pauses: AtomicU64,
}

impl ConsumerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.processed.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.parked.load(Ordering::Relaxed),
            self.pauses.load(Ordering::Relaxed),
        ]
    }
}

/// The consumer type [`run`] expects.
pub type KafkaConsumer = StreamConsumer<ConsumerObserver>;

/// Why the loop stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Subscribing failed.
    #[error("cannot subscribe: {0}")]
    Subscribe(KafkaError),
}

/// Consumes `settings.topics` until `shutdown` is cancelled; see the module docs.
///
/// `consumer` should be built from [`crate::kafka::consumer_config`] with a
/// [`ConsumerObserver`]. On shutdown the loop stops fetching, every partition lane finishes the
/// record in hand (one still waiting on a retry is left for redelivery, as are records queued
/// behind it), stored offsets are committed synchronously, and the consumer leaves its group.
pub async fn run<H: Handler + 'static>(
    consumer: KafkaConsumer,
    pool: PgPool,
    handler: H,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> Result<Arc<ConsumerStats>, ConsumerError> {
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(ConsumerError::Subscribe)?;
    tracing::info!(consumer = %settings.name, topics = ?settings.topics, "consumer started");

    let consumer = Arc::new(consumer);
    let capacity = settings.max_in_flight_per_partition.max(1);
    let stats = settings.stats.clone();
    let worker = Arc::new(Worker {
        pool,
        handler,
        settings,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
    });
    let mut lanes: HashMap<(String, i32), Lane> = HashMap::new();
    let mut resume_check = tokio::time::interval(Duration::from_millis(20));
    resume_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            // Shutdown wins over a ready record, so none is dispatched after it was asked for.
            biased;
            _ = shutdown.cancelled() => break,
            _ = resume_check.tick() => resume_drained(&consumer, &mut lanes, capacity),
            received = consumer.recv() => match received {
                Ok(message) => dispatch(&consumer, &worker, &mut lanes, capacity, &message),
                Err(error) => {
                    // Broker-side trouble (a partition leader moving, a broker restarting) is
                    // reported here; librdkafka reconnects by itself.
                    tracing::warn!(%error, "kafka receive error");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            },
        }
    }

    // No more dispatching; each lane finishes its record in hand, then offsets are committed.
    for (_, lane) in lanes.drain() {
        drop(lane.sender);
        if let Err(error) = lane.task.await {
            tracing::error!(%error, "partition lane panicked");
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(%error, "final offset commit failed"),
    }
    consumer.unsubscribe();
    let [processed, duplicates, parked, pauses] = stats.snapshot();
    tracing::info!(processed, duplicates, parked, pauses, "consumer stopped");
    Ok(stats)
}

/// The records of one partition on their way through one task, in order.
struct Lane {
    sender: mpsc::Sender<Incoming>,
    task: JoinHandle<()>,
    /// Records received while the lane was full. Bounded by what the client had already
    /// fetched for the partition when it was paused; drained into the lane first.
    overflow: VecDeque<Incoming>,
    paused: bool,
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// Hands `message` to its partition's lane; when the lane is full, pauses the partition and
/// keeps what the client already fetched until the lane has room again.
fn dispatch<H: Handler + 'static>(
    consumer: &Arc<KafkaConsumer>,
    worker: &Arc<Worker<H>>,
    lanes: &mut HashMap<(String, i32), Lane>,
    capacity: usize,
    message: &BorrowedMessage<'_>,
) {
    let key = (message.topic().to_owned(), message.partition());
    let lane = lanes.entry(key.clone()).or_insert_with(|| {
        let (sender, receiver) = mpsc::channel(capacity);
        let task = tokio::spawn(run_lane(worker.clone(), consumer.clone(), receiver));
        Lane {
            sender,
            task,
            overflow: VecDeque::new(),
            paused: false,
        }
    });
    let incoming = Incoming::from_message(message);
    if !lane.overflow.is_empty() {
        lane.overflow.push_back(incoming);
        return;
    }
    match lane.sender.try_send(incoming) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(incoming)) => {
            lane.overflow.push_back(incoming);
            let (topic, partition) = &key;
            match consumer.pause(&partition_list(topic, *partition)) {
                Ok(()) => {
                    tracing::debug!(%topic, partition, "lane full; partition paused");
                    ConsumerStats::bump(&worker.stats.pauses);
                    lane.paused = true;
                }
                Err(error) => tracing::warn!(%topic, partition, %error, "cannot pause partition"),
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            // The lane stopped (shutdown in the middle of a retry); nothing more is stored
            // for this partition and its records are delivered again after a restart.
        }
    }
}

/// Moves held records into lanes that have room, and resumes partitions whose lanes have
/// drained to half their capacity.
fn resume_drained(
    consumer: &KafkaConsumer,
    lanes: &mut HashMap<(String, i32), Lane>,
    capacity: usize,
) {
    for ((topic, partition), lane) in lanes.iter_mut() {
        while !lane.overflow.is_empty() {
            let Ok(permit) = lane.sender.try_reserve() else {
                break;
            };
            if let Some(incoming) = lane.overflow.pop_front() {
                permit.send(incoming);
            }
        }
        if !lane.paused || !lane.overflow.is_empty() || lane.sender.capacity() * 2 < capacity {
            continue;
        }
        match consumer.resume(&partition_list(topic, *partition)) {
            Ok(()) => {
                tracing::debug!(%topic, partition, "partition resumed");
                lane.paused = false;
            }
            Err(error) => tracing::warn!(%topic, partition, %error, "cannot resume partition"),
        }
    }
}

/// Processes one partition's records in order and stores each offset after its transaction
/// committed.
async fn run_lane<H: Handler>(
    worker: Arc<Worker<H>>,
    consumer: Arc<KafkaConsumer>,
    mut records: mpsc::Receiver<Incoming>,
) {
    // On shutdown the lane finishes the record in hand and leaves the rest, unstored, for
    // redelivery: stopping stays quick however full the lane is.
    while !worker.shutdown.is_cancelled() {
        let Some(incoming) = records.recv().await else {
            return;
        };
        let span = tracing::info_span!(
            "outbox.process",
            otel.name = %format!("{} process", incoming.topic),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            "messaging.system" = "kafka",
            "messaging.operation.type" = "process",
            "messaging.destination.name" = %incoming.topic,
            "messaging.destination.partition.id" = incoming.partition,
            "messaging.kafka.offset" = incoming.offset,
            "messaging.consumer.group.name" = %worker.settings.name,
            "messaging.message.id" = %incoming.event_id,
        );
        trace::adopt(
            &span,
            incoming
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), std::str::from_utf8(v).ok()?))),
        );
        if worker.finish(&incoming).instrument(span).await.is_err() {
            // Shutdown arrived while retrying; the record stays unstored and is delivered
            // again to whoever owns the partition next.
            return;
        }
        if let Err(error) =
            consumer.store_offset(&incoming.topic, incoming.partition, incoming.offset)
        {
            // The partition was revoked meanwhile; its new owner gets the record again and
            // the inbox skips it.
            tracing::debug!(%error, "offset not stored");
        }
    }
}

/// Shutdown interrupted a retry.
struct Interrupted;

struct Worker<H> {
    pool: PgPool,
    handler: H,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
    stats: Arc<ConsumerStats>,
}

impl<H: Handler> Worker<H> {
    /// Processes or parks `incoming`; returns only once the record is finished for good.
    async fn finish(&self, incoming: &Incoming) -> Result<(), Interrupted> {
        let mut counted_attempts = 0u32;
        let mut backoff_step = 0u32;
        loop {
            let error = match self.process(incoming).await {
                Ok(()) => return Ok(()),
                Err(HandlerError::Permanent(reason)) => return self.park(incoming, &reason).await,
                Err(error) => error,
            };
            if !is_unavailable(&error) {
                counted_attempts += 1;
                if counted_attempts >= self.settings.max_attempts {
                    let reason = format!("gave up after {counted_attempts} attempts: {error}");
                    return self.park(incoming, &reason).await;
                }
            }
            backoff_step = backoff_step.saturating_add(1);
            tracing::warn!(
                topic = %incoming.topic,
                partition = incoming.partition,
                offset = incoming.offset,
                attempt = backoff_step,
                %error,
                "processing failed; retrying"
            );
            self.sleep(backoff_step).await?;
        }
    }

    async fn process(&self, incoming: &Incoming) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        let first_time = inbox::claim(
            &mut tx,
            &self.settings.name,
            &incoming.event_id,
            incoming.origin(),
            Outcome::Processed,
            None,
        )
        .await?;
        if !first_time {
            tracing::debug!(event_id = %incoming.event_id, "duplicate delivery skipped");
            ConsumerStats::bump(&self.stats.duplicates);
            return Ok(());
        }
        self.handler.handle(&mut tx, incoming).await?;
        tx.commit().await?;
        ConsumerStats::bump(&self.stats.processed);
        Ok(())
    }

    async fn park(&self, incoming: &Incoming, reason: &str) -> Result<(), Interrupted> {
        let mut step = 0u32;
        loop {
            match self.try_park(incoming, reason).await {
                Ok(()) => {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    tracing::error!(
                        topic = %incoming.topic,
                        partition = incoming.partition,
                        offset = incoming.offset,
                        event_id = %incoming.event_id,
                        dead_letter_topic = %self.settings.dead_letter_topic,
                        reason,
                        "message parked on the dead-letter topic"
                    );
                    ConsumerStats::bump(&self.stats.parked);
                    return Ok(());
                }
                Err(error) => {
                    step = step.saturating_add(1);
                    tracing::warn!(%error, offset = incoming.offset, "cannot park message yet; retrying");
                    self.sleep(step).await?;
                }
            }
        }
    }

    async fn try_park(&self, incoming: &Incoming, reason: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let first_time = inbox::claim(
            &mut tx,
            &self.settings.name,
            &incoming.event_id,
            incoming.origin(),
            Outcome::Parked,
            Some(reason),
        )
        .await?;
        if first_time {
            let key = incoming
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let mut message = OutboxMessage::new(
                &self.settings.dead_letter_topic,
                "dead-letter",
                key,
                "faultline.DeadLetter",
                incoming.payload.clone(),
            );
            for (name, value) in &incoming.headers {
                if let (false, Ok(value)) = (name == "id", std::str::from_utf8(value)) {
                    message = message.with_header(name.clone(), value);
                }
            }
            message = message
                .with_header("dlq.error", reason)
                .with_header("dlq.consumer", &self.settings.name)
                .with_header("dlq.original.id", &incoming.event_id)
                .with_header("dlq.original.topic", &incoming.topic)
                .with_header("dlq.original.partition", incoming.partition.to_string())
                .with_header("dlq.original.offset", incoming.offset.to_string());
            enqueue(&mut tx, &message).await?;
        }
        tx.commit().await
    }

    async fn sleep(&self, step: u32) -> Result<(), Interrupted> {
        let delay = full_jitter(self.settings.base_backoff, self.settings.max_backoff, step);
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Capped exponential backoff with full jitter: uniform in `[0, min(max, base * 2^(step-1))]`.
fn full_jitter(base: Duration, max: Duration, step: u32) -> Duration {
    let exponent = step.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// True when the handler could not reach what it needs (the database, or a dependency it
/// said was unavailable), as opposed to refusing this particular record.
fn is_unavailable(error: &HandlerError) -> bool {
    match error {
        HandlerError::Unavailable(_) => true,
        HandlerError::Database(error) => faultline_postgres::is_unreachable(error),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for step in 1..40 {
            let delay = full_jitter(base, max, step);
            let ceiling = base.saturating_mul(1 << (step - 1).min(20)).min(max);
            assert!(delay <= ceiling, "step {step}: {delay:?} > {ceiling:?}");
        }
    }

    #[test]
    fn an_unreachable_database_is_not_the_messages_fault() {
        assert!(is_unavailable(&HandlerError::Database(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!is_unavailable(&HandlerError::Database(
            sqlx::Error::RowNotFound
        )));
        assert!(!is_unavailable(&HandlerError::Transient("busy".into())));
        assert!(is_unavailable(&HandlerError::Unavailable(
            "provider down".into()
        )));
    }
}
