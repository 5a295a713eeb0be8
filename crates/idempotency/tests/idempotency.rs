//! The key store and the HTTP layer against a real Postgres (`FAULTLINE_POSTGRES_URL`, the
//! local server by default), each test in a fresh database.

// Helpers panic on failure: in a test, that is the report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use faultline_idempotency::layer::{IdempotencyLayer, IdempotencyLease, stored_response};
use faultline_idempotency::{
    Claim, Fingerprint, IdempotencyConfig, IdempotencyKey, LeaseError, Store, reaper,
};
use faultline_testkit::TestDatabase;
use http_body_util::BodyExt;
use sqlx::PgPool;
use tokio::sync::Notify;
use tower::ServiceExt;

struct TestDb {
    db: TestDatabase,
    pool: PgPool,
}

impl TestDb {
    async fn new() -> TestDb {
        let db = TestDatabase::create("idem").await.unwrap();
        faultline_idempotency::migrate(&db.pool).await.unwrap();
        sqlx::raw_sql("CREATE TABLE effects (id bigserial PRIMARY KEY, note text)")
            .execute(&db.pool)
            .await
            .unwrap();
        let pool = db.pool.clone();
        TestDb { db, pool }
    }

    async fn effects(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until some session sits inside an open transaction (a paused handler).
    async fn wait_for_open_transaction(&self) {
        let started = std::time::Instant::now();
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE state = 'idle in transaction' AND datname = current_database()",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if open > 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no handler got that far"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn drop_now(self) {
        self.db.drop().await.unwrap();
    }
}

fn short_lease() -> IdempotencyConfig {
    IdempotencyConfig {
        lease_ms: 400,
        ..IdempotencyConfig::default()
    }
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::parse(raw).unwrap()
}

#[tokio::test]
async fn one_claim_wins_and_the_rest_wait_then_replay() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone(), IdempotencyConfig::default());
    let fingerprint = Fingerprint::of(&[b"same request"]);

    let claims = futures_join_all((0..20).map(|_| {
        let store = store.clone();
        async move {
            store
                .claim("alice", &key("k-1"), fingerprint)
                .await
                .unwrap()
        }
    }))
    .await;
    let mut owners = Vec::new();
    for claim in claims {
        match claim {
            Claim::Owned(lease) => owners.push(lease),
            Claim::InFlight { lease_left } => assert!(lease_left > Duration::ZERO),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        owners.len(),
        1,
        "exactly one of twenty concurrent claims owns the key"
    );

    let mut tx = db.pool.begin().await.unwrap();
    owners
        .pop()
        .unwrap()
        .complete(&mut tx, &stored_response(StatusCode::CREATED, &[], b"done"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match store
        .claim("alice", &key("k-1"), fingerprint)
        .await
        .unwrap()
    {
        Claim::Completed(stored) => {
            assert_eq!((stored.status, stored.body), (201, b"done".to_vec()))
        }
        other => panic!("unexpected {other:?}"),
    }
    // Another request under the same key is refused; another caller's same key is its own.
    assert!(matches!(
        store
            .claim("alice", &key("k-1"), Fingerprint::of(&[b"other"]))
            .await
            .unwrap(),
        Claim::Mismatch
    ));
    assert!(matches!(
        store.claim("bob", &key("k-1"), fingerprint).await.unwrap(),
        Claim::Owned(_)
    ));
    db.drop_now().await;
}

#[tokio::test]
async fn a_dead_owners_key_is_taken_over_at_its_recovery_point() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone(), short_lease());
    let fingerprint = Fingerprint::of(&[b"payment"]);

    let Claim::Owned(mut first) = store
        .claim("svc", &key("pay-1"), fingerprint)
        .await
        .unwrap()
    else {
        panic!("fresh key must be owned");
    };
    let mut tx = db.pool.begin().await.unwrap();
    first.checkpoint(&mut tx, "payment_created").await.unwrap();
    tx.commit().await.unwrap();
    // The owner "dies" here. Until its lease runs out the key is in flight...
    assert!(matches!(
        store
            .claim("svc", &key("pay-1"), fingerprint)
            .await
            .unwrap(),
        Claim::InFlight { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... then the next identical request takes over where it left off.
    let Claim::Owned(second) = store
        .claim("svc", &key("pay-1"), fingerprint)
        .await
        .unwrap()
    else {
        panic!("an expired lease must be taken over");
    };
    assert_eq!(second.recovery_point(), "payment_created");

    // The former owner wakes up: it can no longer complete.
    let mut tx = db.pool.begin().await.unwrap();
    let late = first
        .complete(&mut tx, &stored_response(StatusCode::OK, &[], b"late"))
        .await;
    assert!(matches!(late, Err(LeaseError::Lost)), "{late:?}");
    drop(tx);
    db.drop_now().await;
}

#[tokio::test]
async fn a_released_key_is_retried_at_once_from_where_it_stopped() {
    let db = TestDb::new().await;
    // A long lease: only the release can explain a prompt takeover.
    let store = Store::new(db.pool.clone(), IdempotencyConfig::default());
    let fingerprint = Fingerprint::of(&[b"payment"]);
    let pay_2 = key("pay-2");
    let claim = || store.claim("svc", &pay_2, fingerprint);

    // Failing before any phase committed forgets the key: the retry starts afresh.
    let Claim::Owned(first) = claim().await.unwrap() else {
        panic!("fresh key must be owned");
    };
    first.release(&db.pool).await.unwrap();
    let Claim::Owned(mut second) = claim().await.unwrap() else {
        panic!("a released key must be claimable at once");
    };
    assert_eq!(second.recovery_point(), "started");

    // Failing after a phase committed (the provider was down, say) keeps the phase: the
    // retry takes over at once and resumes there.
    let mut tx = db.pool.begin().await.unwrap();
    second.checkpoint(&mut tx, "payment_created").await.unwrap();
    tx.commit().await.unwrap();
    second.release(&db.pool).await.unwrap();
    let Claim::Owned(third) = claim().await.unwrap() else {
        panic!("a released key past a recovery point must be taken over at once");
    };
    assert_eq!(third.recovery_point(), "payment_created");
    db.drop_now().await;
}

#[tokio::test]
async fn expired_keys_are_forgotten_and_reaped() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone(), IdempotencyConfig::default());
    for name in ["a", "b", "c"] {
        let Claim::Owned(lease) = store
            .claim("x", &key(name), Fingerprint::of(&[name.as_bytes()]))
            .await
            .unwrap()
        else {
            panic!();
        };
        let mut tx = db.pool.begin().await.unwrap();
        lease
            .complete(&mut tx, &stored_response(StatusCode::OK, &[], b""))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    sqlx::query(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key <> 'c'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // An expired key is a new key, even before the reaper comes by.
    assert!(matches!(
        store
            .claim("x", &key("a"), Fingerprint::of(&[b"new request"]))
            .await
            .unwrap(),
        Claim::Owned(_)
    ));
    assert_eq!(
        reaper::reap(&db.pool).await.unwrap(),
        1,
        "only b was still expired"
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["a".to_owned(), "c".to_owned()]);
    db.drop_now().await;
}

#[test]
fn configuration_is_checked_by_name() {
    let zero = IdempotencyConfig {
        lease_ms: 0,
        ..IdempotencyConfig::default()
    };
    assert_eq!(
        zero.validate("CHECKOUT_IDEMPOTENCY").unwrap_err().setting,
        "CHECKOUT_IDEMPOTENCY__LEASE_MS"
    );
    let inverted = IdempotencyConfig {
        ttl_secs: 5,
        lease_ms: 10_000,
        ..IdempotencyConfig::default()
    };
    assert!(inverted.validate("X").is_err());
    assert!(IdempotencyConfig::default().validate("X").is_ok());
}

// ---- the HTTP layer ----

#[derive(Clone)]
struct App {
    pool: PgPool,
    /// When set, the handler stops after its effect and before storing the response.
    pause: Option<Arc<Notify>>,
}

/// Creates an "order": the effect and the stored response commit together.
async fn create(
    State(app): State<App>,
    lease: Option<Extension<IdempotencyLease>>,
    body: String,
) -> Response {
    let mut tx = app.pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar("INSERT INTO effects (note) VALUES ($1) RETURNING id")
        .bind(&body)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    if let Some(pause) = &app.pause {
        pause.notified().await;
    }
    let json = format!(r#"{{"id":{id}}}"#);
    let location = format!("/things/{id}");
    if let Some(Extension(lease)) = lease {
        let stored = stored_response(
            StatusCode::CREATED,
            &[
                (header::CONTENT_TYPE, "application/json"),
                (header::LOCATION, &location),
            ],
            json.as_bytes(),
        );
        if lease.complete(&mut tx, &stored).await.is_err() {
            return StatusCode::CONFLICT.into_response();
        }
    }
    tx.commit().await.unwrap();
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::LOCATION, location.as_str()),
        ],
        json,
    )
        .into_response()
}

/// Creates an "order" and leaves the response to the layer, which stores it afterwards
/// (the weaker path); refuses a body of `refuse` with 400 and no effect.
async fn create_unstored(State(app): State<App>, body: String) -> Response {
    if body == "refuse" {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let id: i64 = sqlx::query_scalar("INSERT INTO effects (note) VALUES ($1) RETURNING id")
        .bind(&body)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let location = format!("/things/{id}");
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::LOCATION, location.as_str()),
        ],
        format!(r#"{{"id":{id}}}"#),
    )
        .into_response()
}

fn router(db: &TestDb, config: IdempotencyConfig, pause: Option<Arc<Notify>>) -> Router {
    let store = Store::new(db.pool.clone(), config);
    Router::new()
        .route("/things", post(create))
        .route("/unstored", post(create_unstored))
        .layer(IdempotencyLayer::new(store).required())
        .with_state(App {
            pool: db.pool.clone(),
            pause,
        })
}

fn request(key: Option<&str>, body: &str) -> Request<Body> {
    request_to("/things", key, body)
}

fn request_to(path: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn problem_type(answer: &Answer) -> String {
    let value: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    value["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn keys_are_required_checked_replayed_and_bound_to_one_request() {
    let db = TestDb::new().await;
    let app = router(&db, IdempotencyConfig::default(), None);

    let missing = send(&app, request(None, r#"{"a":1}"#)).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(&missing), "/problems/idempotency-key-missing");

    let too_long = send(&app, request(Some(&"k".repeat(256)), r#"{"a":1}"#)).await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(&too_long), "/problems/idempotency-key-invalid");
    assert!(String::from_utf8_lossy(&too_long.body).contains("at most 255 characters"));

    let forbidden = send(&app, request(Some("a b/c"), r#"{"a":1}"#)).await;
    assert_eq!(forbidden.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&forbidden.body).contains("may only contain"));
    assert_eq!(db.effects().await, 0, "refused requests wrote nothing");

    let first = send(&app, request(Some("key-1"), r#"{"a":1,"b":2}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());

    // Same request (keys in another order): the stored answer, marked as a replay.
    let again = send(&app, request(Some("\"key-1\""), r#"{ "b": 2, "a": 1 }"#)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers[header::LOCATION],
        first.headers[header::LOCATION]
    );
    assert_eq!(again.headers["idempotent-replayed"], "true");

    let other = send(&app, request(Some("key-1"), r#"{"a":2}"#)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&other), "/problems/idempotency-key-reused");

    assert_eq!(db.effects().await, 1);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_gets_409_with_retry_after() {
    let db = TestDb::new().await;
    let pause = Arc::new(Notify::new());
    let app = router(&db, IdempotencyConfig::default(), Some(pause.clone()));

    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request(Some("slow"), "{}")).await }
    });
    // Wait until the first request holds the key and sits in its transaction.
    db.wait_for_open_transaction().await;
    let duplicate = send(&app, request(Some("slow"), "{}")).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(
        problem_type(&duplicate),
        "/problems/idempotency-key-in-flight"
    );
    assert_eq!(duplicate.headers[header::RETRY_AFTER], "1");

    pause.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_abandoned_mid_flight_gives_its_key_back() {
    let db = TestDb::new().await;
    let pause = Arc::new(Notify::new());
    // A lease far longer than the test: only giving the key back frees it in time.
    let config = IdempotencyConfig {
        lease_ms: 600_000,
        ..IdempotencyConfig::default()
    };
    let app = router(&db, config, Some(pause.clone()));

    // The first request holds the key inside its transaction, and is abandoned there (a
    // deadline above the layer drops it, as checkout's edge does).
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request(Some("abandoned"), "{}")).await }
    });
    db.wait_for_open_transaction().await;
    first.abort();
    let _ = first.await;

    // Its effect rolled back with it; the same request then goes through at once (the
    // permit lets the retry's handler past the pause).
    pause.notify_one();
    let mut retried = send(&app, request(Some("abandoned"), "{}")).await;
    for _ in 0..50 {
        if retried.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        retried = send(&app, request(Some("abandoned"), "{}")).await;
    }
    assert_eq!(
        retried.status,
        StatusCode::CREATED,
        "the key was given back"
    );
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(effects, 1, "the abandoned request's effect rolled back");
    db.drop_now().await;
}

#[tokio::test]
async fn a_response_the_handler_did_not_store_is_stored_afterwards_and_replayed() {
    let db = TestDb::new().await;
    let app = router(&db, IdempotencyConfig::default(), None);
    let effects = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM effects")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };

    let first = send(&app, request_to("/unstored", Some("later-1"), r#"{"n":1}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(&app, request_to("/unstored", Some("later-1"), r#"{"n":1}"#)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        again.headers[header::LOCATION],
        first.headers[header::LOCATION]
    );
    assert_eq!(again.body, first.body);
    assert_eq!(effects().await, 1, "the replay did not run the handler");

    // An unsuccessful answer is not stored: the key is given back, and the retry runs.
    let refused = send(&app, request_to("/unstored", Some("later-2"), "refuse")).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let retried = send(&app, request_to("/unstored", Some("later-2"), "refuse")).await;
    assert_eq!(retried.status, StatusCode::BAD_REQUEST);
    assert!(
        !retried.headers.contains_key("idempotent-replayed"),
        "a refusal is never replayed"
    );
    assert_eq!(effects().await, 1);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_identical_requests_make_one_effect_and_a_hundred_identical_answers() {
    let db = TestDb::new().await;
    let app = router(&db, IdempotencyConfig::default(), None);
    let clients = (0..100).map(|_| {
        let app = app.clone();
        async move {
            // A well-behaved client: on 409 it waits as told and asks again.
            loop {
                let answer = send(&app, request(Some("same-order"), r#"{"sku":"LAMP-01"}"#)).await;
                if answer.status != StatusCode::CONFLICT {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let answers = futures_join_all(clients).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::CREATED));
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.headers.get("idempotent-replayed").is_none())
            .count(),
        1,
        "one original answer, 99 replays"
    );
    assert_eq!(db.effects().await, 1);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_effect_and_the_stored_response_leaves_one_effect() {
    let db = TestDb::new().await;
    let pause = Arc::new(Notify::new());
    let crashing = router(&db, short_lease(), Some(pause.clone()));

    // The worker dies after its effect, before the response is stored: the request future
    // is dropped mid-flight, taking its open transaction with it.
    let doomed = tokio::spawn({
        let app = crashing.clone();
        async move { send(&app, request(Some("crash-1"), r#"{"n":1}"#)).await }
    });
    db.wait_for_open_transaction().await;
    doomed.abort();
    let _ = doomed.await;

    // The effect rolled back with the transaction. The dropped request gives its key back
    // (a process that really died cannot: its key waits out its lease, which
    // `a_dead_owners_key_is_taken_over_at_its_recovery_point` covers); either way the
    // retry goes through once.
    let healthy = router(&db, short_lease(), None);
    let mut retry = send(&healthy, request(Some("crash-1"), r#"{"n":1}"#)).await;
    for _ in 0..50 {
        if retry.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        retry = send(&healthy, request(Some("crash-1"), r#"{"n":1}"#)).await;
    }
    assert_eq!(retry.status, StatusCode::CREATED);
    let replay = send(&healthy, request(Some("crash-1"), r#"{"n":1}"#)).await;
    assert_eq!(replay.body, retry.body);
    assert_eq!(
        db.effects().await,
        1,
        "exactly one effect after the crash and the retries"
    );
    db.drop_now().await;
}

/// Runs every future on its own task and collects the outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test]
async fn a_key_belongs_to_the_caller_the_service_names() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone(), IdempotencyConfig::default());
    // An authentication layer in front would leave the caller in the extensions; a header
    // stands in for it here.
    let layer = IdempotencyLayer::new(store).required().scoped_by(|parts| {
        let caller = parts.headers.get("x-caller")?.to_str().ok()?;
        Some(caller.to_owned())
    });
    let app = Router::new()
        .route("/things", post(create))
        .layer(layer)
        .with_state(App {
            pool: db.pool.clone(),
            pause: None,
        });
    let from = |caller: &str| {
        let mut request = request(Some("k-1"), r#"{"a":1}"#);
        request
            .headers_mut()
            .insert("x-caller", caller.parse().unwrap());
        request
    };

    let alice = send(&app, from("alice")).await;
    let bob = send(&app, from("bob")).await;
    let alice_again = send(&app, from("alice")).await;
    assert_eq!(alice.status, StatusCode::CREATED);
    assert_eq!(bob.status, StatusCode::CREATED);
    assert!(
        bob.headers.get("idempotent-replayed").is_none(),
        "bob's k-1 is his own, not alice's"
    );
    assert_ne!(bob.body, alice.body);
    assert_eq!(alice_again.headers["idempotent-replayed"], "true");
    assert_eq!(alice_again.body, alice.body);
    db.drop_now().await;
}
