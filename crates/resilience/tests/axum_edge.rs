//! The edge stack mounted on a real axum router, the way checkout mounts it: refusals come
//! back as the app's own problem+json responses with `Retry-After`.

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faultline_resilience::{
    BulkheadConfig, EdgeConfig, EdgeStack, HttpRejection, Priority, RateLimitConfig, RecoverLayer,
};
use http::{HeaderValue, Method, Request, StatusCode, header};
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The rate-limit key: the customer, or everyone anonymous together.
fn customer(request: &Request<Body>) -> String {
    request
        .headers()
        .get("x-customer-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned()
}

/// Placing an order is what the shop is for; browsing can wait.
fn priority(request: &Request<Body>) -> Priority {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/orders") => Priority::Critical,
        (&Method::GET, path) if path.starts_with("/v1/orders/") => Priority::Normal,
        _ => Priority::Sheddable,
    }
}

/// The app's renderer (checkout would build its `ProblemDetails` here).
fn problem(error: BoxError) -> Response {
    let Some(rejection) = HttpRejection::from_error(&*error) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = format!(
        r#"{{"type":"/problems/overloaded","status":{},"detail":"{error}"}}"#,
        rejection.status.as_u16()
    );
    let mut response = (
        rejection.status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response();
    if let Some(secs) = rejection.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn order(customer: &str) -> Request<Body> {
    Request::post("/v1/orders")
        .header("x-customer-id", customer)
        .body(Body::empty())
        .expect("a valid request")
}

#[tokio::test(start_paused = true)]
async fn an_axum_router_answers_429_with_retry_after_from_the_edge() {
    let config = EdgeConfig {
        rate_limit: RateLimitConfig {
            requests_per_second: 2,
            burst: 1,
            ..RateLimitConfig::default()
        },
        ..EdgeConfig::default()
    };
    assert!(config.validate("CHECKOUT_EDGE").is_ok());
    let edge = EdgeStack::new(&config, customer, priority);
    let app = Router::new()
        .route("/v1/orders", post(|| async { StatusCode::ACCEPTED }))
        .route("/v1/products", get(|| async { "catalog" }))
        .layer(
            ServiceBuilder::new()
                .layer(RecoverLayer::new(problem))
                .layer(edge),
        );

    assert_eq!(
        app.clone().oneshot(order("alice")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let limited = app.clone().oneshot(order("alice")).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.headers()[header::RETRY_AFTER],
        "1",
        "500 ms, rounded up"
    );
    assert_eq!(
        limited.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(
        app.clone().oneshot(order("bob")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );

    tokio::time::advance(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.oneshot(order("alice")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
}

/// Counts how many handler futures were dropped before they finished.
struct Abandoned(std::sync::Arc<std::sync::atomic::AtomicUsize>, bool);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_answers_504_and_its_handler_is_dropped() {
    let config = EdgeConfig {
        request_deadline_ms: 1_000,
        ..EdgeConfig::default()
    };
    assert!(config.validate("CHECKOUT_EDGE").is_ok());
    let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = abandoned.clone();
    let app = Router::new()
        .route(
            "/v1/orders",
            post(move || {
                let counter = counter.clone();
                async move {
                    // Stands for a handler stuck behind a lock with its transaction open.
                    let mut guard = Abandoned(counter, false);
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    guard.1 = true;
                    StatusCode::ACCEPTED
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RecoverLayer::new(problem))
                .layer(EdgeStack::new(&config, customer, priority)),
        );

    let started = tokio::time::Instant::now();
    let answer = app.oneshot(order("alice")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        answer.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(1));
    assert_eq!(
        abandoned.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the handler's future (and whatever it held) was dropped at the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn one_tenants_hanging_requests_fill_its_bulkhead_not_the_edge() {
    let config = EdgeConfig {
        tenant_bulkhead: BulkheadConfig {
            max_concurrent: 2,
            max_wait_ms: 50,
        },
        ..EdgeConfig::default()
    };
    assert!(config.validate("CHECKOUT_EDGE").is_ok());
    let app = Router::new()
        .route(
            "/v1/orders",
            post(|| async {
                // Stands for a handler waiting on a slow dependency.
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                StatusCode::ACCEPTED
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RecoverLayer::new(problem))
                .layer(EdgeStack::new(&config, customer, priority)),
        );

    // Alice's first two requests hang and hold both of her slots.
    let hanging: Vec<_> = (0..2)
        .map(|_| tokio::spawn(app.clone().oneshot(order("alice"))))
        .collect();
    tokio::task::yield_now().await;

    // Her third waits its 50 ms for a slot and is refused; Bob's is served as usual.
    let refused = app.clone().oneshot(order("alice")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let bob = app.clone().oneshot(order("bob")).await.unwrap();
    assert_eq!(bob.status(), StatusCode::ACCEPTED);

    // Once hers finish, her slots are hers again.
    for request in hanging {
        assert_eq!(
            request.await.unwrap().unwrap().status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        app.oneshot(order("alice")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
}
