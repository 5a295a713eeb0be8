//! Hits, misses, expiry, jitter, negative caching, early refresh, corrupt values,
//! invalidation, key versions and long keys, on the shared Redis.

use std::sync::Arc;
use std::time::Duration;

use faultline_cache::{Cache, CacheConfig, L1Config};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::support::*;

async fn cache(name: &str, config: &CacheConfig) -> Cache<Item> {
    Cache::connect(name, 1, config).await.unwrap()
}

#[tokio::test]
async fn a_miss_loads_and_stores_then_the_next_lookup_hits() {
    let url = shared_redis();
    let name = unique("hit");
    let cache = cache(&name, &config(&url)).await;
    let origin = Origin::with(&[item("LAMP-01", 4_990)]);

    let first = cache
        .get_or_load("LAMP-01", || origin.load("LAMP-01"))
        .await;
    assert_eq!(first, Ok(Some(item("LAMP-01", 4_990))));
    let second = cache
        .get_or_load("LAMP-01", || origin.load("LAMP-01"))
        .await;
    assert_eq!(second, Ok(Some(item("LAMP-01", 4_990))));

    assert_eq!(origin.loads(), 1);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits, stats.loads), (1, 1, 1));
    let key = cache.redis_key("LAMP-01");
    assert_eq!(key, format!("faultline:{name}:v1:LAMP-01"));
    // Kept for TTL + stale window, jitter taking at most 10% off the TTL.
    let defaults = CacheConfig::default();
    let pttl = pttl(&url, &key).await as u64;
    let most = defaults.ttl_ms + defaults.stale_ms;
    assert!(
        pttl <= most && pttl > most - defaults.ttl_ms / 10 - 5_000,
        "{pttl}"
    );
}

#[tokio::test]
async fn an_expired_value_is_reloaded() {
    let url = shared_redis();
    let clock = ManualClock::at_now();
    let random = FixedRandom::new(1.0); // no jitter, no early refresh
    let cache: Cache<Item> = Cache::builder(&unique("expiry"), 1, &config(&url))
        .clock(clock.clone())
        .random(random)
        .build()
        .await
        .unwrap();
    let origin = Origin::with(&[item("MUG-04", 1_200)]);
    let load = || origin.load("MUG-04");

    cache.get_or_load("MUG-04", load).await.unwrap();
    clock.advance(Duration::from_millis(CacheConfig::default().ttl_ms - 1));
    cache.get_or_load("MUG-04", load).await.unwrap();
    assert_eq!(origin.loads(), 1, "fresh one millisecond before expiry");

    origin.set(item("MUG-04", 1_500));
    clock.advance(Duration::from_millis(1));
    let reloaded = cache.get_or_load("MUG-04", load).await.unwrap();
    assert_eq!(reloaded, Some(item("MUG-04", 1_500)));
    assert_eq!(origin.loads(), 2);
}

#[tokio::test]
async fn ttls_are_jittered_within_the_documented_spread() {
    let url = shared_redis();
    let random = FixedRandom::new(1.0);
    let config = CacheConfig {
        ttl_ms: 100_000,
        ttl_jitter_percent: 20.0,
        stale_ms: 0,
        ..config(&url)
    };
    let cache: Cache<Item> = Cache::builder(&unique("jitter"), 1, &config)
        .random(random.clone())
        .build()
        .await
        .unwrap();
    let origin = Origin::with(&[item("A", 1), item("B", 2), item("C", 3)]);

    // u = 1: the full TTL; u -> 0: 20% off; u = 0.5: 10% off.
    for (sku, u, expected) in [
        ("A", 1.0, 100_000),
        ("B", 1e-12, 80_000),
        ("C", 0.5, 90_000),
    ] {
        random.set(u);
        cache.get_or_load(sku, || origin.load(sku)).await.unwrap();
        let pttl = pttl(&url, &cache.redis_key(sku)).await;
        assert!(
            pttl <= expected && pttl > expected - 5_000,
            "{sku}: PTTL {pttl}, expected about {expected}"
        );
    }
}

#[tokio::test]
async fn not_found_is_cached_with_its_own_ttl() {
    let url = shared_redis();
    let config = CacheConfig {
        negative_ttl_ms: 7_000,
        stale_ms: 0,
        ttl_jitter_percent: 0.0,
        ..config(&url)
    };
    let cache: Cache<Item> = cache(&unique("negative"), &config).await;
    let origin = Origin::with(&[]);

    assert_eq!(
        cache.get_or_load("GHOST", || origin.load("GHOST")).await,
        Ok(None)
    );
    assert_eq!(
        cache.get_or_load("GHOST", || origin.load("GHOST")).await,
        Ok(None)
    );
    assert_eq!(origin.loads(), 1);
    assert_eq!(cache.stats().negative_hits, 1);
    let pttl = pttl(&url, &cache.redis_key("GHOST")).await;
    assert!(pttl <= 7_000 && pttl > 2_000, "{pttl}");
}

#[tokio::test]
async fn origin_errors_are_returned_and_not_cached() {
    let url = shared_redis();
    let cache: Cache<Item> = cache(&unique("error"), &config(&url)).await;
    let failing = || async { Err::<Option<Item>, _>("inventory unavailable".to_owned()) };
    assert_eq!(
        cache.get_or_load("X", failing).await,
        Err("inventory unavailable".to_owned())
    );
    assert!(!exists(&url, &cache.redis_key("X")).await);
    // The lease was released: the next caller loads at once.
    let origin = Origin::with(&[item("X", 1)]);
    assert_eq!(
        cache.get_or_load("X", || origin.load("X")).await,
        Ok(Some(item("X", 1)))
    );
    assert_eq!(cache.stats().lease_wait_timeouts, 0);
}

#[tokio::test]
async fn xfetch_refreshes_a_hot_key_before_it_expires() {
    let url = shared_redis();
    let clock = ManualClock::at_now();
    let random = FixedRandom::new(1.0);
    let config = CacheConfig {
        ttl_ms: 60_000,
        ttl_jitter_percent: 0.0,
        early_refresh_beta: 1.0,
        ..config(&url)
    };
    let cache: Cache<Item> = Cache::builder(&unique("xfetch"), 1, &config)
        .clock(clock.clone())
        .random(random.clone())
        .build()
        .await
        .unwrap();
    let origin = Origin::with(&[item("HOT", 100)]);
    // Every load takes 50 ms of the test's clock: δ = 50 ms.
    let load = || {
        let (clock, origin) = (clock.clone(), origin.clone());
        async move {
            clock.advance(Duration::from_millis(50));
            origin.load("HOT").await
        }
    };

    cache.get_or_load("HOT", load).await.unwrap();
    let expiry_ms = clock.now_ms() + 60_000;
    // 10 ms before expiry.
    clock.set_ms(expiry_ms - 10);

    // u = 1: ln u = 0, no head start: served as is.
    cache.get_or_load("HOT", load).await.unwrap();
    assert_eq!(origin.loads(), 1);
    // u = e^-0.1: a head start of δ·0.1 = 5 ms < 10 ms: still served as is.
    random.set((-0.1_f64).exp());
    cache.get_or_load("HOT", load).await.unwrap();
    assert_eq!(origin.loads(), 1);
    // u = e^-1: a head start of 50 ms >= 10 ms: this reader refreshes, before expiry.
    random.set((-1.0_f64).exp());
    origin.set(item("HOT", 120));
    let refreshed = cache.get_or_load("HOT", load).await.unwrap();
    assert_eq!(refreshed, Some(item("HOT", 120)));
    assert_eq!(origin.loads(), 2);
    assert_eq!(cache.stats().early_refreshes, 1);

    // The refreshed value is fresh for a whole TTL from now: no refresh at the old expiry.
    random.set(1.0);
    clock.set_ms(expiry_ms + 1_000);
    assert_eq!(
        cache.get_or_load("HOT", load).await.unwrap(),
        Some(item("HOT", 120))
    );
    assert_eq!(origin.loads(), 2);
}

#[tokio::test]
async fn a_corrupt_value_is_a_miss_deleted_and_counted() {
    let url = shared_redis();
    let cache: Cache<Item> = cache(&unique("corrupt"), &config(&url)).await;
    let key = cache.redis_key("BAD");
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(b"\xfc\x01garbage".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();

    // With the origin failing, nothing is written back: the bad bytes are simply gone.
    let failing = || async { Err::<Option<Item>, _>("down".to_owned()) };
    assert_eq!(
        cache.get_or_load("BAD", failing).await,
        Err("down".to_owned())
    );
    assert!(!exists(&url, &key).await, "the corrupt value was deleted");
    assert_eq!(cache.stats().corrupt, 1);

    // A value of another shape under the same version: a miss, reloaded and replaced.
    let other = r#"{"sku":"BAD","price":"twelve"}"#;
    let mut bytes = vec![0xfc, 1];
    bytes.extend_from_slice(&u64::MAX.to_be_bytes());
    bytes.extend_from_slice(&1_u32.to_be_bytes());
    bytes.extend_from_slice(other.as_bytes());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(bytes)
        .query_async(&mut conn)
        .await
        .unwrap();
    let origin = Origin::with(&[item("BAD", 9)]);
    assert_eq!(
        cache.get_or_load("BAD", || origin.load("BAD")).await,
        Ok(Some(item("BAD", 9)))
    );
    assert_eq!(cache.stats().corrupt, 2);
    assert_eq!(
        cache.get_or_load("BAD", || origin.load("BAD")).await,
        Ok(Some(item("BAD", 9)))
    );
    assert_eq!(origin.loads(), 1);
}

#[tokio::test]
async fn invalidation_drops_the_value_and_the_l1_copy() {
    let url = shared_redis();
    let config = CacheConfig {
        l1: L1Config {
            enabled: true,
            ttl_ms: 60_000,
            max_entries: 100,
        },
        ..config(&url)
    };
    let cache: Cache<Item> = cache(&unique("invalidate"), &config).await;
    let origin = Origin::with(&[item("LAMP-01", 4_990)]);
    let load = || origin.load("LAMP-01");

    cache.get_or_load("LAMP-01", load).await.unwrap();
    origin.set(item("LAMP-01", 3_990)); // the price changes; the event is on its way
    assert_eq!(
        cache.get_or_load("LAMP-01", load).await.unwrap(),
        Some(item("LAMP-01", 4_990))
    );
    assert_eq!(cache.stats().l1_hits, 1);

    cache.invalidate("LAMP-01").await.unwrap();
    assert!(!exists(&url, &cache.redis_key("LAMP-01")).await);
    assert_eq!(
        cache.get_or_load("LAMP-01", load).await.unwrap(),
        Some(item("LAMP-01", 3_990))
    );
    assert_eq!(origin.loads(), 2);
}

#[tokio::test]
async fn invalidation_during_a_load_keeps_the_old_read_out_of_the_cache() {
    let url = shared_redis();
    let cache: Cache<Item> = cache(&unique("race"), &config(&url)).await;
    let origin = Origin::with(&[item("SKU", 1)]);
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let slow = {
        let (cache, origin, started, release) = (
            cache.clone(),
            origin.clone(),
            started.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            cache
                .get_or_load("SKU", || async move {
                    let read = origin.load("SKU").await; // reads the old price
                    started.notify_one();
                    release.notified().await;
                    read
                })
                .await
        })
    };
    started.notified().await;
    origin.set(item("SKU", 2));
    cache.invalidate("SKU").await.unwrap(); // the product-changed event arrives
    release.notify_one();

    // Its own caller gets what it read; the cache does not keep it.
    assert_eq!(slow.await.unwrap(), Ok(Some(item("SKU", 1))));
    assert!(!exists(&url, &cache.redis_key("SKU")).await);
    assert_eq!(
        cache.get_or_load("SKU", || origin.load("SKU")).await,
        Ok(Some(item("SKU", 2)))
    );
}

#[tokio::test]
async fn a_new_version_never_reads_the_old_shape() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct ItemV2 {
        sku: String,
        price: Price,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Price {
        minor: i64,
        currency: String,
    }

    let url = shared_redis();
    let name = unique("version");
    let v1: Cache<Item> = Cache::connect(&name, 1, &config(&url)).await.unwrap();
    let v2: Cache<ItemV2> = Cache::connect(&name, 2, &config(&url)).await.unwrap();
    let origin = Origin::with(&[item("LAMP-01", 4_990)]);
    v1.get_or_load("LAMP-01", || origin.load("LAMP-01"))
        .await
        .unwrap();

    let new = ItemV2 {
        sku: "LAMP-01".into(),
        price: Price {
            minor: 4_990,
            currency: "EUR".into(),
        },
    };
    let loaded = v2
        .get_or_load("LAMP-01", || async { Ok::<_, String>(Some(new.clone())) })
        .await;
    assert_eq!(loaded, Ok(Some(new)));
    assert_eq!(v2.stats().corrupt, 0, "the old bytes were never read");
    assert_eq!(
        v2.redis_key("LAMP-01"),
        format!("faultline:{name}:v2:LAMP-01")
    );
}

#[tokio::test]
async fn long_keys_are_stored_under_their_digest() {
    let url = shared_redis();
    let cache: Cache<Item> = cache(&unique("long"), &config(&url)).await;
    let sku = "X".repeat(500);
    let origin = Origin::with(&[item(&sku, 1)]);
    cache.get_or_load(&sku, || origin.load(&sku)).await.unwrap();
    cache.get_or_load(&sku, || origin.load(&sku)).await.unwrap();
    assert_eq!(origin.loads(), 1);
    let key = cache.redis_key(&sku);
    assert!(key.len() < 200, "{key}");
    assert!(key.contains(&format!("{}#", "X".repeat(32))), "{key}");
    assert!(exists(&url, &key).await);
}

/// Checked when compiling: a cache is shared across tasks, and a lookup (or an invalidation)
/// can run in a spawned task or an axum handler.
#[allow(dead_code)]
fn caches_and_their_futures_cross_threads(cache: &Cache<Item>, origin: &Origin) {
    fn shared<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn send<T: Send>(_: T) {}
    shared(cache);
    send(cache.get_or_load("SKU", || origin.load("SKU")));
    send(cache.invalidate("SKU"));
    send(cache.keys_per_node());
}
