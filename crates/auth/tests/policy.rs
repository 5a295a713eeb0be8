//! The shipped Rego policy (`policies/authz.rego`): each rule allows and denies as written,
//! reloads swap it without a restart, every decision is logged, and the HTTP glue answers
//! 403 problem documents.

#![allow(clippy::unwrap_used)] // integration tests: a failure should stop loudly

#[path = "support/env.rs"]
mod support;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{FromRef, Path, State};
use axum::routing::{get, post};
use faultline_auth::dev::{SigningKey, TokenSpec};
use faultline_auth::{
    Access, AccessRequest, AuthLayer, AuthorizeLayer, Forbidden, Policy, PolicySettings, Principal,
    Resource,
};
use http::StatusCode;
use jsonwebtoken::Algorithm;
use support::{TempDir, bearer, send, settings, verifier_for};

fn shipped_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn policy_in(dir: PathBuf) -> Policy {
    Policy::load(PolicySettings {
        dir,
        ..PolicySettings::default()
    })
    .unwrap()
}

fn principal(subject: &str, scopes: &[&str], roles: &[&str]) -> Principal {
    Principal {
        subject: subject.into(),
        tenant: None,
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        client_id: None,
    }
}

fn decide(
    policy: &Policy,
    method: &str,
    path: &str,
    who: &Principal,
    resource: Option<&Resource>,
) -> faultline_auth::Decision {
    policy.decide(&AccessRequest {
        method,
        path,
        principal: who,
        resource,
    })
}

#[test]
fn placing_an_order_needs_the_scope_orders_write() {
    let policy = policy_in(shipped_policies());
    let writer = principal("alice", &["orders:write"], &[]);
    let allowed = decide(&policy, "POST", "/v1/orders", &writer, None);
    assert!(allowed.allow, "{allowed:?}");
    assert_eq!(allowed.reason, "scope orders:write places orders");

    let reader = principal("alice", &["orders:read"], &[]);
    let denied = decide(&policy, "POST", "/v1/orders", &reader, None);
    assert!(!denied.allow);
    assert_eq!(denied.missing_scopes, ["orders:write"]);
    assert_eq!(denied.reason, "missing scope orders:write");
    // An admin role is not a scope.
    let admin = principal("root", &[], &["admin"]);
    assert!(!decide(&policy, "POST", "/v1/orders", &admin, None).allow);
}

#[test]
fn a_customer_reads_only_their_own_orders() {
    let policy = policy_in(shipped_policies());
    let order = Resource::owned_by("alice");
    let path = "/v1/orders/0190a5b2-7c1e-7000-8000-000000000001";
    let alice = principal("alice", &["orders:read"], &[]);
    let bob = principal("bob", &["orders:read"], &[]);

    let own = decide(&policy, "GET", path, &alice, Some(&order));
    assert!(own.allow, "{own:?}");
    assert_eq!(own.reason, "customers read their own orders");

    let other = decide(&policy, "GET", path, &bob, Some(&order));
    assert!(!other.allow);
    assert_eq!(other.reason, "customers read only their own orders");
    assert!(other.missing_scopes.is_empty());

    let no_scope = principal("alice", &["orders:write"], &[]);
    let denied = decide(&policy, "GET", path, &no_scope, Some(&order));
    assert!(!denied.allow);
    assert_eq!(denied.missing_scopes, ["orders:read"]);

    // Without the owner the rule cannot be decided, so it is denied.
    let unknown = decide(&policy, "GET", path, &alice, None);
    assert!(!unknown.allow);
    assert_eq!(unknown.reason, "the order's owner is needed to decide");
}

#[test]
fn an_admin_reads_any_order_but_not_across_tenants() {
    let policy = policy_in(shipped_policies());
    let path = "/v1/orders/0190a5b2-7c1e-7000-8000-000000000001";
    let mut admin = principal("root", &[], &["admin"]);
    let any = decide(
        &policy,
        "GET",
        path,
        &admin,
        Some(&Resource::owned_by("alice")),
    );
    assert!(any.allow, "{any:?}");
    assert_eq!(any.reason, "admins read any order");

    admin.tenant = Some("acme".into());
    let foreign = Resource::owned_by("alice").in_tenant("globex");
    let denied = decide(&policy, "GET", path, &admin, Some(&foreign));
    assert!(!denied.allow);
    assert_eq!(denied.reason, "the resource belongs to another tenant");
    let home = Resource::owned_by("alice").in_tenant("acme");
    assert!(decide(&policy, "GET", path, &admin, Some(&home)).allow);
}

#[test]
fn what_no_rule_allows_is_denied() {
    let policy = policy_in(shipped_policies());
    let admin = principal("root", &["orders:read", "orders:write"], &["admin"]);
    for (method, path) in [
        ("DELETE", "/v1/orders/1"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/orders/1/items"),
        ("POST", "/v1/orders/1"),
        ("GET", "/admin"),
    ] {
        let decision = decide(
            &policy,
            method,
            path,
            &admin,
            Some(&Resource::owned_by("root")),
        );
        assert!(!decision.allow, "{method} {path}: {decision:?}");
        assert_eq!(decision.reason, "no rule allows this request");
    }
}

#[test]
fn a_reload_swaps_in_changed_files_and_refuses_broken_ones() {
    let dir = TempDir::new("policy-reload");
    let shipped = std::fs::read_to_string(shipped_policies().join("authz.rego")).unwrap();
    let file = dir.join("authz.rego");
    std::fs::write(&file, &shipped).unwrap();
    let policy = policy_in(dir.path().to_owned());
    let version = policy.version();
    let alice = principal("alice", &["orders:write"], &[]);
    assert!(
        !policy.reload().unwrap(),
        "unchanged files are not a new version"
    );

    // The operator renames the scope: the next reload enforces it, no restart.
    std::fs::write(&file, shipped.replace("orders:write", "orders:place")).unwrap();
    assert!(policy.reload().unwrap());
    assert_ne!(policy.version(), version);
    let denied = decide(&policy, "POST", "/v1/orders", &alice, None);
    assert!(!denied.allow);
    assert_eq!(denied.policy_version, policy.version());
    assert_eq!(denied.missing_scopes, ["orders:place"]);

    // A broken edit is refused and the policy in force keeps deciding.
    let good_version = policy.version();
    std::fs::write(&file, "package faultline.authz\n\ndecision := {").unwrap();
    assert!(policy.reload().is_err());
    assert_eq!(policy.version(), good_version);
    // So is a policy that compiles but answers the wrong shape.
    std::fs::write(&file, "package faultline.authz\n\ndecision := true\n").unwrap();
    assert!(policy.reload().is_err());
    assert_eq!(policy.version(), good_version);
    let placer = principal("alice", &["orders:place"], &[]);
    assert!(decide(&policy, "POST", "/v1/orders", &placer, None).allow);

    // A new file next to it counts too.
    std::fs::write(&file, &shipped).unwrap();
    std::fs::write(
        dir.join("extra.rego"),
        "package faultline.extra\n\nimport rego.v1\n\nnothing := true\n",
    )
    .unwrap();
    assert!(policy.reload().unwrap());
    assert!(decide(&policy, "POST", "/v1/orders", &alice, None).allow);
}

/// Collects what the JSON log formatter writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log every test of this binary writes to. Global, not a scoped `with_default`:
/// tests run on parallel threads, and a callsite first reached on a thread with no
/// subscriber may cache "nobody listens" and skip a scoped subscriber installed later.
fn captured_log() -> &'static Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

#[test]
fn every_decision_is_logged_with_version_and_reason() {
    let captured = captured_log();
    let policy = policy_in(shipped_policies());
    // A subject no other test uses, to pick this test's lines out of the shared log.
    let subject = "log-audited-customer";
    let customer = principal(subject, &["orders:read", "orders:write"], &[]);
    let requests = [
        ("POST", "/v1/orders", None),
        ("GET", "/v1/orders/1", Some(Resource::owned_by(subject))),
        ("GET", "/v1/orders/2", Some(Resource::owned_by("bob"))),
        ("DELETE", "/v1/orders/1", None),
    ];
    let decisions: Vec<_> = requests
        .iter()
        .map(|(method, path, resource)| decide(&policy, method, path, &customer, resource.as_ref()))
        .collect();

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let logged: Vec<serde_json::Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| {
            event["target"] == "faultline_auth::decision" && event["fields"]["subject"] == subject
        })
        .collect();
    assert_eq!(logged.len(), requests.len(), "{output}");
    for ((event, decision), (method, path, _)) in logged.iter().zip(&decisions).zip(&requests) {
        let fields = &event["fields"];
        assert_eq!(fields["allow"], decision.allow);
        assert_eq!(fields["policy_version"], *decision.policy_version);
        assert_eq!(fields["reason"], decision.reason);
        assert_eq!(fields["method"], *method);
        assert_eq!(fields["path"], *path);
        assert_eq!(fields["subject"], subject);
    }
    assert_eq!(
        decisions.iter().map(|d| d.allow).collect::<Vec<_>>(),
        [true, true, false, false]
    );
}

/// What an application's state holds for the [`Access`] extractor.
#[derive(Clone)]
struct AppState {
    policy: Policy,
}

impl FromRef<AppState> for Policy {
    fn from_ref(state: &AppState) -> Policy {
        state.policy.clone()
    }
}

#[tokio::test]
async fn the_policy_sees_the_matched_route_not_the_requested_path() {
    // A policy that allows exactly the route template: it denies if it is given the path.
    let dir = TempDir::new("policy-route");
    std::fs::write(
        dir.join("route.rego"),
        "package faultline.authz\nimport rego.v1\n\
         decision := {\"allow\": input.path == \"/v1/orders/{id}\", \"reason\": input.path, \
         \"missing_scopes\": []}\n",
    )
    .unwrap();
    async fn get_order(access: Access) -> Result<String, Forbidden> {
        access.require(&Resource::owned_by("alice"))?;
        Ok("ok".into())
    }
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let verifier = verifier_for(&dir, &[&key]).await;
    let policy = policy_in(dir.path().to_path_buf());
    let app = Router::new()
        .route(
            "/v1/orders/{id}",
            get(get_order).layer(AuthorizeLayer::new(policy.clone())),
        )
        .layer(AuthLayer::new(verifier))
        .with_state(AppState { policy });
    let token = bearer(
        &key.mint(&TokenSpec::new(&settings("unused"), "alice"))
            .unwrap(),
    );
    for id in ["0190a5b2-0001", "0190a5b2-0002"] {
        let answer = send(&app, "GET", &format!("/v1/orders/{id}"), Some(&token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
}

#[tokio::test]
async fn the_http_glue_answers_403_problems_with_rfc_6750_challenges() {
    // A handler that learns the owner only after loading the order.
    async fn get_order(access: Access, Path(id): Path<String>) -> Result<String, Forbidden> {
        let owner = if id == "1" { "alice" } else { "bob" };
        access.require(&Resource::owned_by(owner))?;
        Ok(format!("order {id} for {}", access.principal().subject))
    }
    async fn place_order(State(_): State<AppState>) -> StatusCode {
        StatusCode::ACCEPTED
    }

    let dir = TempDir::new("policy-http");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let verifier = verifier_for(&dir, &[&key]).await;
    let policy = policy_in(shipped_policies());
    let app = Router::new()
        .route(
            "/v1/orders",
            post(place_order).layer(AuthorizeLayer::new(policy.clone())),
        )
        .route("/v1/orders/{id}", get(get_order))
        .layer(AuthLayer::new(verifier))
        .with_state(AppState { policy });
    let token = |scopes: &[&str]| {
        bearer(
            &key.mint(&TokenSpec::new(&settings("unused"), "alice").scopes(scopes))
                .unwrap(),
        )
    };

    let answer = send(&app, "POST", "/v1/orders", Some(&token(&["orders:write"]))).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);

    let answer = send(&app, "POST", "/v1/orders", Some(&token(&["orders:read"]))).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.challenge(),
        "Bearer realm=\"faultline\", error=\"insufficient_scope\", error_description=\"the access token lacks a required scope\", scope=\"orders:write\""
    );
    assert!(
        answer.body.contains("/problems/insufficient-scope"),
        "{}",
        answer.body
    );
    assert_eq!(
        answer.headers[http::header::CONTENT_TYPE],
        "application/problem+json"
    );

    let answer = send(&app, "GET", "/v1/orders/1", Some(&token(&["orders:read"]))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "order 1 for alice");

    let answer = send(&app, "GET", "/v1/orders/2", Some(&token(&["orders:read"]))).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(
        answer.body.contains("/problems/forbidden"),
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains("customers read only their own orders"),
        "{}",
        answer.body
    );
    assert!(answer.challenge().is_empty());

    // Authentication still comes first.
    let answer = send(&app, "POST", "/v1/orders", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}
