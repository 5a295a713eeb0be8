//! Priority load shedding under an adaptive concurrency limit.
//!
//! tower's `LoadShed` sheds whatever arrives while the inner service is not ready, and its
//! `ConcurrencyLimit` is a fixed number: neither knows that a catalog read can wait and an
//! order placement cannot, nor where the right limit lies today. This layer does both: an
//! [`AdaptiveLimiter`] moves the limit with [`Aimd`] (grow while in demand and fast, shrink
//! when requests get slow), and each [`Priority`] may fill only its share of it. When the
//! server saturates, sheddable traffic is refused first (at `sheddable_share_percent` of the
//! limit), then normal traffic, and critical traffic only at the full limit. A refusal is
//! [`ResilienceError::Shed`] with a `Retry-After` hint for a `503`.
//!
//! Keep tower's `ConcurrencyLimit` + `LoadShed` beneath it as the hard ceiling if you want
//! an absolute cap (see [`crate::edge`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::error::ResilienceError;
use crate::limit::Aimd;
use faultline_settings::{SettingError, percent, positive};

/// How much a request matters when the server must refuse some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Refused only at the full limit (placing an order, payment callbacks).
    Critical,
    /// Refused above `normal_share_percent` of the limit.
    Normal,
    /// Refused first, above `sheddable_share_percent` (catalog reads, listings).
    Sheddable,
}

/// Priority shedding settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShedConfig {
    /// Starting limit (`..__SHED__INITIAL_LIMIT`). Default 32.
    pub initial_limit: u32,
    /// Lowest limit (`..__SHED__MIN_LIMIT`). Default 4.
    pub min_limit: u32,
    /// Highest limit (`..__SHED__MAX_LIMIT`). Default 512.
    pub max_limit: u32,
    /// Factor applied on overload, in (0, 1) (`..__SHED__BACKOFF_RATIO`). Default 0.9.
    pub backoff_ratio: f64,
    /// A request slower than this signals overload (`..__SHED__LATENCY_THRESHOLD_MS`).
    /// Default 500.
    pub latency_threshold_ms: u64,
    /// Share of the limit normal requests may fill (`..__SHED__NORMAL_SHARE_PERCENT`).
    /// Default 90.
    pub normal_share_percent: f64,
    /// Share of the limit sheddable requests may fill
    /// (`..__SHED__SHEDDABLE_SHARE_PERCENT`). Default 60.
    pub sheddable_share_percent: f64,
    /// `Retry-After` hint for shed requests (`..__SHED__RETRY_AFTER_MS`). Default 1 000.
    pub retry_after_ms: u64,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            initial_limit: 32,
            min_limit: 4,
            max_limit: 512,
            backoff_ratio: 0.9,
            latency_threshold_ms: 500,
            normal_share_percent: 90.0,
            sheddable_share_percent: 60.0,
            retry_after_ms: 1_000,
        }
    }
}

impl ShedConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "MIN_LIMIT", u64::from(self.min_limit))?;
        if self.max_limit < self.min_limit {
            return Err(SettingError::new(
                path,
                "MAX_LIMIT",
                format!(
                    "must be at least MIN_LIMIT ({}); got {}",
                    self.min_limit, self.max_limit
                ),
            ));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(SettingError::new(
                path,
                "INITIAL_LIMIT",
                format!(
                    "must be within MIN_LIMIT..=MAX_LIMIT ({}..={}); got {}",
                    self.min_limit, self.max_limit, self.initial_limit
                ),
            ));
        }
        if !(self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0) {
            return Err(SettingError::new(
                path,
                "BACKOFF_RATIO",
                format!(
                    "must be between 0 and 1, exclusive; got {}",
                    self.backoff_ratio
                ),
            ));
        }
        positive(path, "LATENCY_THRESHOLD_MS", self.latency_threshold_ms)?;
        percent(
            path,
            "NORMAL_SHARE_PERCENT",
            self.normal_share_percent,
            false,
        )?;
        percent(
            path,
            "SHEDDABLE_SHARE_PERCENT",
            self.sheddable_share_percent,
            false,
        )?;
        if self.sheddable_share_percent > self.normal_share_percent {
            return Err(SettingError::new(
                path,
                "SHEDDABLE_SHARE_PERCENT",
                "must not exceed NORMAL_SHARE_PERCENT, or sheddable work would outlast normal work",
            ));
        }
        positive(path, "RETRY_AFTER_MS", self.retry_after_ms)
    }
}

struct LimiterState {
    aimd: Aimd,
    limit: AtomicU32,
    inflight: AtomicU32,
    latency_threshold: Duration,
    normal_share: f64,
    sheddable_share: f64,
    retry_after: Duration,
}

/// The shared adaptive limit; clones share it.
#[derive(Clone)]
pub struct AdaptiveLimiter {
    state: Arc<LimiterState>,
}

impl std::fmt::Debug for AdaptiveLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("limit", &self.limit())
            .field("inflight", &self.inflight())
            .finish()
    }
}

impl AdaptiveLimiter {
    /// A limiter with validated `config`.
    pub fn new(config: &ShedConfig) -> Self {
        Self {
            state: Arc::new(LimiterState {
                aimd: Aimd::new(config.min_limit, config.max_limit, config.backoff_ratio),
                limit: AtomicU32::new(config.initial_limit),
                inflight: AtomicU32::new(0),
                latency_threshold: Duration::from_millis(config.latency_threshold_ms),
                normal_share: config.normal_share_percent / 100.0,
                sheddable_share: config.sheddable_share_percent / 100.0,
                retry_after: Duration::from_millis(config.retry_after_ms),
            }),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.state.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn inflight(&self) -> u32 {
        self.state.inflight.load(Ordering::Relaxed)
    }

    /// How many requests of `priority` may be in flight under `limit`.
    fn allowed(&self, priority: Priority, limit: u32) -> u32 {
        let share = match priority {
            Priority::Critical => return limit,
            Priority::Normal => self.state.normal_share,
            Priority::Sheddable => self.state.sheddable_share,
        };
        ((f64::from(limit) * share).floor() as u32).max(1)
    }

    /// Admits a request of `priority`, or refuses it.
    fn admit(&self, priority: Priority) -> Result<InflightGuard, ResilienceError> {
        let state = &*self.state;
        let allowed = self.allowed(priority, state.limit.load(Ordering::Acquire));
        let before = state.inflight.fetch_add(1, Ordering::AcqRel);
        if before >= allowed {
            state.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(ResilienceError::Shed {
                priority,
                retry_after: state.retry_after,
            });
        }
        Ok(InflightGuard {
            limiter: self.clone(),
            start: Instant::now(),
            inflight: before + 1,
            completed: false,
        })
    }

    /// A layer shedding by `priority_of` (a request's [`Priority`]) under this limit.
    pub fn layer<F>(&self, priority_of: F) -> PriorityShedLayer<F> {
        PriorityShedLayer {
            limiter: self.clone(),
            priority_of,
        }
    }
}

/// Leaves the in-flight count when the request ends, and feeds its latency to the limit.
struct InflightGuard {
    limiter: AdaptiveLimiter,
    start: Instant,
    inflight: u32,
    completed: bool,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let state = &*self.limiter.state;
        state.inflight.fetch_sub(1, Ordering::AcqRel);
        if !self.completed {
            return; // cancelled: says nothing about the server's capacity
        }
        let overloaded = Aimd::is_overload(self.start.elapsed(), state.latency_threshold);
        let _ = state
            .limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |limit| {
                Some(state.aimd.update(limit, self.inflight, overloaded))
            });
    }
}

/// Sheds by priority under an [`AdaptiveLimiter`].
#[derive(Debug, Clone)]
pub struct PriorityShedLayer<F> {
    limiter: AdaptiveLimiter,
    priority_of: F,
}

impl<S, F: Clone> Layer<S> for PriorityShedLayer<F> {
    type Service = PriorityShedService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        PriorityShedService {
            inner,
            limiter: self.limiter.clone(),
            priority_of: self.priority_of.clone(),
        }
    }
}

/// The service made by [`PriorityShedLayer`].
#[derive(Debug, Clone)]
pub struct PriorityShedService<S, F> {
    inner: S,
    limiter: AdaptiveLimiter,
    priority_of: F,
}

impl<S, F, Req> Service<Req> for PriorityShedService<S, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> Priority,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.limiter.admit((self.priority_of)(&request)) {
            Ok(guard) => ShedFuture {
                inner: Some(self.inner.call(request)),
                refused: None,
                guard: Some(guard),
            },
            Err(refused) => ShedFuture {
                inner: None,
                refused: Some(refused.boxed()),
                guard: None,
            },
        }
    }
}

pin_project! {
    /// The response future of [`PriorityShedService`].
    pub struct ShedFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<BoxError>,
        guard: Option<InflightGuard>,
    }
}

impl<F, T, E> Future for ShedFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let refused = this
                .refused
                .take()
                .unwrap_or_else(|| ResilienceError::Throttled.boxed());
            return Poll::Ready(Err(refused));
        };
        let result = ready!(inner.poll(cx));
        if let Some(mut guard) = this.guard.take() {
            guard.completed = true;
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

#[cfg(test)]
mod tests;
