//! `POST /v1/orders` with an `Idempotency-Key`, against the running checkout: retries are
//! answered, never executed twice.

use std::time::Duration;

use faultline_e2e::{Client, Options, ProductSpec, Service, System};
use reqwest::StatusCode;

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 10,
}];

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_identical_requests_place_one_order_and_get_one_answer() -> anyhow::Result<()> {
    let system = System::start(Options::default()).await?;
    system.client.load_catalog(&CATALOG).await?;
    let body = Client::order_body(&[("LAMP-01", 1)]).to_string();

    let mut requests = Vec::new();
    for _ in 0..100 {
        let client = system.client.clone();
        let body = body.clone();
        requests.push(tokio::spawn(async move {
            // A well-behaved client retries after the Retry-After of a 409 (the first request
            // is still running) and of the edge's 429 and 503 (a burst of 100 at once meets
            // the rate limit and the concurrency limit).
            loop {
                let answer = client
                    .post_order(body.clone(), Some("application/json"), Some("order-42"))
                    .await?;
                let retry = [
                    StatusCode::CONFLICT,
                    StatusCode::TOO_MANY_REQUESTS,
                    StatusCode::SERVICE_UNAVAILABLE,
                ];
                if !retry.contains(&answer.status) {
                    return anyhow::Ok(answer);
                }
                let wait: u64 = answer.retry_after.as_deref().unwrap_or("1").parse()?;
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }));
    }
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await??);
    }
    let first = &answers[0];
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    for answer in &answers {
        assert_eq!(answer.status, first.status);
        assert_eq!(answer.body, first.body);
        assert_eq!(answer.location, first.location);
    }
    assert_eq!(
        answers.iter().filter(|a| a.replayed.is_none()).count(),
        1,
        "one original answer, the rest replays"
    );

    let checkout = system.database(Service::Checkout).await?;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&checkout)
        .await?;
    assert_eq!(orders, 1);

    // The same key for another order is a client error; a new key is a new order. (The
    // burst above may have used up this caller's rate: wait politely.)
    let other = Client::order_body(&[("LAMP-01", 2)]).to_string();
    let reused = system
        .client
        .post_order_patiently(&other, "order-42")
        .await?;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");
    let fresh = system
        .client
        .post_order_patiently(&other, "order-43")
        .await?;
    assert_eq!(fresh.status, StatusCode::ACCEPTED);

    system.wait_until_settled(Duration::from_secs(60)).await?;
    system
        .check_invariants(
            &CATALOG
                .iter()
                .map(|p| (p.sku.to_owned(), p.stock))
                .collect(),
        )
        .await?;
    system.teardown().await
}
