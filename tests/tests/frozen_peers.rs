//! A peer that freezes (SIGSTOP, a hung VM, a network that drops packets instead of
//! refusing them) says nothing: its TCP connections to Postgres stay open and its locks
//! stay held until a timeout notices. These tests freeze a peer's connections with the
//! fault proxy and show that the server-side timeouts free what it held within tens of
//! seconds: a relay's slot locks (`idle_session_timeout` on its lock session) and the row
//! locks of a transaction it left open (`idle_in_transaction_session_timeout`, from the
//! settings every service pool connects with).

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use faultline_e2e::proxy::TcpProxy;
use faultline_outbox::kafka::{TopicSpec, ensure_topics, producer_config};
use faultline_outbox::{OutboxMessage, Relay, RelayConfig, backlog, enqueue};
use faultline_platform::config::DatabaseSettings;
use faultline_testkit::{TestDatabase, kafka_brokers, postgres_server, unique};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A proxy in front of the test Postgres, and the URL of `database` through it.
async fn proxied(database: &str) -> (TcpProxy, String) {
    let server = postgres_server();
    let target: SocketAddr = server.rsplit('@').next().unwrap().parse().unwrap();
    let proxy = TcpProxy::start(target).await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/{database}", proxy.port);
    (proxy, url)
}

fn relay(pool: &PgPool) -> Relay {
    let producer: FutureProducer = producer_config(&kafka_brokers(), "frozen-relay")
        .create()
        .unwrap();
    Relay::new(
        pool.clone(),
        producer,
        RelayConfig {
            heartbeat_ttl: Duration::from_secs(2),
            rebalance_interval: Duration::from_millis(200),
            poll_interval: Duration::from_millis(50),
            lock_session_idle_timeout: Duration::from_secs(5),
            ..RelayConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_relays_slots_are_taken_over_by_a_live_one() {
    let db = TestDatabase::create("frozen_relay").await.unwrap();
    faultline_outbox::migrate(&db.pool).await.unwrap();
    let topic = unique("frozen").replace('_', ".");
    ensure_topics(
        &kafka_brokers(),
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication_factor: 1,
        }],
    )
    .await
    .unwrap();

    // The relay-to-be-frozen reaches Postgres only through the proxy and holds every slot.
    let (proxy, url) = proxied(&db.name).await;
    let frozen_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let mut frozen = relay(&frozen_pool);
    frozen.rebalance().await.unwrap();
    assert_eq!(frozen.owned_slots().len(), 64);
    proxy.freeze();

    // A live relay starts beside it, and orders keep being written.
    let stop = tokio_util::sync::CancellationToken::new();
    let live = tokio::spawn(relay(&db.pool).run(stop.clone()));
    for n in 0..50 {
        let mut tx = db.pool.begin().await.unwrap();
        let message = OutboxMessage::new(&topic, "test", format!("agg-{n}"), "Step", vec![1]);
        enqueue(&mut tx, &message).await.unwrap();
        tx.commit().await.unwrap();
    }

    // Without a server-side idle timeout the frozen relay's session keeps its locks for as
    // long as the kernel keeps the connection (about two hours); with it, the live relay
    // gets the slots within the lock session timeout plus the heartbeat TTL.
    let started = Instant::now();
    loop {
        let pending = backlog(&db.pool).await.unwrap().pending;
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{pending} rows still pending: the frozen relay's slots were never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.cancel();
    live.await.unwrap();
    proxy.cut();
    drop(frozen);
    frozen_pool.close().await;
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_transactions_row_locks_are_released_by_the_server() {
    let db = TestDatabase::create("frozen_tx").await.unwrap();
    sqlx::raw_sql("CREATE TABLE stock (sku text PRIMARY KEY, available int NOT NULL); INSERT INTO stock VALUES ('SKU-1', 10)")
        .execute(&db.pool)
        .await
        .unwrap();

    // A service pool, connected the way every service connects (the settings' defaults),
    // through the proxy.
    let (proxy, url) = proxied(&db.name).await;
    let settings = DatabaseSettings {
        url,
        ..DatabaseSettings::local("unused")
    };
    let service_pool = faultline_platform::db::connect(&settings).await.unwrap();
    let mut holder = service_pool.begin().await.unwrap();
    sqlx::query("SELECT available FROM stock WHERE sku = 'SKU-1' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    // The process holding the row lock freezes mid-transaction.
    proxy.freeze();

    // Everyone else's reservation of that SKU waits, each attempt bounded by the lock
    // timeout, until the server ends the silent session and its lock goes with it.
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("SET LOCAL lock_timeout = '1s'")
            .execute(&mut *tx)
            .await
            .unwrap();
        let updated = sqlx::query("UPDATE stock SET available = available - 1 WHERE sku = 'SKU-1'")
            .execute(&mut *tx)
            .await;
        match updated {
            Ok(_) => {
                tx.commit().await.unwrap();
                break;
            }
            Err(error) => {
                assert!(faultline_postgres::is_contention(&error), "{error}");
                refused += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the frozen transaction still holds its row lock after {refused} attempts"
        );
    }
    assert!(
        refused > 0,
        "the row was locked while its holder was frozen"
    );
    let available: i32 = sqlx::query_scalar("SELECT available FROM stock")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        available, 9,
        "the frozen transaction's work never committed"
    );

    proxy.cut();
    drop(holder);
    service_pool.close().await;
    db.drop().await.unwrap();
}
