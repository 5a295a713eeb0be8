//! Mapping errors to gRPC status codes the same way in every service.

use tonic::Status;

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
