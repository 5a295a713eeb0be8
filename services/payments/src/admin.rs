//! Operator routes on payments' admin port: look at the simulated provider and change its
//! faults while the system runs (`GET` / `PUT /provider`), so failure handling can be watched
//! live. The admin port is for operators and tests, never exposed publicly.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use faultline_problem::{Problem, ProblemType};
use serde::Serialize;

use crate::provider::{Faults, SimulatedProvider};

#[derive(Debug, Serialize)]
struct ProviderView {
    faults: Faults,
    calls: u64,
    holds: u64,
}

fn view(provider: &SimulatedProvider) -> ProviderView {
    ProviderView {
        faults: provider.faults(),
        calls: provider.calls(),
        holds: provider.holds(),
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

/// `GET /provider` (faults, calls, holds) and `PUT /provider` (new faults).
pub fn routes(provider: Arc<SimulatedProvider>) -> Router {
    Router::new()
        .route("/provider", get(show).put(change))
        .with_state(provider)
}
