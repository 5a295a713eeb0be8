//! The gRPC adapter: translates protobuf requests into catalog calls and errors into status
//! codes. No business rule lives here.

use faultline_platform::grpc::database_status;
use faultline_platform::messaging::publish;
use faultline_proto::common::v1::Money;
use faultline_proto::contract::validate_sku;
use faultline_proto::envelope::Provenance;
use faultline_proto::inventory::v1 as pb;
use faultline_proto::inventory::v1::inventory_service_server::InventoryService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::catalog::{self, MAX_PRODUCTS_PER_REQUEST, Product, ProductUpsert};

use crate::commands::PRODUCER;

/// Serves `faultline.inventory.v1.InventoryService`.
#[derive(Debug, Clone)]
pub struct InventoryGrpc {
    pool: PgPool,
    catalog_events: String,
}

impl InventoryGrpc {
    /// A service reading and writing the catalog in `pool`, announcing every change on the
    /// topic `catalog_events` (full name) through the outbox.
    pub fn new(pool: PgPool, catalog_events: String) -> Self {
        Self {
            pool,
            catalog_events,
        }
    }
}

fn to_pb(product: Product) -> pb::Product {
    pb::Product {
        sku: product.sku,
        name: product.name,
        unit_price: Some(Money {
            amount_minor: product.unit_price_minor,
            currency: product.currency,
        }),
        available: product.available,
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryGrpc {
    async fn get_products(
        &self,
        request: Request<pb::GetProductsRequest>,
    ) -> Result<Response<pb::GetProductsResponse>, Status> {
        let skus = request.into_inner().skus;
        if skus.is_empty() || skus.len() > MAX_PRODUCTS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "skus: ask for 1 to {MAX_PRODUCTS_PER_REQUEST} products"
            )));
        }
        for sku in &skus {
            validate_sku(sku).map_err(|e| Status::invalid_argument(format!("skus: {e}")))?;
        }
        let mut conn = self.pool.acquire().await.map_err(|e| database_status(&e))?;
        let products = catalog::find(&mut conn, &skus)
            .await
            .map_err(|e| database_status(&e))?;
        let missing_skus = skus
            .iter()
            .filter(|sku| !products.iter().any(|p| &p.sku == *sku))
            .cloned()
            .collect();
        Ok(Response::new(pb::GetProductsResponse {
            products: products.into_iter().map(to_pb).collect(),
            missing_skus,
        }))
    }

    async fn upsert_products(
        &self,
        request: Request<pb::UpsertProductsRequest>,
    ) -> Result<Response<pb::UpsertProductsResponse>, Status> {
        let products = request.into_inner().products;
        if products.is_empty() || products.len() > MAX_PRODUCTS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "products: send 1 to {MAX_PRODUCTS_PER_REQUEST} products"
            )));
        }
        let mut upserts = Vec::with_capacity(products.len());
        for product in products {
            let price = product.unit_price.ok_or_else(|| {
                Status::invalid_argument(format!("{}: unit_price is required", product.sku))
            })?;
            let upsert = ProductUpsert {
                sku: product.sku,
                name: product.name,
                unit_price_minor: price.amount_minor,
                currency: price.currency,
                add_stock: product.add_stock,
            };
            upsert.validate().map_err(Status::invalid_argument)?;
            upserts.push(upsert);
        }
        let mut tx = self.pool.begin().await.map_err(|e| database_status(&e))?;
        let products = catalog::upsert(&mut tx, &upserts)
            .await
            .map_err(|e| database_status(&e))?;
        // Announced in the same transaction as the change: a reader caching the catalog
        // hears of every committed change, and of nothing that rolled back.
        let correlation = uuid::Uuid::now_v7().to_string();
        for product in &products {
            let event = pb::ProductChanged {
                sku: product.sku.clone(),
                name: product.name.clone(),
                unit_price: Some(Money {
                    amount_minor: product.unit_price_minor,
                    currency: product.currency.clone(),
                }),
            };
            let provenance = Provenance {
                aggregate_id: product.sku.clone(),
                correlation_id: correlation.clone(),
                causation_id: None,
                producer: PRODUCER,
            };
            publish(&mut tx, &self.catalog_events, "product", &event, provenance)
                .await
                .map_err(|e| database_status(&e))?;
        }
        tx.commit().await.map_err(|e| database_status(&e))?;
        Ok(Response::new(pb::UpsertProductsResponse {
            products: products.into_iter().map(to_pb).collect(),
        }))
    }
}
