//! Typed messages on the outbox and inbox: the glue between the protobuf contracts
//! (`faultline-proto`) and the transport-neutral `faultline-outbox`.
//!
//! Services publish a typed message with [`publish`] inside their transaction (a saga
//! participant answers a command with [`Reply`]) and read a received record with
//! [`open_envelope`] and [`open`], whose errors already say that a message that cannot be
//! read will never become readable (so it is parked).
//!
//! [`Messaging::start`] wires a service to Kafka: it creates the topics the service needs,
//! then runs its outbox relay and its consumer loop until shutdown, with readiness checks
//! and metrics for both. [`publish`] stores the writer's trace context with each message.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use faultline_outbox::consumer::{
    self, ConsumerError, ConsumerObserver, ConsumerSettings, ConsumerStats, GroupState, Handler,
    HandlerError, Incoming, StallPolicy,
};
use faultline_outbox::kafka::{TopicSpec, consumer_config, ensure_topics, producer_config};
use faultline_outbox::{OutboxMessage, Relay, RelayConfig, enqueue};
use faultline_proto::envelope::{Envelope, Provenance};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Unit;
use prost::{Message, Name};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::KafkaSettings;
use crate::lifecycle::Lifecycle;

/// Wraps `message` in an envelope and writes it to the outbox for `topic` on `tx`.
///
/// The outbox row id is the envelope's event id, so the Kafka `id` header the inbox
/// deduplicates on and the event id inside the envelope are one and the same.
pub async fn publish<M: Message + Name>(
    tx: &mut PgConnection,
    topic: &str,
    aggregate_type: &str,
    message: &M,
    provenance: Provenance,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope::wrap(message, provenance);
    let id = Uuid::parse_str(&envelope.event_id).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut row = OutboxMessage::new(
        topic,
        aggregate_type,
        envelope.aggregate_id.clone(),
        envelope.message_type.clone(),
        envelope.encode_to_vec(),
    )
    .with_id(id);
    // The trace context of whoever writes the message travels with it (see
    // `faultline_outbox::trace`).
    for (name, value) in faultline_telemetry::propagation::current_headers() {
        row = row.with_header(name, value);
    }
    enqueue(tx, &row).await?;
    Ok(envelope)
}

/// The answer to a received command: it goes to the participant's events topic, about the
/// command's order, in the command's correlation and caused by it. Sending consumes it, so
/// a handler answers each command once.
#[derive(Debug)]
pub struct Reply<'a> {
    topic: &'a str,
    provenance: Provenance,
}

impl<'a> Reply<'a> {
    /// The reply to the command in `envelope`, from `producer`, on `topic`.
    pub fn to(envelope: &Envelope, topic: &'a str, producer: &'static str) -> Self {
        Self {
            topic,
            provenance: envelope.reply_provenance(producer),
        }
    }

    /// Writes `event` to the outbox on `tx`, the command's inbox transaction.
    pub async fn send<M: Message + Name>(
        self,
        tx: &mut PgConnection,
        event: &M,
    ) -> Result<Envelope, sqlx::Error> {
        publish(tx, self.topic, "order", event, self.provenance).await
    }
}

/// Decodes the envelope of a received record; a record that is not one is parked.
pub fn open_envelope(incoming: &Incoming) -> Result<Envelope, HandlerError> {
    Envelope::decode_checked(&incoming.payload).map_err(|e| HandlerError::Permanent(e.to_string()))
}

/// Decodes the envelope's payload as an `M`; a payload that is not one is parked.
pub fn open<M: Message + Name + Default>(envelope: &Envelope) -> Result<M, HandlerError> {
    envelope
        .open::<M>()
        .map_err(|e| HandlerError::Permanent(e.to_string()))
}

/// Parses the envelope's aggregate id as the UUID every Faultline aggregate uses.
pub fn aggregate_uuid(envelope: &Envelope) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(&envelope.aggregate_id).map_err(|_| {
        HandlerError::Permanent(format!(
            "aggregate id {:?} is not a UUID",
            envelope.aggregate_id
        ))
    })
}

/// What a service reads and writes on Kafka; topic names are given without the deployment
/// prefix, which [`KafkaSettings::topic`] adds.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Service name: the inbox consumer name, the dead-letter topic (`<service>.dlq`) and,
    /// unless `KAFKA__CONSUMER_GROUP` says otherwise, the consumer group derive from it.
    pub service: &'static str,
    /// Topics the service's consumer subscribes to.
    pub consumes: Vec<&'static str>,
    /// Topics the service's outbox publishes to.
    pub produces: Vec<&'static str>,
}

/// The relay, consumer and backlog-sampler tasks of a running service.
#[derive(Debug)]
pub struct Messaging {
    relay: JoinHandle<()>,
    consumer: JoinHandle<Result<Arc<ConsumerStats>, ConsumerError>>,
    sampler: JoinHandle<()>,
}

/// Why messaging could not start.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// A Kafka client could not be created, or topics could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

impl Messaging {
    /// Creates the service's topics if absent, then starts its outbox relay and its consumer
    /// loop with `handler`, both stopping on [`Lifecycle::background`]. Readiness gains two
    /// checks (broker metadata reachable; consumer joined its group and not stalled),
    /// liveness one (consumer stalled beyond what replacing it cured), and `/metrics` gains
    /// the outbox backlog, the consumer's counters and its lag.
    pub async fn start<H>(
        life: &Lifecycle,
        kafka: &KafkaSettings,
        wiring: Wiring,
        handler: H,
    ) -> Result<Self, MessagingError>
    where
        H: Handler + 'static,
    {
        // The inbox is keyed by the service's own name, whatever group reads the records.
        let inbox_name = kafka.topic(wiring.service);
        let group = kafka.group(wiring.service);
        let dead_letters = kafka.topic(&format!("{}.dlq", wiring.service));
        let consumes: Vec<String> = wiring.consumes.iter().map(|t| kafka.topic(t)).collect();

        let mut topics: Vec<String> = wiring.produces.iter().map(|t| kafka.topic(t)).collect();
        topics.extend(consumes.iter().cloned());
        topics.push(dead_letters.clone());
        topics.sort();
        topics.dedup();
        let specs: Vec<TopicSpec> = topics
            .into_iter()
            .map(|name| TopicSpec {
                name,
                partitions: kafka.partitions,
                replication_factor: kafka.replication_factor,
            })
            .collect();
        ensure_topics(&kafka.brokers, &specs).await?;

        let stop = life.background();
        let producer: FutureProducer =
            producer_config(&kafka.brokers, &format!("{}-relay", wiring.service)).create()?;
        // The readiness probe asks the relay's own client, for one of this service's topics:
        // no extra client (with its threads and connections), and no metadata for every
        // topic in the cluster on each probe.
        let probe = producer.clone();
        let probe_topic = dead_letters.clone();
        let relay = Relay::new(life.pool.clone(), producer, RelayConfig::default());
        let relay = tokio::spawn(relay.run(stop.clone()));

        let observer = ConsumerObserver::default();
        let group_state = observer.state();
        let mut settings = ConsumerSettings::new(inbox_name, consumes, dead_letters);
        settings.stall = StallPolicy {
            bound: Duration::from_millis(kafka.consumer_stall_ms),
            ..StallPolicy::default()
        };
        let consumer_health = settings.health.clone();
        life.metrics.register_collector(ConsumerMetrics {
            stats: settings.stats.clone(),
            state: group_state.clone(),
        });
        let mut client_config = consumer_config(&kafka.brokers, &group, wiring.service);
        if !kafka.group_instance_id.is_empty() {
            client_config.set("group.instance.id", &kafka.group_instance_id);
        }
        let consumer = tokio::spawn(consumer::run(
            client_config,
            observer,
            life.pool.clone(),
            handler,
            settings,
            stop.clone(),
        ));

        life.health.add_check("kafka", move || {
            let (probe, topic) = (probe.clone(), probe_topic.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    probe
                        .client()
                        .fetch_metadata(Some(&topic), Duration::from_millis(800))
                        .map(|_| ())
                        .map_err(|e| format!("broker metadata unreachable: {e}"))
                })
                .await
                .map_err(|e| e.to_string())?
            }
        });
        let ready_health = consumer_health.clone();
        life.health.add_check("consumer", move || {
            let joined = group_state.joined();
            let verdict = ready_health.readiness();
            async move {
                match (joined, verdict) {
                    (_, Err(stalled)) => Err(stalled),
                    (false, _) => Err("the consumer has not joined its group yet".to_owned()),
                    (true, Ok(())) => Ok(()),
                }
            }
        });
        life.health.add_liveness_check("consumer", move || {
            let verdict = consumer_health.liveness();
            async move { verdict }
        });

        let sampler = tokio::spawn(sample_backlog(
            life.pool.clone(),
            BacklogGauges::register(&life.metrics),
            stop,
        ));
        Ok(Self {
            relay,
            consumer,
            sampler,
        })
    }

    /// Waits for the tasks to finish after [`Lifecycle::background`] was cancelled.
    pub async fn join(self) {
        match self.consumer.await {
            Ok(Ok(_stats)) => {}
            Ok(Err(error)) => tracing::error!(%error, "consumer failed"),
            Err(error) => tracing::error!(%error, "consumer task panicked"),
        }
        for (name, task) in [("relay", self.relay), ("backlog sampler", self.sampler)] {
            if let Err(error) = task.await {
                tracing::error!(%error, task = name, "task panicked");
            }
        }
    }
}

/// `outbox_pending_rows`, `outbox_oldest_pending_age_seconds` and `outbox_parked_rows`.
#[derive(Debug, Clone, Default)]
struct BacklogGauges {
    pending: Gauge,
    oldest: Gauge<f64, AtomicU64>,
    parked: Gauge,
}

impl BacklogGauges {
    fn register(metrics: &faultline_telemetry::metrics::Metrics) -> Self {
        let gauges = Self::default();
        metrics.register(
            "outbox_pending_rows",
            "Outbox rows not yet published",
            gauges.pending.clone(),
        );
        metrics.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest outbox row not yet published",
            Unit::Seconds,
            gauges.oldest.clone(),
        );
        metrics.register(
            "outbox_parked_rows",
            "Outbox rows the broker refuses for good, waiting for an operator to re-drive them",
            gauges.parked.clone(),
        );
        gauges
    }
}

/// Refreshes the backlog gauges every two seconds.
async fn sample_backlog(pool: PgPool, gauges: BacklogGauges, stop: CancellationToken) {
    loop {
        match faultline_outbox::backlog(&pool).await {
            Ok(backlog) => {
                gauges.pending.set(backlog.pending);
                gauges.parked.set(backlog.parked);
                gauges
                    .oldest
                    .set(backlog.oldest.map(|d| d.as_secs_f64()).unwrap_or(0.0));
            }
            Err(error) => tracing::debug!(%error, "backlog sample failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The consumer's counters and lag, read at scrape time.
#[derive(Debug)]
struct ConsumerMetrics {
    stats: Arc<ConsumerStats>,
    state: Arc<GroupState>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

impl Collector for ConsumerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let done = self.stats.snapshot();
        for (name, help, value) in [
            (
                "messaging_consumer_processed",
                "Records whose effect committed",
                done.processed,
            ),
            (
                "messaging_consumer_duplicates",
                "Redeliveries skipped by the inbox",
                done.duplicates,
            ),
            (
                "messaging_consumer_parked",
                "Records parked on the dead-letter topic",
                done.parked,
            ),
            (
                "messaging_consumer_pauses",
                "Partitions paused because their lane was full",
                done.pauses,
            ),
            (
                "messaging_consumer_retries",
                "Failed attempts that were retried",
                done.retries,
            ),
            (
                "messaging_consumer_panics",
                "Records whose handler panicked; each was parked",
                done.panics,
            ),
            (
                "messaging_consumer_recreated",
                "Kafka consumers replaced by the watchdog with a new group member",
                done.recreations,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let lag = self.state.lag();
        let gauge_type = ConstGauge::new(0i64).metric_type();
        let mut family = encoder.encode_descriptor(
            "kafka_consumer_lag",
            "Records behind the end of each assigned partition",
            None,
            gauge_type,
        )?;
        for ((topic, partition), records) in lag {
            let labels = PartitionLabels { topic, partition };
            ConstGauge::new(records).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
