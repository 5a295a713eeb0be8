//! A TCP proxy a test can cut, freeze and restore, to take a dependency away from one
//! service only (the shared Postgres keeps serving everyone else).
//!
//! [`TcpProxy::cut`] closes the connections: both ends learn at once, as when a process
//! dies. [`TcpProxy::freeze`] keeps them open and forwards nothing: neither end hears a word,
//! as when a host freezes or a network drops packets. Only timeouts notice a freeze, which
//! is what the tests that use it are about.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Debug)]
struct State {
    open: AtomicBool,
    /// `true` while frozen: the pumps hold what they read and write nothing.
    frozen: watch::Sender<bool>,
    connections: Mutex<Vec<AbortHandle>>,
}

/// Forwards `127.0.0.1:<port>` to a target while open.
#[derive(Debug)]
pub struct TcpProxy {
    /// The port to connect to instead of the target's.
    pub port: u16,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            frozen: watch::channel(false).0,
            connections: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accepting.open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused as soon as it opens
                }
                let frozen = accepting.frozen.subscribe();
                let connection = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        tokio::select! {
                            _ = pump(from_client, to_server, frozen.clone()) => {}
                            _ = pump(from_server, to_client, frozen) => {}
                        }
                    }
                });
                if let Ok(mut connections) = accepting.connections.lock() {
                    connections.push(connection.abort_handle());
                }
            }
        });
        Ok(Self {
            port,
            state,
            accept,
        })
    }

    /// Closes every open connection and drops new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        if let Ok(mut connections) = self.state.connections.lock() {
            for connection in connections.drain(..) {
                connection.abort();
            }
        }
    }

    /// Keeps every connection open but forwards nothing either way, until
    /// [`TcpProxy::restore`] (or [`TcpProxy::cut`]).
    pub fn freeze(&self) {
        self.state.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.state.frozen.send_replace(false);
        self.state.open.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding back while frozen; ends when either side closes.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
