//! The load shedder on paused time: what it sheds first, how its limit adapts, and its
//! settings.

use std::sync::Mutex;

use super::*;
use tokio::sync::oneshot;
use tower::{ServiceExt, service_fn};

#[derive(Clone, Copy)]
enum Call {
    PlaceOrder,
    UpdateProfile,
    BrowseCatalog,
}

fn priority(call: &Call) -> Priority {
    match call {
        Call::PlaceOrder => Priority::Critical,
        Call::UpdateProfile => Priority::Normal,
        Call::BrowseCatalog => Priority::Sheddable,
    }
}

type Gate = Arc<Mutex<Vec<oneshot::Sender<()>>>>;

fn gated(gate: Gate) -> impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |_call: Call| {
        let (open, wait) = oneshot::channel();
        gate.lock().unwrap().push(open);
        async move {
            let _ = wait.await;
            Ok::<(), BoxError>(())
        }
    })
}

fn config() -> ShedConfig {
    ShedConfig {
        initial_limit: 10,
        min_limit: 2,
        max_limit: 20,
        normal_share_percent: 80.0,
        sheddable_share_percent: 50.0,
        latency_threshold_ms: 100,
        ..ShedConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn sheds_catalog_reads_before_orders() {
    let gate = Gate::default();
    let limiter = AdaptiveLimiter::new(&config());
    let svc = limiter.layer(priority).layer(gated(gate.clone()));
    let mut running = Vec::new();
    for _ in 0..5 {
        running.push(tokio::spawn(svc.clone().oneshot(Call::BrowseCatalog)));
    }
    tokio::task::yield_now().await;
    assert_eq!(limiter.inflight(), 5);

    let err = svc.clone().oneshot(Call::BrowseCatalog).await.unwrap_err();
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::Shed { priority: Priority::Sheddable, retry_after })
            if *retry_after == Duration::from_secs(1)
    ));
    for _ in 0..3 {
        running.push(tokio::spawn(svc.clone().oneshot(Call::UpdateProfile)));
    }
    tokio::task::yield_now().await;
    assert!(
        svc.clone().oneshot(Call::UpdateProfile).await.is_err(),
        "normal share is 8"
    );
    for _ in 0..2 {
        running.push(tokio::spawn(svc.clone().oneshot(Call::PlaceOrder)));
    }
    tokio::task::yield_now().await;
    assert_eq!(limiter.inflight(), 10);
    let err = svc.clone().oneshot(Call::PlaceOrder).await.unwrap_err();
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::Shed {
            priority: Priority::Critical,
            ..
        })
    ));
    for open in gate.lock().unwrap().drain(..) {
        open.send(()).unwrap();
    }
    for call in running {
        call.await.unwrap().unwrap();
    }
    assert_eq!(limiter.inflight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_limit_grows_when_busy_and_fast_and_shrinks_when_slow() {
    let gate = Gate::default();
    let limiter = AdaptiveLimiter::new(&config());
    let svc = limiter.layer(priority).layer(gated(gate.clone()));
    let mut running = Vec::new();
    for _ in 0..10 {
        running.push(tokio::spawn(svc.clone().oneshot(Call::PlaceOrder)));
    }
    tokio::task::yield_now().await;
    // Fast completions that were admitted with at least half the limit in flight (the
    // 5th to the 10th, completing in order) each grow the limit by one: 10 -> 16.
    for open in gate.lock().unwrap().drain(..) {
        open.send(()).unwrap();
    }
    for call in running.drain(..) {
        call.await.unwrap().unwrap();
    }
    assert_eq!(limiter.limit(), 16);

    // One completion slower than the threshold: 16 * 0.9 = 14.4, floored.
    let slow = tokio::spawn(svc.clone().oneshot(Call::PlaceOrder));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(150)).await;
    gate.lock().unwrap().remove(0).send(()).unwrap();
    slow.await.unwrap().unwrap();
    assert_eq!(limiter.limit(), 14);
}

#[test]
fn validation_names_the_setting() {
    let cases = [
        (
            ShedConfig {
                sheddable_share_percent: 95.0,
                ..ShedConfig::default()
            },
            "SHEDDABLE_SHARE_PERCENT",
        ),
        (
            ShedConfig {
                backoff_ratio: 1.0,
                ..ShedConfig::default()
            },
            "BACKOFF_RATIO",
        ),
        (
            ShedConfig {
                initial_limit: 1,
                ..ShedConfig::default()
            },
            "INITIAL_LIMIT",
        ),
        (
            ShedConfig {
                normal_share_percent: 0.0,
                ..ShedConfig::default()
            },
            "NORMAL_SHARE_PERCENT",
        ),
    ];
    for (config, field) in cases {
        assert_eq!(
            config.validate("E__SHED").unwrap_err().setting,
            format!("E__SHED__{field}")
        );
    }
}
