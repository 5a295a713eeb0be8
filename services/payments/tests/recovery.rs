//! Authorization in recovery points, against a real Postgres: a crash after the provider
//! authorized but before the reply was stored is resumed by the retry, which never holds
//! funds twice.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_idempotency::{Claim, IdempotencyConfig, IdempotencyKey, Store};
use payments::payments::{self as domain, Authorization, AuthorizeRequest, PAYMENT_CREATED};
use payments::provider::SimulatedProvider;
use sqlx::PgPool;
use uuid::Uuid;

async fn database() -> (PgPool, PgPool, String) {
    let server = std::env::var("FAULTLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("payments_recovery_{}", nanos % 1_000_000_000_000);
    let admin = PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("{server}/{name}")).await.unwrap();
    payments::MIGRATOR.run(&pool).await.unwrap();
    faultline_idempotency::migrate(&pool).await.unwrap();
    (admin, pool, name)
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
    let (admin, pool, name) = database().await;
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

    let status: String = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
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
        sqlx::query_as("SELECT id, status FROM payments WHERE order_id = $1")
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

    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
