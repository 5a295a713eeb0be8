//! Order-to-terminal latency: from an order's intended send time to the moment the
//! generator learns that it is CONFIRMED or CANCELLED.
//!
//! The [`Tracker`] holds every accepted order that has not ended, with its intended send
//! time and the phase's recorder. Two sources tell it that orders ended:
//!
//! - [`consume_events`] reads checkout's `orders.events` topic (OrderConfirmed,
//!   OrderCancelled). It adds no load to the system, and the latency includes what a
//!   subscriber really waits for: the saga, the outbox relay and the broker. Partitions are
//!   assigned by hand at their current end, without a consumer group, so the measurement
//!   does not depend on the group coordinator the system under test may be fighting with.
//! - [`poll`] asks `GET /v1/orders/{id}` every interval. It needs only checkout's URL, costs
//!   checkout reads, and rounds latency up by up to one interval.
//!
//! An event may beat the POST's answer back to the generator; such endings are kept until
//! the order is known (bounded), then counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use faultline_proto::envelope::Envelope;
use faultline_proto::orders::v1::{OrderCancelled, OrderConfirmed};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::checkout::{Checkout, State};
use crate::stats::{Ending, Recorder};

/// Endings of orders not (yet) known kept at most: beyond it they are foreign orders.
const MAX_EARLY: usize = 100_000;

/// Accepted orders that have not ended yet.
#[derive(Debug, Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<Uuid, (Instant, Arc<Recorder>)>,
    early: HashMap<Uuid, (Instant, Ending)>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Order `id`, meant to be sent at `intended`, was accepted; its ending goes to
    /// `recorder`.
    pub fn accepted(&self, id: Uuid, intended: Instant, recorder: Arc<Recorder>) {
        let mut inner = self.lock();
        match inner.early.remove(&id) {
            Some((ended, ending)) => recorder.ended(intended, ended, ending),
            None => {
                inner.pending.insert(id, (intended, recorder));
            }
        }
    }

    /// Order `id` ended at `at`. Unknown ids are kept for a while: the POST's answer may
    /// still be on its way.
    pub fn ended(&self, id: Uuid, at: Instant, ending: Ending) {
        let mut inner = self.lock();
        match inner.pending.remove(&id) {
            Some((intended, recorder)) => recorder.ended(intended, at, ending),
            None if inner.early.len() < MAX_EARLY => {
                inner.early.insert(id, (at, ending));
            }
            None => {}
        }
    }

    /// Whether order `id` is still pending.
    pub fn is_pending(&self, id: Uuid) -> bool {
        self.lock().pending.contains_key(&id)
    }

    /// How many orders of `recorder` are still pending.
    pub fn pending_of(&self, recorder: &Arc<Recorder>) -> u64 {
        let inner = self.lock();
        inner
            .pending
            .values()
            .filter(|(_, r)| Arc::ptr_eq(r, recorder))
            .count() as u64
    }

    /// Stops waiting for `recorder`'s orders; returns how many were still pending.
    pub fn abandon(&self, recorder: &Arc<Recorder>) -> u64 {
        let mut inner = self.lock();
        let before = inner.pending.len();
        inner.pending.retain(|_, (_, r)| !Arc::ptr_eq(r, recorder));
        (before - inner.pending.len()) as u64
    }
}

/// Polls order `id` every `interval` until it ends, the tracker stops waiting for it, or
/// `stop` fires.
pub async fn poll(
    checkout: Arc<Checkout>,
    tracker: Arc<Tracker>,
    id: Uuid,
    interval: Duration,
    stop: CancellationToken,
) {
    while tracker.is_pending(id) {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let State::Ended(ending) = checkout.state(id).await {
            tracker.ended(id, Instant::now(), ending);
            return;
        }
    }
}

/// A consumer of `topic` on `brokers`, positioned at the current end of every partition,
/// so it sees the orders placed from now on. Blocking (metadata and watermark requests):
/// call it from `spawn_blocking`.
pub fn events_consumer(brokers: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka wants a group id even for manual assignment; it never joins it, since
        // nothing here subscribes or commits.
        .set("group.id", format!("faultline-load-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An ending is measured when it arrives here: do not let the broker sit on a fetch
        // for librdkafka's default 500 ms when it has nothing yet.
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the orders.events consumer")?;
    let partitions = partitions_of(&consumer, topic)?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .with_context(|| format!("reading the end of {topic}/{partition}"))?;
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(high))
            .context("building the assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("assigning orders.events partitions")?;
    Ok(consumer)
}

/// The partitions of `topic`, waiting up to 30 s for it to exist (checkout creates it at
/// start).
fn partitions_of<C: Consumer>(consumer: &C, topic: &str) -> anyhow::Result<Vec<i32>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .context("reading broker metadata")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        if Instant::now() > deadline {
            bail!("topic {topic} has no partitions after 30 s; is the topic prefix right?");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Feeds every OrderConfirmed and OrderCancelled on the consumer's partitions to `tracker`
/// until `stop` fires. Records that are not order events are skipped.
pub async fn consume_events(
    consumer: StreamConsumer,
    tracker: Arc<Tracker>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        // A broker hiccup is the system's problem, not the measurement's: keep reading.
        let Ok(message) = message else { continue };
        let at = Instant::now();
        if let Some((id, ending)) = message.payload().and_then(decode) {
            tracker.ended(id, at, ending);
        }
    }
}

/// An order event's order id and ending, if `payload` is one.
fn decode(payload: &[u8]) -> Option<(Uuid, Ending)> {
    let envelope = Envelope::decode_checked(payload).ok()?;
    if envelope.is::<OrderConfirmed>() {
        let event: OrderConfirmed = envelope.open().ok()?;
        return Some((Uuid::parse_str(&event.order_id).ok()?, Ending::Confirmed));
    }
    if envelope.is::<OrderCancelled>() {
        let event: OrderCancelled = envelope.open().ok()?;
        // The event carries the customer-facing reason, not the code; the saga words a
        // participant's timeout as "... did not answer in time" (services/checkout saga.rs).
        let timeout = event.reason.contains("did not answer in time");
        let ending = Ending::Cancelled {
            reason: event.reason,
            timeout,
        };
        return Some((Uuid::parse_str(&event.order_id).ok()?, ending));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_proto::envelope::Provenance;
    use prost::Message as _;

    fn provenance(id: Uuid) -> Provenance {
        Provenance {
            aggregate_id: id.to_string(),
            correlation_id: id.to_string(),
            causation_id: None,
            producer: "checkout",
        }
    }

    #[test]
    fn order_events_decode_to_endings() {
        let id = Uuid::new_v4();
        let confirmed = OrderConfirmed {
            order_id: id.to_string(),
            ..Default::default()
        };
        let bytes = Envelope::wrap(&confirmed, provenance(id)).encode_to_vec();
        assert_eq!(decode(&bytes), Some((id, Ending::Confirmed)));

        let cancelled = OrderCancelled {
            order_id: id.to_string(),
            reason: "payments did not answer in time".into(),
            ..Default::default()
        };
        let bytes = Envelope::wrap(&cancelled, provenance(id)).encode_to_vec();
        let (_, ending) = decode(&bytes).expect("an order event");
        assert!(matches!(ending, Ending::Cancelled { timeout: true, .. }));
        assert_eq!(decode(b"not an envelope"), None);
    }

    #[test]
    fn an_ending_that_beats_its_acceptance_still_counts() {
        let tracker = Tracker::default();
        let now = Instant::now();
        let recorder = Arc::new(Recorder::new(now));
        let id = Uuid::new_v4();
        tracker.ended(id, now + Duration::from_millis(5), Ending::Confirmed);
        tracker.accepted(id, now, recorder.clone());
        assert_eq!(recorder.counts().completed, 1);
        assert_eq!(tracker.pending_of(&recorder), 0);
    }

    #[test]
    fn abandoning_a_phase_drops_only_its_orders() {
        let tracker = Tracker::default();
        let now = Instant::now();
        let (a, b) = (Arc::new(Recorder::new(now)), Arc::new(Recorder::new(now)));
        tracker.accepted(Uuid::new_v4(), now, a.clone());
        tracker.accepted(Uuid::new_v4(), now, a.clone());
        tracker.accepted(Uuid::new_v4(), now, b.clone());
        assert_eq!(tracker.abandon(&a), 2);
        assert_eq!(tracker.pending_of(&b), 1);
    }
}
