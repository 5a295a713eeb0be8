//! Liveness, readiness and startup probes.
//!
//! - `/healthz` (liveness) answers 200 while the process can serve HTTP at all and none of
//!   its own liveness checks fails: those are for states the process cannot leave by itself
//!   (a consumer that stays stalled after it was replaced). It checks no dependency:
//!   restarting a process because its database is down only adds load.
//! - `/startup` answers 200 once start-up (migrations, topic creation) has finished.
//! - `/ready` answers 200 when started, not shutting down, and every registered dependency
//!   check passes; otherwise 503 with the failing checks, so a load balancer stops sending
//!   traffic without the process being restarted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// A dependency check: resolves to `Err(reason)` when the dependency is unusable.
pub type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;
/// The future a [`Check`] returns.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Each check gets this long before it counts as failed; probes must answer quickly.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Shared probe state. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    started: AtomicBool,
    draining: AtomicBool,
    checks: RwLock<Vec<(&'static str, Check)>>,
    liveness: RwLock<Vec<(&'static str, Check)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("started", &self.inner.started.load(Ordering::SeqCst))
            .field("draining", &self.inner.draining.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Health {
    /// A probe state that reports "starting" until [`Health::mark_started`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a dependency that `/ready` checks on every probe.
    pub fn add_check<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.push((name, check));
        }
    }

    /// Registers a check that `/healthz` runs: one that fails only when restarting the
    /// process is the cure.
    pub fn add_liveness_check<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.inner.liveness.write() {
            checks.push((name, check));
        }
    }

    /// Start-up is complete.
    pub fn mark_started(&self) {
        self.inner.started.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun: readiness fails from now on so traffic drains away.
    pub fn mark_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// True once start-up is complete.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Runs every check; `Ok` when ready, otherwise the reasons.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        if !self.is_started() {
            return Err(vec!["starting".into()]);
        }
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(vec!["shutting down".into()]);
        }
        run_checks(&self.inner.checks).await
    }

    /// Runs every liveness check; `Ok` when alive, otherwise the reasons.
    pub async fn liveness(&self) -> Result<(), Vec<String>> {
        run_checks(&self.inner.liveness).await
    }

    /// The probe routes, to be served on the admin port.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(alive))
            .route("/startup", get(startup))
            .route("/ready", get(ready))
            .with_state(self.clone())
    }
}

/// Runs `checks` one after the other, each within [`CHECK_TIMEOUT`].
async fn run_checks(checks: &RwLock<Vec<(&'static str, Check)>>) -> Result<(), Vec<String>> {
    let checks: Vec<(&'static str, Check)> = match checks.read() {
        Ok(checks) => checks.clone(),
        Err(_) => return Err(vec!["health state poisoned".into()]),
    };
    let mut failures = Vec::new();
    for (name, check) in checks {
        match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => failures.push(format!("{name}: {reason}")),
            Err(_) => failures.push(format!("{name}: no answer within {CHECK_TIMEOUT:?}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

async fn alive(State(health): State<Health>) -> Response {
    match health.liveness().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(failures) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not alive", "failures": failures })),
        )
            .into_response(),
    }
}

async fn startup(State(health): State<Health>) -> Response {
    if health.is_started() {
        (StatusCode::OK, "started").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn ready(State(health): State<Health>) -> Response {
    match health.readiness().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({ "status": "ready" }))).into_response(),
        Err(failures) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready", "failures": failures })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn status(health: &Health, path: &str) -> StatusCode {
        let response = health
            .router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        response.status()
    }

    #[tokio::test]
    async fn not_ready_until_started_and_not_ready_while_draining() {
        let health = Health::new();
        assert_eq!(status(&health, "/healthz").await, StatusCode::OK);
        assert_eq!(
            status(&health, "/startup").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(&health, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );

        health.mark_started();
        assert_eq!(status(&health, "/startup").await, StatusCode::OK);
        assert_eq!(status(&health, "/ready").await, StatusCode::OK);

        health.mark_draining();
        assert_eq!(
            status(&health, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(&health, "/healthz").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_failing_dependency_makes_the_service_unready() {
        let health = Health::new();
        health.mark_started();
        health.add_check("database", || async {
            Err("connection refused".to_string())
        });
        assert_eq!(
            health.readiness().await,
            Err(vec!["database: connection refused".to_string()])
        );
        assert_eq!(
            status(&health, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_failing_dependency_leaves_liveness_alone_and_a_liveness_check_does_not() {
        let health = Health::new();
        health.mark_started();
        health.add_check("database", || async { Err("down".to_string()) });
        assert_eq!(status(&health, "/healthz").await, StatusCode::OK);
        health.add_liveness_check("consumer", || async { Err("stalled".to_string()) });
        assert_eq!(
            health.liveness().await,
            Err(vec!["consumer: stalled".to_string()])
        );
        assert_eq!(
            status(&health, "/healthz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
