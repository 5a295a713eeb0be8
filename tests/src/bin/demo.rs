//! The driver behind `make demo`: against a running system it loads a small catalog, places
//! three orders (one that confirms, one the payment provider declines, one that asks for
//! more stock than exists) and prints how each ended.
//!
//! It authenticates as the services demand: each customer with an access token signed by the
//! dev key, the catalog load over mutual TLS with the operator's certificate (both written
//! by `make credentials` under `.state/`).
//!
//! Addresses default to the services' defaults; `FAULTLINE_CHECKOUT_URL` and
//! `FAULTLINE_INVENTORY_URL` override them.

use std::path::Path;
use std::time::Duration;

use faultline_e2e::{Client, Credentials, ProductSpec};

const CATALOG: [ProductSpec; 4] = [
    ProductSpec {
        sku: "LAMP-01",
        name: "Desk lamp",
        price_cents: 2_490,
        stock: 10,
    },
    ProductSpec {
        sku: "CHAIR-02",
        name: "Office chair",
        price_cents: 18_900,
        stock: 5,
    },
    ProductSpec {
        sku: "DESK-03",
        name: "Standing desk",
        price_cents: 64_900,
        stock: 3,
    },
    ProductSpec {
        sku: "MUG-04",
        name: "Coffee mug",
        price_cents: 850,
        stock: 1,
    },
];

/// Order lines: SKU and quantity.
type Lines = Vec<(&'static str, i64)>;

fn euros(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let checkout =
        std::env::var("FAULTLINE_CHECKOUT_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let inventory = std::env::var("FAULTLINE_INVENTORY_URL")
        .unwrap_or_else(|_| "https://127.0.0.1:50051".into());
    let credentials = Credentials::load(Path::new(".state/auth"), Path::new(".state/certs"))?;
    let client = Client::new(checkout, inventory, credentials);

    println!("Loading the catalog into inventory:");
    for product in client.load_catalog(&CATALOG).await? {
        let price = product.unit_price.unwrap_or_default();
        println!(
            "  {:<9} {:<14} {:>7} {}  {:>3} available",
            product.sku,
            product.name,
            euros(price.amount_minor),
            price.currency,
            product.available
        );
    }
    // Earlier demo runs added mugs too; ask for one more than there are, whatever that is.
    let mugs = client
        .products(&["MUG-04"])
        .await?
        .first()
        .map(|p| p.available)
        .unwrap_or(0);

    let orders: [(&str, &str, Lines); 3] = [
        (
            "a lamp and a chair",
            "alice",
            vec![("LAMP-01", 1), ("CHAIR-02", 1)],
        ),
        ("a desk above the card limit", "bob", vec![("DESK-03", 1)]),
        ("more mugs than exist", "carol", vec![("MUG-04", mugs + 1)]),
    ];
    println!("\nPlacing three orders:");
    let mut placed = Vec::new();
    for (what, customer, items) in &orders {
        let id = client.place_order(customer, items).await?;
        println!("  {customer:<6} orders {what}: accepted as {id}");
        placed.push((customer, id));
    }

    println!("\nFinal states:");
    for (customer, id) in placed {
        let order = client.wait_for_outcome(id, Duration::from_secs(60)).await?;
        let total = order["total"]["amount_minor"].as_i64().unwrap_or(0);
        let currency = order["total"]["currency"].as_str().unwrap_or("");
        let status = order["status"].as_str().unwrap_or("?");
        print!(
            "  {id}  {customer:<6} {status:<9} {:>7} {currency}",
            euros(total)
        );
        match order.get("cancellation") {
            Some(c) => println!(
                "  reason: {} ({})",
                c["reason"].as_str().unwrap_or(""),
                c["code"].as_str().unwrap_or("")
            ),
            None => println!(),
        }
    }
    Ok(())
}
