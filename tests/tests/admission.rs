//! Backpressure from the saga to the edge: while the pipeline holds as many unfinished
//! orders as checkout may take on, a new order is refused with 503 + `Retry-After` and
//! nothing is written for it, not even its idempotency key; the orders that were taken all
//! finish once the pipeline moves again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_e2e::{Client, Options, ProductSpec, Service, Signal, System};
use reqwest::StatusCode;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 50,
}];

const LIMIT: usize = 4;

async fn count(system: &System, query: &str) -> anyhow::Result<i64> {
    let checkout = system.database(Service::Checkout).await?;
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
        .fetch_one(&checkout)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pipeline_refuses_new_orders_before_writing_anything_and_finishes_the_rest()
-> anyhow::Result<()> {
    let checkout_env = [
        ("CHECKOUT_ADMISSION__MAX_SAGAS_IN_FLIGHT", LIMIT.to_string()),
        ("CHECKOUT_ADMISSION__SAMPLE_INTERVAL_MS", "50".to_owned()),
    ];
    let mut system = System::start(Options {
        extra_env: checkout_env
            .into_iter()
            .map(|(name, value)| (Service::Checkout, name.to_owned(), value))
            .collect(),
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;

    // Payments is away: every saga stops at its authorization and stays unfinished.
    system.stop(Service::Payments, Signal::Term).await?;
    let mut taken = Vec::new();
    for i in 0..LIMIT {
        taken.push(
            system
                .client
                .place_order(&format!("customer-{i}"), &[("LAMP-01", 1)])
                .await?,
        );
    }
    // Wait until admission control has counted them (its gauge), not for a guessed time.
    let counted = format!("checkout_sagas_in_flight {LIMIT}\n");
    let started = Instant::now();
    while !system
        .admin(Service::Checkout, "/metrics")
        .await?
        .1
        .contains(&counted)
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "admission control never counted {LIMIT} sagas in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let body = Client::order_body(&[("LAMP-01", 1)]).to_string();
    let key = "refused-while-full";
    let refused = system
        .client
        .post_order(body.clone(), Some("application/json"), Some(key))
        .await?;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "pipeline-full");
    assert_eq!(
        refused.retry_after.as_deref(),
        Some("1"),
        "{}",
        refused.body
    );
    assert_eq!(
        count(&system, "SELECT count(*) FROM orders").await?,
        LIMIT as i64
    );
    assert_eq!(
        count(
            &system,
            "SELECT count(*) FROM idempotency_keys WHERE key = 'refused-while-full'"
        )
        .await?,
        0,
        "a refused order must not hold its key"
    );

    // The pipeline moves again: what was taken finishes, and room opens up.
    system.restart(Service::Payments).await?;
    for id in taken {
        let order = system
            .client
            .wait_for_outcome(id, Duration::from_secs(120))
            .await?;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    let started = Instant::now();
    let accepted = loop {
        let answer = system
            .client
            .post_order(body.clone(), Some("application/json"), Some(key))
            .await?;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE
            || started.elapsed() > Duration::from_secs(30)
        {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    system.wait_until_settled(Duration::from_secs(120)).await?;
    let loaded: BTreeMap<String, i64> = CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect();
    system.check_invariants(&loaded).await?;
    system.teardown().await
}
