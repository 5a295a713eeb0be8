//! Reads a dead-letter topic to its end, for the auditor's "every parked message accounted
//! for": the event ids (`dlq.original.id`) of every dead letter on it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::system::{Service, System};

const TIMEOUT: Duration = Duration::from_secs(15);

/// One service's parked messages and dead letters, by original event id.
pub(crate) struct Parked {
    /// Event ids of the inbox rows it parked.
    pub(crate) parked: BTreeSet<String>,
    /// Event ids its dead letters carry (`dlq.original.id`).
    pub(crate) letters: BTreeSet<String>,
}

impl Parked {
    /// Parked with no dead letter: a message lost.
    pub(crate) fn unlettered(&self) -> Vec<&String> {
        self.parked.difference(&self.letters).collect()
    }

    /// A dead letter with no parked row.
    pub(crate) fn orphans(&self) -> Vec<&String> {
        self.letters.difference(&self.parked).collect()
    }
}

/// What `service` (whose database is `pool`) parked and what its dead letters carry, on
/// `<service>.dlq` or still in its outbox.
pub(crate) async fn parked(
    system: &System,
    service: Service,
    pool: &PgPool,
) -> anyhow::Result<Parked> {
    let topic = system.topic(&format!("{}.dlq", service.name()));
    let parked = sqlx::query_scalar("SELECT event_id FROM inbox WHERE outcome = 'parked'")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let mut letters: BTreeSet<String> = sqlx::query_scalar::<_, Option<String>>(
        "SELECT headers->>'dlq.original.id' FROM outbox WHERE topic = $1",
    )
    .bind(&topic)
    .fetch_all(pool)
    .await?
    .into_iter()
    .flatten()
    .collect();
    letters.extend(original_ids(system.brokers(), &topic).await?);
    Ok(Parked { parked, letters })
}

/// The original event ids of every record on `topic`, read from the first offset to the
/// high watermark each partition had when this was called (duplicates collapse: the relay
/// is at-least-once).
async fn original_ids(brokers: &str, topic: &str) -> anyhow::Result<BTreeSet<String>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read(&brokers, &topic)).await?
}

fn read(brokers: &str, topic: &str) -> anyhow::Result<BTreeSet<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", faultline_testkit::unique("chaos_dlq_reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            ends.push((partition, high));
        }
    }
    let mut ids = BTreeSet::new();
    if ends.is_empty() {
        return Ok(ids);
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    while !ends.is_empty() {
        anyhow::ensure!(
            started.elapsed() < TIMEOUT * 2,
            "{topic}: partitions {ends:?} not read to their end within {:?}",
            TIMEOUT * 2
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.context("reading the dead-letter topic")?;
        let original = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "dlq.original.id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        ids.insert(
            original
                .unwrap_or_else(|| format!("<no dlq.original.id at offset {}>", message.offset())),
        );
        let (partition, offset) = (message.partition(), message.offset());
        ends.retain(|(p, high)| !(*p == partition && offset + 1 >= *high));
    }
    Ok(ids)
}
