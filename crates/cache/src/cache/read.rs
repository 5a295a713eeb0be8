//! The read path's steps (the list in the parent module's docs), as methods of the state
//! every clone of a cache shares: serving a Redis answer, the coalesced miss, the lease,
//! early refresh, and the bypass to the origin when Redis cannot answer.

use std::future::Future;

use crate::clock::token;
use crate::entry::{self, Entry};
use crate::flight::Flight;
use crate::key::ResolvedKey;
use crate::metrics::{ErrorKind, Outcome};
use crate::node::Node;
use crate::placement::Placement;
use crate::xfetch::refresh_early;

use super::{CacheValue, Inner, bump};

impl<V: CacheValue> Inner<V> {
    pub(super) fn node(&self, key: &str) -> Option<(&Node, usize)> {
        if self.nodes.is_empty() {
            return None;
        }
        let hash = self.space.resolve(key).hash;
        let index = self.placement.node(hash);
        self.nodes.get(index).map(|node| (node, index))
    }

    /// Runs the origin's load, timing it with the cache's clock (δ, microseconds, at least 1).
    pub(super) async fn load_timed<F, Fut, E>(&self, load: F) -> (Result<Option<V>, E>, u32)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let start = self.clock.now_micros();
        let result = load().await;
        let took = self.clock.now_micros().saturating_sub(start).max(1);
        bump(&self.stats.loads);
        if result.is_err() {
            bump(&self.stats.load_errors);
        }
        (result, u32::try_from(took).unwrap_or(u32::MAX))
    }

    /// A TTL drawn from `[ttl × (1 − jitter), ttl]`.
    pub(super) fn jittered(&self, ttl_ms: u64) -> u64 {
        let cut = ttl_ms as f64 * self.settings.jitter * (1.0 - self.random.unit());
        ttl_ms.saturating_sub(cut.round() as u64).max(1)
    }

    pub(super) async fn remember(&self, key: &str, value: &Option<V>) {
        if let Some(l1) = &self.l1 {
            l1.insert(key.to_owned(), value.clone()).await;
        }
    }

    /// Answers from an entry Redis held: fresh (perhaps refreshed early), or expired but
    /// inside its stale window (reloaded by whoever wins the lease, served stale to others).
    pub(super) async fn serve<F, Fut, E>(
        &self,
        key: &str,
        node: &Node,
        resolved: &ResolvedKey<'_>,
        entry: Entry<V>,
        load: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let now = self.clock.now_micros();
        if now < entry.fresh_until_ms.saturating_mul(1_000) {
            let early = refresh_early(
                now,
                entry.fresh_until_ms,
                entry.delta_us,
                self.settings.beta,
                self.random.unit(),
            );
            if early && let Some(Ok(value)) = self.refresh(key, node, resolved, load).await {
                bump(&self.stats.early_refreshes);
                self.stats.outcome(Outcome::Hit);
                return Ok(value);
            }
            // Not chosen, lease taken by another refresher, or the refresh failed: the value
            // is still fresh.
            self.stats.outcome(if entry.value.is_some() {
                Outcome::Hit
            } else {
                Outcome::NegativeHit
            });
            self.remember(key, &entry.value).await;
            return Ok(entry.value);
        }
        match self.refresh(key, node, resolved, load).await {
            Some(result) => {
                self.stats.outcome(Outcome::Miss);
                result
            }
            None => {
                self.stats.outcome(Outcome::Stale);
                Ok(entry.value)
            }
        }
    }

    /// The miss path, run once per flight: look again (a flight that just finished may have
    /// stored the value, and later whoever holds the lease), then load under the lease, or
    /// wait for its holder a bounded time.
    pub(super) async fn after_miss<F, Fut, E>(
        &self,
        key: &str,
        node: &Node,
        resolved: &ResolvedKey<'_>,
        load: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let token = token();
        let deadline = tokio::time::Instant::now() + self.settings.lease_wait;
        let mut waited = false;
        loop {
            match node.get(&resolved.value).await {
                Ok(bytes) => {
                    if let Some(entry) = self.decode(node, resolved, bytes).await {
                        self.remember(key, &entry.value).await;
                        return Ok(entry.value);
                    }
                }
                Err(_) => return self.bypass_counted(key, load).await,
            }
            match node
                .acquire(&resolved.lease(), &token, self.settings.lease_ttl_ms)
                .await
            {
                Ok(true) => {
                    bump(&self.stats.leases_acquired);
                    return self.load_and_store(key, node, resolved, &token, load).await;
                }
                Ok(false) => {
                    if !waited {
                        bump(&self.stats.leases_busy);
                        waited = true;
                    }
                }
                Err(_) => return self.bypass_counted(key, load).await,
            }
            // Another process is loading: wait for its value, a bounded time.
            if tokio::time::Instant::now() + self.settings.lease_poll > deadline {
                bump(&self.stats.lease_wait_timeouts);
                let (result, _) = self.load_timed(load).await;
                return result;
            }
            tokio::time::sleep(self.settings.lease_poll).await;
        }
    }

    /// Decodes what Redis held; bytes that do not decode are counted, deleted (unless
    /// overwritten meanwhile) and reported as absent.
    pub(super) async fn decode(
        &self,
        node: &Node,
        resolved: &ResolvedKey<'_>,
        bytes: Option<Vec<u8>>,
    ) -> Option<Entry<V>> {
        let bytes = bytes?;
        match entry::decode(&bytes) {
            Ok(entry) => Some(entry),
            Err(corrupt) => {
                self.stats.error(node.index, ErrorKind::Corrupt);
                tracing::warn!(key = %resolved.value, error = %corrupt, "deleting an undecodable cache entry");
                let _ = node.delete_if_equal(&resolved.value, &bytes).await;
                None
            }
        }
    }

    /// The origin's answer when Redis cannot be asked, shared by the concurrent lookups of
    /// `key` in this process (and kept in L1). Redis
    /// being out of reach is exactly when a hot key's misses would all reach the origin at
    /// once; the lease cannot help then, the in-process flight still does.
    pub(super) async fn bypass_together<F, Fut, E>(
        &self,
        key: &str,
        load: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Clone + Send + Sync + 'static,
    {
        self.stats.outcome(Outcome::Bypass);
        match self
            .flights
            .run(key, || self.bypass_counted(key, load))
            .await
        {
            Flight::Led(result) => result,
            Flight::Joined(result) => {
                bump(&self.stats.coalesced);
                result
            }
            Flight::Alone(bypass) => bypass().await,
        }
    }

    /// The origin's answer, kept in L1, for a lookup whose outcome is already counted.
    pub(super) async fn bypass_counted<F, Fut, E>(&self, key: &str, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let (result, _) = self.load_timed(load).await;
        if let Ok(value) = &result {
            self.remember(key, value).await;
        }
        result
    }

    /// Tries to take the lease and reload; `None` if another caller holds it (or Redis
    /// failed), in which case the caller keeps the value it has.
    pub(super) async fn refresh<F, Fut, E>(
        &self,
        key: &str,
        node: &Node,
        resolved: &ResolvedKey<'_>,
        load: F,
    ) -> Option<Result<Option<V>, E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let token = token();
        match node
            .acquire(&resolved.lease(), &token, self.settings.lease_ttl_ms)
            .await
        {
            Ok(true) => {
                bump(&self.stats.leases_acquired);
                Some(self.load_and_store(key, node, resolved, &token, load).await)
            }
            Ok(false) => {
                bump(&self.stats.leases_busy);
                None
            }
            Err(_) => None,
        }
    }

    /// Loads holding the lease `token` and stores the result if the lease is still ours.
    pub(super) async fn load_and_store<F, Fut, E>(
        &self,
        key: &str,
        node: &Node,
        resolved: &ResolvedKey<'_>,
        token: &str,
        load: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let (result, delta_us) = self.load_timed(load).await;
        let value = match result {
            Ok(value) => value,
            Err(error) => {
                // Free the lease so the next caller tries at once instead of waiting it out.
                let _ = node
                    .delete_if_equal(&resolved.lease(), token.as_bytes())
                    .await;
                return Err(error);
            }
        };
        let ttl = if value.is_some() {
            self.settings.ttl_ms
        } else {
            self.settings.negative_ttl_ms
        };
        let ttl = self.jittered(ttl);
        let fresh_until_ms = self.clock.now_micros() / 1_000 + ttl;
        match entry::encode(value.as_ref(), fresh_until_ms, delta_us) {
            Ok(bytes) => {
                let px = ttl + self.settings.stale_ms;
                // Stored only if the lease is still ours: an invalidation since we took it
                // means what we loaded may predate the change, so it goes to this caller only.
                if let Ok(true) = node
                    .store(&resolved.value, &resolved.lease(), token, &bytes, px)
                    .await
                {
                    self.remember(key, &value).await;
                }
            }
            Err(error) => {
                tracing::warn!(key = %resolved.value, %error, "value cannot be encoded; not cached");
                let _ = node
                    .delete_if_equal(&resolved.lease(), token.as_bytes())
                    .await;
            }
        }
        Ok(value)
    }
}
