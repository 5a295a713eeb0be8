//! The chaos run's own broker (tansu on sqlite, as `scripts/deps.sh` runs it), reached only
//! through a [`TcpProxy`], so the services→broker link can be slowed, reset and blackholed.
//!
//! A Kafka client connects to the bootstrap address once and then to the address the broker
//! *advertises*; tansu therefore advertises the proxy's port while it listens on its own
//! ([`Broker::start_on`]), or clients would bypass the proxy after the first metadata answer.

use std::path::PathBuf;

use crate::broker::Broker;
use crate::proxy::TcpProxy;

/// tansu behind a proxy; killed when dropped.
#[derive(Debug)]
pub struct ProxiedBroker {
    /// The proxy every client goes through; `127.0.0.1:<proxy.port>` is the bootstrap.
    pub proxy: TcpProxy,
    broker: Broker,
}

impl ProxiedBroker {
    /// Starts a proxy and, behind it, a broker with an empty data directory `dir`.
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        let port = faultline_testkit::free_port();
        let proxy = TcpProxy::start(format!("127.0.0.1:{port}").parse()?).await?;
        let broker = Broker::start_on(dir, port, proxy.port).await?;
        Ok(Self { proxy, broker })
    }

    /// The bootstrap address the services are given: the proxy's.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// kill -9 (its data stays).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.broker.kill().await
    }

    /// Starts the broker again on the same port and data.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.broker.resume().await
    }
}
