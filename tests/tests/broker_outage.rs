//! A broker outage longer than a step's whole budget (attempts × step timeout) delays orders
//! and cancels none: a saga's deadline does not run while its command is still waiting in
//! the outbox, because the participant was never asked.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_e2e::broker::Broker;
use faultline_e2e::{Options, ProductSpec, Service, System};
use uuid::Uuid;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 20,
}];

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Sends of a step before the order is cancelled (checkout's default).
const ATTEMPTS: u32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn orders_placed_while_the_broker_is_down_outlive_their_step_budget_and_confirm()
-> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("broker-{}", Uuid::new_v4().simple()));
    let mut broker = Broker::start(dir.clone()).await?;
    let system = System::start(Options {
        brokers: Some(broker.address.clone()),
        saga_step_timeout: STEP_TIMEOUT,
        // This test is about deadlines, not about refusing orders while the outbox waits.
        extra_env: vec![(
            Service::Checkout,
            "CHECKOUT_ADMISSION__MAX_OUTBOX_AGE_MS".to_owned(),
            "600000".to_owned(),
        )],
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;

    broker.kill().await?;
    let mut orders = Vec::new();
    for i in 0..3 {
        orders.push(
            system
                .client
                .place_order(&format!("customer-{i}"), &[("LAMP-01", 1)])
                .await?,
        );
    }
    // Longer than the whole budget of the first step; shorter than the consumers' 30 s
    // session, so the groups survive on the broker.
    let budget = STEP_TIMEOUT * ATTEMPTS;
    tokio::time::sleep(budget + Duration::from_secs(5)).await;
    let checkout = system.database(Service::Checkout).await?;
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
            .fetch_one(&checkout)
            .await?;
    assert_eq!(cancelled, 0, "no order is decided while nobody was asked");
    let deferred: i64 = sqlx::query_scalar("SELECT count(*) FROM order_sagas WHERE attempts = 1")
        .fetch_one(&checkout)
        .await?;
    assert_eq!(
        deferred, 3,
        "no attempt is counted for a command never sent"
    );

    broker.resume().await?;
    for id in orders {
        let order = system
            .client
            .wait_for_outcome(id, Duration::from_secs(120))
            .await?;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    system.wait_until_settled(Duration::from_secs(120)).await?;
    let loaded: BTreeMap<String, i64> = CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect();
    system.check_invariants(&loaded).await?;
    system.teardown().await?;
    broker.kill().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
