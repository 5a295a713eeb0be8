//! gRPC plumbing shared by the gRPC services: database errors as status codes, and the
//! standard health service kept in step with readiness.

use std::time::Duration;

use faultline_auth::{MtlsIncoming, MtlsSettings, ServerTls, TlsError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::health::Health;

/// Turns a database error into a status a client can act on: `UNAVAILABLE` (retry later)
/// when the database cannot be reached ([`faultline_postgres::is_unreachable`]) or another
/// session's lock outlasted `lock_timeout` ([`faultline_postgres::is_contention`]),
/// `INTERNAL` otherwise. Details are logged, not sent.
pub fn database_status(error: &sqlx::Error) -> Status {
    if faultline_postgres::is_unreachable(error) {
        tracing::warn!(%error, "database unavailable");
        Status::unavailable("the service's database is unavailable; retry later")
    } else if faultline_postgres::is_contention(error) {
        // Another session holds what this call needs (or was ended holding it); the same
        // call succeeds shortly, so it is as retryable as an outage.
        tracing::warn!(%error, "database contention");
        Status::unavailable("the rows this call needs are locked; retry shortly")
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

/// Why a gRPC server could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The certificate, key or CA could not be loaded.
    #[error("mTLS: {0}")]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
}

/// Listens on `addr` for mutually authenticated TLS only: clients must present a certificate
/// from the CA in `settings`, whose SPIFFE identity the server then authorizes per method.
/// The certificates are re-read from disk until `stop`, so rotating them needs no restart.
pub async fn listen_mtls(
    addr: std::net::SocketAddr,
    settings: &MtlsSettings,
    stop: CancellationToken,
) -> Result<(MtlsIncoming, JoinHandle<()>), ListenError> {
    let tls = ServerTls::load(settings.clone())?;
    let reload = tls.spawn_reload(stop);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ListenError::Bind(addr, e))?;
    Ok((MtlsIncoming::new(listener, tls), reload))
}
