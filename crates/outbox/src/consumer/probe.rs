//! The watchdog's eyes: a task beside each group member that looks at the member, its
//! partitions and the database every [`StallPolicy::check_every`], hands what it saw to the
//! [`Watchdog`] and acts on the verdict.
//!
//! [`StallPolicy::check_every`]: super::StallPolicy::check_every

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::group::GroupState;
use super::watchdog::{Observation, PartitionKey, Verdict, Watchdog};
use super::worker::Worker;
use super::{KafkaConsumer, StallPolicy};

/// Each broker or database question gets this long; no answer means "unknown", never
/// "stalled".
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Watches one member until `stop` is cancelled or the verdict is to replace the member
/// (then it cancels `replace`). Returns the watchdog, whose memory outlives the member.
pub(super) async fn watch<H>(
    consumer: Arc<KafkaConsumer>,
    worker: Arc<Worker<H>>,
    state: Arc<GroupState>,
    mut watchdog: Watchdog,
    stop: CancellationToken,
    replace: CancellationToken,
) -> Watchdog {
    let policy: StallPolicy = worker.settings.stall;
    let health = worker.settings.health.clone();
    let mut last: Option<Verdict> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return watchdog,
            _ = tokio::time::sleep(policy.check_every()) => {}
        }
        let seen = look(&consumer, &worker, &state).await;
        let verdict = watchdog.observe(Instant::now(), &seen);
        if last.as_ref() != Some(&verdict) {
            match &verdict {
                Verdict::Healthy => {}
                Verdict::Recreate(reason) => {
                    tracing::warn!(consumer = %worker.settings.name, reason, "consumer stalled; replacing it with a new group member")
                }
                Verdict::Unready(reason) => {
                    tracing::error!(consumer = %worker.settings.name, reason, "consumer stalled; failing readiness")
                }
                Verdict::Dead(reason) => {
                    tracing::error!(consumer = %worker.settings.name, reason, "consumer stalled; failing liveness")
                }
            }
        }
        health.set(verdict.clone());
        if matches!(verdict, Verdict::Recreate(_)) {
            replace.cancel();
            return watchdog;
        }
        last = Some(verdict);
    }
}

async fn look<H>(
    consumer: &Arc<KafkaConsumer>,
    worker: &Worker<H>,
    state: &GroupState,
) -> Observation {
    let activity = worker.stats.snapshot().activity();
    let database_reachable =
        tokio::time::timeout(ASK_TIMEOUT, sqlx::query("SELECT 1").execute(&worker.pool))
            .await
            .is_ok_and(|answer| answer.is_ok());
    let asked = consumer.clone();
    let topics = worker.settings.topics.clone();
    let (owned, behind_elsewhere) =
        tokio::task::spawn_blocking(move || offsets_elsewhere(&asked, &topics))
            .await
            .unwrap_or_default();
    let lag = state.lag();
    let owned_lag = owned
        .iter()
        .any(|key| lag.get(key).is_some_and(|records| *records > 0));
    Observation {
        activity,
        own_work: worker.in_hand.load(Ordering::Relaxed) > 0 || owned_lag,
        behind_elsewhere,
        database_reachable,
    }
}

/// The partitions this member owns, and those of its topics it does not own whose group
/// offset is behind the partition's end (with that offset). Blocking: broker round trips.
fn offsets_elsewhere(
    consumer: &KafkaConsumer,
    topics: &[String],
) -> (HashSet<PartitionKey>, Vec<(PartitionKey, i64)>) {
    let owned: HashSet<PartitionKey> = consumer
        .assignment()
        .map(|list| {
            list.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        })
        .unwrap_or_default();
    let mut unowned = TopicPartitionList::new();
    for topic in topics {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), ASK_TIMEOUT) else {
            continue;
        };
        for found in metadata.topics() {
            for partition in found.partitions() {
                if !owned.contains(&(found.name().to_owned(), partition.id())) {
                    unowned.add_partition(found.name(), partition.id());
                }
            }
        }
    }
    if unowned.count() == 0 {
        return (owned, Vec::new());
    }
    let Ok(committed) = consumer.committed_offsets(unowned, ASK_TIMEOUT) else {
        return (owned, Vec::new());
    };
    let mut behind = Vec::new();
    for entry in committed.elements() {
        let (topic, partition) = (entry.topic(), entry.partition());
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, ASK_TIMEOUT) else {
            continue;
        };
        // No committed offset yet: the group starts at the beginning (`auto.offset.reset`).
        let at = match entry.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        if at < high {
            behind.push(((topic.to_owned(), partition), at));
        }
    }
    (owned, behind)
}
