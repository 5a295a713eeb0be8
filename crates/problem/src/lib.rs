//! RFC 9457 problem documents, every one Faultline's HTTP API answers with.
//!
//! A refusal can come from three places: the authentication layer (`faultline-auth`), the
//! `Idempotency-Key` layer (`faultline-idempotency`) and checkout's own handlers. A client
//! should not be able to tell which: the same `type` URIs, titles and `Retry-After` rules.
//! So the catalog is one enum, [`ProblemType`], with each type's status, slug and title in
//! one `match`, and [`Problem`] is the one rendering, in the spirit of axum's
//! error-handling example: build the value where the error is understood, answer with
//! `IntoResponse`. `docs/api.md` lists the same catalog; a test keeps the two in step.

#![warn(missing_docs)]

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};
use problem_details::ProblemDetails;
use serde_json::{Map, Value};

/// Every problem type, by what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// No bearer token.
    Unauthenticated,
    /// The token was refused.
    InvalidToken,
    /// The `Authorization` header is malformed (several of them, say).
    InvalidAuthorization,
    /// The policy denied the request.
    Forbidden,
    /// The token lacks a scope the request needs.
    InsufficientScope,
    /// A write without `Idempotency-Key` where one is required.
    IdempotencyKeyMissing,
    /// The key breaks the key rules.
    IdempotencyKeyInvalid,
    /// A request with this key is still running.
    IdempotencyKeyInFlight,
    /// The key was used for a different request.
    IdempotencyKeyReused,
    /// The body is not JSON.
    MalformedJson,
    /// The body is over the limit.
    BodyTooLarge,
    /// The request line and headers together are over the limit.
    HeadersTooLarge,
    /// The body ended early or could not be decoded.
    UnreadableBody,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// JSON of the wrong shape.
    InvalidBody,
    /// The order breaks a validation rule.
    InvalidOrder,
    /// The order names SKUs the catalog does not have.
    UnknownProducts,
    /// The order cannot be priced.
    UnpriceableOrder,
    /// No order has this id.
    OrderNotFound,
    /// No product has this SKU.
    ProductNotFound,
    /// No such route.
    NotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// A dependency (a service, the database) cannot be reached.
    DependencyUnavailable,
    /// The caller exceeded its rate.
    RateLimited,
    /// Shed under load.
    Overloaded,
    /// The work a new request would start cannot be finished now: refused before anything
    /// was written.
    PipelineFull,
    /// The request ran out of time.
    TimedOut,
    /// A bug; the details are in the log.
    Internal,
}

impl ProblemType {
    /// Every type, for the catalog's own checks.
    pub const ALL: [Self; 28] = [
        Self::Unauthenticated,
        Self::InvalidToken,
        Self::InvalidAuthorization,
        Self::Forbidden,
        Self::InsufficientScope,
        Self::IdempotencyKeyMissing,
        Self::IdempotencyKeyInvalid,
        Self::IdempotencyKeyInFlight,
        Self::IdempotencyKeyReused,
        Self::MalformedJson,
        Self::BodyTooLarge,
        Self::HeadersTooLarge,
        Self::UnreadableBody,
        Self::UnsupportedMediaType,
        Self::InvalidBody,
        Self::InvalidOrder,
        Self::UnknownProducts,
        Self::UnpriceableOrder,
        Self::OrderNotFound,
        Self::ProductNotFound,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::DependencyUnavailable,
        Self::RateLimited,
        Self::Overloaded,
        Self::PipelineFull,
        Self::TimedOut,
        Self::Internal,
    ];

    /// Status, slug (the last part of the `type` URI) and title.
    fn entry(self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::Unauthenticated => (
                S::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            Self::InvalidToken => (
                S::UNAUTHORIZED,
                "invalid-token",
                "The access token is invalid",
            ),
            Self::InvalidAuthorization => (
                S::BAD_REQUEST,
                "invalid-authorization",
                "The Authorization header is malformed",
            ),
            Self::Forbidden => (S::FORBIDDEN, "forbidden", "Not allowed"),
            Self::InsufficientScope => (
                S::FORBIDDEN,
                "insufficient-scope",
                "The access token lacks a scope",
            ),
            Self::IdempotencyKeyMissing => (
                S::BAD_REQUEST,
                "idempotency-key-missing",
                "Bad Idempotency-Key",
            ),
            Self::IdempotencyKeyInvalid => (
                S::BAD_REQUEST,
                "idempotency-key-invalid",
                "Bad Idempotency-Key",
            ),
            Self::IdempotencyKeyInFlight => (
                S::CONFLICT,
                "idempotency-key-in-flight",
                "Request in progress",
            ),
            Self::IdempotencyKeyReused => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            Self::MalformedJson => (
                S::BAD_REQUEST,
                "malformed-json",
                "The body is not valid JSON",
            ),
            Self::BodyTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "The body is too large",
            ),
            Self::HeadersTooLarge => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "The request headers are too large",
            ),
            Self::UnreadableBody => (
                S::BAD_REQUEST,
                "unreadable-body",
                "The body could not be read",
            ),
            Self::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "The body must be application/json",
            ),
            Self::InvalidBody => (
                S::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "The body does not have the expected shape",
            ),
            Self::InvalidOrder => (
                S::UNPROCESSABLE_ENTITY,
                "invalid-order",
                "The order is invalid",
            ),
            Self::UnknownProducts => (
                S::UNPROCESSABLE_ENTITY,
                "unknown-products",
                "The order names products that do not exist",
            ),
            Self::UnpriceableOrder => (
                S::UNPROCESSABLE_ENTITY,
                "unpriceable-order",
                "The order cannot be priced",
            ),
            Self::OrderNotFound => (S::NOT_FOUND, "order-not-found", "No such order"),
            Self::ProductNotFound => (S::NOT_FOUND, "product-not-found", "No such product"),
            Self::NotFound => (S::NOT_FOUND, "not-found", "No such resource"),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::DependencyUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "A dependency is unavailable; retry later",
            ),
            Self::RateLimited => (
                S::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests; slow down",
            ),
            Self::Overloaded => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "The service is overloaded; retry later",
            ),
            Self::PipelineFull => (
                S::SERVICE_UNAVAILABLE,
                "pipeline-full",
                "Too many orders in progress; retry later",
            ),
            Self::TimedOut => (
                S::GATEWAY_TIMEOUT,
                "timed-out",
                "The request ran out of time",
            ),
            Self::Internal => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        self.entry().0
    }

    /// Its `type` URI: `/problems/<slug>`, relative, as the API documents it.
    pub fn uri(self) -> String {
        format!("/problems/{}", self.entry().1)
    }

    /// Seconds a client should wait before retrying, where the type says "try again": a
    /// request in flight or an unavailable dependency is worth asking again in a second.
    fn default_retry_after(self) -> Option<u64> {
        match self {
            Self::IdempotencyKeyInFlight
            | Self::DependencyUnavailable
            | Self::Overloaded
            | Self::PipelineFull => Some(1),
            _ => None,
        }
    }
}

/// One problem document: a type, what exactly is wrong, and anything a client needs to fix
/// it (extension members, `Retry-After`).
#[derive(Debug, Clone)]
pub struct Problem {
    kind: ProblemType,
    detail: String,
    extensions: Map<String, Value>,
    retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem of type `kind`; `detail` names what is wrong with this request.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            extensions: Map::new(),
            retry_after_secs: kind.default_retry_after(),
        }
    }

    /// Adds the extension member `name` (`unknown_skus`, `errors`).
    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    /// Tells the client when to come back, overriding the type's default.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    /// Its type.
    pub fn kind(&self) -> ProblemType {
        self.kind
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, _, title) = self.kind.entry();
        let mut document = ProblemDetails::from_status_code(status)
            .with_title(title)
            .with_detail(self.detail)
            .with_extensions(self.extensions);
        if let Ok(uri) = self.kind.uri().parse::<Uri>() {
            document = document.with_type(uri);
        }
        let mut response = document.into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_problem_is_problem_json_with_its_type_status_and_members() {
        let response = Problem::new(ProblemType::UnknownProducts, "unknown SKUs: NOPE-99")
            .with("unknown_skus", serde_json::json!(["NOPE-99"]))
            .into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let document: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(document["type"], "/problems/unknown-products");
        assert_eq!(document["status"], 422);
        assert_eq!(document["detail"], "unknown SKUs: NOPE-99");
        assert_eq!(document["unknown_skus"][0], "NOPE-99");
    }

    #[test]
    fn try_again_types_say_when_and_others_do_not() {
        let response = Problem::new(ProblemType::DependencyUnavailable, "down").into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = Problem::new(ProblemType::RateLimited, "slow down")
            .retry_after(7)
            .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn slugs_are_unique_and_the_api_document_lists_every_type() {
        let api = include_str!("../../../docs/api.md");
        let mut seen = std::collections::BTreeSet::new();
        for kind in ProblemType::ALL {
            let uri = kind.uri();
            assert!(seen.insert(uri.clone()), "{uri} twice");
            let row = format!("| {} | `{uri}` |", kind.status().as_u16());
            assert!(api.contains(&row), "docs/api.md has no row `{row}`");
        }
    }
}
