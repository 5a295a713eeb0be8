//! Hedged requests: for a safe read, send a second copy when the first is slower than
//! usual, take whichever answers first, cancel the other.
//!
//! tower's `Hedge` does the same but is not `Clone` (so it cannot sit under tower's
//! `Retry`), locks a histogram mutex twice per call and does not share the retry budget.
//! This one is cloneable, reads the delay from a lock-free [`LatencyWindow`] (the
//! `latency_percentile` of the previous `window_ms` period), and sends a hedge only if the
//! request is safe to repeat ([`RetrySafety`]) and the shared [`RetryBudget`] has a token,
//! so hedges and retries together stay within one budget. The first `Ok` wins; an error
//! from one copy waits for the other. The loser is dropped, which for tonic cancels the
//! RPC (`RST_STREAM`), so the callee stops work too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::budget::RetryBudget;
use crate::deadline::Deadline;
use crate::latency::LatencyWindow;
use crate::retry::RetrySafety;
use faultline_settings::{SettingError, percent, positive};

/// Hedging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// Whether to hedge at all (`..__HEDGE__ENABLED`). Default `false`.
    pub enabled: bool,
    /// Hedge when the first copy is slower than this percentile of recent calls, in (0, 100]
    /// (`..__HEDGE__LATENCY_PERCENTILE`). Default 95.
    pub latency_percentile: f64,
    /// Calls a period must have seen before its percentile is trusted
    /// (`..__HEDGE__MIN_SAMPLES`). Default 20.
    pub min_samples: u64,
    /// Length of a measuring period (`..__HEDGE__WINDOW_MS`). Default 10 000.
    pub window_ms: u64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            latency_percentile: 95.0,
            min_samples: 20,
            window_ms: 10_000,
        }
    }
}

impl HedgeConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        percent(path, "LATENCY_PERCENTILE", self.latency_percentile, false)?;
        positive(path, "MIN_SAMPLES", self.min_samples)?;
        positive(path, "WINDOW_MS", self.window_ms)
    }
}

/// What every copy of an enabled hedge layer shares: one `Arc`, cloned once per call.
struct Shared {
    latencies: LatencyWindow,
    budget: RetryBudget,
}

/// Hedges requests; see the module docs.
pub struct HedgeLayer<I> {
    /// `None` when disabled, so a disabled layer clones nothing.
    shared: Option<Arc<Shared>>,
    safety: I,
}

impl<I: Clone> Clone for HedgeLayer<I> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            safety: self.safety.clone(),
        }
    }
}

impl<I> std::fmt::Debug for HedgeLayer<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl<I> HedgeLayer<I> {
    /// Hedging per validated `config`, drawing on `budget`, for requests `safety` allows.
    pub fn new(config: &HedgeConfig, budget: RetryBudget, safety: I) -> Self {
        let shared = config.enabled.then(|| {
            Arc::new(Shared {
                latencies: LatencyWindow::new(
                    Duration::from_millis(config.window_ms),
                    config.latency_percentile,
                    config.min_samples,
                ),
                budget,
            })
        });
        Self { shared, safety }
    }

    /// The current hedging delay: the percentile of the last complete period, if it had
    /// enough samples (always `None` when disabled).
    pub fn delay(&self) -> Option<Duration> {
        self.shared.as_ref()?.latencies.threshold()
    }
}

impl<S, I: Clone> Layer<S> for HedgeLayer<I> {
    type Service = HedgeService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`HedgeLayer`].
pub struct HedgeService<S, I> {
    inner: S,
    layer: HedgeLayer<I>,
}

impl<S: Clone, I: Clone> Clone for HedgeService<S, I> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, I> std::fmt::Debug for HedgeService<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeService")
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, I, Req> Service<Req> for HedgeService<S, I>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    I: RetrySafety<Req>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let layer = &self.layer;
        let Some(shared) = &layer.shared else {
            return HedgeFuture {
                primary: Some(self.inner.call(request)),
                hedging: None,
            };
        };
        // One clock reading for the whole plan (the timeout layer above may have one).
        let now = Deadline::current_scope().1.unwrap_or_else(Instant::now);
        let plan = if layer.safety.is_retry_safe(&request) {
            shared.latencies.threshold_at(now).map(|delay| {
                (
                    Box::pin(tokio::time::sleep_until(now + delay)),
                    self.inner.clone(),
                    request.clone(),
                )
            })
        } else {
            None
        };
        let (timer, spare) = match plan {
            Some((timer, service, copy)) => (Some(timer), Some((service, copy))),
            None => (None, None),
        };
        HedgeFuture {
            primary: Some(self.inner.call(request)),
            hedging: Some(Box::new(Hedging {
                primary_start: now,
                hedge: None,
                hedge_start: now,
                timer,
                spare,
                shared: shared.clone(),
                failed: None,
            })),
        }
    }
}

/// The state of a hedged call, boxed so that a disabled hedge layer adds nothing to the
/// size of the futures around it.
struct Hedging<S, Req>
where
    S: Service<Req>,
{
    primary_start: Instant,
    hedge: Option<Pin<Box<S::Future>>>,
    hedge_start: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    spare: Option<(S, Req)>,
    shared: Arc<Shared>,
    failed: Option<BoxError>,
}

pin_project! {
    /// The response future of [`HedgeService`].
    pub struct HedgeFuture<S, Req> where S: Service<Req> {
        #[pin]
        primary: Option<S::Future>,
        hedging: Option<Box<Hedging<S, Req>>>,
    }
}

impl<S, Req> Future for HedgeFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(hedging) = this.hedging.as_deref_mut() else {
            // Hedging disabled: a pass-through.
            return match this.primary.as_pin_mut() {
                Some(primary) => primary.poll(cx).map_err(Into::into),
                None => Poll::Ready(Err("hedged request polled after completion".into())),
            };
        };

        // When the timer fires, send the hedge if the budget allows.
        if let Some((mut service, request)) = due_spare(
            &mut hedging.timer,
            &mut hedging.spare,
            &hedging.shared.budget,
            cx,
        ) {
            hedging.hedge_start = Instant::now();
            hedging.hedge = Some(Box::pin(service.call(request)));
        }

        if let Some(primary) = this.primary.as_mut().as_pin_mut()
            && let Poll::Ready(result) = primary.poll(cx)
        {
            this.primary.set(None);
            hedging.timer = None;
            hedging.spare = None;
            match result {
                Ok(response) => {
                    hedging.shared.latencies.record_since(hedging.primary_start);
                    return Poll::Ready(Ok(response));
                }
                Err(error) if hedging.hedge.is_some() => hedging.failed = Some(error.into()),
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }

        if let Some(hedge) = hedging.hedge.as_mut()
            && let Poll::Ready(result) = hedge.as_mut().poll(cx)
        {
            hedging.hedge = None;
            match result {
                Ok(response) => {
                    hedging.shared.latencies.record_since(hedging.hedge_start);
                    return Poll::Ready(Ok(response));
                }
                Err(error) if this.primary.is_some() => hedging.failed = Some(error.into()),
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }

        if this.primary.is_none() && hedging.hedge.is_none() {
            let error = hedging
                .failed
                .take()
                .unwrap_or_else(|| "hedged request polled after completion".into());
            return Poll::Ready(Err(error));
        }
        Poll::Pending
    }
}

/// The spare copy to send now, if any: its timer has fired, its service is ready and the
/// budget has a token. Clears the timer (and the spare, if it will never be sent) once the
/// hedge is decided.
fn due_spare<S, Req>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    spare: &mut Option<(S, Req)>,
    budget: &RetryBudget,
    cx: &mut Context<'_>,
) -> Option<(S, Req)>
where
    S: Service<Req>,
{
    if timer.as_mut()?.as_mut().poll(cx).is_pending() {
        return None;
    }
    match spare.as_mut().map(|(service, _)| service.poll_ready(cx)) {
        Some(Poll::Pending) => None,
        Some(Poll::Ready(Ok(()))) => {
            *timer = None;
            spare.take().filter(|_| budget.withdraw())
        }
        Some(Poll::Ready(Err(_))) | None => {
            *timer = None;
            *spare = None;
            None
        }
    }
}
