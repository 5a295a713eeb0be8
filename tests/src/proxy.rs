//! A TCP proxy a test can cut, freeze and restore, to take a dependency away from one
//! service only (the shared Postgres keeps serving everyone else).
//!
//! [`TcpProxy::cut`] closes the connections: both ends learn at once, as when a process
//! dies. [`TcpProxy::freeze`] keeps them open and forwards nothing: neither end hears a word,
//! as when a host freezes or a network drops packets. Only timeouts notice a freeze, which
//! is what the tests that use it are about.
//!
//! Two more faults, for the chaos matrix (`crate::chaos`): [`TcpProxy::delay`] holds every
//! chunk for a base latency plus a seeded random jitter before passing it on (a slow,
//! uneven link; order within a direction is kept, as TCP keeps it), and [`TcpProxy::reset`]
//! aborts every open connection with a TCP RST (`SO_LINGER` 0) while new ones are still
//! accepted, as a middlebox or a peer's restart does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

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
    /// Bumped by [`TcpProxy::reset`]: every connection open at that moment ends with a RST.
    resets: watch::Sender<u64>,
    /// Latency added to every chunk while set, with the generator of its jitter.
    delay: Mutex<Option<Delay>>,
}

#[derive(Debug)]
struct Delay {
    base: Duration,
    jitter: Duration,
    rng: Xoshiro256PlusPlus,
}

impl State {
    /// How long to hold the next chunk: base plus a uniform draw from `0..=jitter`.
    fn next_delay(&self) -> Option<Duration> {
        let mut delay = self.delay.lock().ok()?;
        let delay = delay.as_mut()?;
        let extra = delay.jitter.mul_f64(delay.rng.random::<f64>());
        Some(delay.base + extra)
    }
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
            resets: watch::channel(0).0,
            delay: Mutex::new(None),
        });
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !accepting.open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused as soon as it opens
                }
                let frozen = accepting.frozen.subscribe();
                let mut resets = accepting.resets.subscribe();
                let state = accepting.clone();
                let connection = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        let reset = tokio::select! {
                            _ = pump(&mut from_client, &mut to_server, frozen.clone(), &state) => false,
                            _ = pump(&mut from_server, &mut to_client, frozen, &state) => false,
                            _ = resets.changed() => true,
                        };
                        if reset {
                            // A zero linger makes the close below a RST instead of a FIN.
                            let _ = to_client.as_ref().set_zero_linger();
                            let _ = to_server.as_ref().set_zero_linger();
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

    /// Holds every chunk, either way, for `base` plus a uniform random share of `jitter`
    /// (drawn from a generator seeded with `seed`), until [`TcpProxy::restore`].
    pub fn delay(&self, base: Duration, jitter: Duration, seed: u64) {
        if let Ok(mut delay) = self.state.delay.lock() {
            *delay = Some(Delay {
                base,
                jitter,
                rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            });
        }
    }

    /// Resets (TCP RST) every connection open now; later ones are accepted as usual.
    pub fn reset(&self) {
        self.state.resets.send_modify(|generation| *generation += 1);
    }

    /// Forwards again, at full speed.
    pub fn restore(&self) {
        if let Ok(mut delay) = self.state.delay.lock() {
            *delay = None;
        }
        self.state.frozen.send_replace(false);
        self.state.open.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding back while frozen and for the link's delay; ends when
/// either side closes.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
    state: &State,
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
        if let Some(delay) = state.next_delay() {
            tokio::time::sleep(delay).await;
        }
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
