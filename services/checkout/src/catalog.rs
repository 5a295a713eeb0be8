//! Checkout's view of the product catalog, and the gRPC client that fills it from inventory.
//!
//! The order domain sees only [`Catalog`]; the transport (tonic today, with a cache in
//! front later) stays here.

use std::future::Future;
use std::time::Duration;

use faultline_proto::inventory::v1::GetProductsRequest;
use faultline_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use faultline_telemetry::grpc_client::{GrpcClient, GrpcClientLayer};
use faultline_telemetry::metrics::Metrics;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::Layer;

use crate::config::InventoryClientSettings;

/// A product as an order needs it: what it is called and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItem {
    /// The product.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price of one unit, minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// The result of a catalog lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Products that exist.
    pub found: Vec<CatalogItem>,
    /// Requested SKUs that do not.
    pub missing: Vec<String>,
}

/// Why the catalog could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Inventory is down, slow or overloaded; the caller may retry later.
    #[error("inventory is unavailable: {0}")]
    Unavailable(String),
    /// Inventory refused or failed the request for another reason.
    #[error("inventory failed: {0}")]
    Failed(String),
}

/// Looks products up.
pub trait Catalog: Send + Sync {
    /// The catalog entries for `skus`.
    fn lookup(&self, skus: &[String]) -> impl Future<Output = Result<Lookup, CatalogError>> + Send;
}

/// The catalog served by inventory's `GetProducts`.
#[derive(Debug, Clone)]
pub struct GrpcCatalog {
    client: InventoryServiceClient<GrpcClient<Channel>>,
}

impl GrpcCatalog {
    /// A client for `settings.url`. Connects lazily, so checkout starts even when inventory
    /// is not up yet; every call is bounded by the request timeout, which tonic also sends
    /// as `grpc-timeout` so inventory can give up when checkout has.
    /// Calls carry the trace context and are recorded in `metrics`.
    pub fn new(
        settings: &InventoryClientSettings,
        metrics: &Metrics,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(settings.url.clone())?
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .connect_lazy();
        let traced = GrpcClientLayer::new(metrics.clone()).layer(channel);
        Ok(Self {
            client: InventoryServiceClient::new(traced),
        })
    }
}

impl Catalog for GrpcCatalog {
    async fn lookup(&self, skus: &[String]) -> Result<Lookup, CatalogError> {
        let request = GetProductsRequest {
            skus: skus.to_vec(),
        };
        let response = self
            .client
            .clone()
            .get_products(request)
            .await
            .map_err(|status| match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                    CatalogError::Unavailable(status.message().to_owned())
                }
                // A transport failure (connection refused, timeout) arrives as Unknown or
                // Cancelled with the cause in the source.
                Code::Unknown | Code::Cancelled => CatalogError::Unavailable(status.to_string()),
                _ => CatalogError::Failed(status.to_string()),
            })?
            .into_inner();
        let found = response
            .products
            .into_iter()
            .map(|p| {
                let price = p.unit_price.unwrap_or_default();
                CatalogItem {
                    sku: p.sku,
                    name: p.name,
                    unit_price_minor: price.amount_minor,
                    currency: price.currency,
                }
            })
            .collect();
        Ok(Lookup {
            found,
            missing: response.missing_skus,
        })
    }
}
