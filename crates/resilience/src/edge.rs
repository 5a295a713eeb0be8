//! The server edge: per-tenant rate limiting and bulkheads, priority shedding under an
//! adaptive limit, and a hard concurrency cap, plus the hook that turns rejections into
//! responses.
//!
//! ```text
//! recover(app's renderer) → rate limit (per key) → bulkhead (per key) → priority shed (adaptive) → load shed + concurrency limit (tower) → request deadline → router
//! ```
//!
//! Rate limiting comes first because it is the cheapest refusal and is per tenant: one
//! noisy tenant gets `429`s without touching the shared limits. A rate bounds how often a
//! tenant may start requests, not how many of its slow ones are in flight at once; the
//! per-key [`KeyedBulkhead`] bounds that, so one tenant whose requests hang cannot take the
//! slots everyone shares (`503` + `Retry-After` after a short wait). Priority shedding then
//! protects critical flows as the server saturates. tower's `LoadShed` over
//! `ConcurrencyLimit` is the absolute ceiling (`max_concurrent`), refusing instead of
//! queueing. Innermost, a request deadline ([`TimeoutLayer::total`]) bounds what a request may
//! hold: past it the handler's future is dropped (an open transaction with it, which rolls
//! back), the answer is `504`, and every call made under it inherits the remaining budget.
//! Every refusal is an error; [`RecoverLayer`] hands it to a function the app
//! supplies (which renders its own RFC 9457 problem document), so the stack's `Error` is
//! `Infallible`, as axum requires. [`HttpRejection::from_error`](crate::HttpRejection)
//! gives that function the status and `Retry-After` to use.

use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower::limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
use tower::load_shed::{LoadShed, LoadShedLayer};
use tower::{BoxError, Layer, Service};

use crate::bulkhead::{BulkheadConfig, KeyedBulkhead, KeyedBulkheadService};
use crate::rate_limit::{RateLimitConfig, RateLimitService, RateLimiter};
use crate::shed::{AdaptiveLimiter, Priority, PriorityShedService, ShedConfig};
use crate::timeout::{TimeoutLayer, TimeoutService};
use faultline_settings::{SettingError, join, positive};

/// Settings for a server edge (`<SERVICE>_EDGE__*`, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Per-key GCRA limits (`..__RATE_LIMIT__*`).
    pub rate_limit: RateLimitConfig,
    /// Requests in flight per key, and how long one waits for a slot
    /// (`..__TENANT_BULKHEAD__*`). Default 64 with a 50 ms wait.
    pub tenant_bulkhead: BulkheadConfig,
    /// Priority shedding (`..__SHED__*`).
    pub shed: ShedConfig,
    /// Absolute cap on requests in flight (`..__MAX_CONCURRENT`). Default 1 024.
    pub max_concurrent: u32,
    /// Longest a request may run before it is abandoned with `504`
    /// (`..__REQUEST_DEADLINE_MS`). Default 5 000: above the downstream budgets a handler
    /// spends (2 s per catalog call) and below the database's statement timeout.
    pub request_deadline_ms: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            rate_limit: RateLimitConfig::default(),
            tenant_bulkhead: BulkheadConfig::default(),
            shed: ShedConfig::default(),
            max_concurrent: 1_024,
            request_deadline_ms: 5_000,
        }
    }
}

impl EdgeConfig {
    /// Validates every part; `path` is this struct's own variable prefix.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        self.rate_limit.validate(&join(path, "RATE_LIMIT"))?;
        self.tenant_bulkhead
            .validate(&join(path, "TENANT_BULKHEAD"))?;
        self.shed.validate(&join(path, "SHED"))?;
        positive(path, "MAX_CONCURRENT", u64::from(self.max_concurrent))?;
        positive(path, "REQUEST_DEADLINE_MS", self.request_deadline_ms)?;
        if self.max_concurrent < self.shed.max_limit {
            return Err(SettingError::new(
                path,
                "MAX_CONCURRENT",
                format!(
                    "must be at least SHED__MAX_LIMIT ({}), or the adaptive limit can never reach its maximum; got {}",
                    self.shed.max_limit, self.max_concurrent
                ),
            ));
        }
        Ok(())
    }
}

/// The edge layers (without [`RecoverLayer`], which the app adds with its renderer).
pub struct EdgeStack<K: Hash + Eq + Clone, F, P> {
    rate_limiter: RateLimiter<K>,
    tenant_bulkhead: KeyedBulkhead<K, F>,
    limiter: AdaptiveLimiter,
    key_of: F,
    priority_of: P,
    max_concurrent: usize,
    deadline: TimeoutLayer,
}

impl<K: Hash + Eq + Clone, F: Clone, P: Clone> Clone for EdgeStack<K, F, P> {
    fn clone(&self) -> Self {
        Self {
            rate_limiter: self.rate_limiter.clone(),
            tenant_bulkhead: self.tenant_bulkhead.clone(),
            limiter: self.limiter.clone(),
            key_of: self.key_of.clone(),
            priority_of: self.priority_of.clone(),
            max_concurrent: self.max_concurrent,
            deadline: self.deadline,
        }
    }
}

impl<K: Hash + Eq + Clone, F, P> std::fmt::Debug for EdgeStack<K, F, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStack")
            .field("limiter", &self.limiter)
            .field("max_concurrent", &self.max_concurrent)
            .finish()
    }
}

impl<K: Hash + Eq + Clone, F, P> EdgeStack<K, F, P> {
    /// The edge for validated `config`: `key_of` picks the key of the rate limit and the
    /// bulkhead (tenant, API key, client address), `priority_of` a request's [`Priority`].
    pub fn new<Req>(config: &EdgeConfig, key_of: F, priority_of: P) -> Self
    where
        F: Fn(&Req) -> K + Clone,
        P: Fn(&Req) -> Priority,
    {
        Self {
            rate_limiter: RateLimiter::new(&config.rate_limit),
            tenant_bulkhead: KeyedBulkhead::new("tenant", &config.tenant_bulkhead, key_of.clone()),
            limiter: AdaptiveLimiter::new(&config.shed),
            key_of,
            priority_of,
            max_concurrent: config.max_concurrent as usize,
            deadline: TimeoutLayer::total(Duration::from_millis(config.request_deadline_ms)),
        }
    }

    /// The adaptive limiter, for metrics.
    pub fn limiter(&self) -> &AdaptiveLimiter {
        &self.limiter
    }

    /// The rate limiter, for metrics.
    pub fn rate_limiter(&self) -> &RateLimiter<K> {
        &self.rate_limiter
    }
}

/// The service an [`EdgeStack`] makes around `S`.
pub type EdgeService<S, K, F, P> = RateLimitService<
    KeyedBulkheadService<
        PriorityShedService<LoadShed<ConcurrencyLimit<TimeoutService<S>>>, P>,
        K,
        F,
    >,
    K,
    F,
>;

impl<S, K: Hash + Eq + Clone, F: Clone, P: Clone> Layer<S> for EdgeStack<K, F, P> {
    type Service = EdgeService<S, K, F, P>;

    fn layer(&self, inner: S) -> Self::Service {
        let bounded = self.deadline.layer(inner);
        let capped = LoadShedLayer::new()
            .layer(ConcurrencyLimitLayer::new(self.max_concurrent).layer(bounded));
        let shed = self.limiter.layer(self.priority_of.clone()).layer(capped);
        let bulkheaded = self.tenant_bulkhead.layer(shed);
        self.rate_limiter
            .layer(self.key_of.clone())
            .layer(bulkheaded)
    }
}

/// Turns every error into a response with the app's `render` function, so the service's
/// error type becomes `Infallible` (what axum's `Router::layer` wants).
#[derive(Debug, Clone, Copy)]
pub struct RecoverLayer<R> {
    render: R,
}

impl<R> RecoverLayer<R> {
    /// Renders errors with `render(error) -> Response`.
    pub fn new(render: R) -> Self {
        Self { render }
    }
}

impl<S, R: Clone> Layer<S> for RecoverLayer<R> {
    type Service = Recover<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Recover {
            inner,
            render: self.render.clone(),
            failed: None,
        }
    }
}

/// The service made by [`RecoverLayer`].
#[derive(Debug)]
pub struct Recover<S, R> {
    inner: S,
    render: R,
    /// A readiness error, rendered as the response to the next call.
    failed: Option<BoxError>,
}

impl<S: Clone, R: Clone> Clone for Recover<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            render: self.render.clone(),
            failed: None,
        }
    }
}

impl<S, R, Req> Service<Req> for Recover<S, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: Fn(BoxError) -> S::Response + Clone,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = RecoverFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.failed.is_none()
            && let Err(error) = ready!(self.inner.poll_ready(cx))
        {
            self.failed = Some(error.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.failed.take() {
            Some(error) => RecoverFuture {
                inner: None,
                failed: Some(error),
                render: self.render.clone(),
            },
            None => RecoverFuture {
                inner: Some(self.inner.call(request)),
                failed: None,
                render: self.render.clone(),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Recover`].
    pub struct RecoverFuture<F, R> {
        #[pin]
        inner: Option<F>,
        failed: Option<BoxError>,
        render: R,
    }
}

impl<F, R, T, E> Future for RecoverFuture<F, R>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    R: Fn(BoxError) -> T,
{
    type Output = Result<T, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.as_pin_mut() {
            Some(inner) => ready!(inner.poll(cx)).map_err(Into::into),
            None => Err(this
                .failed
                .take()
                .unwrap_or_else(|| "service polled after completion".into())),
        };
        Poll::Ready(Ok(result.unwrap_or_else(|error| (this.render)(error))))
    }
}
