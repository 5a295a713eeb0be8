//! Checkout's view of the product catalog, and the gRPC client that fills it from inventory.
//!
//! The order domain sees only [`Catalog`]; the transport stays here. Every lookup goes
//! through the full client stack of `faultline-resilience` (bulkhead, overall deadline
//! handed on as `grpc-timeout`, retries within a budget, hedging, a circuit breaker shared by
//! all callers, per-attempt timeout), then through the telemetry layer that gives each
//! attempt a client span and injects the trace context.

use std::future::Future;
use std::time::Duration;

use faultline_auth::{ClientTls, set_on_behalf_of};
use faultline_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use faultline_proto::inventory::v1::{GetProductsRequest, GetProductsResponse};
use faultline_resilience::{
    CircuitBreaker, ClientStack, Deadline, ErrorClass, GrpcClassifier, ResilienceError,
};
use faultline_telemetry::grpc_client::GrpcClientLayer;
use faultline_telemetry::metrics::Metrics;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt, service_fn};

use crate::config::InventoryClientSettings;

/// A product as an order needs it: what it is called and what it costs. Cached as JSON by
/// [`crate::catalog_cache`]: changing its shape means bumping `CATALOG_CACHE_VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogItem {
    /// The product.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price of one unit, minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Units available when looked up; a hint, the reservation decides.
    pub available: i64,
}

/// The result of a catalog lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Products that exist.
    pub found: Vec<CatalogItem>,
    /// Requested SKUs that do not.
    pub missing: Vec<String>,
}

/// Why the catalog could not answer. `Clone`: callers that waited on one cache load share
/// its error.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The catalog entries for `skus`, looked up on behalf of `customer` (for audit).
    fn lookup(
        &self,
        skus: &[String],
        customer: Option<&str>,
    ) -> impl Future<Output = Result<Lookup, CatalogError>> + Send;
}

/// The call the client stack wraps: one typed `GetProducts`, cloneable so retries and hedges
/// can repeat it.
type LookupCall =
    BoxCloneSyncService<(GetProductsRequest, Option<String>), GetProductsResponse, BoxError>;

/// Why the catalog client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogSetupError {
    /// The URL is not a usable endpoint.
    #[error("inventory endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// The client certificate or CA could not be loaded.
    #[error("mTLS: {0}")]
    Tls(#[from] faultline_auth::TlsError),
    /// The resilience settings are invalid.
    #[error("{0}")]
    Resilience(#[from] faultline_settings::SettingError),
}

/// The catalog served by inventory's `GetProducts`.
#[derive(Debug, Clone)]
pub struct GrpcCatalog {
    lookup: LookupCall,
    breaker: CircuitBreaker,
}

impl GrpcCatalog {
    /// A client for `settings.url` over mutual TLS with `tls` (which must find inventory's
    /// identity on the other side). Connects lazily, so checkout starts even when inventory
    /// is not up yet. Calls are recorded in `metrics`.
    pub fn new(
        settings: &InventoryClientSettings,
        tls: &ClientTls,
        metrics: &Metrics,
    ) -> Result<Self, CatalogSetupError> {
        // No Endpoint::timeout: the stack owns time, attempt by attempt.
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let channel = tls.channel(&settings.url, |endpoint| {
            endpoint.connect_timeout(connect_timeout)
        })?;
        let client =
            InventoryServiceClient::new(GrpcClientLayer::new(metrics.clone()).layer(channel));
        let stack = ClientStack::new("inventory", &settings.resilience)?
            .classifier(GrpcClassifier)
            .idempotent();
        let breaker = stack.breaker().clone();
        let lookup = stack.layer(service_fn(
            move |(request, customer): (GetProductsRequest, Option<String>)| {
                let mut client = client.clone();
                async move {
                    let mut request = tonic::Request::new(request);
                    Deadline::propagate(&mut request);
                    // For inventory's audit trail only: it authorizes checkout's certificate.
                    if let Some(customer) = &customer {
                        set_on_behalf_of(&mut request, customer);
                    }
                    client
                        .get_products(request)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(BoxError::from)
                }
            },
        ));
        Ok(Self {
            lookup: BoxCloneSyncService::new(lookup),
            breaker,
        })
    }

    /// The breaker in front of inventory, shared by every lookup.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

fn catalog_error(error: BoxError) -> CatalogError {
    if let Some(refused) = ResilienceError::find(&*error) {
        return CatalogError::Unavailable(refused.to_string());
    }
    // The stack's own classifier decides, so the answer agrees with what it retried and
    // what the breaker counted: what could pass is "unavailable", the rest a failure.
    match error.downcast_ref::<tonic::Status>() {
        Some(status) => match GrpcClassifier::classify_status(status) {
            ErrorClass::Transient { .. } => CatalogError::Unavailable(status.message().to_owned()),
            ErrorClass::Permanent | ErrorClass::CallerError => {
                CatalogError::Failed(status.to_string())
            }
        },
        None => CatalogError::Unavailable(error.to_string()),
    }
}

impl Catalog for GrpcCatalog {
    async fn lookup(
        &self,
        skus: &[String],
        customer: Option<&str>,
    ) -> Result<Lookup, CatalogError> {
        let request = GetProductsRequest {
            skus: skus.to_vec(),
        };
        let response = self
            .lookup
            .clone()
            .oneshot((request, customer.map(str::to_owned)))
            .await
            .map_err(catalog_error)?;
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
                    available: p.available,
                }
            })
            .collect();
        Ok(Lookup {
            found,
            missing: response.missing_skus,
        })
    }
}
