//! Participants crash (SIGKILL) while commands are flowing, and the system still ends with
//! every order decided once, stock conserved and nothing charged twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_e2e::{Options, ProductSpec, Service, Signal, System};

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 100,
}];

/// Waits until at least `at_least` sagas satisfy `condition` (SQL over `order_sagas`).
async fn wait_for_sagas(system: &System, condition: &str, at_least: i64) -> anyhow::Result<()> {
    let checkout = system.database(Service::Checkout).await?;
    let query = format!("SELECT count(*) FROM order_sagas WHERE {condition}");
    let started = Instant::now();
    loop {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone()))
            .fetch_one(&checkout)
            .await?;
        if count >= at_least {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "only {count} sagas with {condition} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn participants_killed_mid_stream_lose_and_double_nothing() -> anyhow::Result<()> {
    let mut system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;

    // Authorization commands pile up while payments is down.
    system.stop(Service::Payments, Signal::Kill).await?;
    let mut placing = Vec::new();
    for i in 0..20 {
        let client = system.client.clone();
        placing.push(tokio::spawn(async move {
            client
                .place_order(&format!("customer-{i}"), &[("LAMP-01", 1)])
                .await
        }));
    }
    let mut orders = Vec::new();
    for order in placing {
        orders.push(order.await??);
    }
    wait_for_sagas(&system, "state = 'awaiting_payment'", 20).await?;

    // Payments comes back, works through part of the backlog and is killed mid-stream;
    // inventory, busy committing stock for the first confirmations, is killed with it;
    // checkout is restarted gracefully meanwhile.
    // The provider answers in 150 ms, so the backlog takes payments a second or more, and
    // the kill is checked to have landed inside it.
    system.set_env(
        Service::Payments,
        "PAYMENTS_PROVIDER__FAULTS__LATENCY_MS",
        "150",
    )?;
    system.restart(Service::Payments).await?;
    wait_for_sagas(&system, "state <> 'awaiting_payment'", 3).await?;
    system.stop(Service::Payments, Signal::Kill).await?;
    system.stop(Service::Inventory, Signal::Kill).await?;
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&system.database(Service::Payments).await?)
        .await?;
    assert!(
        (1..20).contains(&payments),
        "the kill must land mid-stream, but payments had taken {payments} of the 20 authorizations"
    );
    system.stop(Service::Checkout, Signal::Term).await?;
    system.restart(Service::Inventory).await?;
    system.restart(Service::Payments).await?;
    system.restart(Service::Checkout).await?;

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
    system.teardown().await
}
