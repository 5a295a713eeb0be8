//! The client's connector for mutual TLS: a tower `Service<Uri>` that tonic's
//! `Endpoint::connect_with_connector(_lazy)` uses to open each connection.
//!
//! Each new connection is made with the [`ClientTls`] configuration current at that moment
//! (so a reloaded client certificate is used from the next connection on) and checks that
//! the server presents the SPIFFE ID the client expects. The connector always speaks TLS,
//! whatever the URI's scheme says, so a misconfigured `http://` URL can never fall back to
//! plaintext.
//!
//! [`ClientTls::channel`] takes the URL as configured (`https://inventory:50051`) and hands
//! tonic the same address as `http://`: tonic's own TLS (enabled in this workspace for its
//! `peer_certs`) would otherwise insist on doing the handshake itself for `https://` URLs.
//! The `:scheme` the server sees is then `http`, which gRPC servers ignore.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::ClientTls;

/// Opens mutually authenticated TLS connections. See the module docs.
#[derive(Debug, Clone)]
pub struct MtlsConnector {
    tls: ClientTls,
}

impl MtlsConnector {
    /// A connector using `tls`.
    pub fn new(tls: ClientTls) -> Self {
        Self { tls }
    }
}

impl ClientTls {
    /// A connector for tonic's `Endpoint::connect_with_connector`.
    pub fn connector(&self) -> MtlsConnector {
        MtlsConnector::new(self.clone())
    }

    /// A channel to `url` (`https://host:port`, or `http://`: both mean mutual TLS here)
    /// that connects on first use, like `Endpoint::connect_lazy`. `configure` sets the
    /// endpoint's timeouts and the like.
    pub fn channel(
        &self,
        url: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, tonic::transport::Error> {
        let address = url
            .strip_prefix("https://")
            .map(|rest| format!("http://{rest}"))
            .unwrap_or_else(|| url.to_owned());
        let endpoint = configure(Endpoint::from_shared(address)?);
        Ok(endpoint.connect_with_connector_lazy(self.connector()))
    }
}

impl Service<Uri> for MtlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.config();
        let timeout = self.tls.settings().handshake_timeout();
        Box::pin(async move {
            let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
            let host = uri.host().ok_or_else(|| invalid("the URI has no host"))?;
            // An IPv6 literal comes bracketed in a URI.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("the URI has no port"))?;
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| invalid("the URI's host is not a DNS name or an IP address"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let handshake = TlsConnector::from(config).connect(server_name, tcp);
            let stream = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(TokioIo::new(stream))
        })
    }
}
