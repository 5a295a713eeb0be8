//! The gRPC adapter: translates protobuf requests into catalog calls and errors into status
//! codes. No business rule lives here.
//!
//! `UpsertProducts` adds stock as a delta, so it is idempotent by key (the shared gRPC
//! helper of `faultline_idempotency`): the key's claim, the catalog change, its events and
//! the stored response commit in one transaction, and a retried call gets that response
//! back instead of adding the stock again.

use faultline_domain::Sku;
use faultline_idempotency::grpc::{self, GrpcClaim};
use faultline_idempotency::{LeaseError, Store};
use faultline_platform::grpc::database_status;
use faultline_platform::messaging::publish;
use faultline_proto::common::v1::Money;
use faultline_proto::envelope::Provenance;
use faultline_proto::inventory::v1 as pb;
use faultline_proto::inventory::v1::inventory_service_server::InventoryService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::catalog::{self, MAX_PRODUCTS_PER_REQUEST, Product, ProductUpsert};

use crate::kafka::PRODUCER;

/// Serves `faultline.inventory.v1.InventoryService`.
#[derive(Debug, Clone)]
pub struct InventoryGrpc {
    pool: PgPool,
    keys: Store,
    catalog_events: String,
}

/// Scope of `UpsertProducts` keys: one operator door, so one scope.
const KEY_SCOPE: &str = "inventory.upsert-products";

impl InventoryGrpc {
    /// A service reading and writing the catalog in `pool`, keeping idempotency keys in
    /// `keys`, announcing every change on the topic `catalog_events` (full name) through the
    /// outbox.
    pub fn new(pool: PgPool, keys: Store, catalog_events: String) -> Self {
        Self {
            pool,
            keys,
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
            Sku::parse(sku.as_str()).map_err(|e| Status::invalid_argument(format!("skus: {e}")))?;
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
        let request = request.into_inner();
        let lease = match grpc::claim::<_, pb::UpsertProductsResponse>(
            &self.keys,
            KEY_SCOPE,
            &request.idempotency_key,
            &request,
        )
        .await?
        {
            GrpcClaim::Replay(response) => return Ok(Response::new(response)),
            GrpcClaim::Owned(lease) => lease,
        };
        match self.apply_upserts(request.products).await {
            Ok((mut tx, response)) => {
                lease
                    .complete(&mut tx, &grpc::stored(&response))
                    .await
                    .map_err(|error| match error {
                        // The lease ran out and a retry took the key over; it answers.
                        LeaseError::Lost => Status::aborted(
                            "this call took too long and a retry took its idempotency key over",
                        ),
                        LeaseError::Database(error) => database_status(&error),
                    })?;
                tx.commit().await.map_err(|e| database_status(&e))?;
                Ok(Response::new(response))
            }
            Err(status) => {
                if let Err(error) = lease.release(&self.pool).await {
                    tracing::warn!(%error, "could not release the idempotency key");
                }
                Err(status)
            }
        }
    }
}

impl InventoryGrpc {
    /// Validates and applies `products` in a transaction it hands back uncommitted, so that
    /// the stored response commits with the change.
    async fn apply_upserts(
        &self,
        products: Vec<pb::ProductUpsert>,
    ) -> Result<
        (
            sqlx::Transaction<'static, sqlx::Postgres>,
            pb::UpsertProductsResponse,
        ),
        Status,
    > {
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
            let upsert = ProductUpsert::parse(
                product.sku,
                product.name,
                price.amount_minor,
                &price.currency,
                product.add_stock,
            )
            .map_err(Status::invalid_argument)?;
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
        let response = pb::UpsertProductsResponse {
            products: products.into_iter().map(to_pb).collect(),
        };
        Ok((tx, response))
    }
}
