//! A void is final for its order, against a real Postgres: whatever the order's payment was
//! doing (nothing yet, half done, done), no authorization after the void holds funds, and a
//! hold the provider placed before the void is released.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use faultline_idempotency::{Claim, IdempotencyConfig, IdempotencyKey, Store};
use faultline_testkit::TestDatabase;
use payments::payments::{self as domain, Authorization, AuthorizeRequest, PaymentError};
use payments::provider::SimulatedProvider;
use sqlx::PgPool;
use uuid::Uuid;

async fn database() -> TestDatabase {
    let db = TestDatabase::create("payments_void").await.unwrap();
    payments::MIGRATOR.run(&db.pool).await.unwrap();
    faultline_idempotency::migrate(&db.pool).await.unwrap();
    db
}

fn keys(pool: &PgPool) -> Store {
    Store::new(
        pool.clone(),
        IdempotencyConfig {
            lease_ms: 300,
            ..IdempotencyConfig::default()
        },
    )
}

fn request(order_id: Uuid) -> AuthorizeRequest {
    AuthorizeRequest {
        idempotency_key: format!("order:{order_id}:authorize"),
        order_id,
        customer_id: "alice".into(),
        amount_minor: 4_200,
        currency: "EUR".into(),
    }
}

/// One authorization as a door runs it: claim the key, authorize, store the answer, commit.
async fn authorize(
    keys: &Store,
    provider: &SimulatedProvider,
    request: &AuthorizeRequest,
) -> Result<Authorization, PaymentError> {
    let key = IdempotencyKey::parse(&request.idempotency_key).unwrap();
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("the key is free");
    };
    let pool = keys.pool();
    let mut tx = pool.begin().await.unwrap();
    let answer = domain::authorize(pool, provider, &mut lease, request, &mut tx).await;
    match &answer {
        Ok(authorization) => {
            let stored = faultline_idempotency::grpc::stored(&payments::grpc::authorize_response(
                authorization,
            ));
            lease.complete(&mut tx, &stored).await.unwrap();
            tx.commit().await.unwrap();
        }
        Err(_) => lease.release(pool).await.unwrap(),
    }
    answer
}

async fn void(
    pool: &PgPool,
    provider: &SimulatedProvider,
    order_id: Uuid,
) -> Result<(), PaymentError> {
    domain::void(pool, provider, order_id).await
}

async fn authorized_rows(pool: &PgPool, order_id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE order_id = $1 AND status::text = 'authorized'",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Lets the key be claimed afresh, as the reaper does once it expired.
async fn expire_key(pool: &PgPool, key: &str) {
    sqlx::query(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1",
    )
    .bind(key)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_void_before_any_payment_refuses_the_late_authorization() {
    let db = database().await;
    let keys = keys(&db.pool);
    let provider = SimulatedProvider::new(50_000);
    let order_id = Uuid::now_v7();

    // The saga gave up on payments and voided; its AuthorizePayment arrives afterwards.
    void(&db.pool, &provider, order_id).await.unwrap();
    let answer = authorize(&keys, &provider, &request(order_id)).await;

    assert!(
        !matches!(answer, Ok(Authorization::Authorized { .. })),
        "an authorization after the void held funds: {answer:?}"
    );
    assert!(
        matches!(answer, Ok(Authorization::Voided { .. })),
        "{answer:?}"
    );
    assert_eq!(authorized_rows(&db.pool, order_id).await, 0);
    assert_eq!(provider.holds(), 0, "the provider was asked to hold funds");
    // Voiding again changes nothing.
    void(&db.pool, &provider, order_id).await.unwrap();
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_void_of_a_pending_payment_wins_over_its_resumption() {
    let db = database().await;
    let pool = db.pool.clone();
    let keys = keys(&pool);
    let provider = SimulatedProvider::new(50_000);
    let order_id = Uuid::now_v7();
    let request = request(order_id);
    let key = IdempotencyKey::parse(&request.idempotency_key).unwrap();

    // A gRPC Authorize: the pending payment commits, the provider answers, and the server
    // dies before its final transaction.
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    let mut tx = pool.begin().await.unwrap();
    domain::authorize(&pool, &provider, &mut lease, &request, &mut tx)
        .await
        .unwrap();
    drop(tx);
    drop(lease);

    // The order is cancelled meanwhile and its payment voided.
    void(&pool, &provider, order_id).await.unwrap();

    // The client retries once the lease ran out; the retry resumes at the recovery point.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = authorize(&keys, &provider, &request).await;
    assert!(
        !matches!(answer, Ok(Authorization::Authorized { .. })),
        "the resumed authorization held funds on a voided order: {answer:?}"
    );
    assert!(
        matches!(answer, Ok(Authorization::Voided { .. })),
        "{answer:?}"
    );
    assert_eq!(authorized_rows(&pool, order_id).await, 0);
    assert_eq!(
        provider.open_holds(),
        vec![],
        "the hold the first attempt placed was left at the provider"
    );
    assert_eq!((provider.holds(), provider.releases()), (1, 1));
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_redriven_authorization_of_a_voided_payment_is_not_authorized() {
    let db = database().await;
    let pool = db.pool.clone();
    let keys = keys(&pool);
    let provider = SimulatedProvider::new(50_000);
    let order_id = Uuid::now_v7();
    let request = request(order_id);

    let first = authorize(&keys, &provider, &request).await.unwrap();
    assert!(matches!(first, Authorization::Authorized { .. }));
    void(&pool, &provider, order_id).await.unwrap();

    // An operator re-drives the parked command a day later: its key has expired.
    expire_key(&pool, &request.idempotency_key).await;
    let again = authorize(&keys, &provider, &request).await;
    assert!(
        !matches!(again, Ok(Authorization::Authorized { .. })),
        "a voided payment was answered as authorized: {again:?}"
    );
    assert_eq!(
        again.unwrap(),
        Authorization::Voided {
            payment_id: match first {
                Authorization::Authorized { payment_id } => payment_id,
                other => panic!("{other:?}"),
            }
        }
    );
    // Another key for the same order is refused the same way.
    let other_key = AuthorizeRequest {
        idempotency_key: format!("order:{order_id}:authorize-again"),
        ..request.clone()
    };
    let answer = authorize(&keys, &provider, &other_key).await;
    assert!(
        matches!(answer, Ok(Authorization::Voided { .. })),
        "{answer:?}"
    );
    assert_eq!(authorized_rows(&pool, order_id).await, 0);
    assert_eq!((provider.holds(), provider.releases()), (1, 1));
    assert_eq!(provider.open_holds(), vec![]);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_void_during_the_provider_call_wins_over_the_decision() {
    let db = database().await;
    let pool = db.pool.clone();
    let keys = keys(&pool);
    let provider = SimulatedProvider::new(50_000);
    let order_id = Uuid::now_v7();
    let request = request(order_id);
    let key = IdempotencyKey::parse(&request.idempotency_key).unwrap();
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };

    // The provider has answered; before the decision is recorded, the order is voided.
    let decided = domain::decide(&pool, &provider, &mut lease, &request)
        .await
        .unwrap();
    void(&pool, &provider, order_id).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let answer = domain::record(&mut tx, decided).await.unwrap();
    tx.commit().await.unwrap();

    assert!(matches!(answer, Authorization::Voided { .. }), "{answer:?}");
    assert_eq!(authorized_rows(&pool, order_id).await, 0);
    assert_eq!(
        provider.open_holds(),
        vec![],
        "the hold placed during the void was left at the provider"
    );
    db.drop().await.unwrap();
}
