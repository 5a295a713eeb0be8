//! [`ApiError`]: every way a checkout request can fail, and the one `IntoResponse` that
//! turns each into its problem document (RFC 9457) and status.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use faultline_auth::Forbidden;
use faultline_idempotency::LeaseError;
use faultline_problem::{Problem, ProblemType};
use serde_json::{Value, json};

use crate::catalog::CatalogError;
use crate::orders::{FieldError, PlaceOrderError};

/// Every way a request can fail, each mapped to one problem type.
#[derive(Debug)]
pub enum ApiError {
    /// The body could not be read as the expected JSON.
    Body(JsonRejection),
    /// The order breaks validation rules.
    Invalid(Vec<FieldError>),
    /// The catalog does not know these SKUs.
    UnknownProducts(Vec<String>),
    /// The order cannot be priced.
    Unpriceable(String),
    /// No order has this id.
    OrderNotFound(String),
    /// The policy refused the caller this resource.
    Forbidden(Forbidden),
    /// No product has this SKU.
    ProductNotFound(String),
    /// The edge refused the request (rate limit, overload, deadline).
    Refused {
        /// 429, 503 or 504.
        status: StatusCode,
        /// When to come back, if known.
        retry_after_secs: Option<u64>,
        /// Which limit.
        detail: String,
    },
    /// The saga pipeline has as much work as it can finish; this order was not taken.
    PipelineFull {
        /// When to come back.
        retry_after_secs: u64,
        /// Which limit.
        detail: String,
    },
    /// No such route.
    RouteNotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// This request's Idempotency-Key was taken over by a retry while it ran too long.
    KeyTakenOver,
    /// A dependency (inventory, the database) is unavailable; retry later.
    Unavailable(String),
    /// A bug; details are in the logs.
    Internal,
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Body(rejection)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if faultline_postgres::is_unreachable(&error) {
            tracing::warn!(%error, "database unavailable");
            Self::Unavailable("the order database is unavailable".into())
        } else if faultline_postgres::is_contention(&error) {
            tracing::warn!(%error, "database contention");
            Self::Unavailable("the order is locked by another request; retry shortly".into())
        } else {
            tracing::error!(%error, "database error");
            Self::Internal
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(error: LeaseError) -> Self {
        match error {
            // Our lease ran out and another request took the key over; it will answer.
            LeaseError::Lost => Self::KeyTakenOver,
            LeaseError::Database(error) => error.into(),
        }
    }
}

impl From<PlaceOrderError> for ApiError {
    fn from(error: PlaceOrderError) -> Self {
        match error {
            PlaceOrderError::Invalid(errors) => Self::Invalid(errors),
            PlaceOrderError::UnknownSkus(skus) => Self::UnknownProducts(skus),
            PlaceOrderError::Unpriceable(reason) => Self::Unpriceable(reason),
            PlaceOrderError::Catalog(CatalogError::Unavailable(detail)) => {
                tracing::warn!(%detail, "inventory unavailable");
                Self::Unavailable("the product catalog is unavailable".into())
            }
            PlaceOrderError::Catalog(CatalogError::Failed(detail)) => {
                tracing::error!(%detail, "catalog lookup failed");
                Self::Internal
            }
            PlaceOrderError::Database(error) => error.into(),
        }
    }
}

impl ApiError {
    /// The problem to answer with; a policy refusal is the auth crate's to render (with its
    /// RFC 6750 challenge), so it comes back as it is.
    fn problem(self) -> Result<Problem, Forbidden> {
        use ProblemType as T;
        Ok(match self {
            Self::Body(rejection) => {
                let kind = match &rejection {
                    JsonRejection::JsonSyntaxError(_) => T::MalformedJson,
                    JsonRejection::JsonDataError(_) => T::InvalidBody,
                    JsonRejection::MissingJsonContentType(_) => T::UnsupportedMediaType,
                    other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => T::BodyTooLarge,
                    _ => T::UnreadableBody,
                };
                Problem::new(kind, rejection.body_text())
            }
            Self::Invalid(errors) => {
                let detail = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let list: Vec<Value> = errors
                    .into_iter()
                    .map(|e| json!({ "field": e.field, "message": e.message }))
                    .collect();
                Problem::new(T::InvalidOrder, detail).with("errors", Value::Array(list))
            }
            Self::UnknownProducts(skus) => Problem::new(
                T::UnknownProducts,
                format!("unknown SKUs: {}", skus.join(", ")),
            )
            .with("unknown_skus", json!(skus)),
            Self::Unpriceable(reason) => Problem::new(T::UnpriceableOrder, reason),
            Self::OrderNotFound(id) => Problem::new(
                T::OrderNotFound,
                format!("there is no order with id {id:?}"),
            ),
            Self::ProductNotFound(sku) => Problem::new(
                T::ProductNotFound,
                format!("there is no product with SKU {sku:?}"),
            ),
            Self::Refused {
                status,
                retry_after_secs,
                detail,
            } => {
                let kind = match status {
                    StatusCode::TOO_MANY_REQUESTS => T::RateLimited,
                    StatusCode::GATEWAY_TIMEOUT => T::TimedOut,
                    _ => T::Overloaded,
                };
                let problem = Problem::new(kind, detail);
                match retry_after_secs {
                    Some(seconds) => problem.retry_after(seconds),
                    None => problem,
                }
            }
            Self::PipelineFull {
                retry_after_secs,
                detail,
            } => Problem::new(T::PipelineFull, detail).retry_after(retry_after_secs),
            Self::RouteNotFound => {
                Problem::new(T::NotFound, "the path does not name a resource of this API")
            }
            Self::MethodNotAllowed => Problem::new(
                T::MethodNotAllowed,
                "the resource does not support this method",
            ),
            Self::KeyTakenOver => Problem::new(
                T::IdempotencyKeyInFlight,
                "this request took longer than its Idempotency-Key lease and a retry took over; \
                 retry to get that request's result",
            ),
            Self::Unavailable(detail) => Problem::new(T::DependencyUnavailable, detail),
            Self::Forbidden(forbidden) => return Err(forbidden),
            Self::Internal => Problem::new(T::Internal, "the request failed; it has been logged"),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.problem() {
            Ok(problem) => problem.into_response(),
            Err(forbidden) => forbidden.into_response(),
        }
    }
}
