//! Serving a service's public HTTP API the one way every HTTP service here does: bound
//! before start-up is declared complete, with each connection's peer address available to
//! the handlers, and drained when the lifecycle stops serving.

use std::net::SocketAddr;

use axum::Router;

use crate::lifecycle::Lifecycle;

/// Why the HTTP server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The server failed while serving.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Serves `app` on `listen` until [`Lifecycle::serving`] is cancelled and the requests in
/// flight have finished; marks start-up complete once it listens.
pub async fn serve(life: &Lifecycle, listen: SocketAddr, app: Router) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind(listen, e))?;
    life.started();
    tracing::info!(%listen, "serving HTTP");
    let drain = life.serving();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { drain.cancelled().await })
    .await
    .map_err(ServeError::Serve)
}
