//! The relay and the consumer loop against real Postgres and a real Kafka-protocol broker
//! (`FAULTLINE_POSTGRES_URL`, `FAULTLINE_KAFKA_BROKERS`; the local defaults otherwise).

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline_outbox::consumer::{
    self, ConsumerObserver, ConsumerSettings, Handler, HandlerError, Incoming,
};
use faultline_outbox::kafka::consumer_config;
use faultline_outbox::{RelayConfig, Retention, backlog};
use faultline_testkit::unique;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use common::{
    TestDb, assert_in_order, brokers, fast_relays, read_all, relay, slot_holders, topic, write,
};

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_share_the_slots_and_keep_each_aggregates_order() {
    let db = TestDb::new().await;
    let topic = topic(3).await;
    const AGGREGATES: usize = 24;
    const PER_AGGREGATE: usize = 25;

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..2 {
        relays.push(tokio::spawn(
            relay(&db.pool, fast_relays()).run(shutdown.clone()),
        ));
    }
    // The third relay is the one that dies. It runs the same rounds, but the test decides
    // when it stops publishing, so that it dies owning rows it never sent.
    let stall = CancellationToken::new();
    let (owned_tx, owned_rx) = tokio::sync::oneshot::channel();
    let victim = {
        let mut victim = relay(&db.pool, fast_relays());
        let stall = stall.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stall.cancelled() => break,
                    ticked = victim.tick() => ticked.unwrap(),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = owned_tx.send(victim.owned_slots().clone());
            // Stalled, as a process stuck in a long GC pause or a hung syscall is: its lock
            // session stays open, so nobody else may publish its slots, until it dies.
            std::future::pending::<()>().await;
            drop(victim);
        })
    };

    // All three hold a fair share of the 64 slots at once.
    let started = Instant::now();
    loop {
        let holders = slot_holders(&db.pool).await;
        // ceil(64 / 3) = 22 each, so two hold 22 and the third the remaining 20.
        if holders.len() == 3
            && holders.values().sum::<i64>() == 64
            && holders.values().all(|n| *n >= 20)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "slots never balanced: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stall.cancel();
    let stalled: Vec<i32> = owned_rx.await.unwrap().into_iter().collect();
    assert!(stalled.len() >= 20, "the victim held {stalled:?}");

    // Writers keep going before and after the death; each aggregate's messages are written
    // in order. The first half lands while the victim still holds its slots.
    let write_half = |range: std::ops::Range<usize>| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (pool, topic, range) = (db.pool.clone(), topic.clone(), range.clone());
                tokio::spawn(async move {
                    for seq in range {
                        for agg in (w..AGGREGATES).step_by(4) {
                            write(&pool, &topic, agg, seq).await;
                        }
                    }
                })
            })
            .collect::<Vec<_>>();
        async move {
            for writer in writers {
                writer.await.unwrap();
            }
        }
    };
    write_half(0..PER_AGGREGATE / 2).await;
    let stranded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND slot = ANY($1)",
    )
    .bind(&stalled)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(stranded > 0, "the victim's slots hold no rows to strand");

    // It dies with those rows unsent; the other two take its slots over and send them, in
    // order with what the writers add meanwhile. Dropping the task closes its connections, as
    // the kernel does when a process dies; a host that dies without closing them is
    // `tests/tests/frozen_peers.rs`.
    victim.abort();
    write_half(PER_AGGREGATE / 2..PER_AGGREGATE).await;
    let arrivals = read_all(&topic, AGGREGATES * PER_AGGREGATE).await;
    assert_in_order(&arrivals, AGGREGATES, PER_AGGREGATE);

    let started = Instant::now();
    while backlog(&db.pool).await.unwrap().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holders = slot_holders(&db.pool).await;
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert_eq!(holders.values().sum::<i64>(), 64, "{holders:?}");

    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
    assert!(
        slot_holders(&db.pool).await.is_empty(),
        "a stopped relay gives its slots back"
    );
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kept_rows_are_marked_then_purged() {
    let db = TestDb::new().await;
    let topic = topic(1).await;
    for seq in 0..10 {
        write(&db.pool, &topic, 0, seq).await;
    }
    let before = backlog(&db.pool).await.unwrap();
    assert_eq!(before.pending, 10);
    assert!(before.oldest.is_some());

    let mut relay = relay(
        &db.pool,
        RelayConfig {
            retention: Retention::Keep(Duration::from_secs(3600)),
            ..fast_relays()
        },
    );
    relay.rebalance().await.unwrap();
    relay.drain().await.unwrap();
    assert_eq!(read_all(&topic, 10).await.len(), 10);

    let after = backlog(&db.pool).await.unwrap();
    assert_eq!((after.pending, after.oldest), (0, None));
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(kept, 10, "published rows are kept for the retention period");
    assert_eq!(
        faultline_outbox::relay::purge_published(&db.pool, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        faultline_outbox::relay::purge_published(&db.pool, Duration::ZERO)
            .await
            .unwrap(),
        10
    );
    db.drop_now().await;
}

/// A handler slower than the broker: records its arrivals in the database.
struct Slow {
    handled: Arc<AtomicUsize>,
}

impl Handler for Slow {
    type Prepared = ();

    async fn prepare(&self, _: &Incoming) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
        (): (),
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        sqlx::query(r#"INSERT INTO arrivals (partition, "offset", payload) VALUES ($1, $2, $3)"#)
            .bind(message.partition)
            .bind(message.offset)
            .bind(String::from_utf8_lossy(&message.payload).into_owned())
            .execute(tx)
            .await?;
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_lane_pauses_and_resumes_without_losing_or_reordering() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        r#"CREATE TABLE arrivals (n bigserial, partition int, "offset" bigint, payload text)"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let topic = topic(2).await;
    const AGGREGATES: usize = 4;
    const PER_AGGREGATE: usize = 30;
    for seq in 0..PER_AGGREGATE {
        for agg in 0..AGGREGATES {
            write(&db.pool, &topic, agg, seq).await;
        }
    }
    let mut publisher = relay(&db.pool, fast_relays());
    publisher.rebalance().await.unwrap();
    publisher.drain().await.unwrap();

    // Two records in flight per partition forces a pause and a rewind every few records.
    let group = unique("lanes");
    let mut settings = ConsumerSettings::new(&group, vec![topic.clone()], format!("{topic}.dlq"));
    settings.max_in_flight_per_partition = 2;
    let handled = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer::run(
        consumer_config(&brokers(), &group, "lanes"),
        ConsumerObserver::default(),
        db.pool.clone(),
        Slow {
            handled: handled.clone(),
        },
        settings,
        shutdown.clone(),
    ));
    let started = Instant::now();
    while handled.load(Ordering::SeqCst) < AGGREGATES * PER_AGGREGATE {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {} handled",
            handled.load(Ordering::SeqCst),
            AGGREGATES * PER_AGGREGATE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let stats = running.await.unwrap().unwrap();
    assert!(
        stats.pauses.load(Ordering::Relaxed) > 0,
        "a two-record lane must have paused its partition"
    );

    let arrivals: Vec<(i32, i64, String)> =
        sqlx::query_as(r#"SELECT partition, "offset", payload FROM arrivals ORDER BY n"#)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        arrivals.len(),
        AGGREGATES * PER_AGGREGATE,
        "each record exactly once"
    );
    // Within a partition, records were handled in offset order.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset, _) in &arrivals {
        let previous = last.insert(*partition, *offset);
        assert!(
            previous.is_none_or(|p| p < *offset),
            "partition {partition} went back from {previous:?} to {offset}"
        );
    }
    let payloads: Vec<String> = arrivals.into_iter().map(|(_, _, p)| p).collect();
    assert_in_order(&payloads, AGGREGATES, PER_AGGREGATE);
    db.drop_now().await;
}
