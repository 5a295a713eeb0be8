//! The recommended stacks, used the way Faultline's services use them.
//!
//! Each client scenario runs on tokio's paused clock, so its timings are exact.

#![allow(clippy::unwrap_used)] // scenarios run from the #[tokio::test]s: a failure should stop loudly

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultline_resilience::{
    ClientConfig, ClientStack, Deadline, EdgeConfig, EdgeStack, HttpRejection, Jitter, Priority,
    RateLimitConfig, RecoverLayer, ResilienceError, RetryIf, ShedConfig, State,
};
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.timeout.total_ms = 1_000;
    config.timeout.attempt_ms = 300;
    config.retry.max_attempts = 3;
    config.retry.initial_backoff_ms = 10;
    config.retry.max_backoff_ms = 10;
    // With base = cap, decorrelated jitter always waits exactly 10 ms: exact timings below.
    config.retry.jitter = Jitter::Decorrelated;
    config
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_the_remaining_budget_as_its_deadline() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicU32::new(0));
    let inner = {
        let (seen, attempts) = (seen.clone(), attempts.clone());
        service_fn(move |sku: String| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            let (seen, started) = (seen.clone(), Instant::now());
            async move {
                // The last hop reads the deadline (a gRPC client would send it on).
                seen.lock()
                    .unwrap()
                    .push((started, Deadline::current().unwrap().remaining()));
                if n < 2 {
                    // Hang until the attempt timeout fires.
                    std::future::pending::<()>().await;
                }
                Ok::<String, BoxError>(sku)
            }
        })
    };
    let stack = ClientStack::new("inventory", &client_config())
        .unwrap()
        .idempotent();
    let svc = stack.layer(inner);
    let start = Instant::now();
    assert_eq!(svc.oneshot("MUG-04".to_owned()).await.unwrap(), "MUG-04");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    // Attempt 1 at 0 ms with 300 ms; attempt 2 at 310 ms, attempt 3 at 620 ms: each bound
    // by its own 300 ms, well inside the 1 s total.
    assert_eq!(seen[0], (start, MS * 300));
    assert_eq!(seen[1].0 - start, MS * 310);
    assert_eq!(seen[2].0 - start, MS * 620);
    assert_eq!(seen[2].1, MS * 300);
}

#[tokio::test(start_paused = true)]
async fn the_total_deadline_caps_the_last_attempt_and_ends_the_call() {
    let mut config = client_config();
    config.timeout.total_ms = 500;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let seen = seen.clone();
        service_fn(move |_: ()| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(Deadline::current().unwrap().remaining());
                std::future::pending::<Result<(), BoxError>>().await
            }
        })
    };
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let svc = stack.layer(inner);
    let start = Instant::now();
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(start.elapsed(), MS * 500);
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::DeadlineExceeded { .. })
    ));
    // 300 ms for the first attempt; the second starts at 310 ms with 190 ms left.
    assert_eq!(*seen.lock().unwrap(), [MS * 300, MS * 190]);
}

#[cfg(feature = "tonic")]
#[tokio::test(start_paused = true)]
async fn the_deadline_reaches_the_callee_as_grpc_timeout() {
    // What the last hop of a gRPC client does: build the tonic request, stamp the deadline.
    let headers = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let headers = headers.clone();
        service_fn(move |sku: String| {
            let headers = headers.clone();
            async move {
                let mut request = tonic::Request::new(sku);
                Deadline::propagate(&mut request);
                let header = request
                    .metadata()
                    .get("grpc-timeout")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                headers.lock().unwrap().push(header);
                Err::<String, BoxError>(Box::new(tonic::Status::unavailable("restarting")))
            }
        })
    };
    let stack = ClientStack::new("inventory", &client_config())
        .unwrap()
        .classifier(faultline_resilience::GrpcClassifier)
        .idempotent();
    let err = stack
        .layer(inner)
        .oneshot("MUG-04".to_owned())
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<tonic::Status>().unwrap().code(),
        tonic::Code::Unavailable
    );
    let headers = headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 3, "UNAVAILABLE is retried");
    for header in headers {
        let deadline = Deadline::from_grpc_timeout(&header).unwrap();
        assert_eq!(deadline.remaining(), MS * 300, "{header}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_retries_and_says_when_to_come_back() {
    let mut config = client_config();
    config.breaker.window_size = 2;
    config.breaker.minimum_calls = 2;
    config.breaker.open_wait_ms = 2_000;
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |_: ()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("connection refused".into()) }
        })
    };
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let mut events = stack.breaker().subscribe();
    let err = stack.layer(inner).oneshot(()).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the third attempt never left"
    );
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::CircuitOpen { retry_after, .. }) if *retry_after < MS * 2_000
    ));
    assert_eq!(stack.breaker().state(), State::Open);
    assert_eq!(events.try_recv().unwrap().to, State::Open);
}

/// An in-process payment adapter's request: the key makes repeating it safe.
#[derive(Debug, Clone, PartialEq)]
struct Authorize {
    idempotency_key: Option<String>,
    amount_minor: i64,
}

#[tokio::test(start_paused = true)]
async fn adapter_retries_reuse_the_idempotency_key_and_unkeyed_calls_are_not_repeated() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let provider = {
        let received = received.clone();
        service_fn(move |request: Authorize| {
            let received = received.clone();
            async move {
                let mut log = received.lock().unwrap();
                log.push(request.idempotency_key.clone());
                if !log.len().is_multiple_of(2) {
                    Err::<&'static str, BoxError>("provider timed out".into())
                } else {
                    Ok("authorized")
                }
            }
        })
    };
    let stack = ClientStack::new("psp", &client_config())
        .unwrap()
        .retry_safety(RetryIf(|request: &Authorize| {
            request.idempotency_key.is_some()
        }));
    let svc = stack.layer(provider);

    let keyed = Authorize {
        idempotency_key: Some("order-42".into()),
        amount_minor: 21_390,
    };
    assert_eq!(svc.clone().oneshot(keyed).await.unwrap(), "authorized");
    assert_eq!(
        *received.lock().unwrap(),
        [Some("order-42".to_owned()), Some("order-42".to_owned())]
    );

    received.lock().unwrap().clear();
    let unkeyed = Authorize {
        idempotency_key: None,
        amount_minor: 100,
    };
    assert!(svc.oneshot(unkeyed).await.is_err());
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "no key, no second charge attempt"
    );
}

/// Counts calls that were dropped before they finished (a cancelled hedge loser).
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

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_hedged_and_the_loser_cancelled() {
    let mut config = client_config();
    config.hedge.enabled = true;
    config.hedge.latency_percentile = 90.0;
    config.hedge.min_samples = 10;
    config.hedge.window_ms = 1_000;
    config.retry.budget_percent = 100.0;
    let calls = Arc::new(AtomicU32::new(0));
    let cancelled = Arc::new(AtomicU32::new(0));
    let inner = {
        let (calls, cancelled) = (calls.clone(), cancelled.clone());
        service_fn(move |_: ()| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            // The eleventh call is slow; every other one takes 10 ms.
            let delay = if n == 10 { MS * 250 } else { MS * 10 };
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
    };
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let svc = stack.layer(inner);
    // Ten calls of 10 ms, then a period boundary, so the p90 (10 ms) is known.
    for _ in 0..10 {
        svc.clone().oneshot(()).await.unwrap();
    }
    tokio::time::advance(MS * 1_000).await;

    let start = Instant::now();
    let answer = svc.clone().oneshot(()).await.unwrap();
    assert_eq!(answer, 11, "the hedge answered first");
    // The hedge leaves at the p90 (10 ms, measured in histogram buckets, and rounded up
    // to tokio's millisecond timer slots) and takes its own 10 ms.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= MS * 20 && elapsed <= MS * 23,
        "answered after {elapsed:?}"
    );
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the slow primary was cancelled"
    );
    assert_eq!(stack.breaker().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_refuses_at_once_or_after_its_wait() {
    let mut config = client_config();
    config.bulkhead.max_concurrent = 1;
    let slow = service_fn(|_: ()| async {
        tokio::time::sleep(MS * 100).await;
        Ok::<(), BoxError>(())
    });

    // No waiting: a second call while the first holds the only slot is refused at once.
    config.bulkhead.max_wait_ms = 0;
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let svc = stack.layer(slow);
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::BulkheadFull { waited, .. }) if waited.is_zero()
    ));
    first.await.unwrap().unwrap();

    // A bounded wait: the second call gets the slot when the first gives it back.
    config.bulkhead.max_wait_ms = 150;
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let svc = stack.layer(slow);
    let start = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        MS * 200,
        "100 ms waiting, then its own 100 ms"
    );
    first.await.unwrap().unwrap();

    // A wait that runs out.
    config.bulkhead.max_wait_ms = 50;
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let svc = stack.layer(slow);
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::BulkheadFull { waited, .. }) if *waited == MS * 50
    ));
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_throttle_refuses_locally_while_the_downstream_fails() {
    let mut config = client_config();
    config.retry.max_attempts = 1;
    config.throttle.enabled = true;
    config.throttle.k = 2.0;
    // Keep the breaker out of it: it would otherwise open first.
    config.breaker.window_size = 1_000;
    config.breaker.minimum_calls = 1_000;
    let sent = Arc::new(AtomicU32::new(0));
    let inner = {
        let sent = sent.clone();
        service_fn(move |_: ()| {
            sent.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("unavailable".into()) }
        })
    };
    let stack = ClientStack::new("inventory", &config).unwrap().idempotent();
    let svc = stack.layer(inner);
    let mut throttled = 0;
    for _ in 0..200 {
        let err = svc.clone().oneshot(()).await.unwrap_err();
        if matches!(
            ResilienceError::find(&*err),
            Some(ResilienceError::Throttled)
        ) {
            throttled += 1;
        }
    }
    // With no call accepted, the rejection probability is n / (n + 1) after n requests:
    // almost everything after the first few is refused without leaving the process.
    assert!(throttled >= 150, "only {throttled} of 200 refused locally");
    // A refused call never reaches the downstream: every call was either sent or refused.
    assert_eq!(sent.load(Ordering::SeqCst) + throttled, 200);
}

#[test]
fn client_config_validation_names_the_full_variable() {
    let mut config = ClientConfig::default();
    config.breaker.window_size = 5;
    let err = config
        .validate("CHECKOUT_INVENTORY__RESILIENCE")
        .unwrap_err();
    assert_eq!(
        err.setting,
        "CHECKOUT_INVENTORY__RESILIENCE__BREAKER__WINDOW_SIZE"
    );
    assert!(err.to_string().contains("minimum of 20 calls"), "{err}");

    let mut config = ClientConfig::default();
    config.timeout.attempt_ms = 5_000;
    let err = config
        .validate("CHECKOUT_INVENTORY__RESILIENCE")
        .unwrap_err();
    assert_eq!(
        err.setting,
        "CHECKOUT_INVENTORY__RESILIENCE__TIMEOUT__ATTEMPT_MS"
    );
    assert!(ClientStack::new("inventory", &config).is_err());

    let edge = EdgeConfig {
        max_concurrent: 10,
        ..EdgeConfig::default()
    };
    assert_eq!(
        edge.validate("CHECKOUT_EDGE").unwrap_err().setting,
        "CHECKOUT_EDGE__MAX_CONCURRENT"
    );
}

#[test]
fn configs_deserialize_with_defaults_and_reject_unknown_fields() {
    let partial: ClientConfig =
        serde_json::from_str(r#"{"retry": {"max_attempts": 5, "jitter": "decorrelated"}}"#)
            .unwrap();
    assert_eq!(partial.retry.max_attempts, 5);
    assert_eq!(partial.retry.budget_percent, 20.0);
    assert_eq!(partial.timeout, ClientConfig::default().timeout);
    let typo =
        serde_json::from_str::<ClientConfig>(r#"{"retry": {"max_attempt": 5}}"#).unwrap_err();
    assert!(typo.to_string().contains("max_attempt"), "{typo}");
}

// ------------------------------------------------------------------------------------
// The HTTP edge.

fn tenant(request: &http::Request<()>) -> String {
    request
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned()
}

fn priority(request: &http::Request<()>) -> Priority {
    if request.method() == http::Method::POST && request.uri().path() == "/v1/orders" {
        Priority::Critical
    } else {
        Priority::Sheddable
    }
}

/// What the app supplies: its own problem+json rendering of a refusal.
fn problem(error: BoxError) -> http::Response<String> {
    let Some(rejection) = HttpRejection::from_error(&*error) else {
        return http::Response::builder()
            .status(500)
            .body("internal error".into())
            .expect("a valid response");
    };
    let mut response = http::Response::builder()
        .status(rejection.status)
        .header(http::header::CONTENT_TYPE, "application/problem+json");
    if let Some(secs) = rejection.retry_after_secs {
        response = response.header(http::header::RETRY_AFTER, secs);
    }
    response
        .body(format!(
            r#"{{"status":{},"detail":"{error}"}}"#,
            rejection.status.as_u16()
        ))
        .expect("a valid response")
}

fn get(path: &str, tenant: &str) -> http::Request<()> {
    http::Request::get(path)
        .header("x-tenant", tenant)
        .body(())
        .expect("a valid request")
}

#[tokio::test(start_paused = true)]
async fn the_edge_answers_429_and_503_with_retry_after() {
    let config = EdgeConfig {
        rate_limit: RateLimitConfig {
            requests_per_second: 1,
            burst: 1,
            ..RateLimitConfig::default()
        },
        shed: ShedConfig {
            initial_limit: 4,
            min_limit: 4,
            max_limit: 4,
            sheddable_share_percent: 50.0,
            normal_share_percent: 75.0,
            retry_after_ms: 2_000,
            ..ShedConfig::default()
        },
        max_concurrent: 4,
        ..EdgeConfig::default()
    };
    let gate = Arc::new(tokio::sync::Notify::new());
    let router = {
        let gate = gate.clone();
        service_fn(move |_: http::Request<()>| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, std::convert::Infallible>(http::Response::new("ok".to_owned()))
            }
        })
    };
    let edge = EdgeStack::new(&config, tenant, priority);
    let app = RecoverLayer::new(problem).layer(edge.layer(router));

    // Two catalog reads from two tenants fill the sheddable share (2 of 4)...
    let a = tokio::spawn(app.clone().oneshot(get("/v1/products", "acme")));
    let b = tokio::spawn(app.clone().oneshot(get("/v1/products", "globex")));
    tokio::task::yield_now().await;
    // ...so a third tenant's read is shed, while an order still gets through.
    let shed = app
        .clone()
        .oneshot(get("/v1/products", "initech"))
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()[http::header::RETRY_AFTER], "2");
    let order = tokio::spawn(
        app.clone().oneshot(
            http::Request::post("/v1/orders")
                .header("x-tenant", "umbrella")
                .body(())
                .unwrap(),
        ),
    );
    tokio::task::yield_now().await;
    assert_eq!(edge.limiter().inflight(), 3);

    // acme's second request inside the same second is over its rate: 429, retry in 1 s.
    let limited = app
        .clone()
        .oneshot(get("/v1/products", "acme"))
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()[http::header::RETRY_AFTER], "1");
    assert_eq!(
        limited.headers()[http::header::CONTENT_TYPE],
        "application/problem+json"
    );

    gate.notify_waiters();
    for call in [a, b, order] {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
}
