//! Retries against a flaky scripted service on paused time: the backoff, what is never
//! retried, the budget, server pushback and deadlines.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::classify::AllErrorsTransient;
use crate::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn config(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        initial_backoff_ms: 100,
        max_backoff_ms: 400,
        ..RetryConfig::default()
    }
}

/// A service that fails `failures` times, then answers; it logs when each call came.
fn flaky(
    failures: u32,
    log: Arc<Mutex<Vec<Instant>>>,
) -> impl tower::Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    let count = Arc::new(AtomicU32::new(0));
    service_fn(move |req: u32| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        log.lock().unwrap().push(Instant::now());
        async move {
            if n < failures {
                Err::<u32, BoxError>("unavailable".into())
            } else {
                Ok(req)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn retries_transient_failures_with_capped_jittered_backoff() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let cfg = config(5);
    let svc = RetryLayer::new(&cfg, RetryBudget::new(&cfg), AllErrorsTransient, Idempotent)
        .layer(flaky(4, log.clone()));
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    let times = log.lock().unwrap().clone();
    assert_eq!(times.len(), 5);
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = cfg.backoff().ceiling(n as u32 + 1);
        assert!(
            gap <= ceiling,
            "retry {} waited {gap:?} > {ceiling:?}",
            n + 1
        );
    }
    assert!(times[4] - times[0] <= Duration::from_millis(100 + 200 + 400 + 400));
}

#[tokio::test(start_paused = true)]
async fn unsafe_requests_and_permanent_errors_are_not_retried() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let cfg = config(3);
    let svc = RetryLayer::new(&cfg, RetryBudget::new(&cfg), AllErrorsTransient, NeverRetry)
        .layer(flaky(1, log.clone()));
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(log.lock().unwrap().len(), 1);

    #[derive(Clone)]
    struct Permanent;
    impl Classifier<u32> for Permanent {
        fn classify_error(&self, _e: crate::classify::ErrorRef<'_>) -> ErrorClass {
            ErrorClass::Permanent
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = RetryLayer::new(&cfg, RetryBudget::new(&cfg), Permanent, Idempotent)
        .layer(flaky(1, log.clone()));
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(log.lock().unwrap().len(), 1);

    let log = Arc::new(Mutex::new(Vec::new()));
    let keyed = RetryIf(|req: &u32| req.is_multiple_of(2));
    let svc = RetryLayer::new(&cfg, RetryBudget::new(&cfg), AllErrorsTransient, keyed)
        .layer(flaky(1, log.clone()));
    assert_eq!(svc.oneshot(2).await.unwrap(), 2);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_during_an_outage() {
    // No floor, 10% of calls: 20 calls earn 2 retries.
    let cfg = RetryConfig {
        budget_percent: 10.0,
        budget_min_per_sec: 0,
        ..config(3)
    };
    let budget = RetryBudget::new(&cfg);
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = RetryLayer::new(&cfg, budget.clone(), AllErrorsTransient, Idempotent)
        .layer(flaky(u32::MAX, log.clone()));
    let mut exhausted = 0;
    for _ in 0..20 {
        let err = svc.clone().oneshot(1).await.unwrap_err();
        if let Some(ResilienceError::BudgetExhausted { last }) = ResilienceError::find(&*err) {
            assert_eq!(last.to_string(), "unavailable");
            exhausted += 1;
        }
    }
    // Each call deposits 0.1 retry; the first retry became affordable after 10 calls.
    let calls = log.lock().unwrap().len();
    assert!(calls <= 20 + 2, "retries multiplied load: {calls} calls");
    assert!(exhausted >= 18, "{exhausted}");
}

#[tokio::test(start_paused = true)]
async fn server_pushback_is_honoured_and_the_deadline_is_respected() {
    #[derive(Clone)]
    struct Pushback(Duration);
    impl Classifier<u32> for Pushback {
        fn classify_error(&self, _e: crate::classify::ErrorRef<'_>) -> ErrorClass {
            ErrorClass::Transient {
                retry_after: Some(self.0),
            }
        }
    }
    let cfg = config(3);
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = RetryLayer::new(
        &cfg,
        RetryBudget::new(&cfg),
        Pushback(Duration::from_millis(700)),
        Idempotent,
    )
    .layer(flaky(1, log.clone()));
    assert_eq!(svc.oneshot(3).await.unwrap(), 3);
    let times = log.lock().unwrap().clone();
    assert_eq!(times[1] - times[0], Duration::from_millis(700));

    // With 500 ms of budget, a 700 ms pushback means: give up now, not at the deadline.
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::total(Duration::from_millis(500)))
        .layer(RetryLayer::new(
            &cfg,
            RetryBudget::new(&cfg),
            Pushback(Duration::from_millis(700)),
            Idempotent,
        ))
        .service(flaky(1, log.clone()));
    let start = Instant::now();
    let err = svc.oneshot(3).await.unwrap_err();
    assert_eq!(err.to_string(), "unavailable");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn validation_names_the_setting() {
    let cases = [
        (
            RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            "MAX_ATTEMPTS",
        ),
        (
            RetryConfig {
                max_backoff_ms: 10,
                ..RetryConfig::default()
            },
            "MAX_BACKOFF_MS",
        ),
        (
            RetryConfig {
                budget_percent: 120.0,
                ..RetryConfig::default()
            },
            "BUDGET_PERCENT",
        ),
        (
            RetryConfig {
                budget_window_ms: 500,
                ..RetryConfig::default()
            },
            "BUDGET_WINDOW_MS",
        ),
    ];
    for (config, field) in cases {
        let err = config.validate("P__RETRY").unwrap_err();
        assert_eq!(err.setting, format!("P__RETRY__{field}"));
    }
}
