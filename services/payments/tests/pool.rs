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
use payments::commands::CommandHandler;
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
const COMMANDS: usize = 64;

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

/// Sends one `AuthorizePayment` per order, spread over every partition, as the saga does.
async fn send_commands(topic: &str) {
    let producer: FutureProducer = producer_config(&kafka_brokers(), "payments-pool-test")
        .create()
        .unwrap();
    for n in 0..COMMANDS {
        let order_id = Uuid::now_v7().to_string();
        let command = pb::AuthorizePayment {
            order_id: order_id.clone(),
            customer_id: "alice".into(),
            amount: Some(Money {
                amount_minor: 1_000,
                currency: "EUR".into(),
            }),
            idempotency_key: format!("order:{order_id}:authorize"),
        };
        let envelope = Envelope::wrap(
            &command,
            Provenance {
                aggregate_id: order_id.clone(),
                correlation_id: order_id.clone(),
                causation_id: None,
                producer: "checkout",
            },
        );
        let headers = OwnedHeaders::new().insert(Header {
            key: "id",
            value: Some(envelope.event_id.as_str()),
        });
        let partition = i32::try_from(n).unwrap() % PARTITIONS;
        let payload = envelope.encode_to_vec();
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(&order_id)
            .payload(&payload)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

async fn replies(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE type = $1")
        .bind(pb::PaymentAuthorized::full_name())
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

    // Joining the group takes the broker a few seconds; the work itself, 4 commands of
    // 300 ms per partition, far less. A deadlocked pool never gets there.
    let started = Instant::now();
    loop {
        let done = replies(&db.pool).await;
        if done == i64::try_from(COMMANDS).unwrap() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{done} of {COMMANDS} authorizations answered after {:?}; \
             {} connections of {POOL} in use, {} idle",
            started.elapsed(),
            pool.size(),
            pool.num_idle()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let authorized: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'authorized'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(authorized, i64::try_from(COMMANDS).unwrap());
    assert_eq!(provider.holds(), u64::try_from(COMMANDS).unwrap());
    assert_eq!(
        stats.parked.load(Ordering::Relaxed),
        0,
        "nothing was parked"
    );
    pool.close().await;
    db.drop().await.unwrap();
}
