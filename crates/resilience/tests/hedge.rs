//! Hedging: a second copy after the latency percentile, the loser cancelled, the budget
//! charged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use faultline_resilience::{
    HedgeConfig, HedgeLayer, Idempotent, NeverRetry, RetryBudget, RetryConfig,
};
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

/// Counts copies that were dropped before they finished.
struct CancelledOnDrop {
    done: bool,
    cancelled: Arc<AtomicU32>,
}

impl Drop for CancelledOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Each call takes `latency(n)` for the n-th call; returns n.
fn backend(
    latency: impl Fn(u32) -> Duration + Clone + Send + 'static,
    calls: Arc<AtomicU32>,
    cancelled: Arc<AtomicU32>,
) -> impl Service<&'static str, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(move |_: &'static str| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let delay = latency(n);
        let cancelled = cancelled.clone();
        async move {
            let mut guard = CancelledOnDrop {
                done: false,
                cancelled,
            };
            tokio::time::sleep(delay).await;
            guard.done = true;
            Ok::<u32, BoxError>(n)
        }
    })
}

fn config() -> HedgeConfig {
    HedgeConfig {
        enabled: true,
        latency_percentile: 90.0,
        min_samples: 10,
        window_ms: 1_000,
    }
}

fn budget(percent: f64, floor: u32) -> RetryBudget {
    RetryBudget::new(&RetryConfig {
        budget_percent: percent,
        budget_min_per_sec: floor,
        ..RetryConfig::default()
    })
}

/// Ten calls of 10 ms, then a period boundary, so the p90 is known (about 10 ms).
async fn warm_up<S: Service<&'static str, Response = u32, Error = BoxError> + Clone>(svc: &S) {
    for _ in 0..10 {
        svc.clone()
            .oneshot("sku")
            .await
            .expect("warm-up calls succeed");
    }
    advance(MS * 1_000).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_primary_is_hedged_after_the_percentile_and_the_loser_cancelled() {
    let (calls, cancelled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    // Call 10 (the first after warm-up) hangs for a second; its hedge takes 5 ms.
    let latency = |n| {
        if n == 10 {
            MS * 1_000
        } else if n == 11 {
            MS * 5
        } else {
            MS * 10
        }
    };
    let layer = HedgeLayer::new(&config(), budget(20.0, 10), Idempotent);
    let svc = layer.layer(backend(latency, calls.clone(), cancelled.clone()));
    warm_up(&svc).await;
    let delay = layer.delay().unwrap();
    assert!(
        delay >= MS * 10 && delay <= MS * 12,
        "p90 of 10 ms calls: {delay:?}"
    );

    let start = Instant::now();
    let winner = svc.clone().oneshot("sku").await.unwrap();
    assert_eq!(winner, 11, "the hedge answered");
    // tokio's timer wheel has millisecond slots: the hedge timer fires at the next whole
    // millisecond after the percentile.
    let fired = Duration::from_millis(delay.as_micros().div_ceil(1_000) as u64);
    assert_eq!(start.elapsed(), fired + MS * 5);
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the primary was cancelled"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 12);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_without_budget_or_for_unsafe_requests() {
    let latency = |n| if n >= 10 { MS * 1_000 } else { MS * 10 };

    let (calls, cancelled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let broke = HedgeLayer::new(&config(), budget(0.0, 0), Idempotent);
    let svc = broke.layer(backend(latency, calls.clone(), cancelled.clone()));
    warm_up(&svc).await;
    let start = Instant::now();
    svc.clone().oneshot("sku").await.unwrap();
    assert_eq!(
        start.elapsed(),
        MS * 1_000,
        "the budget had nothing: no hedge"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 11);

    let (calls, cancelled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let unsafe_layer = HedgeLayer::new(&config(), budget(20.0, 10), NeverRetry);
    let svc = unsafe_layer.layer(backend(latency, calls.clone(), cancelled));
    warm_up(&svc).await;
    svc.clone().oneshot("order").await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        11,
        "never hedge what must not be repeated"
    );
}

#[tokio::test(start_paused = true)]
async fn no_hedge_before_enough_samples() {
    let (calls, cancelled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let layer = HedgeLayer::new(&config(), budget(20.0, 10), Idempotent);
    let svc = layer.layer(backend(|_| MS * 10, calls.clone(), cancelled));
    for _ in 0..5 {
        svc.clone().oneshot("sku").await.unwrap();
    }
    advance(MS * 1_000).await;
    assert_eq!(layer.delay(), None, "5 samples are fewer than 10");
}
