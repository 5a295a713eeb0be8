//! What authentication and authorization cost per request, measured side by side in one run
//! (these machines are noisy; only ratios measured together mean much):
//!
//! 1. `per_request`: token verification with a warm JWKS, with and without the verified-token
//!    cache, for each algorithm; one policy decision; and the two together as the edge pays
//!    them.
//! 2. `handler`: an axum handler shaped like checkout's `GET /v1/orders/{id}` (path
//!    extraction, a JSON order view), called in-process with `oneshot`, with the auth layer
//!    and the policy check off, with authentication only, and with both. Criterion reports
//!    requests per second for each. This is the worst case: a handler that does no I/O.
//! 3. `handler_with_database`: the same three routers around a handler that does what
//!    checkout's does, reading the order and its lines from a real Postgres (two queries by
//!    primary key, as `orders::find`), with 16 requests in flight on a two-worker runtime.
//!    The throughput ratio on/off here is the figure of merit for the target (≥ 0.9× the
//!    throughput without auth). Requests cycle through 1 000 orders of one customer, as real
//!    traffic does not ask for one order over and over. The policy runs with its decision
//!    cache (the default) and, as a separate case, with every decision evaluated.
//!
//! Run with `make bench-auth` (starts Postgres if needed), or
//! `cargo bench -p faultline-auth --bench auth` against a running one.

#![allow(clippy::unwrap_used)] // a benchmark that fails should stop loudly

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Path};
use axum::routing::get;
use axum::{Json, extract::State};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faultline_auth::dev::{SigningKey, TokenSpec, jwks_json};
use faultline_auth::{
    Access, AccessRequest, AuthLayer, JwtSettings, JwtVerifier, Policy, PolicySettings, Resource,
};
use faultline_testkit::TestDatabase;
use http::{Request, StatusCode, header};
use jsonwebtoken::Algorithm;
use serde::Serialize;
use sqlx::PgPool;
use tower::ServiceExt;

const ORDER: &str = "/v1/orders/0190a5b2-7c1e-7000-8000-000000000001";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Fixture {
    _dir: PathBuf,
    settings: JwtSettings,
    keys: Vec<SigningKey>,
    /// The shipped policy with its decision cache (the default).
    policy: Policy,
    /// The same policy deciding every request afresh.
    uncached_policy: Policy,
}

fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("faultline-auth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys: Vec<SigningKey> = [Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA]
        .into_iter()
        .map(|alg| SigningKey::generate(alg).unwrap())
        .collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwks_json(&refs)).unwrap();
    let settings = JwtSettings {
        jwks: jwks.to_str().unwrap().to_owned(),
        ..JwtSettings::default()
    };
    let policy_settings = PolicySettings {
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies"),
        ..PolicySettings::default()
    };
    let policy = Policy::load(policy_settings.clone()).unwrap();
    let uncached_policy = Policy::load(PolicySettings {
        decision_cache_entries: 0,
        ..policy_settings
    })
    .unwrap();
    Fixture {
        _dir: dir,
        settings,
        keys,
        policy,
        uncached_policy,
    }
}

fn token(fixture: &Fixture, key: usize) -> String {
    let spec = TokenSpec::new(&fixture.settings, "alice").scopes(&["orders:read", "orders:write"]);
    fixture.keys[key].mint(&spec).unwrap()
}

fn per_request(c: &mut Criterion) {
    let rt = runtime();
    let fixture = fixture();
    let cached = rt
        .block_on(JwtVerifier::new(fixture.settings.clone()))
        .unwrap();
    let uncached = rt
        .block_on(JwtVerifier::new(JwtSettings {
            token_cache_entries: 0,
            ..fixture.settings.clone()
        }))
        .unwrap();
    let es256 = token(&fixture, 0);
    let rs256 = token(&fixture, 1);
    let eddsa = token(&fixture, 2);
    let principal = rt.block_on(cached.verify(&es256)).unwrap();
    let owner = Resource::owned_by("alice");

    let mut group = c.benchmark_group("per_request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify ES256, cached token", |b| {
        b.to_async(&rt).iter(|| cached.verify(&es256));
    });
    for (name, token) in [("ES256", &es256), ("RS256", &rs256), ("EdDSA", &eddsa)] {
        group.bench_function(format!("verify {name}, signature checked"), |b| {
            b.to_async(&rt).iter(|| uncached.verify(token));
        });
    }
    group.bench_function("policy decision (GET own order), evaluated", |b| {
        b.iter(|| {
            fixture.uncached_policy.decide(&AccessRequest {
                method: "GET",
                path: ORDER,
                principal: &principal,
                resource: Some(&owner),
            })
        });
    });
    group.bench_function("policy decision (GET own order), remembered", |b| {
        b.iter(|| {
            fixture.policy.decide(&AccessRequest {
                method: "GET",
                path: ORDER,
                principal: &principal,
                resource: Some(&owner),
            })
        });
    });
    group.bench_function("verify cached + policy decision", |b| {
        b.to_async(&rt).iter(|| async {
            let principal = cached.verify(&es256).await.unwrap();
            fixture.policy.decide(&AccessRequest {
                method: "GET",
                path: ORDER,
                principal: &principal,
                resource: Some(&owner),
            })
        });
    });
    group.finish();
}

/// The JSON a `GET /v1/orders/{id}` answers, shaped like checkout's order view.
#[derive(Serialize)]
struct OrderView {
    order_id: String,
    customer_id: &'static str,
    status: &'static str,
    items: Vec<Item>,
    total: Money,
}

#[derive(Serialize)]
struct Item {
    sku: &'static str,
    name: &'static str,
    quantity: i64,
    unit_price: Money,
}

#[derive(Serialize)]
struct Money {
    amount_minor: i64,
    currency: &'static str,
}

fn order(id: String) -> OrderView {
    let item = |sku, name, quantity, amount_minor| Item {
        sku,
        name,
        quantity,
        unit_price: Money {
            amount_minor,
            currency: "EUR",
        },
    };
    OrderView {
        order_id: id,
        customer_id: "alice",
        status: "CONFIRMED",
        items: vec![
            item("LAMP-01", "Desk lamp", 2, 4_950),
            item("MUG-04", "Mug", 1, 1_700),
        ],
        total: Money {
            amount_minor: 11_600,
            currency: "EUR",
        },
    }
}

#[derive(Clone)]
struct AppState {
    policy: Policy,
}

impl FromRef<AppState> for Policy {
    fn from_ref(state: &AppState) -> Policy {
        state.policy.clone()
    }
}

async fn open_order(Path(id): Path<String>) -> Json<OrderView> {
    Json(order(id))
}

async fn authenticated_order(
    _principal: faultline_auth::Principal,
    Path(id): Path<String>,
) -> Json<OrderView> {
    Json(order(id))
}

async fn authorized_order(
    access: Access,
    State(_): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, faultline_auth::Forbidden> {
    let view = order(id);
    access.require(&Resource::owned_by(view.customer_id))?;
    Ok(Json(view))
}

/// `GET` of the order through `router`, with `authorization` as the header if given; the
/// answer must be 200.
async fn get_order(router: Router, authorization: Option<String>) -> axum::body::Bytes {
    get_path(router, ORDER, authorization).await
}

/// `GET path` through `router`; the answer must be 200.
async fn get_path(router: Router, path: &str, authorization: Option<String>) -> axum::body::Bytes {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = router
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
}

fn handler(c: &mut Criterion) {
    let rt = runtime();
    let fixture = fixture();
    let verifier = rt
        .block_on(JwtVerifier::new(fixture.settings.clone()))
        .unwrap();
    let bearer = format!("Bearer {}", token(&fixture, 0));
    let state = AppState {
        policy: fixture.policy.clone(),
    };
    let off: Router = Router::new().route("/v1/orders/{id}", get(open_order));
    let authn: Router = Router::new()
        .route("/v1/orders/{id}", get(authenticated_order))
        .layer(AuthLayer::new(verifier.clone()));
    let authz: Router = Router::new()
        .route("/v1/orders/{id}", get(authorized_order))
        .layer(AuthLayer::new(verifier))
        .with_state(state);

    let call = get_order;
    // Each router answers 200 before it is measured.
    rt.block_on(call(authz.clone(), Some(bearer.clone())));

    let mut group = c.benchmark_group("handler");
    group.throughput(Throughput::Elements(1));
    group.bench_function("auth off", |b| {
        b.to_async(&rt).iter(|| call(off.clone(), None));
    });
    group.bench_function("authentication on", |b| {
        b.to_async(&rt)
            .iter(|| call(authn.clone(), Some(bearer.clone())));
    });
    group.bench_function("authentication + policy on", |b| {
        b.to_async(&rt)
            .iter(|| call(authz.clone(), Some(bearer.clone())));
    });
    group.finish();
}

/// What the database-backed handlers share: the pool and the policy.
#[derive(Clone)]
struct DbState {
    pool: PgPool,
    policy: Policy,
}

impl FromRef<DbState> for Policy {
    fn from_ref(state: &DbState) -> Policy {
        state.policy.clone()
    }
}

#[derive(Serialize)]
struct StoredOrder {
    order_id: String,
    customer_id: String,
    status: String,
    items: Vec<StoredItem>,
    total_minor: i64,
}

#[derive(Serialize)]
struct StoredItem {
    sku: String,
    name: String,
    quantity: i64,
    unit_price_minor: i64,
}

/// Reads an order the way checkout's `orders::find` does: the row, then its lines.
async fn load_order(pool: &PgPool, id: &str) -> StoredOrder {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let (customer_id, status, total_minor): (String, String, i64) =
        sqlx::query_as("SELECT customer_id, status, total_minor FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    let items = sqlx::query_as::<_, (String, String, i64, i64)>(
        "SELECT sku, name, quantity, unit_price_minor FROM order_items
         WHERE order_id = $1 ORDER BY line",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(sku, name, quantity, unit_price_minor)| StoredItem {
        sku,
        name,
        quantity,
        unit_price_minor,
    })
    .collect();
    StoredOrder {
        order_id: id.to_string(),
        customer_id,
        status,
        items,
        total_minor,
    }
}

async fn db_open_order(State(state): State<DbState>, Path(id): Path<String>) -> Json<StoredOrder> {
    Json(load_order(&state.pool, &id).await)
}

async fn db_authenticated_order(
    _principal: faultline_auth::Principal,
    State(state): State<DbState>,
    Path(id): Path<String>,
) -> Json<StoredOrder> {
    Json(load_order(&state.pool, &id).await)
}

async fn db_authorized_order(
    access: Access,
    State(state): State<DbState>,
    Path(id): Path<String>,
) -> Result<Json<StoredOrder>, faultline_auth::Forbidden> {
    let order = load_order(&state.pool, &id).await;
    access.require(&Resource::owned_by(order.customer_id.clone()))?;
    Ok(Json(order))
}

/// Requests in flight at once in `handler_with_database`.
const IN_FLIGHT: usize = 16;

fn handler_with_database(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixture = fixture();
    let database = rt.block_on(TestDatabase::create("auth_bench")).unwrap();
    rt.block_on(async {
        sqlx::raw_sql(
            "CREATE TABLE orders (id uuid PRIMARY KEY, customer_id text NOT NULL,
                 status text NOT NULL, total_minor bigint NOT NULL);
             CREATE TABLE order_items (order_id uuid REFERENCES orders, line int,
                 sku text NOT NULL, name text NOT NULL, quantity bigint NOT NULL,
                 unit_price_minor bigint NOT NULL, PRIMARY KEY (order_id, line));
             INSERT INTO orders
                 SELECT ('0190a5b2-7c1e-7000-8000-' || lpad(n::text, 12, '0'))::uuid,
                        'alice', 'CONFIRMED', 11600
                 FROM generate_series(1, 1000) AS n;
             INSERT INTO order_items
                 SELECT id, 0, 'LAMP-01', 'Desk lamp', 2, 4950 FROM orders
                 UNION ALL
                 SELECT id, 1, 'MUG-04', 'Mug', 1, 1700 FROM orders;",
        )
        .execute(&database.pool)
        .await
        .unwrap();
    });
    let verifier = rt
        .block_on(JwtVerifier::new(fixture.settings.clone()))
        .unwrap();
    let bearer = format!("Bearer {}", token(&fixture, 0));
    let state = DbState {
        pool: database.pool.clone(),
        policy: fixture.policy.clone(),
    };
    let off: Router = Router::new()
        .route("/v1/orders/{id}", get(db_open_order))
        .with_state(state.clone());
    let authn: Router = Router::new()
        .route("/v1/orders/{id}", get(db_authenticated_order))
        .layer(AuthLayer::new(verifier.clone()))
        .with_state(state.clone());
    let authz_uncached: Router = Router::new()
        .route("/v1/orders/{id}", get(db_authorized_order))
        .layer(AuthLayer::new(verifier.clone()))
        .with_state(DbState {
            policy: fixture.uncached_policy.clone(),
            ..state.clone()
        });
    let authz: Router = Router::new()
        .route("/v1/orders/{id}", get(db_authorized_order))
        .layer(AuthLayer::new(verifier))
        .with_state(state);

    // Throughput, not latency: each iteration is a batch of requests in flight together on a
    // two-worker runtime, as a server under load has them, sharing the pool. Each request
    // asks for the next of the 1 000 orders.
    let next = Arc::new(AtomicUsize::new(0));
    let batch = |router: Router, authorization: Option<String>| {
        let next = next.clone();
        async move {
            let requests = (0..IN_FLIGHT).map(|_| {
                let n = next.fetch_add(1, Ordering::Relaxed) % 1_000 + 1;
                let path = format!("/v1/orders/0190a5b2-7c1e-7000-8000-{n:012}");
                let router = router.clone();
                let authorization = authorization.clone();
                tokio::spawn(async move { get_path(router, &path, authorization).await })
            });
            for answer in futures_util::future::join_all(requests).await {
                answer.unwrap();
            }
        }
    };
    rt.block_on(batch(authz.clone(), Some(bearer.clone())));

    let mut group = c.benchmark_group("handler_with_database");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function("auth off", |b| {
        b.to_async(&rt).iter(|| batch(off.clone(), None));
    });
    group.bench_function("authentication on", |b| {
        b.to_async(&rt)
            .iter(|| batch(authn.clone(), Some(bearer.clone())));
    });
    group.bench_function(
        "authentication + policy on, every decision evaluated",
        |b| {
            b.to_async(&rt)
                .iter(|| batch(authz_uncached.clone(), Some(bearer.clone())));
        },
    );
    group.bench_function("authentication + policy on", |b| {
        b.to_async(&rt)
            .iter(|| batch(authz.clone(), Some(bearer.clone())));
    });
    group.finish();
    rt.block_on(database.drop()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = per_request, handler, handler_with_database
}
criterion_main!(benches);
