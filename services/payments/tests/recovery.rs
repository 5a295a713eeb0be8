//! Authorization in recovery points, against a real Postgres: a crash after the provider
//! authorized but before the reply was stored is resumed by the retry, which never holds
//! funds twice.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use faultline_idempotency::{Claim, IdempotencyConfig, IdempotencyKey, Store};
use faultline_testkit::TestDatabase;
use payments::payments::{self as domain, Authorization, AuthorizeRequest, PAYMENT_CREATED};
use payments::provider::SimulatedProvider;
use uuid::Uuid;

async fn database() -> TestDatabase {
    let db = TestDatabase::create("payments_recovery").await.unwrap();
    payments::MIGRATOR.run(&db.pool).await.unwrap();
    faultline_idempotency::migrate(&db.pool).await.unwrap();
    db
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

#[tokio::test]
async fn a_crash_after_the_provider_call_resumes_without_a_second_hold() {
    let db = database().await;
    let pool = db.pool.clone();
    let keys = Store::new(
        pool.clone(),
        IdempotencyConfig {
            lease_ms: 300,
            ..IdempotencyConfig::default()
        },
    );
    let provider = SimulatedProvider::new(50_000);
    let order_id = Uuid::now_v7();
    let request = request(order_id);
    let key = IdempotencyKey::parse(&request.idempotency_key).unwrap();

    // First attempt: the pending payment commits, the provider authorizes, and then the
    // worker dies before its final transaction commits.
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    let mut tx = pool.begin().await.unwrap();
    let first = domain::authorize(&pool, &provider, &mut lease, &request, &mut tx)
        .await
        .unwrap();
    assert!(matches!(first, Authorization::Authorized { .. }));
    drop(tx);
    drop(lease);

    let status: String =
        sqlx::query_scalar("SELECT status::text FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "pending", "only the first phase committed");

    // The retry waits out the lease, takes the key over at the recovery point and finishes.
    assert!(matches!(
        keys.claim("payments", &key, request.fingerprint())
            .await
            .unwrap(),
        Claim::InFlight { .. }
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("the expired lease is taken over");
    };
    assert_eq!(lease.recovery_point(), PAYMENT_CREATED);
    let mut tx = pool.begin().await.unwrap();
    let second = domain::authorize(&pool, &provider, &mut lease, &request, &mut tx)
        .await
        .unwrap();
    lease
        .complete(
            &mut tx,
            &faultline_idempotency::grpc::stored(&payments::grpc::authorize_response(&second)),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(first, second, "the same payment, resumed");

    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status::text FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "authorized");
    assert_eq!(
        (provider.calls(), provider.holds()),
        (2, 1),
        "the provider was asked twice with one key and held the funds once"
    );

    // From now on the key replays.
    assert!(matches!(
        keys.claim("payments", &key, request.fingerprint())
            .await
            .unwrap(),
        Claim::Completed(_)
    ));

    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_key_reused_for_another_order_is_refused_not_resumed() {
    let db = database().await;
    let pool = db.pool.clone();
    let keys = Store::new(pool.clone(), IdempotencyConfig::default());
    let provider = SimulatedProvider::new(50_000);
    let first_order = request(Uuid::now_v7());
    let key = IdempotencyKey::parse(&first_order.idempotency_key).unwrap();

    // Order A's authorization commits its pending payment and dies before finishing.
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, first_order.fingerprint())
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    let mut tx = pool.begin().await.unwrap();
    domain::authorize(&pool, &provider, &mut lease, &first_order, &mut tx)
        .await
        .unwrap();
    drop(tx);
    drop(lease);

    // The key row is forgotten (expired and reaped); order B arrives with the same key.
    sqlx::query("DELETE FROM idempotency_keys WHERE key = $1")
        .bind(key.as_str())
        .execute(&pool)
        .await
        .unwrap();
    let other_order = AuthorizeRequest {
        order_id: Uuid::now_v7(),
        ..first_order.clone()
    };
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, other_order.fingerprint())
        .await
        .unwrap()
    else {
        panic!("the forgotten key is owned afresh");
    };
    let mut tx = pool.begin().await.unwrap();
    let answer = domain::authorize(&pool, &provider, &mut lease, &other_order, &mut tx).await;
    assert!(
        matches!(answer, Err(domain::PaymentError::KeyReused(_))),
        "order B was given order A's payment: {answer:?}"
    );
    // An open transaction would keep the database from being dropped.
    drop(tx);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_free_order_authorizes_and_captures_zero_with_a_balanced_ledger() {
    let db = database().await;
    let pool = db.pool.clone();
    let keys = Store::new(pool.clone(), IdempotencyConfig::default());
    let provider = SimulatedProvider::new(50_000);
    let order_id = Uuid::now_v7();
    let request = AuthorizeRequest {
        amount_minor: 0,
        ..request(order_id)
    };
    assert_eq!(request.validate(), Ok(()), "a zero total is a valid amount");
    let key = IdempotencyKey::parse(&request.idempotency_key).unwrap();
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    let mut tx = pool.begin().await.unwrap();
    let answer = domain::authorize(&pool, &provider, &mut lease, &request, &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        matches!(answer, Authorization::Authorized { .. }),
        "{answer:?}"
    );
    assert_eq!(
        (provider.calls(), provider.holds()),
        (0, 0),
        "nothing to hold, so the provider is not asked"
    );

    let capture = domain::capture(&pool, &provider, order_id).await.unwrap();
    assert_eq!(capture.amount_minor, 0);
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(entries, 0, "a zero capture books nothing");
    assert_eq!(provider.captures(), 0, "nor asks the provider to capture");
    db.drop().await.unwrap();
}
