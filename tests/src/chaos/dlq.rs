//! Reads a dead-letter topic to its end, for the auditor's "every parked message accounted
//! for": the event ids (`dlq.original.id`) of every dead letter on it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(15);

/// The original event ids of every record on `topic`, read from the first offset to the
/// high watermark each partition had when this was called (duplicates collapse: the relay
/// is at-least-once).
pub(super) async fn original_ids(brokers: &str, topic: &str) -> anyhow::Result<BTreeSet<String>> {
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
