//! A Kafka-protocol broker of a test's own (tansu on its sqlite engine, with the indexes
//! `make` adds), for tests that stop and restart the broker without disturbing the shared one.
//!
//! The binary is `FAULTLINE_TANSU_BIN` (the Makefile sets it from `scripts/deps.sh`), else
//! where `scripts/deps.sh` builds it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A broker process with its own port and data directory.
#[derive(Debug)]
pub struct Broker {
    /// `127.0.0.1:<port>`.
    pub address: String,
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

impl Broker {
    /// Starts a broker on a free port with an empty data directory under `dir`.
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        let port = faultline_testkit::free_port();
        let binary = binary()?;
        if !binary.exists() {
            bail!(
                "{} not found; run scripts/deps.sh up (make test does) or set FAULTLINE_TANSU_BIN",
                binary.display()
            );
        }
        std::fs::create_dir_all(&dir)?;
        let mut broker = Self {
            address: format!("127.0.0.1:{port}"),
            port,
            dir,
            binary,
            child: None,
        };
        broker.resume().await?;
        Ok(broker)
    }

    /// Kills the broker (its data stays).
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
        let advertised = format!("tcp://127.0.0.1:{}", self.port);
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
        while tokio::net::TcpStream::connect(&self.address).await.is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen on {} within 20 s", self.address);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.add_indexes(started).await
    }

    /// The indexes `scripts/deps.sh` adds to the shared broker's database, so that a long run
    /// on this broker (the full chaos matrix) does not slow down as its log grows.
    async fn add_indexes(&self, started: Instant) -> anyhow::Result<()> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/tansu-sqlite-indexes.sql"
        );
        loop {
            // Fails until tansu has created its tables.
            let output = Command::new("sqlite3")
                .args(["-cmd", ".timeout 10000"])
                .arg(self.dir.join("tansu.db"))
                .arg(format!(".read {script}"))
                .output()
                .await
                .context("running sqlite3 (scripts/deps.sh up installs it)")?;
            if output.status.success() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "could not add the broker's indexes: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
