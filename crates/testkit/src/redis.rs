//! A `redis-server` of a test's own, on a free port: for tests that stop, freeze or restart
//! Redis, or need several nodes, without disturbing the shared one on 6379.
//!
//! Synchronous on purpose (std processes and sockets), so the same server serves async tests,
//! sync tests and benchmarks; starting one takes a few milliseconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis process on 127.0.0.1; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts an empty, non-persistent Redis on a free port and waits until it answers.
    ///
    /// # Panics
    /// If `redis-server` is not installed (`scripts/deps.sh` installs it) or does not answer
    /// within ten seconds: a test without its Redis should stop loudly.
    pub fn start() -> Self {
        let port = crate::free_port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    ///
    /// # Panics
    /// As [`RedisServer::start`], or if it is already running.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "redis on {} is already running",
            self.port
        );
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/deps.sh installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        );
    }

    /// Kills it (SIGKILL, like a crash) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers, a slow Redis.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`RedisServer::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .expect("redis is running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Whether it answers `PING`, spoken in plain RESP.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen server too.
        self.stop();
    }
}
