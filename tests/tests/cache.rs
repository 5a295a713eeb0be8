//! The catalog cache in front of inventory, against the running services: a price change
//! reaches checkout through inventory's event long before any TTL, and orders keep flowing
//! while checkout's Redis is dead, with caching back once it returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_e2e::redis::RedisServer;
use faultline_e2e::{Options, ProductSpec, Service, System, sample};
use reqwest::StatusCode;

fn lamp(price_cents: i64, stock: i64) -> ProductSpec {
    ProductSpec {
        sku: "LAMP-01",
        name: "Desk lamp",
        price_cents,
        stock,
    }
}

/// The value of the series `series` (the whole text before the value) in a scrape.
async fn lookups(system: &System, outcome: &str) -> anyhow::Result<f64> {
    let series = format!(r#"faultline_cache_lookups_total{{cache="catalog",outcome="{outcome}"}}"#);
    Ok(system
        .metric(Service::Checkout, &series)
        .await?
        .unwrap_or(0.0))
}

/// How many `ProductChanged` events checkout has applied to the catalog cache.
async fn invalidations(system: &System) -> anyhow::Result<f64> {
    let series = r#"faultline_cache_events_total{cache="catalog",event="invalidation"}"#;
    Ok(system
        .metric(Service::Checkout, series)
        .await?
        .unwrap_or(0.0))
}

/// Waits until checkout has applied `count` catalog events. Loading the catalog publishes
/// one per product; a test that reads before that event lands may see it drop the entry it
/// is about to count hits on.
async fn wait_for_invalidations(system: &System, count: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    while invalidations(system).await? < count {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "checkout applied {} of {count} catalog events in 30 s",
            invalidations(system).await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn price_seen_by_checkout(system: &System) -> anyhow::Result<i64> {
    let answer = system.client.get_patiently("/v1/products/LAMP-01").await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.body);
    answer.body["unit_price"]["amount_minor"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no price in {}", answer.body))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_price_change_reaches_checkout_through_the_event_not_the_ttl() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system.client.load_catalog(&[lamp(2_490, 10)]).await?;
    wait_for_invalidations(&system, 1.0).await?;

    // The first read loads from inventory; the ones after are answered by the cache.
    assert_eq!(price_seen_by_checkout(&system).await?, 2_490);
    for _ in 0..5 {
        assert_eq!(price_seen_by_checkout(&system).await?, 2_490);
    }
    let cached = lookups(&system, "hit").await? + lookups(&system, "l1_hit").await?;
    assert!(cached >= 5.0, "{cached} cached answers");

    // Inventory changes the price. The cached entry would live five minutes; the
    // ProductChanged event drops it within the event's lag.
    system.client.load_catalog(&[lamp(2_990, 0)]).await?;
    let changed = Instant::now();
    loop {
        if price_seen_by_checkout(&system).await? == 2_990 {
            println!(
                "the new price reached checkout after {:?}",
                changed.elapsed()
            );
            break;
        }
        anyhow::ensure!(
            changed.elapsed() < Duration::from_secs(15),
            "checkout still sees the old price 15 s after the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The load's event and the change's.
    assert!(invalidations(&system).await? >= 2.0);

    // An order placed now is priced at the new price.
    let order = system
        .client
        .place_order("alice", &[("LAMP-01", 2)])
        .await?;
    let order = system
        .client
        .wait_for_outcome(order, Duration::from_secs(60))
        .await?;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total"]["amount_minor"], 5_980);
    system.wait_until_settled(Duration::from_secs(60)).await?;
    system
        .check_invariants(&BTreeMap::from([("LAMP-01".to_owned(), 10)]))
        .await?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_keep_flowing_while_redis_is_dead_and_caching_resumes_after() -> anyhow::Result<()> {
    let mut redis = RedisServer::start();
    let env = |name: &str, value: &str| (Service::Checkout, name.to_owned(), value.to_owned());
    let system = System::start(Options {
        extra_env: vec![
            env("CHECKOUT_CACHE__NODES", &redis.url()),
            // No L1, so every lookup asks Redis; a quick half-open probe keeps the test short.
            env("CHECKOUT_CACHE__L1__ENABLED", "false"),
            env("CHECKOUT_CACHE__BREAKER__MINIMUM_CALLS", "5"),
            env("CHECKOUT_CACHE__BREAKER__WINDOW_SIZE", "10"),
            env("CHECKOUT_CACHE__BREAKER__OPEN_WAIT_MS", "500"),
        ],
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&[lamp(2_490, 100)]).await?;
    wait_for_invalidations(&system, 1.0).await?;
    let mut placed = Vec::new();
    for i in 0..3 {
        placed.push(
            system
                .client
                .place_order(&format!("before-{i}"), &[("LAMP-01", 1)])
                .await?,
        );
    }

    // Redis dies. Every request still succeeds: lookups go to inventory.
    redis.stop();
    for i in 0..20 {
        assert_eq!(price_seen_by_checkout(&system).await?, 2_490);
        if i % 4 == 0 {
            placed.push(
                system
                    .client
                    .place_order(&format!("during-{i}"), &[("LAMP-01", 1)])
                    .await?,
            );
        }
    }
    let (_, scrape) = system.admin(Service::Checkout, "/metrics").await?;
    let node = redis.url();
    assert!(
        sample(
            &scrape,
            &format!(r#"circuit_breaker_state{{name="cache {node}"}}"#)
        )
        .unwrap_or(0.0)
            > 0.0,
        "the cache's breaker opened:\n{scrape}"
    );
    assert!(lookups(&system, "bypass").await? > 0.0);

    // Redis returns (empty). Once the breaker has probed it, lookups are cached again.
    redis.restart();
    let back = Instant::now();
    let hits_before = lookups(&system, "hit").await?;
    loop {
        assert_eq!(price_seen_by_checkout(&system).await?, 2_490);
        if lookups(&system, "hit").await? > hits_before {
            break;
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(20),
            "no cache hit 20 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    placed.push(
        system
            .client
            .place_order("after", &[("LAMP-01", 1)])
            .await?,
    );

    for order in placed {
        let order = system
            .client
            .wait_for_outcome(order, Duration::from_secs(60))
            .await?;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    system.wait_until_settled(Duration::from_secs(60)).await?;
    system
        .check_invariants(&BTreeMap::from([("LAMP-01".to_owned(), 100)]))
        .await?;
    system.teardown().await
}
