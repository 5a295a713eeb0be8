//! The chaos run's own broker (tansu on sqlite, as `scripts/deps.sh` runs it), reached only
//! through a [`TcpProxy`], so the services→broker link can be slowed, reset and blackholed.
//!
//! A Kafka client connects to the bootstrap address once and then to the address the broker
//! *advertises*; tansu therefore advertises the proxy's port while it listens on its own,
//! or clients would bypass the proxy after the first metadata answer. (The harness's
//! [`crate::broker::Broker`] advertises its own port, which is why this one is separate.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::proxy::TcpProxy;

/// tansu behind a proxy; killed when dropped.
#[derive(Debug)]
pub struct ProxiedBroker {
    /// The proxy every client goes through; `127.0.0.1:<proxy.port>` is the bootstrap.
    pub proxy: TcpProxy,
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("FAULTLINE_TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    let tools =
        std::env::var("FAULTLINE_TOOLS").unwrap_or_else(|_| format!("{home}/.cache/faultline"));
    Ok(PathBuf::from(tools).join("tansu-0.6.0-libsql-dynostore-postgres/bin/tansu"))
}

impl ProxiedBroker {
    /// Starts a proxy and, behind it, a broker with an empty data directory `dir`.
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        let binary = binary()?;
        if !binary.exists() {
            bail!(
                "{} not found; run scripts/deps.sh up (make test does) or set FAULTLINE_TANSU_BIN",
                binary.display()
            );
        }
        std::fs::create_dir_all(&dir)?;
        let port = faultline_testkit::free_port();
        let proxy = TcpProxy::start(format!("127.0.0.1:{port}").parse()?).await?;
        let mut broker = Self {
            proxy,
            port,
            dir,
            binary,
            child: None,
        };
        broker.resume().await?;
        Ok(broker)
    }

    /// The bootstrap address the services are given: the proxy's.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// kill -9 (its data stays).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port and data.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let listen = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.proxy.port);
        let child = Command::new(&self.binary)
            .args(["broker", "--listener-url", &listen])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let started = Instant::now();
        let direct = format!("127.0.0.1:{}", self.port);
        while tokio::net::TcpStream::connect(&direct).await.is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen on {direct} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
