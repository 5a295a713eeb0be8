//! Test support for integration tests and benchmarks that run against the real local
//! infrastructure: where Postgres and the broker are, unique names so parallel tests never
//! share state, throwaway databases, and Redis servers of a test's own ([`RedisServer`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), sqlx::Error> {
//! let db = faultline_testkit::TestDatabase::create("outbox").await?;
//! sqlx::query("SELECT 1").execute(&db.pool).await?;
//! db.drop().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod redis;

pub use redis::RedisServer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The Postgres server tests use: `FAULTLINE_POSTGRES_URL`, else the local one.
pub fn postgres_server() -> String {
    std::env::var("FAULTLINE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The broker tests use: `FAULTLINE_KAFKA_BROKERS`, else the local one.
pub fn kafka_brokers() -> String {
    std::env::var("FAULTLINE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// `prefix` plus the process id, the time and a counter: unique across concurrent tests and
/// test processes, and usable as a database or topic name (lower case, digits, `_`).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database created for one test, dropped by [`TestDatabase::drop`].
#[derive(Debug)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// A pool on it (20 connections).
    pub pool: PgPool,
    admin: PgPool,
}

impl TestDatabase {
    /// Creates a fresh, empty database named after `prefix`.
    pub async fn create(prefix: &str) -> Result<Self, sqlx::Error> {
        let server = postgres_server();
        let name = unique(prefix);
        let admin = PgPool::connect(&format!("{server}/postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&format!("{server}/{name}"))
            .await?;
        Ok(Self { name, pool, admin })
    }

    /// Closes the pool and drops the database, whatever still holds connections to it.
    pub async fn drop(self) -> Result<(), sqlx::Error> {
        self.pool.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }
}

/// A port on 127.0.0.1 that nothing listens on, for a process the test starts (which must
/// bind it itself, so the port cannot be held open for it).
///
/// Picked below Linux's ephemeral range (32768 and up): a port from `bind(":0")` comes from
/// that range, where the many outgoing connections a test run makes (to Postgres, the broker)
/// may take it before the child process binds it, which made services fail to start now and
/// then with "address already in use".
///
/// A port is never handed out twice in one process: a system asks for several at once
/// (each service's API and admin ports) before any is bound, and two random picks from the
/// range met now and then (one `make test` in about twenty: "address already in use").
///
/// # Panics
/// If no port in the range is free after many tries.
pub fn free_port() -> u16 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().rotate_left(16)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    for attempt in 0..SPAN {
        let candidate = LOW + seed.wrapping_add(attempt.wrapping_mul(7_919)) % SPAN;
        let port = u16::try_from(candidate).expect("below 32768");
        let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
        let given = given.get_or_insert_with(HashSet::new);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_handed_out_are_never_handed_out_again() {
        // Two thousand picks from 12 000 ports: random choice alone repeats one almost surely.
        let ports: Vec<u16> = (0..2_000).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    }
}
