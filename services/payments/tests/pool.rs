//! The Kafka door against a pool it could deadlock, with a real Postgres and a real
//! Kafka-protocol broker: more busy partitions than pooled connections and a slow provider.
//! The consumer loop holds a connection for every record's inbox transaction, so a handler
//! that needed a second one (or kept its own across the provider call) would wait forever
//! once every connection belonged to a lane.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use faultline_idempotency::{IdempotencyConfig, Store};
use faultline_outbox::consumer::{self, ConsumerObserver, ConsumerSettings};
use faultline_outbox::kafka::{TopicSpec, consumer_config, ensure_topics, producer_config};
use faultline_proto::common::v1::Money;
use faultline_proto::envelope::{Envelope, Provenance};
use faultline_proto::payments::v1 as pb;
use faultline_testkit::{TestDatabase, kafka_brokers, postgres_server, unique};
use payments::kafka::CommandHandler;
use payments::provider::{Faults, SimulatedProvider};
use prost::{Message, Name};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PARTITIONS: i32 = 16;
/// The service's default pool size.
const POOL: u32 = 10;
/// Orders, each authorized and then captured: two commands each.
const ORDERS: usize = 64;

async fn database() -> TestDatabase {
    let db = TestDatabase::create("payments_pool").await.unwrap();
    payments::MIGRATOR.run(&db.pool).await.unwrap();
    faultline_outbox::migrate(&db.pool).await.unwrap();
    faultline_idempotency::migrate(&db.pool).await.unwrap();
    db
}

/// The service's pool, but waiting far longer for a connection than the test runs: a lane
/// stuck on the pool shows as a hang, not as a timeout the loop would retry its way past.
async fn service_pool(db: &TestDatabase) -> PgPool {
    PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(Duration::from_secs(600))
        .connect(&format!("{}/{}", postgres_server(), db.name))
        .await
        .unwrap()
}

/// Sends `command` about `order_id` to `partition`, as the saga's relay does.
async fn send<M: Message + Name>(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    order_id: &str,
    command: &M,
) {
    let envelope = Envelope::wrap(
        command,
        Provenance {
            aggregate_id: order_id.to_owned(),
            correlation_id: order_id.to_owned(),
            causation_id: None,
            producer: "checkout",
        },
    );
    let headers = OwnedHeaders::new().insert(Header {
        key: "id",
        value: Some(envelope.event_id.as_str()),
    });
    let payload = envelope.encode_to_vec();
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(order_id)
        .payload(&payload)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .unwrap();
}

/// An `AuthorizePayment` and then a `CapturePayment` per order, the orders spread over
/// every partition, as the saga sends them for orders it confirms.
async fn send_commands(topic: &str) {
    let producer: FutureProducer = producer_config(&kafka_brokers(), "payments-pool-test")
        .create()
        .unwrap();
    let orders: Vec<(String, i32)> = (0..ORDERS)
        .map(|n| {
            (
                Uuid::now_v7().to_string(),
                i32::try_from(n).unwrap() % PARTITIONS,
            )
        })
        .collect();
    for (order_id, partition) in &orders {
        let command = pb::AuthorizePayment {
            order_id: order_id.clone(),
            customer_id: "alice".into(),
            amount: Some(Money {
                amount_minor: 1_000,
                currency: "EUR".into(),
            }),
            idempotency_key: format!("order:{order_id}:authorize"),
        };
        send(&producer, topic, *partition, order_id, &command).await;
    }
    for (order_id, partition) in &orders {
        let command = pb::CapturePayment {
            order_id: order_id.clone(),
        };
        send(&producer, topic, *partition, order_id, &command).await;
    }
}

/// Replies of type `M` in the outbox.
async fn replies<M: Name>(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE type = $1")
        .bind(M::full_name())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn more_busy_partitions_than_connections_and_a_slow_provider_do_not_deadlock_the_pool() {
    let db = database().await;
    let topic = unique("payments_pool").replace('_', ".");
    ensure_topics(
        &kafka_brokers(),
        &[TopicSpec {
            name: topic.clone(),
            partitions: PARTITIONS,
            replication_factor: 1,
        }],
    )
    .await
    .unwrap();
    send_commands(&topic).await;

    let provider = Arc::new(SimulatedProvider::new(50_000));
    provider.set_faults(Faults {
        latency_ms: 300,
        failure_rate: 0.0,
    });
    let pool = service_pool(&db).await;
    let handler = CommandHandler::new(
        format!("{topic}.events"),
        provider.clone(),
        pool.clone(),
        Store::new(pool.clone(), IdempotencyConfig::default()),
    );
    let group = unique("payments_pool");
    let settings = ConsumerSettings::new(&group, vec![topic.clone()], format!("{topic}.dlq"));
    let stats = settings.stats.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer::run(
        consumer_config(&kafka_brokers(), &group, "payments-pool-test"),
        ConsumerObserver::default(),
        pool.clone(),
        handler,
        settings,
        shutdown.clone(),
    ));

    // Joining the group takes the broker a few seconds; the work itself, 8 commands of
    // 300 ms per partition, far less. A deadlocked pool never gets there.
    let started = Instant::now();
    loop {
        let authorized = replies::<pb::PaymentAuthorized>(&db.pool).await;
        let captured = replies::<pb::PaymentCaptured>(&db.pool).await;
        if (authorized, captured) == (ORDERS as i64, ORDERS as i64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{authorized} authorizations and {captured} captures of {ORDERS} answered \
             after {:?}; {} connections of {POOL} in use, {} idle",
            started.elapsed(),
            pool.size(),
            pool.num_idle()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let captured: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'captured'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(captured, ORDERS as i64);
    assert_eq!(provider.holds(), ORDERS as u64);
    assert_eq!(provider.captures(), ORDERS as u64);
    assert_eq!(
        stats.parked.load(Ordering::Relaxed),
        0,
        "nothing was parked"
    );
    pool.close().await;
    db.drop().await.unwrap();
}
