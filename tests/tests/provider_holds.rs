//! The provider's holds follow the orders end to end: an order the saga gives up on while its
//! payment is still being authorized is cancelled, and the hold the late authorization
//! placed is released by the void, so the provider holds nothing for it.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_e2e::{Options, ProductSpec, Service, System};
use serde_json::json;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 20,
}];

#[tokio::test(flavor = "multi_thread")]
async fn an_order_cancelled_while_its_payment_is_authorized_leaves_no_hold() -> anyhow::Result<()> {
    // The saga waits 300 ms for each step and asks once; the provider takes 2.5 s, inside
    // what its client allows. Every payment step times out, and the authorization still
    // succeeds, after the saga has cancelled the order and sent the void.
    let env = |service, name: &str, value: &str| (service, name.to_owned(), value.to_owned());
    let system = System::start(Options {
        saga_step_timeout: Duration::from_millis(300),
        extra_env: vec![
            env(Service::Checkout, "CHECKOUT_SAGA__MAX_ATTEMPTS", "1"),
            env(Service::Checkout, "CHECKOUT_SAGA__SWEEP_INTERVAL_MS", "100"),
            env(
                Service::Payments,
                "PAYMENTS_PROVIDER__RESILIENCE__TIMEOUT__ATTEMPT_MS",
                "5000",
            ),
            env(
                Service::Payments,
                "PAYMENTS_PROVIDER__RESILIENCE__TIMEOUT__TOTAL_MS",
                "10000",
            ),
        ],
        ..Options::default()
    })
    .await?;
    system.client.load_catalog(&CATALOG).await?;
    let (status, body) = system
        .admin_put(
            Service::Payments,
            "/provider",
            &json!({"latency_ms": 2_500, "failure_rate": 0.0}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");

    let mut orders = Vec::new();
    for customer in ["alice", "bob", "carol"] {
        orders.push(
            system
                .client
                .place_order(customer, &[("LAMP-01", 1)])
                .await?,
        );
    }
    let mut timed_out = 0;
    for id in orders {
        let order = system
            .client
            .wait_for_outcome(id, Duration::from_secs(60))
            .await?;
        assert_eq!(order["status"], "CANCELLED", "{order}");
        if order["cancellation"]["code"] == "payment_timeout" {
            timed_out += 1;
        }
    }
    system.wait_until_settled(Duration::from_secs(60)).await?;

    let (_, provider) = system.admin(Service::Payments, "/provider").await?;
    let provider: serde_json::Value = serde_json::from_str(&provider)?;
    assert!(
        timed_out > 0 && provider["holds"].as_u64().unwrap_or(0) > 0,
        "no authorization outlived its saga step ({timed_out} payment timeouts): {provider}"
    );
    assert_eq!(
        provider["releases"], provider["holds"],
        "every hold placed was released: {provider}"
    );
    assert_eq!(provider["open_holds"], json!([]), "{provider}");

    let loaded: BTreeMap<String, i64> = CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect();
    system.check_invariants(&loaded).await?;
    system.teardown().await
}
