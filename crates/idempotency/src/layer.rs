//! The HTTP layer: `Idempotency-Key` in front of write endpoints.
//!
//! For `POST` and `PATCH` requests the layer validates the key, buffers the body to
//! fingerprint it, claims the key for the caller (whoever [`IdempotencyLayer::scoped_by`]
//! names, else `anonymous`), and then:
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
//! Refusals are RFC 9457 problem documents from `faultline-problem`'s catalog, the same
//! types the application answers with.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use faultline_problem::{Problem, ProblemType};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use sqlx::PgConnection;
use tokio::sync::Mutex;
use tower::{Layer, Service};

use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, KeyError};
use crate::store::{Claim, Lease, LeaseError, Store, StoredResponse};

/// The request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header marking a replayed response.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Response headers worth replaying when the layer stores a response itself.
const REPLAYED_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::LOCATION];

/// Who sent a request, read from what the layers in front of this one left in it.
type Scope = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Puts [`IdempotencyService`] in front of a service.
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Store,
    required: bool,
    scope: Scope,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// A layer using `store`; the key is optional and every caller shares the scope
    /// `anonymous`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            required: false,
            scope: Arc::new(|_| None),
        }
    }

    /// Keys are scoped to whoever `caller` names (say the authenticated subject, from the
    /// principal an authentication layer in front put into the extensions), so two callers
    /// choosing the same key never meet. The layer knows no authentication scheme: the
    /// service that composes the two says how one informs the other.
    pub fn scoped_by(
        mut self,
        caller: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.scope = Arc::new(caller);
        self
    }

    /// Makes the key mandatory: a write request without one gets `400`.
    pub fn required(mut self) -> Self {
        self.required = true;
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
    let key = match request.headers().get(&IDEMPOTENCY_KEY) {
        None if layer.required => return bad_key(KeyError::Missing),
        None => return call(&mut inner, request).await,
        Some(value) => match value.to_str() {
            Ok(raw) => match IdempotencyKey::parse(raw) {
                Ok(key) => key,
                Err(error) => return bad_key(error),
            },
            Err(_) => {
                let position = value
                    .as_bytes()
                    .iter()
                    .position(|b| !b.is_ascii())
                    .unwrap_or(0);
                return bad_key(KeyError::ForbiddenCharacter(
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
                body_too_large(max)
            } else {
                unreadable_body()
            };
        }
    };
    let caller = (layer.scope)(&parts).unwrap_or_else(|| "anonymous".to_owned());
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let fingerprint = Fingerprint::of_http(parts.method.as_str(), path, &caller, &bytes);

    let lease = match layer.store.claim(&caller, &key, fingerprint).await {
        Err(error) => {
            tracing::warn!(%error, "idempotency store unavailable");
            return store_unavailable();
        }
        Ok(Claim::Completed(stored)) => return replay(stored),
        Ok(Claim::InFlight { .. }) => {
            return in_flight(layer.store.config().retry_after_secs);
        }
        Ok(Claim::Mismatch) => return reused(),
        Ok(Claim::Owned(lease)) => lease,
    };

    let handle = IdempotencyLease {
        lease: Arc::new(Mutex::new(Some(lease))),
    };
    parts.extensions.insert(handle.clone());
    let abandoned = GiveBackIfAbandoned {
        handle: handle.clone(),
        pool: layer.store.pool().clone(),
        armed: true,
    };
    let response = call(&mut inner, Request::from_parts(parts, Body::from(bytes))).await;
    let handle = abandoned.disarm();

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

/// Gives the key back when the request is dropped before it finished (a deadline above
/// this layer, a client gone), as a handler's error would. Without it the key stays "in
/// flight" until its lease runs out, and an immediate retry of a request that did nothing
/// is told to wait.
struct GiveBackIfAbandoned {
    handle: IdempotencyLease,
    pool: sqlx::PgPool,
    armed: bool,
}

impl GiveBackIfAbandoned {
    /// The request finished: the caller decides what becomes of the key.
    fn disarm(mut self) -> IdempotencyLease {
        self.armed = false;
        self.handle.clone()
    }
}

impl Drop for GiveBackIfAbandoned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (handle, pool) = (self.handle.clone(), self.pool.clone());
        // Drop cannot wait; the release is one short statement. Outside a runtime there is
        // nothing to do but let the lease run out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(lease) = handle.lease.lock().await.take()
                    && let Err(error) = lease.release(&pool).await
                {
                    tracing::warn!(%error, "could not give back an abandoned request's key; it frees itself when its lease runs out");
                }
            });
        }
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

/// The layer's refusals, from the API's one catalog of problem types.
fn bad_key(error: KeyError) -> Response {
    let kind = if error == KeyError::Missing {
        ProblemType::IdempotencyKeyMissing
    } else {
        ProblemType::IdempotencyKeyInvalid
    };
    Problem::new(kind, error.to_string()).into_response()
}

fn reused() -> Response {
    Problem::new(
        ProblemType::IdempotencyKeyReused,
        "this Idempotency-Key was already used for a different request; use a new key for a \
         new request",
    )
    .into_response()
}

fn in_flight(retry_after_secs: u64) -> Response {
    Problem::new(
        ProblemType::IdempotencyKeyInFlight,
        "a request with this Idempotency-Key is still being processed; retry after the \
         indicated time to get its result",
    )
    .retry_after(retry_after_secs)
    .into_response()
}

fn body_too_large(max: usize) -> Response {
    Problem::new(
        ProblemType::BodyTooLarge,
        format!("the body exceeds {max} bytes"),
    )
    .into_response()
}

fn unreadable_body() -> Response {
    Problem::new(
        ProblemType::UnreadableBody,
        "the request body ended early or could not be decoded",
    )
    .into_response()
}

fn store_unavailable() -> Response {
    Problem::new(
        ProblemType::DependencyUnavailable,
        "the idempotency store is unavailable",
    )
    .into_response()
}
