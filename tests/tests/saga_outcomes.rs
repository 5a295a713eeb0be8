//! The three outcomes of the order saga, end to end, and the invariants after a burst of
//! concurrent orders.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_e2e::{Options, ProductSpec, System};

const CATALOG: [ProductSpec; 3] = [
    ProductSpec {
        sku: "LAMP-01",
        name: "Desk lamp",
        price_cents: 2_490,
        stock: 40,
    },
    ProductSpec {
        sku: "DESK-03",
        name: "Standing desk",
        price_cents: 64_900,
        stock: 11,
    },
    ProductSpec {
        sku: "MUG-04",
        name: "Coffee mug",
        price_cents: 850,
        stock: 3,
    },
];

fn loaded() -> BTreeMap<String, i64> {
    CATALOG
        .iter()
        .map(|p| (p.sku.to_owned(), p.stock))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_confirms_is_declined_or_runs_out_of_stock() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    let client = &system.client;
    client.load_catalog(&CATALOG).await?;

    let confirmed = client.place_order("alice", &[("LAMP-01", 2)]).await?;
    let declined = client.place_order("bob", &[("DESK-03", 1)]).await?;
    let out_of_stock = client
        .place_order("carol", &[("MUG-04", 4), ("LAMP-01", 1)])
        .await?;

    let wait = Duration::from_secs(60);
    let order = client.wait_for_outcome(confirmed, wait).await?;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total"]["amount_minor"], 4_980);
    assert!(order.get("cancellation").is_none());

    let order = client.wait_for_outcome(declined, wait).await?;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellation"]["code"], "payment_declined");
    assert!(
        order["cancellation"]["reason"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{order}"
    );

    let order = client.wait_for_outcome(out_of_stock, wait).await?;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellation"]["code"], "out_of_stock");
    assert!(
        order["cancellation"]["reason"]
            .as_str()
            .unwrap()
            .contains("MUG-04"),
        "{order}"
    );

    system.wait_until_settled(wait).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_concurrent_orders_never_oversells() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;

    // 30 customers race for 3 mugs and 40 lamps; a third of the orders exceed the card
    // limit. There are enough desks and lamps that only mugs can run out.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = system.client.clone();
        tasks.push(tokio::spawn(async move {
            let customer = format!("customer-{i}");
            let items: Vec<(&str, i64)> = match i % 3 {
                0 => vec![("MUG-04", 1), ("LAMP-01", 1)],
                1 => vec![("LAMP-01", 2)],
                _ => vec![("DESK-03", 1), ("LAMP-01", 1)],
            };
            client.place_order(&customer, &items).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??);
    }
    let mut outcomes = BTreeMap::<String, usize>::new();
    for id in ids {
        let order = system
            .client
            .wait_for_outcome(id, Duration::from_secs(120))
            .await?;
        let key = match order.get("cancellation") {
            Some(c) => c["code"].as_str().unwrap_or("?").to_owned(),
            None => order["status"].as_str().unwrap_or("?").to_owned(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    // Exactly three mug orders can win; every desk order is declined (over the limit).
    assert_eq!(outcomes.get("payment_declined"), Some(&10), "{outcomes:?}");
    assert_eq!(outcomes.get("out_of_stock"), Some(&7), "{outcomes:?}");
    assert_eq!(outcomes.get("CONFIRMED"), Some(&13), "{outcomes:?}");

    system.wait_until_settled(Duration::from_secs(120)).await?;
    system.check_invariants(&loaded()).await?;
    system.teardown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_free_order_is_confirmed_and_captures_nothing() -> anyhow::Result<()> {
    // Short steps, so that an order payments refuses times out quickly instead of passing.
    let system = System::start(Options {
        saga_step_timeout: Duration::from_secs(5),
        ..Options::default()
    })
    .await?;
    let free = [ProductSpec {
        sku: "STICKER-00",
        name: "Sticker",
        price_cents: 0,
        stock: 5,
    }];
    system.client.load_catalog(&free).await?;

    let id = system
        .client
        .place_order("alice", &[("STICKER-00", 2)])
        .await?;
    let order = system
        .client
        .wait_for_outcome(id, Duration::from_secs(60))
        .await?;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total"]["amount_minor"], 0);

    system.wait_until_settled(Duration::from_secs(60)).await?;
    system
        .check_invariants(&BTreeMap::from([("STICKER-00".to_owned(), 5)]))
        .await?;
    system.teardown().await
}
