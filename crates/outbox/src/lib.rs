//! Reliable messaging between a Postgres database and Kafka, in three parts:
//!
//! - [`enqueue`] writes an [`OutboxMessage`] inside the caller's transaction, so the message
//!   exists if and only if the business change it announces committed.
//! - [`Relay`] publishes outbox rows to Kafka in write order with an idempotent producer and
//!   deletes (or marks) them once the broker has acknowledged them. Several relays share the
//!   work without a leader by owning key ranges, so one aggregate's rows stay in order. A
//!   crash between publish and delete publishes again: delivery is at-least-once.
//! - [`consumer::run`] receives Kafka records and hands each to a [`consumer::Handler`]
//!   inside a transaction that also records the message in the inbox. A redelivered message
//!   is found there and skipped, so processing is effectively-once. Offsets are stored only
//!   after that transaction commits; a message that can never be processed is parked on a
//!   dead-letter topic (through the outbox, in the same transaction) instead of blocking its
//!   partition or being dropped.
//!
//! The tables live in the application's own database; [`migrate`] creates them with a
//! migration history of their own, so they sit beside the application's migrations.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use faultline_outbox::{OutboxMessage, enqueue};
//!
//! faultline_outbox::migrate(&pool).await?;
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE accounts SET frozen = true WHERE id = 42").execute(&mut *tx).await?;
//! enqueue(&mut tx, &OutboxMessage::new("accounts.events", "account", "42", "AccountFrozen", b"{}".to_vec())).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod consumer;
pub mod inbox;
pub mod kafka;
mod message;
pub mod relay;
pub mod trace;

pub use message::{OutboxMessage, enqueue};
pub use relay::{Backlog, Relay, RelayConfig, Retention, RoundOutcome, backlog};

use sqlx::PgPool;

/// Name of the table that records which of this crate's migrations have run. Kept apart
/// from the application's `_sqlx_migrations` so both histories can evolve independently.
pub const MIGRATIONS_TABLE: &str = "_faultline_outbox_migrations";

/// The migrations of the `outbox` and `inbox` tables, kept apart from the service's own under
/// [`MIGRATIONS_TABLE`]. A service lists them with its own and runs them all at start
/// (`faultline_platform::lifecycle::Lifecycle::begin`).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Creates or upgrades the `outbox` and `inbox` tables in the database behind `pool`.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// The README's example, compiled as a doctest (it needs Postgres and a broker to run).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
