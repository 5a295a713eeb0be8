//! The key store: claiming a key, holding it under a lease, and completing it in the
//! caller's transaction.
//!
//! [`Store::claim`] answers in one round trip (plus one read when the key is taken) and is
//! race-free: the primary key decides which of two concurrent requests owns the key, and the
//! loser is told whether to replay, wait or give up. The owner gets a [`Lease`]:
//!
//! - [`Lease::complete`] stores the response *in the transaction that made the effect*, so
//!   either both commit or neither does;
//! - [`Lease::checkpoint`] records a recovery point (for operations made of several atomic
//!   phases around a call that cannot be rolled back, such as a payment provider);
//! - [`Lease::release`] gives the key up when the request failed before any effect, so the
//!   client may retry it.
//!
//! If the owner dies, its lease runs out and the next identical request takes the key over
//! at its last recovery point. A takeover changes the lease id, so a slow former owner that
//! wakes up can no longer complete or checkpoint: its transaction fails and rolls back.

use std::time::Duration;

use faultline_settings::{SettingError, join, positive};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::fingerprint::Fingerprint;
use crate::key::IdempotencyKey;

/// Recovery point of a key nobody has worked on yet.
pub const STARTED: &str = "started";

/// How long keys live and how long a request may hold one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// A completed key is replayed for this long, then forgotten. Default 86 400 s (24 h),
    /// as Stripe does.
    pub ttl_secs: u64,
    /// An in-flight request holds its key this long before another may take it over.
    /// Default 10 000 ms; raise it above the slowest request you serve.
    pub lease_ms: u64,
    /// `Retry-After` sent with a 409 for a key in flight, in seconds. Default 1.
    pub retry_after_secs: u64,
    /// Largest body the HTTP layer buffers to fingerprint. Default 65 536.
    pub max_body_bytes: usize,
    /// How often the reaper deletes expired keys. Default 60 s.
    pub reap_interval_secs: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 24 * 60 * 60,
            lease_ms: 10_000,
            retry_after_secs: 1,
            max_body_bytes: 64 * 1024,
            reap_interval_secs: 60,
        }
    }
}

impl IdempotencyConfig {
    /// Rejects values that cannot work, naming the setting under `path` (for example
    /// `CHECKOUT_IDEMPOTENCY`).
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "TTL_SECS", self.ttl_secs)?;
        positive(path, "LEASE_MS", self.lease_ms)?;
        positive(path, "RETRY_AFTER_SECS", self.retry_after_secs)?;
        positive(path, "MAX_BODY_BYTES", self.max_body_bytes as u64)?;
        positive(path, "REAP_INTERVAL_SECS", self.reap_interval_secs)?;
        if self.lease_ms / 1000 >= self.ttl_secs {
            return Err(SettingError::new(
                path,
                "LEASE_MS",
                format!("must be shorter than {}", join(path, "TTL_SECS")),
            ));
        }
        Ok(())
    }
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status, or 0 for a gRPC OK.
    pub status: u16,
    /// Headers to replay (the layer keeps only those worth replaying).
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: Vec<u8>,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// The caller owns the key and must finish, checkpoint or release it.
    Owned(Lease),
    /// The same request already completed: replay this.
    Completed(StoredResponse),
    /// The same request is being processed right now.
    InFlight {
        /// When the current owner's lease runs out.
        lease_left: Duration,
    },
    /// The key was used for a different request.
    Mismatch,
}

/// The right to work on a key, until `lease_ms` after the last claim or checkpoint.
#[derive(Debug)]
pub struct Lease {
    scope: String,
    key: String,
    id: Uuid,
    recovery_point: String,
    lease_ms: i64,
}

/// The lease ran out and another request took the key over; roll back.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else owns the key now.
    #[error("the idempotency key was taken over by another request after this one's lease ran out")]
    Lost,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Lease {
    /// Where an earlier owner left off: [`STARTED`] for a fresh key.
    pub fn recovery_point(&self) -> &str {
        &self.recovery_point
    }

    /// The key this lease is for.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Records that the work reached `point`, on `conn` (the transaction of that phase's
    /// effect), and renews the lease.
    pub async fn checkpoint(
        &mut self,
        conn: &mut PgConnection,
        point: &str,
    ) -> Result<(), LeaseError> {
        let updated = sqlx::query(
            "UPDATE idempotency_keys
             SET recovery_point = $4, locked_until = now() + $5 * interval '1 millisecond'
             WHERE scope = $1 AND key = $2 AND lease_id = $3",
        )
        .bind(&self.scope)
        .bind(&self.key)
        .bind(self.id)
        .bind(point)
        .bind(self.lease_ms)
        .execute(conn)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(LeaseError::Lost);
        }
        self.recovery_point = point.to_owned();
        Ok(())
    }

    /// Stores `response` for replay on `conn`, which must be the transaction that made the
    /// request's effect: they commit together.
    pub async fn complete(
        self,
        conn: &mut PgConnection,
        response: &StoredResponse,
    ) -> Result<(), LeaseError> {
        let headers = serde_json::to_value(&response.headers)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let updated = sqlx::query(
            "UPDATE idempotency_keys
             SET response_status = $4, response_headers = $5, response_body = $6,
                 completed_at = now(), recovery_point = 'finished',
                 lease_id = NULL, locked_until = NULL
             WHERE scope = $1 AND key = $2 AND lease_id = $3",
        )
        .bind(&self.scope)
        .bind(&self.key)
        .bind(self.id)
        .bind(i32::from(response.status))
        .bind(headers)
        .bind(&response.body)
        .execute(conn)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(LeaseError::Lost);
        }
        Ok(())
    }

    /// Gives the key up after a failure, so a retry can proceed at once instead of waiting
    /// for the lease to run out:
    ///
    /// - at [`STARTED`] (no phase committed) the key is forgotten, and a retry starts afresh;
    /// - past it, the key keeps its recovery point and only the lease ends, so the next
    ///   identical request takes it over and resumes where this one stopped.
    ///
    /// Releasing a lease that another request already took over changes nothing.
    pub async fn release(self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let forgotten = sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE scope = $1 AND key = $2 AND lease_id = $3 AND recovery_point = $4",
        )
        .bind(&self.scope)
        .bind(&self.key)
        .bind(self.id)
        .bind(STARTED)
        .execute(pool)
        .await?
        .rows_affected();
        if forgotten == 0 {
            sqlx::query(
                "UPDATE idempotency_keys SET locked_until = now()
                 WHERE scope = $1 AND key = $2 AND lease_id = $3 AND completed_at IS NULL",
            )
            .bind(&self.scope)
            .bind(&self.key)
            .bind(self.id)
            .execute(pool)
            .await?;
        }
        Ok(())
    }
}

#[derive(Debug, FromRow)]
struct Existing {
    fingerprint: Vec<u8>,
    completed: bool,
    response_status: Option<i32>,
    response_headers: Option<sqlx::types::Json<Vec<(String, String)>>>,
    response_body: Option<Vec<u8>>,
    lease_left_ms: Option<f64>,
}

/// Where keys live. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    config: IdempotencyConfig,
}

impl Store {
    /// A store over `pool`, whose database has the table from [`crate::migrate`].
    pub fn new(pool: PgPool, config: IdempotencyConfig) -> Self {
        Self { pool, config }
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.config
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Claims `key` for `scope` (the caller) and a request with `fingerprint`.
    pub async fn claim(
        &self,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
    ) -> Result<Claim, sqlx::Error> {
        let lease_ms = i64::try_from(self.config.lease_ms).unwrap_or(i64::MAX);
        let ttl_secs = i64::try_from(self.config.ttl_secs).unwrap_or(i64::MAX);
        let lease_id = Uuid::now_v7();
        // Insert a fresh key, take over an in-flight one whose owner's lease ran out (same
        // request only), or start afresh on a key past its expiry that the reaper has not
        // removed yet. Either way this one statement decides the owner.
        let owned: Option<(String,)> = sqlx::query_as(
            "INSERT INTO idempotency_keys AS k
                 (scope, key, fingerprint, lease_id, locked_until, expires_at)
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond',
                     now() + $6 * interval '1 second')
             ON CONFLICT (scope, key) DO UPDATE SET
                 lease_id = EXCLUDED.lease_id,
                 locked_until = EXCLUDED.locked_until,
                 fingerprint = CASE WHEN k.expires_at <= now()
                     THEN EXCLUDED.fingerprint ELSE k.fingerprint END,
                 recovery_point = CASE WHEN k.expires_at <= now()
                     THEN 'started' ELSE k.recovery_point END,
                 response_status = CASE WHEN k.expires_at <= now()
                     THEN NULL ELSE k.response_status END,
                 response_headers = CASE WHEN k.expires_at <= now()
                     THEN NULL ELSE k.response_headers END,
                 response_body = CASE WHEN k.expires_at <= now()
                     THEN NULL ELSE k.response_body END,
                 completed_at = CASE WHEN k.expires_at <= now()
                     THEN NULL ELSE k.completed_at END,
                 created_at = CASE WHEN k.expires_at <= now()
                     THEN now() ELSE k.created_at END,
                 expires_at = CASE WHEN k.expires_at <= now()
                     THEN EXCLUDED.expires_at ELSE k.expires_at END
             WHERE k.expires_at <= now()
                OR (k.completed_at IS NULL
                    AND k.locked_until <= now()
                    AND k.fingerprint = EXCLUDED.fingerprint)
             RETURNING recovery_point",
        )
        .bind(scope)
        .bind(key.as_str())
        .bind(fingerprint.0.as_slice())
        .bind(lease_id)
        .bind(lease_ms)
        .bind(ttl_secs)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((recovery_point,)) = owned {
            if recovery_point != STARTED {
                tracing::warn!(key = key.as_str(), %recovery_point, "taking over an idempotency key whose owner's lease ran out");
            }
            return Ok(Claim::Owned(Lease {
                scope: scope.to_owned(),
                key: key.as_str().to_owned(),
                id: lease_id,
                recovery_point,
                lease_ms,
            }));
        }

        let existing: Option<Existing> = sqlx::query_as(
            "SELECT fingerprint, completed_at IS NOT NULL AS completed, response_status,
                    response_headers, response_body,
                    extract(epoch FROM locked_until - now())::float8 * 1000 AS lease_left_ms
             FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(existing) = existing else {
            // Completed and expired between the two statements: a fresh claim will do.
            return Box::pin(self.claim(scope, key, fingerprint)).await;
        };
        if existing.fingerprint != fingerprint.0 {
            return Ok(Claim::Mismatch);
        }
        if existing.completed {
            return Ok(Claim::Completed(StoredResponse {
                status: u16::try_from(existing.response_status.unwrap_or(500)).unwrap_or(500),
                headers: existing.response_headers.map(|h| h.0).unwrap_or_default(),
                body: existing.response_body.unwrap_or_default(),
            }));
        }
        let left = existing.lease_left_ms.unwrap_or(0.0).max(0.0);
        Ok(Claim::InFlight {
            lease_left: Duration::from_millis(left as u64),
        })
    }
}
