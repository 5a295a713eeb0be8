//! Total and per-attempt timeouts that hand the deadline down.
//!
//! tower's `Timeout` measures one duration from when it is called and knows nothing of an
//! outer deadline, so a per-attempt timeout under it would happily outlive the whole call
//! and the callee would never learn the caller's budget. This layer does both jobs:
//! [`TimeoutLayer::total`] fixes the call's [`Deadline`]; [`TimeoutLayer::per_attempt`]
//! bounds each attempt by the earlier of its own limit and that deadline. Both make the
//! effective deadline [`Deadline::current`] for everything beneath them, so the last hop can
//! send it on as `grpc-timeout`.
//!
//! The timer is created only if the inner future is not ready on its first poll, so a call
//! answered at once pays for one clock read and no timer registration.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::deadline::{Deadline, Scoped};
use crate::error::ResilienceError;
use faultline_settings::{SettingError, positive};

/// Timeouts for calls to one downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// The whole call, retries and backoff included (`..__TIMEOUT__TOTAL_MS`). Default 2 000.
    pub total_ms: u64,
    /// One attempt (`..__TIMEOUT__ATTEMPT_MS`). Default 500.
    pub attempt_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            total_ms: 2_000,
            attempt_ms: 500,
        }
    }
}

impl TimeoutConfig {
    /// Rejects zero timeouts and an attempt timeout longer than the total.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "TOTAL_MS", self.total_ms)?;
        positive(path, "ATTEMPT_MS", self.attempt_ms)?;
        if self.attempt_ms > self.total_ms {
            return Err(SettingError::new(
                path,
                "ATTEMPT_MS",
                format!(
                    "must not exceed the total timeout ({} ms); got {}",
                    self.total_ms, self.attempt_ms
                ),
            ));
        }
        Ok(())
    }

    /// `total_ms` as a duration.
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }

    /// `attempt_ms` as a duration.
    pub fn attempt(&self) -> Duration {
        Duration::from_millis(self.attempt_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Total,
    Attempt,
}

/// Applies a total or per-attempt timeout; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
    kind: Kind,
}

impl TimeoutLayer {
    /// The whole call must finish within `limit` (or the caller's deadline, if earlier).
    /// Fails with [`ResilienceError::DeadlineExceeded`].
    pub fn total(limit: Duration) -> Self {
        Self {
            limit,
            kind: Kind::Total,
        }
    }

    /// Each call through this layer (each attempt, when under a retry layer) must finish
    /// within `limit`. Fails with [`ResilienceError::AttemptTimedOut`], or with
    /// [`ResilienceError::DeadlineExceeded`] when the inherited deadline was the earlier.
    pub fn per_attempt(limit: Duration) -> Self {
        Self {
            limit,
            kind: Kind::Attempt,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            limit: self.limit,
            kind: self.kind,
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    limit: Duration,
    kind: Kind,
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (inherited, now) = Deadline::current_scope();
        let now = now.unwrap_or_else(Instant::now);
        let (deadline, expiry) = Expiry::plan(inherited, now, self.limit, self.kind == Kind::Total);
        let inner = deadline.sync_scope_at(now, || self.inner.call(request));
        TimeoutFuture {
            inner: deadline.scope_exact(inner),
            sleep: None,
            expiry,
        }
    }
}

pin_project! {
    /// The response future of [`TimeoutService`].
    pub struct TimeoutFuture<F> where F: Future {
        #[pin]
        inner: Scoped<F>,
        // Boxed: created only on the slow path, and keeps this future (which every layer
        // above embeds) small to move.
        sleep: Option<Pin<Box<Sleep>>>,
        expiry: Expiry,
    }
}

/// Which error a timer firing means, kept small: the error is built only if it fires.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expiry {
    /// The call's deadline passed; the duration is the budget it had.
    Deadline(Duration),
    /// The attempt's own limit passed.
    Attempt(Duration),
}

impl Expiry {
    /// The timer for a call made at `now` under `inherited`, limited to `limit` of its
    /// own: the effective deadline and what its passing means. `total` says whether the
    /// limit is the whole call's (its passing is the deadline's) or one attempt's.
    #[inline]
    pub(crate) fn plan(
        inherited: Option<Deadline>,
        now: Instant,
        limit: Duration,
        total: bool,
    ) -> (Deadline, Expiry) {
        let own = now + limit;
        match inherited {
            Some(inherited) if inherited.instant() <= own => (
                inherited,
                Expiry::Deadline(inherited.instant().saturating_duration_since(now)),
            ),
            _ if total => (Deadline::at(own), Expiry::Deadline(limit)),
            _ => (Deadline::at(own), Expiry::Attempt(limit)),
        }
    }

    /// The error its timer firing means.
    pub(crate) fn error(self) -> ResilienceError {
        match self {
            Expiry::Deadline(budget) => ResilienceError::DeadlineExceeded { budget },
            Expiry::Attempt(timeout) => ResilienceError::AttemptTimedOut { timeout },
        }
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let deadline = this.inner.deadline();
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.instant())));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(this.expiry.error().boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceExt, service_fn};

    async fn slow(delay: Duration) -> Result<Option<Deadline>, BoxError> {
        let seen = Deadline::current();
        tokio::time::sleep(delay).await;
        Ok(seen)
    }

    #[tokio::test(start_paused = true)]
    async fn fires_exactly_at_the_limit() {
        let svc = TimeoutLayer::per_attempt(Duration::from_millis(100)).layer(service_fn(slow));
        let start = Instant::now();
        let err = svc.oneshot(Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert!(matches!(
            ResilienceError::find(&*err),
            Some(ResilienceError::AttemptTimedOut { timeout }) if *timeout == Duration::from_millis(100)
        ));

        let svc = TimeoutLayer::per_attempt(Duration::from_millis(100)).layer(service_fn(slow));
        let seen = svc.oneshot(Duration::from_millis(99)).await.unwrap();
        assert_eq!(
            seen.map(Deadline::instant),
            Some(start + Duration::from_millis(200))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_under_total_takes_the_earlier_deadline() {
        let svc = tower::ServiceBuilder::new()
            .layer(TimeoutLayer::total(Duration::from_millis(150)))
            .layer(TimeoutLayer::per_attempt(Duration::from_millis(500)))
            .service(service_fn(slow));
        let start = Instant::now();
        let err = svc.oneshot(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        assert!(matches!(
            ResilienceError::find(&*err),
            Some(ResilienceError::DeadlineExceeded { .. })
        ));
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = TimeoutConfig {
            total_ms: 100,
            attempt_ms: 200,
        };
        let err = bad
            .validate("CHECKOUT_INVENTORY__RESILIENCE__TIMEOUT")
            .unwrap_err();
        assert_eq!(
            err.setting,
            "CHECKOUT_INVENTORY__RESILIENCE__TIMEOUT__ATTEMPT_MS"
        );
        let zero = TimeoutConfig {
            total_ms: 0,
            ..TimeoutConfig::default()
        };
        assert!(
            zero.validate("X")
                .unwrap_err()
                .setting
                .ends_with("TOTAL_MS")
        );
        assert!(TimeoutConfig::default().validate("X").is_ok());
    }
}
