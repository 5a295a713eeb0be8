//! The relay when something under it breaks: its lock session is killed while a newcomer
//! takes the slots, and a row the broker will never accept sits among good ones. Real
//! Postgres and a real Kafka-protocol broker, as in `relay_and_consumer.rs`.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use faultline_outbox::relay::{self, RelayError};
use faultline_outbox::{OutboxMessage, RelayConfig, backlog, enqueue};

use common::{TestDb, fast_relays, read_until_quiet, relay, slot_holders, topic, write};

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_whose_lock_session_was_killed_publishes_nothing_from_slots_a_newcomer_took() {
    let db = TestDb::new().await;
    let topic = topic(1).await;
    // Heartbeats and lock sessions that outlast the test, however slow the machine, so
    // that both relays count as live throughout and the shares stay at 32 each.
    let steady = RelayConfig {
        heartbeat_ttl: Duration::from_secs(60),
        lock_session_idle_timeout: Duration::from_secs(120),
        ..fast_relays()
    };
    // The old relay would not rebalance on its own during the test: only its rounds can
    // notice that its session is gone.
    let mut old = relay(
        &db.pool,
        RelayConfig {
            rebalance_interval: Duration::from_secs(3600),
            ..steady.clone()
        },
    );
    old.rebalance().await.unwrap();
    assert_eq!(old.owned_slots().len(), 64);

    // Its lock session dies (a failover, an operator, a pooler reset); a newcomer starts and
    // locks the free slots while the old relay's heartbeat still counts.
    let holder: i32 = sqlx::query_scalar(
        "SELECT DISTINCT pid FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND database =
               (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
        .bind(holder)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed, "the lock session's backend is gone");
    let mut newcomer = relay(&db.pool, steady);
    newcomer.rebalance().await.unwrap();
    assert_eq!(
        newcomer.owned_slots().len(),
        32,
        "half: two relays are live"
    );

    const AGGREGATES: usize = 20;
    const PER_AGGREGATE: usize = 5;
    for seq in 0..PER_AGGREGATE {
        for agg in 0..AGGREGATES {
            write(&db.pool, &topic, agg, seq).await;
        }
    }
    let written = (AGGREGATES * PER_AGGREGATE) as i64;

    // The old relay's next round must not publish: half of what it thinks it owns is the
    // newcomer's now, and the rest is nobody's until it locks it again.
    let stale = old.drain().await;
    assert_eq!(
        backlog(&db.pool).await.unwrap().pending,
        written,
        "a relay without its locks published nothing"
    );
    assert!(
        matches!(stale, Err(RelayError::LockSessionLost(_))),
        "the old relay noticed its lost session: {stale:?}"
    );
    assert_eq!(old.owned_slots().len(), 0);

    // Both go on normally: the old one takes a new session and the remaining slots.
    newcomer.drain().await.unwrap();
    old.rebalance().await.unwrap();
    newcomer.rebalance().await.unwrap();
    old.drain().await.unwrap();
    newcomer.drain().await.unwrap();
    let holders = slot_holders(&db.pool).await;
    assert_eq!(
        holders.values().sum::<i64>(),
        64,
        "{holders:?}; old owns {:?}, newcomer owns {:?}",
        old.owned_slots(),
        newcomer.owned_slots()
    );
    assert_eq!(backlog(&db.pool).await.unwrap().pending, 0);

    let mut copies: HashMap<String, usize> = HashMap::new();
    for payload in read_until_quiet(&topic, Duration::from_secs(3)).await {
        *copies.entry(payload).or_default() += 1;
    }
    assert_eq!(copies.len(), AGGREGATES * PER_AGGREGATE);
    assert!(
        copies.values().all(|n| *n == 1),
        "every row was published by one relay, once: {copies:?}"
    );
    db.drop_now().await;
}

/// More than the producer's `message.max.bytes` (1 MB): refused before it is even sent, as
/// a dead-letter copy of a near-limit record would be.
fn too_large() -> Vec<u8> {
    vec![b'x'; 1_200_000]
}

async fn write_payload(pool: &sqlx::PgPool, topic: &str, agg: &str, payload: Vec<u8>) {
    let mut tx = pool.begin().await.unwrap();
    enqueue(
        &mut tx,
        &OutboxMessage::new(topic, "test", agg, "Step", payload),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_broker_refuses_is_parked_and_holds_back_only_its_aggregate_on_its_topic() {
    let db = TestDb::new().await;
    let orders = topic(1).await;
    let audit = topic(1).await;
    // agg-0 on `orders`: the poison row, then a row that must wait behind it.
    write_payload(&db.pool, &orders, "agg-0", too_large()).await;
    write_payload(&db.pool, &orders, "agg-0", b"0:1".to_vec()).await;
    // agg-0 on another topic, and other aggregates on `orders`: not held up.
    write_payload(&db.pool, &audit, "agg-0", b"0:audit".to_vec()).await;
    for seq in 0..4 {
        for agg in 1..6 {
            write(&db.pool, &orders, agg, seq).await;
        }
    }

    let mut relay = relay(&db.pool, fast_relays());
    relay.rebalance().await.unwrap();
    let first = relay.relay_once().await.unwrap();
    assert_eq!((first.published, first.parked), (21, 1), "{first:?}");
    // Nothing is sent again round after round, and the round is not an error.
    for _ in 0..3 {
        let next = relay.relay_once().await.unwrap();
        assert_eq!(next.read, 0, "{next:?}");
    }
    let parked = relay::parked(&db.pool).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].topic.as_str(), parked[0].waiting),
        (orders.as_str(), 1)
    );
    assert!(
        parked[0].park_error.contains("too large"),
        "{}",
        parked[0].park_error
    );
    let now = backlog(&db.pool).await.unwrap();
    assert_eq!((now.pending, now.parked), (1, 1));

    let on_orders = read_until_quiet(&orders, Duration::from_secs(3)).await;
    assert_eq!(
        on_orders.len(),
        20,
        "each of the other aggregates' rows once"
    );
    assert!(
        on_orders.iter().all(|p| !p.starts_with("0:")),
        "{on_orders:?}"
    );
    assert_eq!(
        read_until_quiet(&audit, Duration::from_secs(3)).await,
        vec!["0:audit".to_string()]
    );

    // The operator fixes the row (here: shrinks it) and re-drives it; it goes out first,
    // then the row that waited behind it.
    sqlx::query("UPDATE outbox SET payload = '0:0' WHERE id = $1")
        .bind(parked[0].id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(relay::redrive(&db.pool, parked[0].id).await.unwrap());
    assert!(!relay::redrive(&db.pool, parked[0].id).await.unwrap());
    relay.drain().await.unwrap();
    let now = backlog(&db.pool).await.unwrap();
    assert_eq!((now.pending, now.parked), (0, 0));
    let agg0: Vec<String> = read_until_quiet(&orders, Duration::from_secs(3))
        .await
        .into_iter()
        .filter(|p| p.starts_with("0:"))
        .collect();
    assert_eq!(agg0, vec!["0:0".to_string(), "0:1".to_string()]);
    db.drop_now().await;
}
