//! Typed messages on the outbox and inbox: the glue between the protobuf contracts
//! (`faultline-proto`) and the transport-neutral `faultline-outbox`.
//!
//! Services publish a typed message with [`publish`] inside their transaction and read a
//! received record with [`open_envelope`] and [`open`], whose errors already say that a
//! message that cannot be read will never become readable (so it is parked).
//!
//! [`Messaging::start`] wires a service to Kafka: it creates the topics the service needs,
//! then runs its outbox relay and its consumer loop until shutdown.

use std::sync::Arc;

use faultline_outbox::consumer::{
    self, ConsumerError, ConsumerSettings, ConsumerStats, Handler, HandlerError, Incoming,
    KafkaConsumer, LoggingContext,
};
use faultline_outbox::kafka::{TopicSpec, consumer_config, ensure_topics, producer_config};
use faultline_outbox::{OutboxMessage, Relay, RelayConfig, enqueue};
use faultline_proto::envelope::{Envelope, Provenance};
use prost::{Message, Name};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::KafkaSettings;

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
    let row = OutboxMessage::new(
        topic,
        aggregate_type,
        envelope.aggregate_id.clone(),
        envelope.message_type.clone(),
        envelope.encode_to_vec(),
    )
    .with_id(id);
    enqueue(tx, &row).await?;
    Ok(envelope)
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
    /// Service name: consumer group, inbox consumer name and dead-letter topic
    /// (`<service>.dlq`) derive from it.
    pub service: &'static str,
    /// Topics the service's consumer subscribes to.
    pub consumes: Vec<&'static str>,
    /// Topics the service's outbox publishes to.
    pub produces: Vec<&'static str>,
}

/// The relay and consumer tasks of a running service.
#[derive(Debug)]
pub struct Messaging {
    relay: JoinHandle<()>,
    consumer: JoinHandle<Result<Arc<ConsumerStats>, ConsumerError>>,
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
    /// loop with `handler`. Both stop when `shutdown` is cancelled; await [`Messaging::join`].
    pub async fn start<H>(
        pool: &PgPool,
        kafka: &KafkaSettings,
        wiring: Wiring,
        handler: H,
        shutdown: &CancellationToken,
    ) -> Result<Self, MessagingError>
    where
        H: Handler + 'static,
    {
        let group = kafka.topic(wiring.service);
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

        let producer: FutureProducer =
            producer_config(&kafka.brokers, &format!("{}-relay", wiring.service)).create()?;
        let relay = Relay::new(pool.clone(), producer, RelayConfig::default());
        let relay = tokio::spawn(relay.run(shutdown.clone()));

        let consumer: KafkaConsumer = consumer_config(&kafka.brokers, &group, wiring.service)
            .create_with_context(LoggingContext)?;
        let settings = ConsumerSettings::new(group, consumes, dead_letters);
        let consumer = tokio::spawn(consumer::run(
            consumer,
            pool.clone(),
            handler,
            settings,
            shutdown.clone(),
        ));
        Ok(Self { relay, consumer })
    }

    /// Waits for both tasks to finish after shutdown.
    pub async fn join(self) {
        match self.consumer.await {
            Ok(Ok(_stats)) => {}
            Ok(Err(error)) => tracing::error!(%error, "consumer failed"),
            Err(error) => tracing::error!(%error, "consumer task panicked"),
        }
        if let Err(error) = self.relay.await {
            tracing::error!(%error, "relay task panicked");
        }
    }
}
