//! Kafka client settings that the relay and the consumer loop rely on, and topic creation.
//!
//! These are correctness settings, not tuning: the relay's ordering guarantee needs the
//! idempotent producer, and the inbox's guarantee needs offsets that are stored only by the
//! application after its transaction commits.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Producer settings for the relay.
///
/// `enable.idempotence` makes the broker drop retried duplicates and keeps records of one
/// partition in send order even with several requests in flight; it implies `acks=all`.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A short linger lets a batch of outbox rows share produce requests.
        .set("linger.ms", "5")
        // Never time a message out. A timeout is the one way an idempotent producer leaves a
        // gap in a partition (r1 expires in the queue while r2 behind it is delivered; the
        // relay sends r1 again, after r2), so the relay bounds its wait itself and keeps the
        // order (`relay::round`).
        .set("message.timeout.ms", "0");
    config
}

/// Consumer settings for [`crate::consumer::run`].
///
/// Offsets are committed in the background, but only offsets the loop has *stored*, and it
/// stores one only after the message's transaction committed. After a crash the group
/// resumes at the last committed offset and the inbox absorbs what is delivered again.
pub fn consumer_config(brokers: &str, group_id: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        // A crashed member is noticed after this long and its partitions move on. 30 s, not
        // the 6 s minimum: a broker that stalls longer than the session (tansu's storage
        // task under load does, docs/notes/broker.md) evicts healthy members. A restarted
        // process gets its partitions back at once when it left cleanly, or, as a static
        // member (`group.instance.id`, set by the caller), when it crashed.
        .set("session.timeout.ms", "30000")
        .set("heartbeat.interval.ms", "3000")
        // Incremental rebalances: members keep what they own while the group changes, and a
        // member's metadata names what it owns, which lets a coordinator that lost track
        // (tansu after a stall) rebuild the assignment; with the eager assignors it did not.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // How long the broker may hold a fetch that has nothing to return. The default
        // (500 ms) is also the delay before a partition resumed after a pause gets records
        // again; 100 ms keeps commit-to-consume latency low at little cost.
        .set("fetch.wait.max.ms", "100")
        // Lag per partition, for the consumer-lag gauge (see `consumer::GroupState`).
        .set("statistics.interval.ms", "5000");
    config
}

/// A topic the service needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Full topic name.
    pub name: String,
    /// Number of partitions when created.
    pub partitions: i32,
    /// Replication factor when created.
    pub replication_factor: i32,
}

/// Creates each topic that does not exist yet. Existing topics are left as they are.
pub async fn ensure_topics(brokers: &str, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}
