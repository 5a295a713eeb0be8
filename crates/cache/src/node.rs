//! One Redis node: a reconnecting connection, a breaker, and a timeout on every command.
//!
//! Every call first asks the node's breaker (an open breaker answers at once, so a dead node
//! costs nothing), then runs under `command_timeout`; a timeout or error counts against the
//! breaker. Callers get a [`NodeError`] and decide what it means: on the read path, "go to
//! the origin". The connection is redis-rs's `ConnectionManager`, created lazily so a
//! service starts while Redis is down, and reconnecting by itself afterwards.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use faultline_resilience::{CircuitBreaker, ErrorClass, Permit};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use tracing::Instrument;

use crate::metrics::{ErrorKind, Stats};

/// Sets the value only while the caller still holds the lease, then drops the lease, in one
/// step: a load whose lease expired or was revoked by an invalidation never writes.
const STORE_IF_LEASED: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";

/// Deletes a key only if it still holds the expected bytes: releases a lease we own, or
/// removes a corrupt value nobody has overwritten since we read it.
const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Why a node gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node's breaker is open.
    #[error("Redis node {node}: circuit open")]
    CircuitOpen {
        /// The node, as configured (password removed).
        node: String,
    },
    /// The command took longer than the command timeout.
    #[error("Redis node {node}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The node.
        node: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// Redis or the connection failed.
    #[error("Redis node {node}: {message}")]
    Redis {
        /// The node.
        node: String,
        /// What redis-rs said.
        message: String,
    },
}

/// A breaker permit that is handed back if the call is dropped unfinished (the caller's
/// request was cancelled): a lost half-open probe slot would keep the breaker half-open.
struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    permit: Option<Permit>,
}

impl Admission<'_> {
    fn record(mut self, outcome: Option<ErrorClass>) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, outcome);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
    }
}

/// One Redis node of a cache.
pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) name: String,
    connection: ConnectionManager,
    pub(crate) breaker: CircuitBreaker,
    timeout: Duration,
    stats: Arc<Stats>,
    store: Arc<Script>,
    delete_if_equal: Arc<Script>,
}

/// What the node needs from the cache's configuration.
pub(crate) struct NodeSettings<'a> {
    pub(crate) cache: &'a str,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker: &'a faultline_resilience::BreakerConfig,
}

impl Node {
    /// A node at `url`; connects on first use. Needs a tokio runtime.
    pub(crate) fn new(
        index: usize,
        url: &str,
        name: String,
        settings: &NodeSettings<'_>,
        stats: Arc<Stats>,
    ) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        // One quick reconnection attempt per command at most: the breaker, not redis-rs's
        // backoff, decides when to try a dead node again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(settings.command_timeout);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            index,
            breaker: CircuitBreaker::new(
                &format!("{}-redis-{index}", settings.cache),
                settings.breaker,
            ),
            name,
            connection,
            timeout: settings.command_timeout,
            stats,
            store: Arc::new(Script::new(STORE_IF_LEASED)),
            delete_if_equal: Arc::new(Script::new(DELETE_IF_EQUAL)),
        })
    }

    /// Runs one command (`operation`, for its span) under the breaker and the timeout.
    ///
    /// Each command that reaches Redis gets a client span named after the OpenTelemetry
    /// database conventions (`db.system.name = redis`, `db.operation.name`), so a slow cache
    /// shows in the order's trace. A refusal by the open breaker never reaches Redis and has
    /// no span; the error counters record it.
    async fn call<T, F, Fut>(&self, operation: &'static str, command: F) -> Result<T, NodeError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let admission = match self.breaker.try_acquire() {
            Ok(permit) => Admission {
                breaker: &self.breaker,
                permit: Some(permit),
            },
            Err(_) => {
                self.stats.error(self.index, ErrorKind::CircuitOpen);
                return Err(NodeError::CircuitOpen {
                    node: self.name.clone(),
                });
            }
        };
        self.stats.command(self.index);
        let failure = Some(ErrorClass::Transient { retry_after: None });
        let span = tracing::info_span!(
            "redis",
            otel.name = operation,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = operation,
            server.address = %self.name,
        );
        let outcome = tokio::time::timeout(self.timeout, command(self.connection.clone()))
            .instrument(span.clone())
            .await;
        if !matches!(outcome, Ok(Ok(_))) {
            span.record("otel.status_code", "ERROR");
        }
        match outcome {
            Ok(Ok(value)) => {
                admission.record(None);
                Ok(value)
            }
            Ok(Err(error)) => {
                admission.record(failure);
                self.stats.error(self.index, ErrorKind::Redis);
                Err(NodeError::Redis {
                    node: self.name.clone(),
                    message: error.to_string(),
                })
            }
            Err(_) => {
                admission.record(failure);
                self.stats.error(self.index, ErrorKind::Timeout);
                Err(NodeError::Timeout {
                    node: self.name.clone(),
                    timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, NodeError> {
        self.call("GET", |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// `SET lease token NX PX ttl`: whether the caller now holds the lease.
    pub(crate) async fn acquire(
        &self,
        lease: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<bool, NodeError> {
        let reply: Option<String> = self
            .call("SET", |mut c| async move {
                redis::cmd("SET")
                    .arg(lease)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply.is_some())
    }

    /// Stores `bytes` for `px_ms` if `token` still holds `lease`, releasing it; whether it
    /// was stored.
    pub(crate) async fn store(
        &self,
        value: &str,
        lease: &str,
        token: &str,
        bytes: &[u8],
        px_ms: u64,
    ) -> Result<bool, NodeError> {
        let script = self.store.clone();
        let stored: i64 = self
            .call("EVALSHA", |mut c| async move {
                script
                    .key(value)
                    .key(lease)
                    .arg(token)
                    .arg(bytes)
                    .arg(px_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Deletes `key` if it still holds `expected`.
    pub(crate) async fn delete_if_equal(
        &self,
        key: &str,
        expected: &[u8],
    ) -> Result<bool, NodeError> {
        let script = self.delete_if_equal.clone();
        let deleted: i64 = self
            .call("EVALSHA", |mut c| async move {
                script.key(key).arg(expected).invoke_async(&mut c).await
            })
            .await?;
        Ok(deleted == 1)
    }

    /// Deletes `keys` outright.
    pub(crate) async fn delete(&self, keys: &[&str]) -> Result<(), NodeError> {
        self.call("DEL", |mut c| async move {
            redis::cmd("DEL").arg(keys).query_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// `PING`, to open the connection early and learn whether the node is up.
    pub(crate) async fn ping(&self) -> Result<(), NodeError> {
        self.call("PING", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// Counts keys matching `pattern` with `SCAN` (never `KEYS`, which blocks the node).
    /// Each page is one command under the timeout.
    pub(crate) async fn count(&self, pattern: &str) -> Result<u64, NodeError> {
        let mut cursor: u64 = 0;
        let mut total = 0_u64;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = self
                .call("SCAN", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            total += page.len() as u64;
            if next == 0 {
                return Ok(total);
            }
            cursor = next;
        }
    }
}
