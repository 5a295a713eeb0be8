//! Relay benchmarks against real Postgres and a real Kafka-protocol broker, side by side in
//! one run (these machines are noisy; only ratios measured together mean much):
//!
//! 1. throughput: the relay against a port of the seed article's naive worker (poll 100 rows,
//!    produce one at a time, update each row), against raw rdkafka producing the same
//!    payloads with nothing in between, and against itself with a row the broker refuses
//!    at the head of the outbox (parked, and nothing else slowed down);
//! 2. commit-to-consume latency, p50 and p99, with NOTIFY wake-up against polling alone.
//!
//! Run with `make bench-outbox` (or `cargo bench -p faultline-outbox --bench relay`).
//! `FAULTLINE_BENCH_MESSAGES` sets the throughput run's size (default 5000).

#![allow(clippy::unwrap_used)] // a benchmark that fails should stop loudly

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline_outbox::kafka::{TopicSpec, ensure_topics, producer_config};
use faultline_outbox::{OutboxMessage, Relay, RelayConfig, backlog, enqueue};
use faultline_testkit::{TestDatabase, kafka_brokers, unique};
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const PAYLOAD_BYTES: usize = 256;

fn brokers() -> String {
    kafka_brokers()
}

async fn new_topic(partitions: i32) -> String {
    let name = unique("bench").replace('_', ".");
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

fn payload(i: usize) -> Vec<u8> {
    let mut body = format!("{{\"order\":{i},\"pad\":\"");
    while body.len() < PAYLOAD_BYTES - 2 {
        body.push('x');
    }
    body.push_str("\"}");
    body.into_bytes()
}

fn producer() -> FutureProducer {
    producer_config(&brokers(), "bench").create().unwrap()
}

/// Fills the outbox with `n` rows for `topic` over 100 aggregates, in one transaction.
async fn fill_outbox(pool: &PgPool, topic: &str, n: usize) {
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        let message = OutboxMessage::new(
            topic,
            "order",
            format!("order-{}", i % 100),
            "Bench",
            payload(i),
        );
        enqueue(&mut tx, &message).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// The seed's worker, ported: poll 100 unprocessed rows, produce each and wait for it, mark
/// each processed with its own UPDATE.
async fn naive_worker(pool: &PgPool, producer: &FutureProducer, topic: &str) -> usize {
    let mut published = 0;
    loop {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT id, payload FROM naive_outbox WHERE processed_at IS NULL LIMIT 100",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if rows.is_empty() {
            return published;
        }
        for (id, payload) in rows {
            producer
                .send(
                    FutureRecord::<(), _>::to(topic).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            sqlx::query("UPDATE naive_outbox SET processed_at = now() WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
            published += 1;
        }
    }
}

/// The relay's defaults, with `FAULTLINE_BENCH_BATCH` as the batch size if set.
fn relay_config() -> RelayConfig {
    let mut config = RelayConfig::default();
    if let Some(batch) = std::env::var("FAULTLINE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch_size = batch;
    }
    config
}

async fn throughput(pool: &PgPool, n: usize) {
    println!(
        "throughput: {n} messages of {PAYLOAD_BYTES} bytes, 3 partitions, idempotent producer, acks=all"
    );

    // Raw rdkafka: the same records (key, payload, and the `id` and `type` headers the relay
    // adds), all handed over at once, every acknowledgement awaited; and once more without
    // headers, to show what they cost on this broker.
    let mut raw_rates = Vec::new();
    for with_headers in [true, false] {
        let topic = new_topic(3).await;
        let raw = producer();
        let started = Instant::now();
        let sends = (0..n).map(|i| {
            let raw = raw.clone();
            let topic = topic.clone();
            async move {
                let key = format!("order-{}", i % 100);
                let id = uuid::Uuid::now_v7().to_string();
                let body = payload(i);
                let mut record = FutureRecord::to(&topic).key(&key).payload(&body);
                if with_headers {
                    record = record.headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: "id",
                                value: Some(id.as_str()),
                            })
                            .insert(Header {
                                key: "type",
                                value: Some("Bench"),
                            }),
                    );
                }
                raw.send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        join_all(sends).await;
        raw_rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let (raw_rate, raw_bare_rate) = (raw_rates[0], raw_rates[1]);

    // The relay.
    let topic = new_topic(3).await;
    fill_outbox(pool, &topic, n).await;
    let batch_size = relay_config().batch_size;
    let mut relay = Relay::new(pool.clone(), producer(), relay_config());
    let started = Instant::now();
    relay.rebalance().await.unwrap();
    relay.drain().await.unwrap();
    let relay_rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(backlog(pool).await.unwrap().pending, 0);
    drop(relay);

    // The relay again, with a row the broker refuses (larger than `message.max.bytes`) at
    // the head of the outbox: it is parked in the first round and nothing else slows down.
    // A database of its own: the relay above still counts as live there for a heartbeat,
    // which would halve this one's share of the slots.
    let poisoned_db = TestDatabase::create("outbox_bench_poison").await.unwrap();
    faultline_outbox::migrate(&poisoned_db.pool).await.unwrap();
    let poisoned = poisoned_db.pool.clone();
    let topic = new_topic(3).await;
    let mut tx = poisoned.begin().await.unwrap();
    let poison = OutboxMessage::new(&topic, "order", "poison", "Bench", vec![b'x'; 1_200_000]);
    enqueue(&mut tx, &poison).await.unwrap();
    tx.commit().await.unwrap();
    fill_outbox(&poisoned, &topic, n).await;
    let mut relay = Relay::new(poisoned.clone(), producer(), relay_config());
    let started = Instant::now();
    relay.rebalance().await.unwrap();
    relay.drain().await.unwrap();
    let poisoned_rate = n as f64 / started.elapsed().as_secs_f64();
    let after = backlog(&poisoned).await.unwrap();
    assert_eq!((after.pending, after.parked), (0, 1));
    drop(relay);
    poisoned_db.drop().await.unwrap();

    // The naive worker, on its own table shaped as in the seed.
    let topic = new_topic(3).await;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS naive_outbox;
         CREATE TABLE naive_outbox (
             id bigserial PRIMARY KEY, aggregate_type text, aggregate_id text,
             event_type text, payload bytea, created_at timestamptz DEFAULT now(),
             processed_at timestamptz);
         CREATE INDEX ON naive_outbox (processed_at NULLS FIRST);",
    )
    .execute(pool)
    .await
    .unwrap();
    let payloads: Vec<Vec<u8>> = (0..n).map(payload).collect();
    sqlx::query(
        "INSERT INTO naive_outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'order', 'order-' || (i % 100), 'Bench', p
         FROM unnest($1::bytea[]) WITH ORDINALITY AS t(p, i)",
    )
    .bind(&payloads)
    .execute(pool)
    .await
    .unwrap();
    let naive = producer();
    let started = Instant::now();
    assert_eq!(naive_worker(pool, &naive, &topic).await, n);
    let naive_rate = n as f64 / started.elapsed().as_secs_f64();

    println!(
        "  {:<38} {:>10.0} msg/s",
        "raw rdkafka, same records", raw_rate
    );
    println!(
        "  {:<38} {:>10.0} msg/s",
        "raw rdkafka, no headers", raw_bare_rate
    );
    println!(
        "  {:<38} {:>10.0} msg/s",
        format!("faultline relay (batch {batch_size})"),
        relay_rate
    );
    println!(
        "  {:<38} {:>10.0} msg/s",
        "faultline relay, a poison row ahead", poisoned_rate
    );
    println!(
        "  {:<38} {:>10.0} msg/s",
        "naive worker (seed port)", naive_rate
    );
    println!(
        "  relay with a parked row / relay = {:.2}x (target: about 1x)",
        poisoned_rate / relay_rate
    );
    println!(
        "  relay / naive = {:.1}x (target >= 10x); relay / raw = {:.2}x (target >= 0.5x; {:.2}x against records without headers)",
        relay_rate / naive_rate,
        relay_rate / raw_rate,
        relay_rate / raw_bare_rate
    );
}

/// Commits `count` outbox rows one by one, `gap` apart, with a relay running in `config`'s
/// mode; returns each row's commit-to-consume latency.
async fn latencies(
    pool: &PgPool,
    config: RelayConfig,
    count: usize,
    gap: Duration,
) -> Vec<Duration> {
    let topic = new_topic(1).await;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("latency"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let reader = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(count);
            while seen.len() < count {
                let message = consumer.recv().await.unwrap();
                let arrived = Instant::now();
                let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
                let at = committed.lock().await.get(&key).copied().unwrap();
                seen.push(arrived - at);
            }
            seen
        })
    };
    // Let the consumer join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(pool.clone(), producer(), config).run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..count {
        let key = format!("latency-{i}");
        let mut tx = pool.begin().await.unwrap();
        enqueue(
            &mut tx,
            &OutboxMessage::new(&topic, "order", &key, "Bench", payload(i)),
        )
        .await
        .unwrap();
        // Hold the lock across the commit so the reader cannot look the key up first.
        let mut map = committed.lock().await;
        tx.commit().await.unwrap();
        map.insert(key, Instant::now());
        drop(map);
        tokio::time::sleep(gap).await;
    }
    let mut seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    relay.await.unwrap();
    seen.sort();
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn latency(pool: &PgPool) {
    const COUNT: usize = 200;
    let gap = Duration::from_millis(25);
    println!("\ncommit-to-consume latency: {COUNT} messages committed one by one, {gap:?} apart");
    let notify = latencies(pool, RelayConfig::default(), COUNT, gap).await;
    let polling = latencies(
        pool,
        RelayConfig {
            listen: false,
            ..RelayConfig::default()
        },
        COUNT,
        gap,
    )
    .await;
    let poll_interval = RelayConfig::default().poll_interval;
    for (name, sorted) in [
        ("NOTIFY wake-up (+ polling fallback)".to_owned(), &notify),
        (format!("polling every {poll_interval:?}"), &polling),
    ] {
        println!(
            "  {:<38} p50 {:>7.1} ms   p99 {:>7.1} ms",
            name,
            percentile(sorted, 0.50).as_secs_f64() * 1000.0,
            percentile(sorted, 0.99).as_secs_f64() * 1000.0
        );
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; this binary takes no arguments of its own.
    let n: usize = std::env::var("FAULTLINE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let db = TestDatabase::create("outbox_bench").await.unwrap();
    let pool = db.pool.clone();
    faultline_outbox::migrate(&pool).await.unwrap();

    throughput(&pool, n).await;
    latency(&pool).await;

    db.drop().await.unwrap();
}
