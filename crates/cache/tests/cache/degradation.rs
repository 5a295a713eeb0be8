//! A dead or frozen Redis (our own `redis-server` child): reads keep working from the origin,
//! the breaker opens, and closes again once Redis is back.

use std::time::Duration;

use faultline_cache::{Cache, CacheConfig};
use faultline_resilience::{BreakerConfig, State};

use crate::support::*;

fn fast_breaker(url: &str) -> CacheConfig {
    CacheConfig {
        command_timeout_ms: 100,
        breaker: BreakerConfig {
            window_size: 10,
            minimum_calls: 5,
            open_wait_ms: 300,
            half_open_calls: 2,
            ..BreakerConfig::default()
        },
        ..config(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_working_while_redis_is_down_and_the_breaker_recovers() {
    let mut server = RedisServer::start();
    let cache: Cache<Item> = Cache::connect(&unique("down"), 1, &fast_breaker(&server.url()))
        .await
        .unwrap();
    let origin = Origin::with(&[item("SKU", 1)]);
    let read = || cache.get_or_load("SKU", || origin.load("SKU"));
    assert_eq!(read().await, Ok(Some(item("SKU", 1))));
    assert_eq!(read().await, Ok(Some(item("SKU", 1))));
    assert_eq!(cache.stats().hits, 1);

    server.stop();
    for _ in 0..20 {
        assert_eq!(read().await, Ok(Some(item("SKU", 1))), "the origin answers");
    }
    let breaker = cache.breaker(0).unwrap();
    assert_eq!(breaker.state(), State::Open);
    let stats = cache.stats();
    assert!(stats.bypasses >= 20, "{stats:?}");
    assert!(stats.circuit_open > 0, "{stats:?}");
    assert!(stats.redis_errors + stats.timeouts >= 5, "{stats:?}");

    server.restart(); // empty: the cached value is gone with the old process
    // Reads go on; once the open wait is over, they are the half-open breaker's probes.
    let waiting = tokio::time::Instant::now();
    while breaker.state() != State::Closed {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the breaker never closed"
        );
        assert_eq!(read().await, Ok(Some(item("SKU", 1))));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back to caching: one more load refills Redis, then hits.
    read().await.unwrap();
    let hits = cache.stats().hits;
    assert_eq!(read().await, Ok(Some(item("SKU", 1))));
    assert_eq!(cache.stats().hits, hits + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_and_the_origin_answers() {
    let server = RedisServer::start();
    let cache: Cache<Item> = Cache::connect(&unique("frozen"), 1, &fast_breaker(&server.url()))
        .await
        .unwrap();
    let origin = Origin::with(&[item("SKU", 1)]);
    cache
        .get_or_load("SKU", || origin.load("SKU"))
        .await
        .unwrap();

    server.freeze();
    for _ in 0..10 {
        assert_eq!(
            cache.get_or_load("SKU", || origin.load("SKU")).await,
            Ok(Some(item("SKU", 1)))
        );
    }
    // Timeouts opened the breaker; after that the node is not even asked.
    let stats = cache.stats();
    assert!(stats.timeouts > 0 && stats.circuit_open > 0, "{stats:?}");
    assert_eq!(stats.redis_errors, 0, "{stats:?}");
    assert_eq!(cache.breaker(0).unwrap().state(), State::Open);
    server.thaw();
}

#[tokio::test]
async fn a_disabled_cache_goes_straight_to_the_origin() {
    let config = CacheConfig {
        enabled: false,
        ..config("redis://127.0.0.1:1")
    };
    let cache: Cache<Item> = Cache::connect(&unique("off"), 1, &config).await.unwrap();
    let origin = Origin::with(&[item("SKU", 1)]);
    for _ in 0..3 {
        assert_eq!(
            cache.get_or_load("SKU", || origin.load("SKU")).await,
            Ok(Some(item("SKU", 1)))
        );
    }
    assert_eq!(origin.loads(), 3);
    assert_eq!(cache.stats().bypasses, 3);
}

#[tokio::test]
async fn a_cache_starts_while_redis_is_down() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let cache: Cache<Item> = Cache::connect(&unique("late"), 1, &fast_breaker(&url))
        .await
        .unwrap();
    let origin = Origin::with(&[item("SKU", 1)]);
    assert_eq!(
        cache.get_or_load("SKU", || origin.load("SKU")).await,
        Ok(Some(item("SKU", 1)))
    );
    assert_eq!(cache.stats().bypasses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_concurrent_misses_of_a_key_still_make_one_origin_load() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let cache: Cache<Item> = Cache::connect(&unique("herd"), 1, &fast_breaker(&url))
        .await
        .unwrap();
    let origin = Origin::with(&[item("HOT", 1)]);
    // The origin answers only once every lookup has had ample time to find Redis gone and
    // queue behind the first one.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut lookups = Vec::new();
    for _ in 0..200 {
        let (cache, origin, release) = (cache.clone(), origin.clone(), release.clone());
        lookups.push(tokio::spawn(async move {
            cache
                .get_or_load("HOT", || async move {
                    release.notified().await;
                    origin.load("HOT").await
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.notify_waiters();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap(), Ok(Some(item("HOT", 1))));
    }
    assert_eq!(
        origin.loads(),
        1,
        "a dead cache must not let the herd through"
    );
    let stats = cache.stats();
    assert_eq!(stats.bypasses, 200, "{stats:?}");
    assert_eq!(stats.coalesced, 199, "{stats:?}");
}
