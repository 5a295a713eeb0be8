//! Per-key rate limiting with GCRA, on `governor`'s keyed limiter.
//!
//! GCRA (the generic cell rate algorithm) is a token bucket kept as one timestamp per key:
//! `requests_per_second` sustained, `burst` at once. A refused request learns exactly when
//! its key may try again, which becomes [`ResilienceError::RateLimited`] and, at the HTTP
//! edge, `429 Too Many Requests` with `Retry-After`. governor runs on tokio's clock here
//! ([`TokioClock`]), so the paused-clock tests are deterministic and production pays for
//! one `Instant::now()`.
//!
//! Keys that have not been seen for a whole replenish period hold no information; the
//! limiter drops them once more than `max_tracked_keys` are stored, so memory is bounded
//! by the busy keys.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::error::ResilienceError;
use crate::reject::RejectOr;
use faultline_settings::{SettingError, positive};

/// Rate limit settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per key (`..__RATE_LIMIT__REQUESTS_PER_SECOND`).
    /// Default 50.
    pub requests_per_second: u32,
    /// Requests a key may make at once (`..__RATE_LIMIT__BURST`). Default 100.
    pub burst: u32,
    /// Stored keys above which idle ones are dropped (`..__RATE_LIMIT__MAX_TRACKED_KEYS`).
    /// Default 100 000.
    pub max_tracked_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            burst: 100,
            max_tracked_keys: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(
            path,
            "REQUESTS_PER_SECOND",
            u64::from(self.requests_per_second),
        )?;
        positive(path, "BURST", u64::from(self.burst))?;
        positive(path, "MAX_TRACKED_KEYS", self.max_tracked_keys as u64)
    }

    fn quota(&self) -> Quota {
        let rate = NonZeroU32::new(self.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(rate).allow_burst(burst)
    }
}

/// governor's view of tokio's clock: time since the limiter was made.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Keyed<K> = Gcra<K, HashMapStateStore<K>, TokioClock, NoOpMiddleware<Duration>>;

/// A per-key GCRA rate limiter; clones share it.
pub struct RateLimiter<K: Hash + Eq + Clone> {
    gcra: Arc<Keyed<K>>,
    clock: TokioClock,
    max_tracked_keys: usize,
    checks: Arc<AtomicUsize>,
}

impl<K: Hash + Eq + Clone> Clone for RateLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            gcra: self.gcra.clone(),
            clock: self.clock,
            max_tracked_keys: self.max_tracked_keys,
            checks: self.checks.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("max_tracked_keys", &self.max_tracked_keys)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter with validated `config`.
    pub fn new(config: &RateLimitConfig) -> Self {
        let clock = TokioClock::default();
        Self {
            gcra: Arc::new(Gcra::hashmap_with_clock(config.quota(), clock)),
            clock,
            max_tracked_keys: config.max_tracked_keys,
            checks: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Lets one request from `key` through, or says how long until it could be.
    pub fn check(&self, key: &K) -> Result<(), ResilienceError> {
        // Housekeeping every 1024 checks: `len` takes the store's lock, so not every time.
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1_024)
            && self.gcra.len() > self.max_tracked_keys
        {
            self.gcra.retain_recent();
        }
        self.gcra
            .check_key(key)
            .map_err(|not_until| ResilienceError::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Keys currently stored.
    pub fn tracked_keys(&self) -> usize {
        self.gcra.len()
    }

    /// A layer limiting requests by `key_of` (tenant id, API key, client address, ...).
    pub fn layer<F>(&self, key_of: F) -> RateLimitLayer<K, F> {
        RateLimitLayer {
            limiter: self.clone(),
            key_of,
        }
    }
}

/// Rate-limits requests by key.
#[derive(Debug, Clone)]
pub struct RateLimitLayer<K: Hash + Eq + Clone, F> {
    limiter: RateLimiter<K>,
    key_of: F,
}

impl<S, K: Hash + Eq + Clone, F: Clone> Layer<S> for RateLimitLayer<K, F> {
    type Service = RateLimitService<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key_of: self.key_of.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimitService<S, K: Hash + Eq + Clone, F> {
    inner: S,
    limiter: RateLimiter<K>,
    key_of: F,
}

impl<S, K, F, Req> Service<Req> for RateLimitService<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RejectOr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.limiter.check(&(self.key_of)(&request)) {
            Ok(()) => RejectOr::admitted(self.inner.call(request)),
            Err(refused) => RejectOr::rejected(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceExt, service_fn};

    fn echo() -> impl Service<&'static str, Response = &'static str, Error = BoxError> + Clone {
        service_fn(|tenant: &'static str| async move { Ok::<_, BoxError>(tenant) })
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_over_the_burst_with_the_exact_wait() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            requests_per_second: 10,
            burst: 2,
            ..RateLimitConfig::default()
        });
        let svc = limiter.layer(|tenant: &&'static str| *tenant).layer(echo());
        assert!(svc.clone().oneshot("acme").await.is_ok());
        assert!(svc.clone().oneshot("acme").await.is_ok());
        let err = svc.clone().oneshot("acme").await.unwrap_err();
        assert!(matches!(
            ResilienceError::find(&*err),
            Some(ResilienceError::RateLimited { retry_after }) if *retry_after == Duration::from_millis(100)
        ));
        assert!(
            svc.clone().oneshot("globex").await.is_ok(),
            "other keys are unaffected"
        );

        tokio::time::advance(Duration::from_millis(40)).await;
        let err = svc.clone().oneshot("acme").await.unwrap_err();
        assert!(matches!(
            ResilienceError::find(&*err),
            Some(ResilienceError::RateLimited { retry_after }) if *retry_after == Duration::from_millis(60)
        ));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(svc.oneshot("acme").await.is_ok());
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = RateLimitConfig {
            burst: 0,
            ..RateLimitConfig::default()
        };
        assert_eq!(
            bad.validate("CHECKOUT_EDGE__RATE_LIMIT")
                .unwrap_err()
                .setting,
            "CHECKOUT_EDGE__RATE_LIMIT__BURST"
        );
    }
}
