//! The server's listener for mutual TLS: TCP connections in, verified TLS streams out, for
//! tonic's `serve_with_incoming`.
//!
//! Each accepted connection is handshaken with the [`ServerTls`] configuration current at
//! that moment, so a reloaded certificate is served to the next connection without a
//! restart. Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each
//! bounded by `handshake_timeout_ms`, so a slow or silent client holds neither the accept
//! loop nor other clients. A connection that fails the handshake (no client certificate, one
//! from another CA, plaintext) is dropped and logged; tonic never sees it. The streams are
//! `tokio_rustls::server::TlsStream`s, for which tonic records the peer's certificates in
//! every request (`Request::peer_certs`), which [`crate::callers`] reads.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::ServerTls;

/// Most handshakes in progress at once; connections beyond are closed at once.
pub const MAX_HANDSHAKES: usize = 256;

/// A stream of mutually authenticated TLS connections. Dropping it (tonic does when the
/// server stops) stops accepting and closes the listener.
#[derive(Debug)]
pub struct MtlsIncoming {
    streams: mpsc::Receiver<TlsStream<TcpStream>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl MtlsIncoming {
    /// Accepts connections on `listener` and handshakes them with `tls`. Must be called
    /// within a tokio runtime.
    pub fn new(listener: TcpListener, tls: ServerTls) -> Self {
        let (sender, streams) = mpsc::channel(64);
        let accept_loop = tokio::spawn(accept_loop(listener, tls, sender));
        Self {
            streams,
            accept_loop,
        }
    }
}

impl Drop for MtlsIncoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl Stream for MtlsIncoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.streams.poll_recv(cx).map(|stream| stream.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    sender: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let timeout = tls.settings().handshake_timeout();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = sender.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        // gRPC messages are small and latency-bound; don't wait to fill segments.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config());
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // The server may be stopping; then the connection just closes.
                    let _ = sender.send(stream).await;
                }
                Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
