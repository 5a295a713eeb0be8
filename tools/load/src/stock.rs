//! Stock for the run: the one SKU every order buys, created or topped up through
//! inventory's `UpsertProducts` (gRPC over mutual TLS, as the operator). Orders that find
//! no stock are cancelled as `out_of_stock`, which would measure the catalog instead of the
//! system, so a run adds more than it can sell.

use anyhow::Context;
use faultline_e2e::Client;
use faultline_proto::common::v1::Money;
use faultline_proto::inventory::v1 as pb;
use faultline_proto::inventory::v1::inventory_service_client::InventoryServiceClient;

/// Price of the load SKU, in cents: far below payments' decline limit.
const PRICE_CENTS: i64 = 1_000;

/// Adds `units` of `sku` (creating it if needed) and returns how many are now available.
pub async fn add(client: &Client, sku: &str, units: i64) -> anyhow::Result<i64> {
    let channel = client
        .grpc_channel("inventory", client.inventory_url())
        .await?;
    let request = pb::UpsertProductsRequest {
        products: vec![pb::ProductUpsert {
            sku: sku.to_owned(),
            name: "Load test item".to_owned(),
            unit_price: Some(Money {
                amount_minor: PRICE_CENTS,
                currency: "EUR".to_owned(),
            }),
            add_stock: units,
        }],
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    let products = InventoryServiceClient::new(channel)
        .upsert_products(request)
        .await
        .with_context(|| format!("adding {units} x {sku} to inventory"))?
        .into_inner()
        .products;
    Ok(products.first().map(|p| p.available).unwrap_or(0))
}
