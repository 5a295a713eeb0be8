//! The HTTP layer: `Idempotency-Key` in front of write endpoints.
//!
//! For `POST` and `PATCH` requests the layer validates the key, buffers the body to
//! fingerprint it, claims the key for the caller (the [`Caller`] extension, else
//! `anonymous`), and then:
//!
//! | the key is ...                        | answer                                          |
//! |---------------------------------------|-------------------------------------------------|
//! | missing where required / malformed    | `400` problem naming the rule                   |
//! | used before for another request       | `422` problem                                   |
//! | in flight in another request          | `409` problem with `Retry-After`                |
//! | completed                             | the stored status, headers and body, plus `Idempotent-Replayed: true` |
//! | new (or its owner's lease ran out)    | the handler runs, with an [`IdempotencyLease`] in its extensions |
//!
//! The handler should complete the lease in the transaction of its effect
//! ([`IdempotencyLease::complete`]), so the effect and the stored response commit together.
//! If it does not, the layer stores a successful response itself afterwards (weaker: a crash
//! between the two replays nothing and the retry runs the handler again), and releases the
//! key after an unsuccessful one, so the client can fix the request and retry.
//!
//! Problem documents follow RFC 9457; their `type` is `<base><slug>` with a configurable base
//! (`/problems/` by default), so they match the application's own problem types.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use problem_details::ProblemDetails;
use sqlx::PgConnection;
use tokio::sync::Mutex;
use tower::{Layer, Service};

use crate::Caller;
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, KeyError};
use crate::store::{Claim, Lease, LeaseError, Store, StoredResponse};

/// The request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header marking a replayed response.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Response headers worth replaying when the layer stores a response itself.
const REPLAYED_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::LOCATION];

/// Puts [`IdempotencyService`] in front of a service.
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    store: Store,
    required: bool,
    problem_base: Arc<str>,
}

impl IdempotencyLayer {
    /// A layer using `store`; the key is optional and problems are typed `/problems/<slug>`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            required: false,
            problem_base: Arc::from("/problems/"),
        }
    }

    /// Makes the key mandatory: a write request without one gets `400`.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Sets the prefix of the problem documents' `type`.
    pub fn problem_type_base(mut self, base: &str) -> Self {
        self.problem_base = Arc::from(base);
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    layer: IdempotencyLayer,
}

/// The response future of [`IdempotencyService`]: the claim and the buffering are async
/// database and body work, so the future is boxed.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for IdempotencyService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone is the one that was not polled ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move { Ok(handle(inner, layer, request).await) })
    }
}

/// The handler's handle on the key it owns. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IdempotencyLease {
    lease: Arc<Mutex<Option<Lease>>>,
}

impl IdempotencyLease {
    /// Stores `response` for replay on `conn`, the transaction of the request's effect.
    /// Returns [`LeaseError::Lost`] if another request took the key over: roll back.
    pub async fn complete(
        &self,
        conn: &mut PgConnection,
        response: &StoredResponse,
    ) -> Result<(), LeaseError> {
        let lease = self.lease.lock().await.take().ok_or(LeaseError::Lost)?;
        lease.complete(conn, response).await
    }
}

/// Builds the [`StoredResponse`] for a response a handler is about to send: its status, the
/// given headers, and its body.
pub fn stored_response(
    status: StatusCode,
    headers: &[(HeaderName, &str)],
    body: &[u8],
) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), (*value).to_owned()))
            .collect(),
        body: body.to_vec(),
    }
}

async fn handle<S>(mut inner: S, layer: IdempotencyLayer, request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    if !matches!(*request.method(), Method::POST | Method::PATCH) {
        return call(&mut inner, request).await;
    }
    let problems = Problems(&layer.problem_base);
    let key = match request.headers().get(&IDEMPOTENCY_KEY) {
        None if layer.required => return problems.bad_key(KeyError::Missing),
        None => return call(&mut inner, request).await,
        Some(value) => match value.to_str() {
            Ok(raw) => match IdempotencyKey::parse(raw) {
                Ok(key) => key,
                Err(error) => return problems.bad_key(error),
            },
            Err(_) => {
                let position = value
                    .as_bytes()
                    .iter()
                    .position(|b| !b.is_ascii())
                    .unwrap_or(0);
                return problems.bad_key(KeyError::ForbiddenCharacter(
                    char::REPLACEMENT_CHARACTER,
                    position,
                ));
            }
        },
    };

    let (mut parts, body) = request.into_parts();
    let max = layer.store.config().max_body_bytes;
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return if error.is::<http_body_util::LengthLimitError>() {
                problems.body_too_large(max)
            } else {
                problems.unreadable_body()
            };
        }
    };
    let caller = parts
        .extensions
        .get::<Caller>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| "anonymous".to_owned());
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let fingerprint = Fingerprint::of_http(parts.method.as_str(), path, &caller, &bytes);

    let lease = match layer.store.claim(&caller, &key, fingerprint).await {
        Err(error) => {
            tracing::warn!(%error, "idempotency store unavailable");
            return problems.unavailable();
        }
        Ok(Claim::Completed(stored)) => return replay(stored),
        Ok(Claim::InFlight { .. }) => {
            return problems.in_flight(layer.store.config().retry_after_secs);
        }
        Ok(Claim::Mismatch) => return problems.reused(),
        Ok(Claim::Owned(lease)) => lease,
    };

    let handle = IdempotencyLease {
        lease: Arc::new(Mutex::new(Some(lease))),
    };
    parts.extensions.insert(handle.clone());
    let response = call(&mut inner, Request::from_parts(parts, Body::from(bytes))).await;

    let Some(lease) = handle.lease.lock().await.take() else {
        return response; // completed by the handler, in its transaction
    };
    if response.status().is_success() {
        store_afterwards(&layer.store, lease, response).await
    } else {
        if let Err(error) = lease.release(layer.store.pool()).await {
            tracing::warn!(%error, "could not release an idempotency key; it frees itself when its lease runs out");
        }
        response
    }
}

async fn call<S>(inner: &mut S, request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match inner.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Stores a successful response the handler did not store itself.
async fn store_afterwards(store: &Store, lease: Lease, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let bytes = collected.to_bytes();
    let headers: Vec<(HeaderName, &str)> = REPLAYED_HEADERS
        .iter()
        .filter_map(|name| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.clone(), v))
        })
        .collect();
    let stored = stored_response(parts.status, &headers, &bytes);
    let saved = async {
        let mut tx = store.pool().begin().await?;
        lease.complete(&mut tx, &stored).await?;
        tx.commit().await?;
        Ok::<_, LeaseError>(())
    };
    if let Err(error) = saved.await {
        tracing::warn!(%error, "response not stored for replay");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = status;
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    response
}

/// The layer's problem documents.
struct Problems<'a>(&'a str);

impl Problems<'_> {
    fn problem(&self, status: StatusCode, slug: &str, title: &str, detail: String) -> Response {
        let mut problem = ProblemDetails::from_status_code(status)
            .with_title(title)
            .with_detail(detail);
        if let Ok(uri) = format!("{}{slug}", self.0).parse::<Uri>() {
            problem = problem.with_type(uri);
        }
        problem.into_response()
    }

    fn bad_key(&self, error: KeyError) -> Response {
        let slug = if error == KeyError::Missing {
            "idempotency-key-missing"
        } else {
            "idempotency-key-invalid"
        };
        self.problem(
            StatusCode::BAD_REQUEST,
            slug,
            "Bad Idempotency-Key",
            error.to_string(),
        )
    }

    fn reused(&self) -> Response {
        self.problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was already used for a different request; use a new key for a new request".into(),
        )
    }

    fn in_flight(&self, retry_after_secs: u64) -> Response {
        let mut response = self.problem(
            StatusCode::CONFLICT,
            "idempotency-key-in-flight",
            "Request in progress",
            "a request with this Idempotency-Key is still being processed; retry after the indicated time to get its result".into(),
        );
        if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }

    fn body_too_large(&self, max: usize) -> Response {
        self.problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The body is too large",
            format!("the body exceeds {max} bytes"),
        )
    }

    fn unreadable_body(&self) -> Response {
        self.problem(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "The body could not be read",
            "the request body ended early or could not be decoded".into(),
        )
    }

    fn unavailable(&self) -> Response {
        let mut response = self.problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency-unavailable",
            "A dependency is unavailable; retry later",
            "the idempotency store is unavailable".into(),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}
