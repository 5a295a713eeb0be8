//! The resilience layers at the service edges, against the running services: a hung
//! inventory trips checkout's breaker and recovers, the edge rate-limits and sheds, and
//! payments rides out a flaky provider without holding funds twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_e2e::{Client, Freeze, Options, ProductSpec, Service, System};
use reqwest::StatusCode;
use serde_json::json;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 1_000,
}];

fn loaded() -> BTreeMap<String, i64> {
    CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect()
}

fn checkout_env(pairs: &[(&str, &str)]) -> Vec<(Service, String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (Service::Checkout, (*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `circuit_breaker_state{name="inventory"}` from checkout's metrics.
async fn breaker_state(system: &System) -> anyhow::Result<f64> {
    system
        .metric(
            Service::Checkout,
            r#"circuit_breaker_state{name="inventory"}"#,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("no breaker state in checkout's metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_inventory_trips_the_breaker_fails_fast_and_recovers_through_half_open()
-> anyhow::Result<()> {
    let mut system = System::start(Options {
        extra_env: checkout_env(&[
            // Every order asks inventory: this test is about the client stack, not the cache.
            ("CHECKOUT_CACHE__ENABLED", "false"),
            ("CHECKOUT_INVENTORY__RESILIENCE__TIMEOUT__TOTAL_MS", "1000"),
            ("CHECKOUT_INVENTORY__RESILIENCE__TIMEOUT__ATTEMPT_MS", "300"),
            (
                "CHECKOUT_INVENTORY__RESILIENCE__BREAKER__MINIMUM_CALLS",
                "4",
            ),
            ("CHECKOUT_INVENTORY__RESILIENCE__BREAKER__WINDOW_SIZE", "10"),
            (
                "CHECKOUT_INVENTORY__RESILIENCE__BREAKER__OPEN_WAIT_MS",
                "2000",
            ),
            (
                "CHECKOUT_INVENTORY__RESILIENCE__BREAKER__HALF_OPEN_CALLS",
                "2",
            ),
        ]),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;
    let body = Client::order_body(&[("LAMP-01", 1)]);
    assert_eq!(
        system.client.post_order_json(&body).await?.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(breaker_state(&system).await?, 0.0);

    // Inventory hangs: connections stay open, nothing answers.
    system.freeze(Service::Inventory, Freeze::Stop)?;
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let answer = system.client.post_order_json(&body).await?;
        slowest = slowest.max(started.elapsed());
        answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable");
        assert!(answer.retry_after.is_some());
    }
    assert!(
        slowest < Duration::from_millis(1_800),
        "answers came within the 1 s deadline (plus slack), slowest {slowest:?}"
    );

    // The breaker is open now: the next call fails fast, well under the deadline.
    assert_eq!(breaker_state(&system).await?, 2.0, "open");
    let started = Instant::now();
    let answer = system.client.post_order_json(&body).await?;
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "an open breaker answers at once, took {:?}",
        started.elapsed()
    );

    // Inventory recovers; after the open wait, half-open probes succeed and it closes.
    system.freeze(Service::Inventory, Freeze::Continue)?;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let mut accepted = 0;
    let started = Instant::now();
    while accepted < 3 {
        let answer = system.client.post_order_json(&body).await?;
        if answer.status == StatusCode::ACCEPTED {
            accepted += 1;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "never recovered: {}",
            answer.body
        );
    }
    assert_eq!(breaker_state(&system).await?, 0.0, "closed again");
    let (_, metrics) = system.admin(Service::Checkout, "/metrics").await?;
    assert!(
        metrics.contains(r#"circuit_breaker_transitions_total{name="inventory"} 3"#),
        "closed → open → half-open → closed:\n{metrics}"
    );

    system.wait_until_settled(Duration::from_secs(60)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_edge_rate_limits_each_caller_and_sheds_catalog_reads_first() -> anyhow::Result<()> {
    let mut system = System::start(Options {
        extra_env: checkout_env(&[
            ("CHECKOUT_CACHE__ENABLED", "false"),
            ("CHECKOUT_EDGE__RATE_LIMIT__REQUESTS_PER_SECOND", "1"),
            ("CHECKOUT_EDGE__RATE_LIMIT__BURST", "3"),
            ("CHECKOUT_EDGE__SHED__INITIAL_LIMIT", "1"),
            ("CHECKOUT_EDGE__SHED__MIN_LIMIT", "1"),
            ("CHECKOUT_EDGE__SHED__MAX_LIMIT", "1"),
            ("CHECKOUT_INVENTORY__RESILIENCE__TIMEOUT__TOTAL_MS", "1500"),
        ]),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;

    // A burst of three, then one per second.
    for _ in 0..3 {
        let answer = system.client.get("/v1/products/LAMP-01").await?;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["unit_price"]["amount_minor"], 2_490);
    }
    let limited = system.client.get("/v1/products/LAMP-01").await?;
    limited.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(limited.retry_after.as_deref(), Some("1"));
    // The limit is per caller (the token's subject), not per address: another customer on
    // the same connection source is still served.
    let other = system
        .client
        .as_customer("someone-else")
        .get("/v1/products/LAMP-01")
        .await?;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    // Two more tokens: one for the order below, one for the catalog read.
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    // With inventory hung, one order placement fills the (tiny) concurrency limit; a catalog
    // read arriving meanwhile is shed at once instead of queueing behind it.
    system.freeze(Service::Inventory, Freeze::Stop)?;
    let client = system.client.clone();
    let placing = tokio::spawn(async move {
        client
            .post_order_json(&Client::order_body(&[("LAMP-01", 1)]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let shed = system.client.get("/v1/products/LAMP-01").await?;
    shed.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(shed.retry_after.is_some());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed, not queued"
    );
    placing
        .await??
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable");
    system.freeze(Service::Inventory, Freeze::Continue)?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_rides_out_a_flaky_provider_without_holding_funds_twice() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;

    // Half of all provider calls fail, half of those after the provider already decided.
    let (status, body) = system
        .admin_put(
            Service::Payments,
            "/provider",
            &json!({"latency_ms": 20, "failure_rate": 0.5}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = system
        .admin_put(
            Service::Payments,
            "/provider",
            &json!({"latency_ms": 0, "failure_rate": 7}),
        )
        .await?;
    assert_eq!(status, 422, "out-of-range faults are refused");
    let problem: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(problem["type"], "/problems/invalid-body", "{body}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("FAILURE_RATE")),
        "the problem names the setting: {body}"
    );

    let mut orders = Vec::new();
    for i in 0..10 {
        orders.push(
            system
                .client
                .place_order(&format!("c-{i}"), &[("LAMP-01", 1)])
                .await?,
        );
    }
    for id in orders {
        let order = system
            .client
            .wait_for_outcome(id, Duration::from_secs(120))
            .await?;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    let (_, provider) = system.admin(Service::Payments, "/provider").await?;
    let provider: serde_json::Value = serde_json::from_str(&provider)?;
    assert_eq!(provider["holds"], 10, "one hold per order: {provider}");
    assert!(
        provider["calls"].as_u64().unwrap_or(0) > 10,
        "failures were retried: {provider}"
    );
    // Retried, never given up on: a provider outage parks no command.
    let (_, metrics) = system.admin(Service::Payments, "/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("messaging_consumer_parked_total") && l.ends_with(" 0")),
        "payments parked commands:\n{metrics}"
    );

    system.wait_until_settled(Duration::from_secs(60)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_stuck_past_the_request_deadline_answers_504_and_writes_nothing()
-> anyhow::Result<()> {
    let system = System::start(Options {
        extra_env: checkout_env(&[
            ("CHECKOUT_EDGE__REQUEST_DEADLINE_MS", "1000"),
            // Longer than the deadline, so the deadline is what ends the wait below.
            ("CHECKOUT_DATABASE__LOCK_TIMEOUT_MS", "8000"),
        ]),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;
    let checkout = system.database(Service::Checkout).await?;

    // Someone holds the orders table (a migration, a stuck session): placing an order blocks
    // inside its transaction.
    let mut blocker = checkout.begin().await?;
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;
    let key = uuid::Uuid::new_v4().to_string();
    let body = Client::order_body(&[("LAMP-01", 1)]).to_string();
    let started = Instant::now();
    let answer = system
        .client
        .post_order(body.clone(), Some("application/json"), Some(&key))
        .await?;
    answer.assert_problem(StatusCode::GATEWAY_TIMEOUT, "timed-out");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at the deadline, not when the lock went away"
    );
    blocker.rollback().await?;

    // The abandoned request's transaction rolled back: no order, no saga, no outbox row.
    for table in ["orders", "order_sagas", "outbox"] {
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&checkout)
                .await?;
        assert_eq!(rows, 0, "{table} has rows from the abandoned request");
    }
    // And the key is not lost: the abandoned request gives it back (the idempotency layer
    // does, when its future is dropped), so the same request goes through, once.
    let mut retried = system.client.post_order_patiently(&body, &key).await?;
    let started = Instant::now();
    while retried.status == StatusCode::CONFLICT && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        retried = system.client.post_order_patiently(&body, &key).await?;
    }
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{}", retried.body);
    let id: uuid::Uuid = retried.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let order = system
        .client
        .wait_for_outcome(id, Duration::from_secs(60))
        .await?;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    system.wait_until_settled(Duration::from_secs(60)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}
