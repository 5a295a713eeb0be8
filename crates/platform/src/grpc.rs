//! gRPC plumbing shared by the gRPC services: database errors as status codes, and the
//! standard health service kept in step with readiness.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::health::Health;

/// Turns a database error into a status a client can act on: `UNAVAILABLE` (retry later)
/// when the database cannot be reached, `INTERNAL` otherwise. Details are logged, not sent.
pub fn database_status(error: &sqlx::Error) -> Status {
    let unavailable = matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    );
    if unavailable {
        tracing::warn!(%error, "database unavailable");
        Status::unavailable("the service's database is unavailable; retry later")
    } else {
        tracing::error!(%error, "database error");
        Status::internal("internal error")
    }
}

/// Keeps the `grpc.health.v1.Health` status of `service` (and of the server as a whole, the
/// empty name) equal to readiness, checked every second until `stop`.
pub async fn mirror_readiness(
    health: Health,
    reporter: HealthReporter,
    service: &'static str,
    stop: CancellationToken,
) {
    loop {
        let status = if health.readiness().await.is_ok() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status(service, status).await;
        reporter.set_service_status("", status).await;
        tokio::select! {
            _ = stop.cancelled() => {
                reporter.set_service_status(service, ServingStatus::NotServing).await;
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
