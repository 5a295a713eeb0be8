//! One lane per partition: a task that finishes the partition's records one at a time, in
//! order, and pauses the partition when it falls behind (see the module docs of [`super`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::worker::Worker;
use super::{ConsumerStats, Handler, Incoming, KafkaConsumer};
use crate::trace;

/// The records of one partition on their way through one task, in order.
struct Lane {
    sender: mpsc::Sender<Incoming>,
    task: JoinHandle<()>,
    /// Records received while the lane was full. Bounded by what the client had already
    /// fetched for the partition when it was paused; drained into the lane first.
    overflow: VecDeque<Incoming>,
    paused: bool,
}

/// The lanes of one Kafka consumer (one group member).
pub(super) struct Lanes<H> {
    worker: Arc<Worker<H>>,
    consumer: Arc<KafkaConsumer>,
    capacity: usize,
    lanes: HashMap<(String, i32), Lane>,
}

impl<H: Handler + 'static> Lanes<H> {
    pub(super) fn new(worker: Arc<Worker<H>>, consumer: Arc<KafkaConsumer>) -> Self {
        let capacity = worker.settings.max_in_flight_per_partition.max(1);
        Self {
            worker,
            consumer,
            capacity,
            lanes: HashMap::new(),
        }
    }

    /// Hands `message` to its partition's lane; when the lane is full, pauses the partition
    /// and keeps what the client already fetched until the lane has room again.
    pub(super) fn dispatch(&mut self, message: &BorrowedMessage<'_>) {
        let key = (message.topic().to_owned(), message.partition());
        let (worker, consumer, capacity) = (&self.worker, &self.consumer, self.capacity);
        let lane = self.lanes.entry(key.clone()).or_insert_with(|| {
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
        worker.in_hand.fetch_add(1, Ordering::Relaxed);
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
                    Err(error) => {
                        tracing::warn!(%topic, partition, %error, "cannot pause partition")
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The lane stopped (shutdown in the middle of a retry); nothing more is
                // stored for this partition and its records are delivered again later.
            }
        }
    }

    /// Moves held records into lanes that have room, and resumes partitions whose lanes
    /// have drained to half their capacity.
    pub(super) fn resume_drained(&mut self) {
        for ((topic, partition), lane) in self.lanes.iter_mut() {
            while !lane.overflow.is_empty() {
                let Ok(permit) = lane.sender.try_reserve() else {
                    break;
                };
                if let Some(incoming) = lane.overflow.pop_front() {
                    permit.send(incoming);
                }
            }
            if !lane.paused
                || !lane.overflow.is_empty()
                || lane.sender.capacity() * 2 < self.capacity
            {
                continue;
            }
            match self.consumer.resume(&partition_list(topic, *partition)) {
                Ok(()) => {
                    tracing::debug!(%topic, partition, "partition resumed");
                    lane.paused = false;
                }
                Err(error) => tracing::warn!(%topic, partition, %error, "cannot resume partition"),
            }
        }
    }

    /// Shutdown: each lane finishes the record in hand (see [`run_lane`]).
    pub(super) async fn finish(self) {
        for (_, lane) in self.lanes {
            drop(lane.sender);
            if let Err(error) = lane.task.await {
                tracing::error!(%error, "partition lane panicked");
            }
        }
    }

    /// The member is being replaced: stop every lane where it is, even one whose handler
    /// never returns. A record cut off mid-transaction is rolled back with it and, its
    /// offset never stored, delivered again to the next owner; the inbox makes that safe.
    pub(super) async fn abandon(self) {
        for (_, lane) in self.lanes {
            lane.task.abort();
            if let Err(error) = lane.task.await
                && !error.is_cancelled()
            {
                tracing::error!(%error, "partition lane panicked");
            }
        }
    }
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
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
        worker.in_hand.fetch_sub(1, Ordering::Relaxed);
        if let Err(error) =
            consumer.store_offset(&incoming.topic, incoming.partition, incoming.offset)
        {
            // The partition was revoked meanwhile; its new owner gets the record again and
            // the inbox skips it.
            tracing::debug!(%error, "offset not stored");
        }
    }
}
