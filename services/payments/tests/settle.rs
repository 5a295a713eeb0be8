//! Capture and void reach the provider in recovery points, against a real Postgres: an
//! answer lost between the provider and the local write (what a crash there looks like from
//! both sides) is resumed by the retry, which never captures or releases twice and never
//! forgets that the provider did.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use faultline_idempotency::{Claim, IdempotencyConfig, IdempotencyKey, Store};
use faultline_testkit::TestDatabase;
use payments::payments::{self as domain, Authorization, AuthorizeRequest, PaymentError};
use payments::provider::{
    PaymentProvider, ProviderDecision, ProviderError, ProviderRequest, SettleRequest, Settlement,
    SimulatedProvider,
};
use sqlx::PgPool;
use uuid::Uuid;

async fn database() -> TestDatabase {
    let db = TestDatabase::create("payments_settle").await.unwrap();
    payments::MIGRATOR.run(&db.pool).await.unwrap();
    faultline_idempotency::migrate(&db.pool).await.unwrap();
    db
}

/// A provider whose capture and void act and then lose their answer on the way back.
struct LosesAnswers<'a>(&'a SimulatedProvider);

impl PaymentProvider for LosesAnswers<'_> {
    async fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<ProviderDecision, ProviderError> {
        self.0.authorize(request).await
    }

    async fn capture(&self, request: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        self.0.capture(request).await?;
        Err(ProviderError("answer lost after the capture".into()))
    }

    async fn void(&self, request: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        self.0.void(request).await?;
        Err(ProviderError("answer lost after the void".into()))
    }
}

/// A provider that is down: every call fails before it reaches the provider.
struct Down;

impl PaymentProvider for Down {
    async fn authorize(&self, _: ProviderRequest<'_>) -> Result<ProviderDecision, ProviderError> {
        Err(ProviderError("down".into()))
    }

    async fn capture(&self, _: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        Err(ProviderError("down".into()))
    }

    async fn void(&self, _: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        Err(ProviderError("down".into()))
    }
}

/// An authorized payment of 42.00 EUR for a fresh order.
async fn authorized(pool: &PgPool, provider: &SimulatedProvider) -> (Uuid, AuthorizeRequest) {
    let order_id = Uuid::now_v7();
    let request = AuthorizeRequest {
        idempotency_key: format!("order:{order_id}:authorize"),
        order_id,
        customer_id: "alice".into(),
        amount_minor: 4_200,
        currency: "EUR".into(),
    };
    let keys = Store::new(pool.clone(), IdempotencyConfig::default());
    let key = IdempotencyKey::parse(&request.idempotency_key).unwrap();
    let Claim::Owned(mut lease) = keys
        .claim("payments", &key, request.fingerprint())
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    let mut tx = pool.begin().await.unwrap();
    let answer = domain::authorize(pool, provider, &mut lease, &request, &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(answer, Authorization::Authorized { .. }));
    (order_id, request)
}

/// The payment's status and the provider call it waits for.
async fn row(pool: &PgPool, order_id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT status::text, settling FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Ledger entries: how many, and what was debited.
async fn ledger(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(sum(amount_minor) FILTER (WHERE amount_minor > 0), 0)::bigint
         FROM ledger_entries",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_capture_whose_answer_is_lost_resumes_and_captures_once() {
    let db = database().await;
    let pool = db.pool.clone();
    let provider = SimulatedProvider::new(50_000);
    let (order_id, _) = authorized(&pool, &provider).await;

    // The provider captures; its answer never arrives, so nothing local is written but the
    // mark that says a capture is at the provider.
    let lost = domain::capture(&pool, &LosesAnswers(&provider), order_id).await;
    assert!(matches!(lost, Err(PaymentError::Provider(_))), "{lost:?}");
    assert_eq!(
        row(&pool, order_id).await,
        ("authorized".into(), Some("capture".into()))
    );
    assert_eq!(provider.captures(), 1);
    assert_eq!(ledger(&pool).await, (0, 0));

    // The retry asks again under the same key, and books what the provider did.
    let capture = domain::capture(&pool, &provider, order_id).await.unwrap();
    assert_eq!(capture.amount_minor, 4_200);
    assert_eq!(row(&pool, order_id).await, ("captured".into(), None));
    assert_eq!(provider.captures(), 1, "the provider captured twice");
    assert_eq!(provider.captured_minor().get("EUR"), Some(&4_200));
    assert!(provider.open_holds().is_empty());
    assert_eq!(ledger(&pool).await, (2, 4_200));

    // Captured is captured: again changes nothing anywhere.
    domain::capture(&pool, &provider, order_id).await.unwrap();
    assert_eq!(provider.captures(), 1);
    assert_eq!(ledger(&pool).await, (2, 4_200));
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_void_whose_answer_is_lost_resumes_and_releases_once() {
    let db = database().await;
    let pool = db.pool.clone();
    let provider = SimulatedProvider::new(50_000);
    let (order_id, _) = authorized(&pool, &provider).await;

    let lost = domain::void(&pool, &LosesAnswers(&provider), order_id).await;
    assert!(matches!(lost, Err(PaymentError::Provider(_))), "{lost:?}");
    // The void is decided locally (final), and the release is still owed.
    assert_eq!(
        row(&pool, order_id).await,
        ("voided".into(), Some("void".into()))
    );
    assert_eq!(provider.releases(), 1);

    domain::void(&pool, &provider, order_id).await.unwrap();
    assert_eq!(row(&pool, order_id).await, ("voided".into(), None));
    assert_eq!(provider.releases(), 1, "the provider released twice");
    assert!(
        provider.open_holds().is_empty(),
        "the hold was left in place"
    );
    assert!(matches!(
        domain::capture(&pool, &provider, order_id).await,
        Err(PaymentError::NotCapturable { .. })
    ));
    assert_eq!(provider.captures(), 0);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_capture_the_provider_refuses_leaves_the_payment_authorized_and_unmarked() {
    let db = database().await;
    let pool = db.pool.clone();
    let provider = SimulatedProvider::new(50_000);
    let (order_id, request) = authorized(&pool, &provider).await;
    // Released at the provider behind payments' back (an operator, a hold that expired).
    let released = provider
        .void(SettleRequest {
            idempotency_key: "operator-release",
            hold: &request.idempotency_key,
            amount_minor: 4_200,
            currency: "EUR",
        })
        .await
        .unwrap();
    assert_eq!(released, Settlement::Done);

    let refused = domain::capture(&pool, &provider, order_id).await;
    assert!(
        matches!(refused, Err(PaymentError::ProviderRefused(_))),
        "{refused:?}"
    );
    assert_eq!(row(&pool, order_id).await, ("authorized".into(), None));
    assert_eq!(
        ledger(&pool).await,
        (0, 0),
        "nothing captured, nothing booked"
    );
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_void_the_provider_never_received_is_released_on_retry() {
    let db = database().await;
    let pool = db.pool.clone();
    let provider = SimulatedProvider::new(50_000);
    let (order_id, _) = authorized(&pool, &provider).await;

    // Voided locally, and the provider was not reached: the release is still owed, and the
    // retry (the command redelivered) must not take the void as done.
    let down = domain::void(&pool, &Down, order_id).await;
    assert!(matches!(down, Err(PaymentError::Provider(_))), "{down:?}");
    assert_eq!(provider.open_holds().len(), 1);

    domain::void(&pool, &provider, order_id).await.unwrap();
    assert!(
        provider.open_holds().is_empty(),
        "the hold was never released"
    );
    assert_eq!(provider.releases(), 1);
    assert_eq!(row(&pool, order_id).await, ("voided".into(), None));
    db.drop().await.unwrap();
}
