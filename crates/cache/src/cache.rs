//! The cache-aside read path: L1, Redis, stampede control, early refresh, degradation.
//!
//! A lookup goes, in order:
//! 1. **L1** (optional, in-process, short TTL): a hit ends it.
//! 2. **Redis** `GET` on the key's node. A fresh value is returned, unless XFetch decides
//!    this reader refreshes it early (then, holding the lease, it reloads; if the reload
//!    fails the current value is still returned). An expired value still in its stale window
//!    is reloaded by whoever wins the lease and served to the others meanwhile. Bytes that do
//!    not decode are counted, deleted and treated as a miss.
//! 3. **Coalescing** on a miss: concurrent misses of one key in this process share one trip
//!    below, which looks in Redis once more first (a flight that just ended may have stored
//!    the value). Hits stay outside it, so a hit costs one `GET` and no shared state.
//! 4. **Lease**: `SET lease token NX PX`. The winner loads from the origin and stores the
//!    value only if it still holds the lease (a compare-and-set script that also releases
//!    it). The others poll for the value for up to `lease_wait_ms`, taking the lease
//!    themselves if it is freed or expires (a dead loader), and load on their own if the wait
//!    runs out. Loads without the lease are returned but never written.
//! 5. **Degradation**: if Redis cannot answer (timeout, error, open breaker), the origin
//!    answers. A cache failure never fails a lookup; only the origin's own error does.

mod read;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{Clock, Random, SystemClock, ThreadRandom};
use crate::config::CacheConfig;
use crate::error::{InvalidateError, NodeError, SetupError};
use crate::flight::{Flight, Flights};
use crate::key::KeySpace;
use crate::metrics::{CacheCollector, CacheStats, Outcome, Stats};
use crate::node::{Node, NodeSettings};
use crate::placement::{Placement, Rendezvous};
use faultline_resilience::CircuitBreaker;

/// What a cache can hold: anything serde can write and read back, cheap enough to clone
/// (the L1 and coalesced callers each get a copy).
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// Cache-aside over Redis for values of type `V` under one key space. Cheap to clone; clones
/// share connections, breakers, the L1 and counters.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.stats.name)
            .field("space", &self.inner.space)
            .field("nodes", &self.inner.nodes.len())
            .finish()
    }
}

/// Durations and knobs of the read path, from [`CacheConfig`].
#[derive(Debug, Clone)]
struct Settings {
    ttl_ms: u64,
    jitter: f64,
    negative_ttl_ms: u64,
    stale_ms: u64,
    beta: f64,
    lease_ttl_ms: u64,
    lease_wait: Duration,
    lease_poll: Duration,
}

struct Inner<V> {
    settings: Settings,
    space: KeySpace,
    nodes: Vec<Node>,
    placement: Rendezvous,
    l1: Option<moka::future::Cache<String, Option<V>>>,
    flights: Flights,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    stats: Arc<Stats>,
}

/// Builds a [`Cache`]; the clock and random source are injectable for tests.
pub struct CacheBuilder<V> {
    name: String,
    version: u32,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    value: std::marker::PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

impl<V: CacheValue> CacheBuilder<V> {
    /// Replaces the system clock (freshness, δ).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Replaces the random source (TTL jitter, the early-refresh draw).
    pub fn random(mut self, random: impl Random) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// Builds the cache. Connections open in the background: Redis may be down now and come
    /// up later. Fails only on invalid configuration. Needs a tokio runtime.
    pub async fn build(self) -> Result<Cache<V>, SetupError> {
        let config = &self.config;
        let name = self.name;
        if name.is_empty() || name.chars().any(|c| c == ':' || c.is_whitespace()) {
            return Err(SetupError::Name(name));
        }
        config.validate("")?;
        let urls = if config.enabled {
            config.node_urls()
        } else {
            Vec::new()
        };
        let stats = Arc::new(Stats::new(&name, &urls));
        let node_settings = NodeSettings {
            cache: &name,
            command_timeout: Duration::from_millis(config.command_timeout_ms),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            breaker: &config.breaker,
        };
        let mut nodes = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let label = stats.nodes[index].0.clone();
            let node = Node::new(index, url, label.clone(), &node_settings, stats.clone())
                .map_err(|e| SetupError::Node {
                    node: label,
                    message: e.to_string(),
                })?;
            nodes.push(node);
        }
        // Open the connections now so the first lookups do not pay for them; a node that is
        // down is only logged (its breaker and the origin take it from here).
        for node in &nodes {
            if let Err(error) = node.ping().await {
                tracing::warn!(cache = %name, %error, "Redis node not reachable at start");
            }
        }
        let l1 = config.l1.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(config.l1.max_entries)
                .time_to_live(Duration::from_millis(config.l1.ttl_ms))
                .build()
        });
        Ok(Cache {
            inner: Arc::new(Inner {
                settings: Settings {
                    ttl_ms: config.ttl_ms,
                    jitter: config.ttl_jitter_percent / 100.0,
                    negative_ttl_ms: config.negative_ttl_ms,
                    stale_ms: config.stale_ms,
                    beta: config.early_refresh_beta,
                    lease_ttl_ms: config.lease_ttl_ms,
                    lease_wait: Duration::from_millis(config.lease_wait_ms),
                    lease_poll: Duration::from_millis(config.lease_poll_ms),
                },
                space: KeySpace::new(
                    &config.key_prefix,
                    &name,
                    self.version,
                    config.max_key_bytes,
                ),
                placement: Rendezvous::new(&urls),
                nodes,
                l1,
                flights: Flights::default(),
                clock: self.clock,
                random: self.random,
                stats,
            }),
        })
    }
}

impl<V: CacheValue> Cache<V> {
    /// A builder for the cache `name` (a key-space segment: `catalog`), whose values have
    /// shape `version` (bump it whenever `V` changes shape), with `config`.
    pub fn builder(name: &str, version: u32, config: &CacheConfig) -> CacheBuilder<V> {
        CacheBuilder {
            name: name.to_owned(),
            version,
            config: config.clone(),
            clock: Arc::new(SystemClock),
            random: Arc::new(ThreadRandom),
            value: std::marker::PhantomData,
        }
    }

    /// Shorthand for `Cache::builder(name, version, config).build().await`.
    pub async fn connect(
        name: &str,
        version: u32,
        config: &CacheConfig,
    ) -> Result<Self, SetupError> {
        Self::builder(name, version, config).build().await
    }

    /// The value of `key`: from the cache, or from `load` (the origin) on a miss.
    ///
    /// `load` answers `Ok(Some(value))`, `Ok(None)` for "does not exist" (cached for
    /// `negative_ttl_ms`), or `Err` (not cached, returned to this caller and to callers that
    /// waited on this load, hence `E: Clone`; wrap it in an `Arc` if it is not). The cache's
    /// own failures are never returned: without Redis, `load` answers.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Clone + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        if inner.nodes.is_empty() {
            inner.stats.outcome(Outcome::Bypass);
            return inner.load_timed(load).await.0;
        }
        if let Some(l1) = &inner.l1
            && let Some(value) = l1.get(key).await
        {
            inner.stats.outcome(Outcome::L1Hit);
            return Ok(value);
        }
        let resolved = inner.space.resolve(key);
        let Some(node) = inner.nodes.get(inner.placement.node(resolved.hash)) else {
            return inner.bypass_together(key, load).await;
        };
        // The hit path stays outside the flight: a hit costs one GET and nothing shared.
        let entry = match node.get(&resolved.value).await {
            Ok(bytes) => inner.decode(node, &resolved, bytes).await,
            Err(_) => return inner.bypass_together(key, load).await,
        };
        if let Some(entry) = entry {
            return inner.serve(key, node, &resolved, entry, load).await;
        }
        inner.stats.outcome(Outcome::Miss);
        // A miss: concurrent misses of this key in this process share one trip to the lease
        // and the origin.
        let miss = || inner.after_miss(key, node, &resolved, load);
        match inner.flights.run(key, miss).await {
            Flight::Led(result) => result,
            Flight::Joined(result) => {
                bump(&inner.stats.coalesced);
                result
            }
            Flight::Alone(miss) => miss().await,
        }
    }

    /// Forgets `key` here and in Redis: the L1 copy, the value and any lease (so a load
    /// already running cannot write what it read before the change). Call it when the
    /// source of truth changes (a product-changed event). Other processes' L1 copies live
    /// until their L1 TTL.
    ///
    /// An error means Redis was not reached and the old value may be served until its TTL:
    /// retry (do not acknowledge the event yet).
    pub async fn invalidate(&self, key: &str) -> Result<(), InvalidateError> {
        let inner = &*self.inner;
        let resolved = inner.space.resolve(key);
        if let Some(node) = inner.nodes.get(inner.placement.node(resolved.hash)) {
            node.delete(&[&resolved.value, &resolved.lease()])
                .await
                .map_err(|source| InvalidateError {
                    key: key.to_owned(),
                    source,
                })?;
        }
        // Redis first, then L1: the other way round, a read in this process between the
        // two could copy the old Redis value back into L1 for another L1 TTL.
        if let Some(l1) = &inner.l1 {
            l1.invalidate(key).await;
        }
        bump(&inner.stats.invalidations);
        Ok(())
    }

    /// The configured nodes (passwords removed), in configuration order.
    pub fn nodes(&self) -> Vec<String> {
        self.inner.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Index into [`Cache::nodes`] of the node holding `key`.
    pub fn node_for(&self, key: &str) -> Option<usize> {
        self.inner.node(key).map(|(_, index)| index)
    }

    /// The Redis key holding `key`'s value.
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.space.redis_key(key)
    }

    /// The breaker guarding node `index`: for health pages, `subscribe()` for logs, and
    /// operators' `force_open()` to take a node out by hand.
    pub fn breaker(&self, index: usize) -> Option<&CircuitBreaker> {
        self.inner.nodes.get(index).map(|n| &n.breaker)
    }

    /// Counts this cache's keys on each node (`SCAN`, never `KEYS`), in node order, and
    /// publishes them as the `faultline_cache_node_keys` gauge. Meant for an operator or a
    /// slow periodic task, not the request path: it walks each node's whole key space.
    pub async fn keys_per_node(&self) -> Vec<Result<u64, NodeError>> {
        let inner = &*self.inner;
        let pattern = inner.space.pattern();
        let mut counts = Vec::with_capacity(inner.nodes.len());
        for node in &inner.nodes {
            let count = node.count(&pattern).await;
            if let (Ok(keys), Some((_, stats))) = (&count, inner.stats.nodes.get(node.index)) {
                stats
                    .keys
                    .store(*keys, std::sync::atomic::Ordering::Relaxed);
            }
            counts.push(count);
        }
        counts
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.inner.stats.snapshot()
    }

    /// A Prometheus collector of this cache's counters; register it once
    /// (`metrics.register_collector(cache.collector())`).
    pub fn collector(&self) -> CacheCollector {
        CacheCollector {
            stats: self.inner.stats.clone(),
        }
    }
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
