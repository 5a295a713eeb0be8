//! A Postgres cluster of the chaos run's own (initdb + pg_ctl from the Debian packages), on
//! a free port, so the matrix can restart it with `-m immediate` while every other test
//! keeps the shared server on 5432.
//!
//! Postgres refuses to run as root; when the harness is root (the dev machines are), the
//! cluster belongs to the `postgres` user and every command runs through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// A running cluster; stopped (immediately) when dropped. Its directory stays, with the
/// server's log, for whoever looks into a failed run; the rig removes it after a clean one.
#[derive(Debug)]
pub struct Cluster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin`, or `FAULTLINE_PG_BIN`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("FAULTLINE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install Postgres (scripts/deps.sh does) or set FAULTLINE_PG_BIN")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no pg_ctl under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Cluster {
    /// Creates a cluster under `dir` (which must not exist yet) and starts it.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        std::fs::create_dir_all(dir)?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?;
            ensure!(status.success(), "chown of {} failed", dir.display());
        }
        let cluster = Self {
            port: faultline_testkit::free_port(),
            dir: dir.to_path_buf(),
            bin,
            as_postgres,
        };
        let data = cluster.data();
        let initdb = cluster
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()?;
        ensure!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        // fsync off: an immediate stop kills processes, not the kernel, so the page cache
        // keeps what was written; it only spares the shared disk. Enough connections for
        // three services' pools, their relays' lock sessions and the auditor.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let status = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-l"])
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &options])
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(
            status.success(),
            "pg_ctl start failed; see {}/postgres.log",
            self.dir.display()
        );
        self.wait_accepting(Duration::from_secs(60))
    }

    fn wait_accepting(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ready = self
                .command("pg_isready")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(std::process::Stdio::null())
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("postgres on {} not accepting after {timeout:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it as a crash does: `pg_ctl stop -m immediate` (no checkpoint, every backend
    /// killed; the next start runs crash recovery).
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        let status = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .stdout(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "pg_ctl stop -m immediate failed");
        Ok(())
    }

    /// Starts it again on the same port and data (crash recovery included).
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
    }
}
