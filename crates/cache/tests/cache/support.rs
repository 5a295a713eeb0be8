//! What the tests share: an origin that counts its loads, a clock and a random source the
//! test sets, and `redis-server` children.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faultline_cache::{CacheConfig, Clock, L1Config, Random};
use serde::{Deserialize, Serialize};

/// A catalog item as checkout caches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) unit_price_minor: i64,
}

pub(crate) fn item(sku: &str, price: i64) -> Item {
    Item {
        sku: sku.into(),
        name: format!("{sku} name"),
        unit_price_minor: price,
    }
}

/// The origin: a map of items, counting every load.
#[derive(Debug, Default)]
pub(crate) struct Origin {
    items: Mutex<HashMap<String, Item>>,
    loads: AtomicUsize,
}

impl Origin {
    pub(crate) fn with(items: &[Item]) -> Arc<Self> {
        let origin = Self::default();
        for item in items {
            origin.set(item.clone());
        }
        Arc::new(origin)
    }

    pub(crate) fn set(&self, item: Item) {
        self.items.lock().unwrap().insert(item.sku.clone(), item);
    }

    pub(crate) fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// A load, as the cache's loader calls it.
    pub(crate) async fn load(&self, sku: &str) -> Result<Option<Item>, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.items.lock().unwrap().get(sku).cloned())
    }
}

/// A clock the test moves.
#[derive(Debug, Clone)]
pub(crate) struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub(crate) fn at_now() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Self(Arc::new(AtomicU64::new(now.as_micros() as u64)))
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst) / 1_000
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    pub(crate) fn set_ms(&self, ms: u64) {
        self.0.store(ms * 1_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A "random" source that returns what the test set.
#[derive(Debug, Clone)]
pub(crate) struct FixedRandom(Arc<AtomicU64>);

impl FixedRandom {
    pub(crate) fn new(value: f64) -> Self {
        Self(Arc::new(AtomicU64::new(value.to_bits())))
    }

    pub(crate) fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl Random for FixedRandom {
    fn unit(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

/// The shared server's URL.
pub(crate) fn shared_redis() -> String {
    std::env::var("FAULTLINE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A cache name no other test (or earlier run) uses.
pub(crate) fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t-{name}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Settings for tests: L1 off unless a test wants it, the given nodes.
pub(crate) fn config(nodes: &str) -> CacheConfig {
    CacheConfig {
        nodes: nodes.into(),
        l1: L1Config {
            enabled: false,
            ..L1Config::default()
        },
        ..CacheConfig::default()
    }
}

/// A plain connection to look at what the cache wrote.
pub(crate) async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub(crate) async fn exists(url: &str, key: &str) -> bool {
    let mut conn = raw(url).await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap()
        == 1
}

pub(crate) async fn pttl(url: &str, key: &str) -> i64 {
    let mut conn = raw(url).await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Waits, polling, until `done` holds (at most `limit`): for conditions reached through
/// real time passing (a lease expiring, a breaker's open wait), never to measure it.
pub(crate) async fn eventually<F: FnMut() -> bool>(limit: Duration, mut done: F) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) use faultline_testkit::RedisServer;
