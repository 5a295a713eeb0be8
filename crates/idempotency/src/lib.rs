//! Race-free `Idempotency-Key` handling on Postgres, following
//! draft-ietf-httpapi-idempotency-key-header and the lessons of Stripe's design.
//!
//! - A request with a key claims it ([`Store::claim`]). Exactly one of several concurrent
//!   identical requests owns it; the others are told to come back (`409` + `Retry-After`).
//!   The same key with a different request is refused (`422`). A completed key replays the
//!   stored status, headers and body, marked `Idempotent-Replayed: true`.
//! - The owner completes the key in the transaction that makes the request's effect, so the
//!   stored response and the effect commit together ([`Lease::complete`]).
//! - An in-flight key is held under a lease. A request whose worker died becomes retryable
//!   when the lease runs out and resumes at the last recovery point ([`Lease::checkpoint`]),
//!   for operations with a step that cannot be rolled back.
//! - Keys are scoped to the caller, validated ([`IdempotencyKey`]), expire after a configured
//!   time, and a reaper deletes them ([`reaper`]).
//!
//! [`layer`] puts this in front of HTTP handlers (axum or any `tower` HTTP service) and
//! [`grpc`] gives tonic services the same semantics.

#![warn(missing_docs)]

pub mod fingerprint;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod key;
#[cfg(feature = "axum")]
pub mod layer;
pub mod reaper;
pub mod store;

pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use store::{Claim, IdempotencyConfig, Lease, LeaseError, STARTED, Store, StoredResponse};

use sqlx::PgPool;

/// Name of the table that records this crate's migrations, apart from the application's.
pub const MIGRATIONS_TABLE: &str = "_faultline_idempotency_migrations";

/// The migrations of the `idempotency_keys` table, kept apart from the service's own under
/// [`MIGRATIONS_TABLE`]. A service lists them with its own and runs them all at start
/// (`faultline_platform::lifecycle::Lifecycle::begin`).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Creates or upgrades the `idempotency_keys` table in the database behind `pool`.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// The README's example, compiled as a doctest (it needs Postgres to run).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "axum"))]
pub struct ReadmeDoctests;
