//! Operator routes on payments' admin port: look at the simulated provider and change its
//! faults while the system runs (`GET` / `PUT /provider`), so failure handling can be watched
//! live. The admin port is for operators and tests, never exposed publicly.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use faultline_problem::{Problem, ProblemType};
use serde::Serialize;

use crate::provider::{Faults, OpenHold, SimulatedProvider};

/// The provider's books as an operator (or an end-to-end invariant) compares them with
/// payments' own: counts of what happened, ever, and what is held and charged now.
#[derive(Debug, Serialize)]
struct ProviderView {
    faults: Faults,
    /// Authorization requests, repeats included.
    calls: u64,
    /// Holds placed, ever (once per key, however often it was asked).
    holds: u64,
    /// Holds captured, ever.
    captures: u64,
    /// Holds released by a void, ever.
    releases: u64,
    /// The holds in place now, by order.
    open_holds: Vec<OpenHold>,
    /// What those hold, in minor units by currency.
    held_minor: BTreeMap<String, i64>,
    /// What was captured, ever, in minor units by currency.
    captured_minor: BTreeMap<String, i64>,
    /// When these books began (Unix milliseconds): they live in payments' process.
    since_unix_ms: u64,
    /// Captures of holds placed before the books began (payments restarted since).
    inherited: u64,
}

fn view(provider: &SimulatedProvider) -> ProviderView {
    let open_holds = provider.open_holds();
    let mut held_minor = BTreeMap::new();
    for hold in &open_holds {
        *held_minor.entry(hold.currency.clone()).or_default() += hold.amount_minor;
    }
    ProviderView {
        faults: provider.faults(),
        calls: provider.calls(),
        holds: provider.holds(),
        captures: provider.captures(),
        releases: provider.releases(),
        open_holds,
        held_minor,
        captured_minor: provider.captured_minor(),
        since_unix_ms: provider.since_unix_ms(),
        inherited: provider.inherited(),
    }
}

async fn show(State(provider): State<Arc<SimulatedProvider>>) -> Json<ProviderView> {
    Json(view(&provider))
}

async fn change(
    State(provider): State<Arc<SimulatedProvider>>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Response {
    let faults = match body {
        Ok(Json(faults)) => faults,
        Err(rejection) => return refused(&rejection).into_response(),
    };
    // The body's fields are the setting's; an empty path names them alone.
    if let Err(error) = faults.validate("") {
        return Problem::new(ProblemType::InvalidBody, error.to_string()).into_response();
    }
    provider.set_faults(faults);
    tracing::warn!(
        latency_ms = faults.latency_ms,
        failure_rate = faults.failure_rate,
        "payment provider faults changed"
    );
    Json(view(&provider)).into_response()
}

/// A body that is not the faults' JSON, as the same problem documents the public API uses.
fn refused(rejection: &JsonRejection) -> Problem {
    let kind = match rejection {
        JsonRejection::JsonSyntaxError(_) => ProblemType::MalformedJson,
        JsonRejection::JsonDataError(_) => ProblemType::InvalidBody,
        JsonRejection::MissingJsonContentType(_) => ProblemType::UnsupportedMediaType,
        _ => ProblemType::UnreadableBody,
    };
    Problem::new(kind, rejection.body_text())
}

/// `GET /provider` (faults and the provider's books) and `PUT /provider` (new faults).
pub fn routes(provider: Arc<SimulatedProvider>) -> Router {
    Router::new()
        .route("/provider", get(show).put(change))
        .with_state(provider)
}
