//! Adaptive client-side throttling (Google SRE book, "Handling Overload").
//!
//! Each client tracks, over a sliding window, how many requests it attempted and how many
//! the backend accepted. When the backend rejects a growing share, the client rejects
//! requests itself, before they use the network, with probability
//! `max(0, (requests - K * accepts) / (requests + 1))`. With `K = 2` the client keeps sending
//! about twice what the backend accepts, so the backend still sees enough traffic to show
//! recovery, while an overloaded backend stops paying for requests it would refuse anyway.
//!
//! A request counts as accepted unless the [`Classifier`] calls its failure transient
//! (unavailable, overloaded, timed out). Requests throttled locally count as requests, as
//! in the book. Opt-in: an overload is better handled by the breaker when the downstream is
//! down; this helps when it is up but saturated.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::classify::{Classifier, classify};
use crate::error::ResilienceError;
use faultline_settings::{SettingError, positive};

/// Adaptive throttling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Whether the layer throttles at all (`..__THROTTLE__ENABLED`). Default `false`.
    pub enabled: bool,
    /// The multiplier `K`, at least 1 (`..__THROTTLE__K`). Default 2.
    pub k: f64,
    /// Length of the sliding window (`..__THROTTLE__WINDOW_MS`), at least 1 000.
    /// Default 120 000 (the book's two minutes).
    pub window_ms: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            k: 2.0,
            window_ms: 120_000,
        }
    }
}

impl ThrottleConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        if !self.k.is_finite() || self.k < 1.0 {
            return Err(SettingError::new(
                path,
                "K",
                format!(
                    "must be at least 1 (below 1 a healthy backend is throttled); got {}",
                    self.k
                ),
            ));
        }
        positive(path, "WINDOW_MS", self.window_ms)?;
        if self.window_ms < 1_000 {
            return Err(SettingError::new(
                path,
                "WINDOW_MS",
                format!(
                    "must be at least 1000 (the window has one-second buckets); got {}",
                    self.window_ms
                ),
            ));
        }
        Ok(())
    }
}

/// The SRE book's client-side rejection probability.
pub(crate) fn rejection_probability(requests: u64, accepts: u64, k: f64) -> f64 {
    let requests = requests as f64;
    ((requests - k * accepts as f64) / (requests + 1.0)).max(0.0)
}

struct Counts {
    /// `(second, requests, accepts)`; bucket `s % len` holds second `s`.
    buckets: Vec<(u64, u64, u64)>,
    requests: u64,
    accepts: u64,
    head: u64,
}

impl Counts {
    fn advance(&mut self, now_sec: u64) {
        if now_sec <= self.head {
            return;
        }
        let len = self.buckets.len() as u64;
        let steps = (now_sec - self.head).min(len);
        for sec in now_sec + 1 - steps..=now_sec {
            let index = (sec % len) as usize;
            let (_, requests, accepts) = self.buckets[index];
            self.requests = self.requests.saturating_sub(requests);
            self.accepts = self.accepts.saturating_sub(accepts);
            self.buckets[index] = (sec, 0, 0);
        }
        self.head = now_sec;
    }

    fn add(&mut self, now_sec: u64, requests: u64, accepts: u64) {
        self.advance(now_sec);
        let len = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(now_sec % len) as usize];
        bucket.1 += requests;
        bucket.2 += accepts;
        self.requests += requests;
        self.accepts += accepts;
    }
}

type Sampler = Arc<dyn Fn() -> f64 + Send + Sync>;

struct ThrottleState {
    enabled: bool,
    k: f64,
    origin: Instant,
    counts: Mutex<Counts>,
    sample: Sampler,
}

/// The shared throttle for one downstream; clones share it.
#[derive(Clone)]
pub struct AdaptiveThrottle {
    state: Arc<ThrottleState>,
}

impl std::fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveThrottle")
            .field("enabled", &self.state.enabled)
            .field("probability", &self.probability())
            .finish()
    }
}

impl AdaptiveThrottle {
    /// A throttle with validated `config`, drawing randomness from `rand::rng()`.
    pub fn new(config: &ThrottleConfig) -> Self {
        Self::with_sampler(config, Arc::new(|| rand::rng().random_range(0.0..1.0)))
    }

    /// A throttle whose random draws (uniform in `[0, 1)`) come from `sample`; tests pass a
    /// fixed sequence.
    pub fn with_sampler(
        config: &ThrottleConfig,
        sample: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Self {
        let seconds = (config.window_ms / 1_000).max(1) as usize;
        Self {
            state: Arc::new(ThrottleState {
                enabled: config.enabled,
                k: config.k,
                origin: Instant::now(),
                counts: Mutex::new(Counts {
                    buckets: vec![(0, 0, 0); seconds],
                    requests: 0,
                    accepts: 0,
                    head: 0,
                }),
                sample,
            }),
        }
    }

    fn now_sec(&self) -> u64 {
        self.state.origin.elapsed().as_secs()
    }

    /// The current rejection probability.
    pub fn probability(&self) -> f64 {
        let mut counts = self
            .state
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.advance(self.now_sec());
        rejection_probability(counts.requests, counts.accepts, self.state.k)
    }

    /// Counts a request and decides whether to send it.
    pub(crate) fn admit(&self) -> bool {
        if !self.state.enabled {
            return true;
        }
        let now_sec = self.now_sec();
        let probability = {
            let mut counts = self
                .state
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            counts.add(now_sec, 1, 0);
            // The request itself is counted in the window (the book counts every attempt),
            // but the formula's `requests` is the history before it.
            rejection_probability(counts.requests - 1, counts.accepts, self.state.k)
        };
        probability == 0.0 || (self.state.sample)() >= probability
    }

    pub(crate) fn accepted(&self) {
        let now_sec = self.now_sec();
        let mut counts = self
            .state
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.add(now_sec, 0, 1);
    }

    /// A layer throttling with this state, judging acceptance with `classifier`.
    pub fn layer<C>(&self, classifier: C) -> ThrottleLayer<C> {
        ThrottleLayer {
            throttle: self.state.enabled.then(|| self.clone()),
            classifier,
        }
    }
}

/// Applies an [`AdaptiveThrottle`].
#[derive(Debug, Clone)]
pub struct ThrottleLayer<C> {
    /// `None` when disabled: the services it makes pass calls through and clone nothing.
    throttle: Option<AdaptiveThrottle>,
    classifier: C,
}

impl<S, C: Clone> Layer<S> for ThrottleLayer<C> {
    type Service = ThrottleService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            throttle: self.throttle.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`ThrottleLayer`].
#[derive(Debug, Clone)]
pub struct ThrottleService<S, C> {
    inner: S,
    throttle: Option<AdaptiveThrottle>,
    classifier: C,
}

impl<S, C, Req> Service<Req> for ThrottleService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ThrottleFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let Some(throttle) = &self.throttle else {
            return ThrottleFuture {
                inner: Some(self.inner.call(request)),
                tracking: None,
            };
        };
        if throttle.admit() {
            ThrottleFuture {
                inner: Some(self.inner.call(request)),
                tracking: Some((throttle.clone(), self.classifier.clone())),
            }
        } else {
            ThrottleFuture {
                inner: None,
                tracking: None,
            }
        }
    }
}

pin_project! {
    /// The response future of [`ThrottleService`].
    pub struct ThrottleFuture<F, C> {
        #[pin]
        inner: Option<F>,
        tracking: Option<(AdaptiveThrottle, C)>,
    }
}

impl<F, C, T, E> Future for ThrottleFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(ResilienceError::Throttled.boxed()));
        };
        let result = ready!(inner.poll(cx)).map_err(Into::into);
        if let Some((throttle, classifier)) = this.tracking.take() {
            let class = classify(&classifier, result.as_ref().map_err(|e| &**e));
            if !class.is_some_and(|c| c.is_transient()) {
                throttle.accepted();
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::classify::AllErrorsTransient;
    use proptest::prelude::*;
    use std::time::Duration;
    use tower::{ServiceExt, service_fn};

    #[test]
    fn the_probability_follows_the_book() {
        assert_eq!(rejection_probability(0, 0, 2.0), 0.0);
        assert_eq!(
            rejection_probability(100, 50, 2.0),
            0.0,
            "accepting half: no throttling"
        );
        assert_eq!(rejection_probability(100, 0, 2.0), 100.0 / 101.0);
        assert!((rejection_probability(100, 25, 2.0) - 50.0 / 101.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn the_probability_is_a_probability_and_falls_as_accepts_rise(
            requests in 0u64..1_000_000, accepts in 0u64..1_000_000, k in 1.0f64..10.0,
        ) {
            let accepts = accepts.min(requests);
            let p = rejection_probability(requests, accepts, k);
            prop_assert!((0.0..1.0).contains(&p));
            prop_assert!(rejection_probability(requests, (accepts + 1).min(requests), k) <= p);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_in_proportion_to_rejections_then_forgets() {
        let config = ThrottleConfig {
            enabled: true,
            k: 2.0,
            window_ms: 10_000,
        };
        // Draws of 0.5: a request is sent while the probability is at most 0.5.
        let throttle = AdaptiveThrottle::with_sampler(&config, Arc::new(|| 0.5));
        let healthy = Arc::new(AtomicBool::new(false));
        let backend = {
            let healthy = healthy.clone();
            service_fn(move |_: ()| {
                let ok = healthy.load(Ordering::SeqCst);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err::<(), BoxError>("unavailable".into())
                    }
                }
            })
        };
        let svc = throttle.layer(AllErrorsTransient).layer(backend);

        // p = n / (n + 1) after n rejected requests: 0, 1/2, 2/3, ... so two are sent
        // and everything after is refused locally.
        let mut sent = 0;
        let mut throttled = 0;
        for _ in 0..10 {
            match svc.clone().oneshot(()).await {
                Err(e)
                    if matches!(ResilienceError::find(&*e), Some(ResilienceError::Throttled)) =>
                {
                    throttled += 1
                }
                _ => sent += 1,
            }
        }
        assert_eq!((sent, throttled), (2, 8));
        assert!((throttle.probability() - 10.0 / 11.0).abs() < 1e-12);

        // The window slides: after it has passed, the history is gone.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.probability(), 0.0);
        healthy.store(true, Ordering::SeqCst);
        for _ in 0..10 {
            svc.clone().oneshot(()).await.unwrap();
        }
        assert_eq!(throttle.probability(), 0.0);
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = ThrottleConfig {
            k: 0.5,
            ..ThrottleConfig::default()
        };
        assert_eq!(
            bad.validate("X__THROTTLE").unwrap_err().setting,
            "X__THROTTLE__K"
        );
        let short = ThrottleConfig {
            window_ms: 10,
            ..ThrottleConfig::default()
        };
        assert_eq!(
            short.validate("X__THROTTLE").unwrap_err().setting,
            "X__THROTTLE__WINDOW_MS"
        );
    }
}
