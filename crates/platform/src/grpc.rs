//! gRPC plumbing shared by the gRPC services: one way to serve ([`serve`]: mutual TLS,
//! telemetry, per-method callers, the standard health service kept in step with
//! readiness), and database errors as status codes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use faultline_auth::{
    AllowedCallers, CallerAuthLayer, MtlsIncoming, MtlsSettings, ServerTls, TlsError,
};
use faultline_telemetry::http::HttpServerLayer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::health::Health;
use crate::lifecycle::Lifecycle;

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

/// Why a gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// It could not start listening.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The server failed while serving.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `service` on `listen` until the lifecycle stops serving, as every Faultline gRPC
/// service does: mutual TLS only (certificates re-read from disk), server telemetry, then
/// `callers` deciding per method which peer identity may call, and `grpc.health.v1.Health`
/// answering for any caller with readiness mirrored into it. Marks start-up complete once
/// it listens; the reload and mirror tasks are tracked by `life`.
pub async fn serve<S>(
    life: &mut Lifecycle,
    listen: SocketAddr,
    mtls: &MtlsSettings,
    callers: AllowedCallers,
    service: S,
) -> Result<(), ServeError>
where
    S: tower::Service<http::Request<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let (incoming, tls_reload) = listen_mtls(listen, mtls, life.background()).await?;
    life.track("certificate reload", tls_reload);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    life.spawn(
        "grpc health",
        mirror_readiness(life.health.clone(), reporter, S::NAME, life.background()),
    );
    let served = Server::builder()
        .layer(HttpServerLayer::new(life.metrics.clone()))
        .layer(CallerAuthLayer::new(
            callers.service_for_any_caller("grpc.health.v1.Health"),
        ))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, life.serving().cancelled_owned());
    life.started();
    tracing::info!(%listen, service = S::NAME, "serving gRPC over mutual TLS");
    Ok(served.await?)
}
