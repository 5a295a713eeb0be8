//! [`KeyedBulkhead`]: a bulkhead per key (tenant, customer, ...), so that one key's burst
//! cannot take every slot. Idle pools are pruned as the map grows.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service};

use super::{BulkheadConfig, BulkheadFuture, Slots, enter};

/// A bulkhead per key: each key gets its own `max_concurrent` slots.
pub struct KeyedBulkhead<K, F> {
    name: Arc<str>,
    key: F,
    per_key: usize,
    max_wait: Duration,
    pools: Arc<Mutex<Pools<K>>>,
}

struct Pools<K> {
    map: HashMap<K, Arc<Slots>>,
    prune_above: usize,
}

impl<K, F: Clone> Clone for KeyedBulkhead<K, F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            per_key: self.per_key,
            max_wait: self.max_wait,
            pools: self.pools.clone(),
        }
    }
}

impl<K, F> std::fmt::Debug for KeyedBulkhead<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("name", &self.name)
            .field("per_key", &self.per_key)
            .finish()
    }
}

impl<K, F> KeyedBulkhead<K, F>
where
    K: Hash + Eq + Clone,
{
    /// A keyed bulkhead called `name`: `key` picks a request's partition (tenant id, ...),
    /// each partition gets `config.max_concurrent` slots.
    pub fn new(name: &str, config: &BulkheadConfig, key: F) -> Self {
        Self {
            name: name.into(),
            key,
            per_key: config.max_concurrent as usize,
            max_wait: Duration::from_millis(config.max_wait_ms),
            pools: Arc::new(Mutex::new(Pools {
                map: HashMap::new(),
                prune_above: 1_024,
            })),
        }
    }

    /// Keys with a pool right now (busy ones, plus idle ones not yet pruned).
    pub fn tracked_keys(&self) -> usize {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    fn pool(&self, key: K) -> Arc<Slots> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if pools.map.len() >= pools.prune_above {
            // A pool is idle when nobody but the map holds it: no slot taken, nobody waiting.
            pools.map.retain(|_, pool| Arc::strong_count(pool) > 1);
            pools.prune_above = (pools.map.len() * 2).max(1_024);
        }
        let per_key = self.per_key;
        pools
            .map
            .entry(key)
            .or_insert_with(|| Slots::new(per_key))
            .clone()
    }
}

impl<S, K, F: Clone> Layer<S> for KeyedBulkhead<K, F> {
    type Service = KeyedBulkheadService<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBulkheadService {
            inner,
            bulkhead: self.clone(),
        }
    }
}

/// The service made by [`KeyedBulkhead`].
#[derive(Debug)]
pub struct KeyedBulkheadService<S, K, F> {
    inner: S,
    bulkhead: KeyedBulkhead<K, F>,
}

impl<S: Clone, K, F: Clone> Clone for KeyedBulkheadService<S, K, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bulkhead: self.bulkhead.clone(),
        }
    }
}

impl<S, K, F, Req> Service<Req> for KeyedBulkheadService<S, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BulkheadFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let pool = self.bulkhead.pool((self.bulkhead.key)(&request));
        enter(
            &mut self.inner,
            request,
            &self.bulkhead.name,
            &pool,
            self.bulkhead.max_wait,
        )
    }
}
