//! The catalog through a cache: [`CachedCatalog`] answers lookups from `faultline-cache`
//! (an in-process L1, then Redis) and asks inventory only on a miss.
//!
//! Every order reads the catalog, and most orders name the same few products, so most
//! lookups never leave checkout. What that costs is staleness, bounded two ways:
//!
//! - Inventory announces every catalog change (`ProductChanged` on `catalog.events`, through
//!   its outbox, in the transaction of the change); [`CachedCatalog::product_changed`] drops
//!   the entry. A price change reaches orders after the event's lag plus the other checkout
//!   processes' L1 TTL (1 s by default), plus one lookup that was already in flight.
//! - Without the event, entries live at most the cache's TTL plus its stale window plus the
//!   L1 TTL (5 min + 30 s + 1 s by default).
//!
//! `available` is cached with the rest, so it is a hint up to that old; the reservation in
//! inventory decides. A cache that fails (Redis slow or down) never fails a lookup: the
//! cache's breakers open and lookups go to inventory.

use std::sync::Arc;

use faultline_cache::{Cache, InvalidateError};
use futures_util::future::join_all;

use crate::catalog::{Catalog, CatalogError, CatalogItem, Lookup};

/// Version of the cached value's shape: bump it whenever [`CatalogItem`] changes, so a new
/// deploy reads a fresh key space instead of decoding the old one.
pub const CATALOG_CACHE_VERSION: u32 = 1;

/// [`Catalog`] answered from a cache in front of `C`. Cheap to clone.
#[derive(Debug)]
pub struct CachedCatalog<C> {
    origin: Arc<C>,
    cache: Cache<CatalogItem>,
}

impl<C> Clone for CachedCatalog<C> {
    fn clone(&self) -> Self {
        Self {
            origin: self.origin.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<C: Catalog> CachedCatalog<C> {
    /// Answers from `cache`, falling back to `origin`.
    pub fn new(origin: C, cache: Cache<CatalogItem>) -> Self {
        Self {
            origin: Arc::new(origin),
            cache,
        }
    }

    /// The cache, for its metrics and breakers.
    pub fn cache(&self) -> &Cache<CatalogItem> {
        &self.cache
    }

    /// The origin the cache sits in front of.
    pub fn origin(&self) -> &C {
        &self.origin
    }

    /// Drops what is cached for `sku`, after inventory announced a change. An error means
    /// Redis was not reached: the caller must retry before acknowledging the event.
    pub async fn product_changed(&self, sku: &str) -> Result<(), InvalidateError> {
        self.cache.invalidate(sku).await
    }
}

impl<C: Catalog> Catalog for CachedCatalog<C> {
    /// One cache lookup per SKU, concurrently; each miss asks inventory for its SKU alone, so
    /// that concurrent misses of one product share one load (and a product nobody ordered
    /// with it is never fetched along). Orders name a handful of products, and a miss is
    /// the exception once the cache is warm.
    async fn lookup(
        &self,
        skus: &[String],
        customer: Option<&str>,
    ) -> Result<Lookup, CatalogError> {
        let answers = join_all(skus.iter().map(|sku| {
            self.cache.get_or_load(sku, move || async move {
                let found = self
                    .origin
                    .lookup(std::slice::from_ref(sku), customer)
                    .await?;
                Ok::<_, CatalogError>(found.found.into_iter().find(|item| &item.sku == sku))
            })
        }))
        .await;
        let mut lookup = Lookup::default();
        for (sku, answer) in skus.iter().zip(answers) {
            match answer? {
                Some(item) => lookup.found.push(item),
                None => lookup.missing.push(sku.clone()),
            }
        }
        Ok(lookup)
    }
}
