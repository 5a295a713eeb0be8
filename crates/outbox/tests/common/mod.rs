//! What the relay and consumer tests share: a fresh database with the outbox tables, a
//! fresh topic, a relay, a writer that commits one message per transaction as services do,
//! and readers that report what reached the topic.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_outbox::kafka::{TopicSpec, ensure_topics, producer_config};
use faultline_outbox::{OutboxMessage, Relay, RelayConfig, enqueue};
use faultline_testkit::{TestDatabase, kafka_brokers, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

pub(crate) fn brokers() -> String {
    kafka_brokers()
}

/// A fresh database with the outbox tables.
pub(crate) struct TestDb {
    pub(crate) db: TestDatabase,
    pub(crate) pool: PgPool,
}

impl TestDb {
    pub(crate) async fn new() -> TestDb {
        let db = TestDatabase::create("outbox").await.unwrap();
        faultline_outbox::migrate(&db.pool).await.unwrap();
        let pool = db.pool.clone();
        TestDb { db, pool }
    }

    pub(crate) async fn drop_now(self) {
        self.db.drop().await.unwrap();
    }
}

pub(crate) async fn topic(partitions: i32) -> String {
    let name = unique("t").replace('_', ".");
    ensure_topics(
        &brokers(),
        &[TopicSpec {
            name: name.clone(),
            partitions,
            replication_factor: 1,
        }],
    )
    .await
    .unwrap();
    name
}

pub(crate) fn relay(pool: &PgPool, config: RelayConfig) -> Relay {
    let producer: FutureProducer = producer_config(&brokers(), "relay-test").create().unwrap();
    Relay::new(pool.clone(), producer, config)
}

pub(crate) fn fast_relays() -> RelayConfig {
    RelayConfig {
        batch_size: 50,
        poll_interval: Duration::from_millis(20),
        heartbeat_ttl: Duration::from_millis(600),
        rebalance_interval: Duration::from_millis(100),
        ..RelayConfig::default()
    }
}

/// Writes message `seq` of aggregate `agg`, one transaction per message, as services do.
pub(crate) async fn write(pool: &PgPool, topic: &str, agg: usize, seq: usize) {
    let mut tx = pool.begin().await.unwrap();
    let message = OutboxMessage::new(
        topic,
        "test",
        format!("agg-{agg}"),
        "Step",
        format!("{agg}:{seq}").into_bytes(),
    );
    enqueue(&mut tx, &message).await.unwrap();
    tx.commit().await.unwrap();
}

/// Reads `topic` from the start until `expected` distinct payloads arrived; returns the
/// payloads in arrival order (duplicates included).
pub(crate) async fn read_all(topic: &str, expected: usize) -> Vec<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    while distinct.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("messages stopped arriving")
            .unwrap();
        let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        distinct.insert(payload.clone());
        seen.push(payload);
    }
    seen
}

/// Asserts that, counting only first arrivals, each aggregate's messages came in order and
/// none is missing.
pub(crate) fn assert_in_order(arrivals: &[String], aggregates: usize, per_aggregate: usize) {
    let mut next = vec![0usize; aggregates];
    let mut first = std::collections::HashSet::new();
    for payload in arrivals {
        if !first.insert(payload.clone()) {
            continue;
        }
        let (agg, seq) = payload.split_once(':').unwrap();
        let (agg, seq): (usize, usize) = (agg.parse().unwrap(), seq.parse().unwrap());
        assert_eq!(
            seq, next[agg],
            "aggregate {agg}: got {seq}, expected {}",
            next[agg]
        );
        next[agg] += 1;
    }
    assert!(next.iter().all(|n| *n == per_aggregate), "{next:?}");
}

/// How many slots each database session holds, by pid.
pub(crate) async fn slot_holders(pool: &PgPool) -> BTreeMap<i32, i64> {
    sqlx::query_as::<_, (i32, i64)>(
        "SELECT pid, count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND classid = $1::oid AND database =
               (SELECT oid FROM pg_database WHERE datname = current_database())
         GROUP BY pid",
    )
    .bind(0x0f0b_0001_i64)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Reads `topic` from the start until nothing new arrived for `quiet`; returns every payload
/// in arrival order, duplicates included, to count copies.
pub(crate) async fn read_until_quiet(topic: &str, quiet: Duration) -> Vec<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        let message = message.unwrap();
        seen.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
    }
    seen
}
