//! A Kafka-aware forwarder: it stands between Kafka clients and one broker, passes every
//! byte through, and rewrites the broker addresses in Metadata and FindCoordinator
//! responses to an address it was given.
//!
//! Why it exists: a Kafka client uses its bootstrap address for its first request only.
//! After that it connects to whatever host:port the broker *advertises* (in Metadata for
//! partition leaders, in FindCoordinator for its group's coordinator), and tansu advertises
//! one address to everybody. A plain [`TcpProxy`] in front of the broker sees a client's
//! first connection and nothing after, unless the broker advertises that proxy, and then
//! every client shares it. A forwarder per client that advertises the client's own proxy
//! gives each client a link of its own, so a fault on it reaches that client alone
//! ([`BrokerLink`] is the composition; the chaos matrix gives one to each service):
//!
//! ```text
//! checkout  ──▶ TcpProxy (faults) ──▶ KafkaLink (advertises checkout's proxy)  ──┐
//! inventory ──▶ TcpProxy (faults) ──▶ KafkaLink (advertises inventory's proxy) ──┼──▶ tansu
//! payments  ──▶ TcpProxy (faults) ──▶ KafkaLink (advertises payments' proxy)   ──┘
//! ```
//!
//! The wire format makes this cheap. Every request and response is a frame: a 4-byte
//! big-endian length, then that many bytes. Every request header, whatever its version,
//! starts with the api key (i16), the api version (i16) and the correlation id (i32); every
//! response header starts with the correlation id. So the forwarder reads the first 8 bytes
//! of each request and remembers the key and version of Metadata (3) and FindCoordinator
//! (10) requests by correlation id; only the responses with those ids are decoded (header
//! at the response type's `header_version`, so flexible versions keep their tagged fields),
//! rewritten and encoded again. Every other frame is copied through as it arrives, never
//! held whole (a fetch response can be megabytes).
//!
//! Limits, chosen: one broker (every advertised node becomes the one address, right for the
//! one-node tansu the tests run; a cluster would need a forwarder per node). Only Metadata
//! and FindCoordinator are rewritten: DescribeCluster (admin clients) and the node
//! endpoints of Produce and Fetch (KIP-951, sent when a leader moves, which it cannot on one
//! node; tansu 0.6.0 sends none) carry addresses too. A response that does not decode
//! cleanly is logged and forwarded unchanged: the client may then go around its link, but
//! it never loses an answer.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::ensure;
use kafka_protocol::messages::{FindCoordinatorResponse, MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::proxy::TcpProxy;

const METADATA: i16 = 3;
const FIND_COORDINATOR: i16 = 10;
/// A response to rewrite is held whole; past this a corrupt length is more likely than a
/// real Metadata answer, so it is passed through instead of allocated.
const MAX_REWRITTEN: usize = 64 << 20;

/// Requests whose responses are rewritten: correlation id → (api key, api version). A map,
/// not a queue: produce requests with `acks=0` get no response at all.
type Pending = Mutex<HashMap<i32, (i16, i16)>>;

/// How many responses a [`KafkaLink`] has rewritten, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Metadata responses.
    pub metadata: u64,
    /// FindCoordinator responses.
    pub coordinator: u64,
}

#[derive(Debug, Default)]
struct Counts {
    metadata: AtomicU64,
    coordinator: AtomicU64,
}

/// Forwards the connections accepted on a listener to one broker, advertising `advertised`
/// in place of every broker and coordinator address. Stops, connections and all, when
/// dropped.
#[derive(Debug)]
pub struct KafkaLink {
    /// The loopback port it accepts on.
    pub port: u16,
    counts: Arc<Counts>,
    accept: JoinHandle<()>,
}

impl KafkaLink {
    /// Forwards what `listener` accepts to `broker`. The listener is bound by the caller so
    /// that a proxy can be pointed at it before the address to advertise (that proxy's) is
    /// known.
    pub fn start(
        listener: TcpListener,
        broker: SocketAddr,
        advertised: SocketAddr,
    ) -> io::Result<Self> {
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Counts::default());
        let counting = counts.clone();
        let accept = tokio::spawn(async move {
            // Owned by this task: aborting it (on drop) aborts every connection too.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(forward(client, broker, advertised, counting.clone()));
            }
        });
        Ok(Self {
            port,
            counts,
            accept,
        })
    }

    /// The responses rewritten so far.
    pub fn rewritten(&self) -> Rewritten {
        Rewritten {
            metadata: self.counts.metadata.load(Ordering::Relaxed),
            coordinator: self.counts.coordinator.load(Ordering::Relaxed),
        }
    }
}

impl Drop for KafkaLink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One client's own way to the broker: a [`TcpProxy`] to put faults on, in front of a
/// [`KafkaLink`] that makes the broker advertise that proxy, so that every connection the
/// client opens after bootstrap comes back through it.
#[derive(Debug)]
pub struct BrokerLink {
    /// Where faults go; its port is the client's bootstrap.
    pub proxy: TcpProxy,
    /// The forwarder behind it.
    pub forwarder: KafkaLink,
}

impl BrokerLink {
    /// Starts a proxy and a forwarder to `broker` behind it.
    pub async fn start(broker: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = TcpProxy::start(listener.local_addr()?).await?;
        let advertised = SocketAddr::from(([127, 0, 0, 1], proxy.port));
        let forwarder = KafkaLink::start(listener, broker, advertised)?;
        Ok(Self { proxy, forwarder })
    }

    /// The client's bootstrap address: the proxy's.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

/// Carries one client connection to a connection of its own to the broker, until either
/// side closes (then both close, as the broker closing would close them).
async fn forward(
    client: TcpStream,
    broker: SocketAddr,
    advertised: SocketAddr,
    counts: Arc<Counts>,
) {
    // Refused while the broker is down: dropping the client's connection tells it so.
    let Ok(upstream) = TcpStream::connect(broker).await else {
        return;
    };
    // Frames are written in two parts (start, then the rest); Nagle would hold the second
    // for the peer's delayed ACK.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (from_client, mut to_client) = client.into_split();
    let (from_broker, mut to_broker) = upstream.into_split();
    let pending = Pending::default();
    let mut from_client = BufReader::new(from_client);
    let mut from_broker = BufReader::new(from_broker);
    // Errors end the connection; they are the resets and closes the faults are made of.
    tokio::select! {
        _ = requests(&mut from_client, &mut to_broker, &pending) => {}
        _ = responses(&mut from_broker, &mut to_client, &pending, advertised, &counts) => {}
    }
}

/// Client to broker: every frame unchanged, noting the ones whose answer is rewritten.
async fn requests(
    from: &mut (impl AsyncBufRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    pending: &Pending,
) -> io::Result<()> {
    while let Some((length, start)) = frame_start(from, 8).await? {
        if let Some((key @ (METADATA | FIND_COORDINATOR), version, correlation)) =
            request_header(&start)
            && let Ok(mut pending) = pending.lock()
        {
            pending.insert(correlation, (key, version));
        }
        write_frame_start(to, length, &start).await?;
        copy_exact(from, to, length - start.len()).await?;
    }
    Ok(())
}

/// Broker to client: every frame unchanged but the answers [`requests`] noted.
async fn responses(
    from: &mut (impl AsyncBufRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    pending: &Pending,
    advertised: SocketAddr,
    counts: &Counts,
) -> io::Result<()> {
    while let Some((length, start)) = frame_start(from, 4).await? {
        let noted = start
            .as_slice()
            .try_into()
            .ok()
            .map(i32::from_be_bytes)
            .and_then(|correlation| pending.lock().ok()?.remove(&correlation));
        let Some((key, version)) = noted.filter(|_| length <= MAX_REWRITTEN) else {
            write_frame_start(to, length, &start).await?;
            copy_exact(from, to, length - start.len()).await?;
            continue;
        };
        let mut frame = start;
        frame.resize(length, 0);
        from.read_exact(&mut frame[4..]).await?;
        let frame = match rewrite(key, version, &frame, advertised) {
            Ok(rewritten) => {
                let count = match key {
                    METADATA => &counts.metadata,
                    _ => &counts.coordinator,
                };
                count.fetch_add(1, Ordering::Relaxed);
                rewritten
            }
            Err(error) => {
                eprintln!(
                    "kafka link: api key {key} v{version} response forwarded unchanged, it did not decode: {error:#}"
                );
                frame
            }
        };
        write_frame_start(to, frame.len(), &frame).await?;
    }
    Ok(())
}

/// A request's api key, api version and correlation id, if the frame is that long.
fn request_header(start: &[u8]) -> Option<(i16, i16, i32)> {
    let key = i16::from_be_bytes(start.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(start.get(2..4)?.try_into().ok()?);
    let correlation = i32::from_be_bytes(start.get(4..8)?.try_into().ok()?);
    Some((key, version, correlation))
}

/// The response frame (`frame`, without its length) with every advertised address
/// replaced by `advertised`.
fn rewrite(
    key: i16,
    version: i16,
    frame: &[u8],
    advertised: SocketAddr,
) -> anyhow::Result<Vec<u8>> {
    let host = StrBytes::from_string(advertised.ip().to_string());
    let port = i32::from(advertised.port());
    match key {
        METADATA => reencode(frame, version, |response: &mut MetadataResponse| {
            for broker in &mut response.brokers {
                broker.host = host.clone();
                broker.port = port;
            }
        }),
        FIND_COORDINATOR => reencode(frame, version, |response: &mut FindCoordinatorResponse| {
            // Up to v3 the answer is the top-level fields; from v4 one per key asked (and
            // the encoder refuses a field the version does not have). An error's empty
            // address is left as it is.
            if version < 4 && response.error_code == 0 {
                response.host = host.clone();
                response.port = port;
            }
            for coordinator in &mut response.coordinators {
                if coordinator.error_code == 0 {
                    coordinator.host = host.clone();
                    coordinator.port = port;
                }
            }
        }),
        other => anyhow::bail!("api key {other} is not one the link rewrites"),
    }
}

fn reencode<R: Decodable + Encodable + HeaderVersion>(
    frame: &[u8],
    version: i16,
    edit: impl FnOnce(&mut R),
) -> anyhow::Result<Vec<u8>> {
    let header_version = R::header_version(version);
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, header_version)?;
    let mut response = R::decode(&mut buf, version)?;
    // Bytes the decoder did not understand would be lost in the new frame.
    ensure!(
        buf.is_empty(),
        "{} bytes left after the response",
        buf.len()
    );
    edit(&mut response);
    let mut out = Vec::with_capacity(frame.len());
    header.encode(&mut out, header_version)?;
    response.encode(&mut out, version)?;
    Ok(out)
}

/// A frame's length and its first `want` bytes (fewer if it is shorter), or `None` when
/// the stream ends between frames.
async fn frame_start(
    from: &mut (impl AsyncRead + Unpin),
    want: usize,
) -> io::Result<Option<(usize, Vec<u8>)>> {
    let mut length = [0u8; 4];
    match from.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = usize::try_from(i32::from_be_bytes(length))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative frame length"))?;
    let mut start = vec![0; want.min(length)];
    from.read_exact(&mut start).await?;
    Ok(Some((length, start)))
}

/// Writes a frame's length and its first bytes in one write.
async fn write_frame_start(
    to: &mut (impl AsyncWrite + Unpin),
    length: usize,
    start: &[u8],
) -> io::Result<()> {
    let length = i32::try_from(length)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too long"))?;
    let mut head = Vec::with_capacity(4 + start.len());
    head.extend_from_slice(&length.to_be_bytes());
    head.extend_from_slice(start);
    to.write_all(&head).await
}

/// Copies exactly `n` bytes, as they arrive.
async fn copy_exact(
    from: &mut (impl AsyncBufRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    n: usize,
) -> io::Result<()> {
    let n = n as u64;
    if tokio::io::copy_buf(&mut from.take(n), to).await? < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
