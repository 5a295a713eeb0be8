//! What the consumer knows about itself: its group membership and lag as the Kafka client
//! reports them ([`GroupState`], kept by [`ConsumerObserver`]), and what the loop did
//! ([`ConsumerStats`]). Readiness, metrics and the watchdog read both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rdkafka::consumer::{ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

/// The consumer type [`super::run`] creates.
pub type KafkaConsumer = StreamConsumer<ConsumerObserver>;

/// What the consumer's client reported about its group membership and lag.
#[derive(Debug, Default)]
pub struct GroupState {
    joined: AtomicBool,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl GroupState {
    /// True once the current member has joined its group and received an assignment
    /// (possibly empty, when the group has more members than partitions). A recreated
    /// member starts over.
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// Records behind the end of each assigned partition, from the client's last statistics
    /// (`statistics.interval.ms`).
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        self.lag.lock().map(|lag| lag.clone()).unwrap_or_default()
    }

    /// Forgets the old member: called before a new one is created.
    pub(super) fn reset(&self) {
        self.joined.store(false, Ordering::Relaxed);
        if let Ok(mut lag) = self.lag.lock() {
            lag.clear();
        }
    }
}

/// The consumer context [`super::run`] uses: logs partition assignments, which is most of
/// what an operator wants to know when a group rebalances, and keeps [`GroupState`] current.
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

/// What a consumer loop did, for logs, metrics, tests and the watchdog. Counters only grow.
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
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
    /// Records whose handler panicked (each one also counts as parked).
    pub panics: AtomicU64,
    /// Times the watchdog replaced the Kafka consumer with a new group member.
    pub recreations: AtomicU64,
}

/// A plain copy of [`ConsumerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ConsumerStats::processed`].
    pub processed: u64,
    /// See [`ConsumerStats::duplicates`].
    pub duplicates: u64,
    /// See [`ConsumerStats::parked`].
    pub parked: u64,
    /// See [`ConsumerStats::pauses`].
    pub pauses: u64,
    /// See [`ConsumerStats::retries`].
    pub retries: u64,
    /// See [`ConsumerStats::panics`].
    pub panics: u64,
    /// See [`ConsumerStats::recreations`].
    pub recreations: u64,
}

impl StatsSnapshot {
    /// Everything that shows a lane is working: records finished one way or another, and
    /// attempts that failed and will be retried.
    pub fn activity(&self) -> u64 {
        self.processed + self.duplicates + self.parked + self.retries
    }
}

impl ConsumerStats {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            processed: read(&self.processed),
            duplicates: read(&self.duplicates),
            parked: read(&self.parked),
            pauses: read(&self.pauses),
            retries: read(&self.retries),
            panics: read(&self.panics),
            recreations: read(&self.recreations),
        }
    }
}
