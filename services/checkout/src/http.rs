//! The public HTTP API. Handlers are thin: extract, call [`crate::orders`], and map every
//! failure through the one [`IntoResponse`] impl of [`ApiError`], which answers with an
//! RFC 9457 problem document (`application/problem+json`).
//!
//! | method and path          | success                           | priority under load |
//! |--------------------------|-----------------------------------|---------------------|
//! | `POST /v1/orders`        | 202 with the order id, `Location` | critical            |
//! | `GET /v1/orders/{id}`    | 200 with the order                | normal              |
//! | `GET /v1/products/{sku}` | 200 with the catalog entry        | shed first          |
//!
//! Every route needs a bearer access token (401 otherwise) and the policy's yes
//! (`policies/authz.rego`, 403 otherwise): placing an order needs scope `orders:write` and
//! orders it for the token's subject; a customer reads only their own orders. Behind
//! authentication: a rate limit per caller (429 + `Retry-After`), priority load shedding
//! under an adaptive concurrency limit (503 + `Retry-After`, catalog reads first), a hard cap
//! on requests in flight, and a body size limit (413). A new order is also refused (503 +
//! `Retry-After`, `/problems/pipeline-full`) while the saga pipeline holds as much work as it
//! can finish ([`crate::admission`]), before anything is written.
//!
//! Authentication runs before the rate limit so that the limit is per customer, not per
//! address (many customers share a NAT). Refusing a token is cheap: the size cap is a length
//! check and a token already verified is a cache hit, so only a well-formed token with a
//! known key id costs a signature check.

mod error;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, FromRef, Path, State};
use axum::http::{Method, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use faultline_auth::{Access, AuthLayer, AuthorizeLayer, JwtVerifier, Policy, Principal, Resource};
use faultline_domain::Sku;
use faultline_idempotency::Store;
use faultline_idempotency::layer::{IdempotencyLayer, IdempotencyLease, stored_response};
use faultline_platform::drain::DrainBodyLayer;
use faultline_resilience::{EdgeConfig, EdgeStack, HttpRejection, Priority, RecoverLayer};
use faultline_telemetry::http::HttpServerLayer;
use faultline_telemetry::metrics::Metrics;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tower::{BoxError, ServiceBuilder};
use uuid::Uuid;

use crate::admission::Admission;
use crate::catalog::{Catalog, GrpcCatalog};
use crate::catalog_cache::CachedCatalog;
use crate::orchestrator::Orchestrator;
use crate::orders::{self, Order, OrderStatus, PlaceOrder, PlaceOrderError};
pub use error::ApiError;

/// What every handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Checkout's database.
    pub pool: PgPool,
    /// Inventory's catalog, through the cache.
    pub catalog: CachedCatalog<GrpcCatalog>,
    /// Starts the saga of each new order.
    pub orchestrator: Orchestrator,
    /// Who may do what (`policies/authz.rego`).
    pub policy: Policy,
    /// Whether the saga pipeline can take another order.
    pub admission: Admission,
}

impl FromRef<AppState> for Policy {
    fn from_ref(state: &AppState) -> Self {
        state.policy.clone()
    }
}

/// What the edge admits.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Rate limit, shedding and concurrency cap.
    pub edge: &'a EdgeConfig,
}

/// The API's routes behind authentication and the edge (see the module docs), with server
/// spans and RED metrics into `metrics`. Tokens are checked by `verifier`; placing an order
/// requires an `Idempotency-Key`, kept in `idempotency` per caller.
pub fn router(
    state: AppState,
    idempotency: Store,
    limits: Limits<'_>,
    verifier: JwtVerifier,
    metrics: Metrics,
) -> Router {
    let authorize = AuthorizeLayer::new(state.policy.clone());
    // The policy and admission decide before the key is claimed: a refused request must
    // not hold a key, and an order the pipeline cannot finish must write nothing at all.
    let place = post(place_order).layer(
        ServiceBuilder::new()
            .layer(authorize.clone())
            .layer(middleware::from_fn_with_state(
                state.admission.clone(),
                admit,
            ))
            .layer(
                IdempotencyLayer::new(idempotency)
                    .required()
                    .scoped_by(|parts| Some(parts.extensions.get::<Principal>()?.subject.clone())),
            ),
    );
    let edge = ServiceBuilder::new()
        .layer(RecoverLayer::new(render_rejection))
        .layer(EdgeStack::new(limits.edge, caller_key, priority));
    Router::new()
        .route("/v1/orders", place)
        // The owner is known only once the order is loaded: the handler asks the policy.
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/products/{sku}", get(get_product).layer(authorize))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(edge)
        .layer(AuthLayer::new(verifier))
        .layer(HttpServerLayer::new(metrics))
        // Outermost, so that whatever refuses a request unread still gets its answer out.
        .layer(DrainBodyLayer::default())
        .with_state(state)
}

/// The rate-limit key: the caller's tenant when the token names one (a tenant shares one
/// budget), else the caller, else (behind no authentication) the client's address.
fn caller_key(request: &Request<Body>) -> String {
    if let Some(principal) = request.extensions().get::<Principal>() {
        return match &principal.tenant {
            Some(tenant) => format!("tenant:{tenant}"),
            None => format!("sub:{}", principal.subject),
        };
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string())
        .unwrap_or_else(|| "anonymous".to_owned())
}

/// Placing orders is what the business is; catalog reads can wait.
fn priority(request: &Request<Body>) -> Priority {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/orders") => Priority::Critical,
        (_, path) if path.starts_with("/v1/orders") => Priority::Normal,
        _ => Priority::Sheddable,
    }
}

/// Lets a new order through only while the saga pipeline has room ([`Admission`]).
async fn admit(
    State(admission): State<Admission>,
    request: Request<Body>,
    next: Next,
) -> Result<Response, ApiError> {
    match admission.admit() {
        Ok(()) => Ok(next.run(request).await),
        Err(refusal) => Err(ApiError::PipelineFull {
            retry_after_secs: admission.retry_after_secs(),
            detail: refusal.to_string(),
        }),
    }
}

/// Renders a refusal by the edge as a problem document.
fn render_rejection(error: BoxError) -> Response {
    match HttpRejection::from_error(&*error) {
        Some(rejection) => ApiError::Refused {
            status: rejection.status,
            retry_after_secs: rejection.retry_after_secs,
            detail: error.to_string(),
        }
        .into_response(),
        None => {
            tracing::error!(%error, "edge failure");
            ApiError::Internal.into_response()
        }
    }
}

#[derive(Debug, Serialize)]
struct ProductView {
    sku: String,
    name: String,
    unit_price: MoneyBody,
    available: i64,
}

async fn get_product(
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    let Ok(parsed) = Sku::parse(sku.as_str()) else {
        return Err(ApiError::ProductNotFound(sku));
    };
    let sku = parsed.to_string();
    let lookup = state
        .catalog
        .lookup(std::slice::from_ref(&sku), None)
        .await
        .map_err(|e| ApiError::from(PlaceOrderError::Catalog(e)))?;
    let item = lookup
        .found
        .into_iter()
        .find(|item| item.sku == sku)
        .ok_or(ApiError::ProductNotFound(sku))?;
    Ok(Json(ProductView {
        sku: item.sku,
        name: item.name,
        unit_price: MoneyBody {
            amount_minor: item.unit_price_minor,
            currency: item.currency,
        },
        available: item.available,
    }))
}

/// Body of `POST /v1/orders`. Unknown fields are refused so that a misspelt field is an
/// error rather than silently ignored. There is no customer field: the order is the token
/// subject's, so one customer cannot order in another's name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrderBody {
    items: Vec<ItemBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    sku: String,
    // Signed so that a negative quantity gets a clear validation error, not a type error.
    quantity: i64,
}

#[derive(Debug, Serialize)]
struct Accepted {
    order_id: Uuid,
    status: OrderStatus,
}

#[derive(Debug, Serialize)]
struct MoneyBody {
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Serialize)]
struct ItemView {
    sku: String,
    name: String,
    quantity: i64,
    unit_price: MoneyBody,
}

#[derive(Debug, Serialize)]
struct Cancellation {
    code: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct OrderView {
    order_id: Uuid,
    customer_id: String,
    status: OrderStatus,
    items: Vec<ItemView>,
    total: MoneyBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancellation: Option<Cancellation>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Order> for OrderView {
    fn from(order: Order) -> Self {
        let currency = order.currency;
        Self {
            order_id: order.id,
            customer_id: order.customer_id,
            status: order.status,
            items: order
                .items
                .into_iter()
                .map(|item| ItemView {
                    sku: item.sku,
                    name: item.name,
                    quantity: item.quantity,
                    unit_price: MoneyBody {
                        amount_minor: item.unit_price_minor,
                        currency: currency.clone(),
                    },
                })
                .collect(),
            total: MoneyBody {
                amount_minor: order.total_minor,
                currency: currency.clone(),
            },
            cancellation: order.cancellation_code.map(|code| Cancellation {
                code,
                reason: order.cancellation_reason.unwrap_or_default(),
            }),
            created_at: order.created_at,
            updated_at: order.updated_at,
        }
    }
}

async fn place_order(
    State(state): State<AppState>,
    principal: Principal,
    lease: Option<Extension<IdempotencyLease>>,
    body: Result<Json<PlaceOrderBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let items = body.items.into_iter().map(|item| (item.sku, item.quantity));
    let request = PlaceOrder::parse(&principal.subject, items).map_err(ApiError::Invalid)?;
    let mut pending =
        orders::place(&state.pool, &state.catalog, &state.orchestrator, request).await?;
    let location = format!("/v1/orders/{}", pending.id);
    let body = serde_json::to_vec(&Accepted {
        order_id: pending.id,
        status: OrderStatus::Pending,
    })
    .map_err(|_| ApiError::Internal)?;
    // The answer a retry with the same Idempotency-Key gets, stored with the order.
    if let Some(Extension(lease)) = lease {
        let stored = stored_response(
            StatusCode::ACCEPTED,
            &[
                (header::CONTENT_TYPE, "application/json"),
                (header::LOCATION, &location),
            ],
            &body,
        );
        lease.complete(pending.transaction(), &stored).await?;
    }
    pending.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::LOCATION, location),
        ],
        body,
    )
        .into_response())
}

async fn get_order(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    // A malformed id names no order either; one answer for both keeps the API simple.
    let order_id = Uuid::parse_str(&id).map_err(|_| ApiError::OrderNotFound(id.clone()))?;
    let order = orders::find(&state.pool, order_id)
        .await?
        .ok_or_else(|| ApiError::OrderNotFound(id))?;
    access
        .require(&Resource::owned_by(&order.customer_id))
        .map_err(ApiError::Forbidden)?;
    Ok(Json(order.into()))
}
