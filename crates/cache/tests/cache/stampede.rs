//! Stampede control: coalescing in one process, the lease across two, a dead loader's lease
//! running out, stale values served while one process reloads.

use std::sync::Arc;
use std::time::Duration;

use faultline_cache::{Cache, CacheConfig};
use tokio::sync::{Barrier, Notify};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_make_one_origin_load() {
    let url = shared_redis();
    // A Redis answer slower than the default 100 ms (a busy machine) would send a lookup
    // around the cache; this test is about the miss path, so Redis gets all the time it needs.
    let patient = CacheConfig {
        command_timeout_ms: 5_000,
        ..config(&url)
    };
    let cache: Cache<Item> = Cache::connect(&unique("coalesce"), 1, &patient)
        .await
        .unwrap();
    let origin = Origin::with(&[item("HOT", 1)]);
    let barrier = Arc::new(Barrier::new(1_000));
    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let (cache, origin, barrier) = (cache.clone(), origin.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await; // all at once
            cache
                .get_or_load("HOT", || async move {
                    // Give the others time to pile up behind this load.
                    for _ in 0..100 {
                        tokio::task::yield_now().await;
                    }
                    origin.load("HOT").await
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(Some(item("HOT", 1))));
    }
    // However the tasks interleaved, exactly one reached the origin: the others shared its
    // flight or, arriving after it stored the value, found it in Redis.
    assert_eq!(origin.loads(), 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.hits + stats.misses, 1_000, "{stats:?}");
    assert!(stats.coalesced > 0, "{stats:?}");
}

/// Two caches on one Redis without a shared L1: two processes.
async fn two_processes(name: &str, config: &CacheConfig) -> (Cache<Item>, Cache<Item>) {
    (
        Cache::connect(name, 1, config).await.unwrap(),
        Cache::connect(name, 1, config).await.unwrap(),
    )
}

#[tokio::test]
async fn across_processes_one_loads_and_the_other_waits_for_its_value() {
    let url = shared_redis();
    let config = CacheConfig {
        lease_wait_ms: 30_000, // long enough never to run out here
        ..config(&url)
    };
    let (a, b) = two_processes(&unique("lease"), &config).await;
    let origin_a = Origin::with(&[item("SKU", 1)]);
    let origin_b = Origin::with(&[item("SKU", 1)]);
    let (loading, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let first = {
        let (a, origin, loading, release) = (
            a.clone(),
            origin_a.clone(),
            loading.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            a.get_or_load("SKU", || async move {
                loading.notify_one(); // A holds the lease now
                release.notified().await;
                origin.load("SKU").await
            })
            .await
        })
    };
    loading.notified().await;
    let second = {
        let (b, origin) = (b.clone(), origin_b.clone());
        tokio::spawn(async move { b.get_or_load("SKU", || origin.load("SKU")).await })
    };
    // B found the lease taken and is waiting for A's value.
    eventually(Duration::from_secs(10), || b.stats().leases_busy == 1).await;
    release.notify_one();

    assert_eq!(first.await.unwrap(), Ok(Some(item("SKU", 1))));
    assert_eq!(second.await.unwrap(), Ok(Some(item("SKU", 1))));
    assert_eq!(origin_a.loads(), 1);
    assert_eq!(origin_b.loads(), 0, "B never went to the origin");
    assert_eq!(a.stats().leases_acquired, 1);
    assert_eq!(b.stats().leases_acquired, 0);
    assert_eq!(b.stats().lease_wait_timeouts, 0);
}

#[tokio::test]
async fn a_dead_loaders_lease_expires_and_the_other_process_loads() {
    let url = shared_redis();
    let config = CacheConfig {
        lease_ttl_ms: 300,
        lease_wait_ms: 30_000, // B outwaits the lease, not its own patience
        ..config(&url)
    };
    let (a, b) = two_processes(&unique("dead"), &config).await;
    let loading = Arc::new(Notify::new());

    // A takes the lease and its load never finishes: a loader that hung or died.
    let hung = {
        let (a, loading) = (a.clone(), loading.clone());
        tokio::spawn(async move {
            a.get_or_load("SKU", || async move {
                loading.notify_one();
                std::future::pending::<Result<Option<Item>, String>>().await
            })
            .await
        })
    };
    loading.notified().await;

    let origin_b = Origin::with(&[item("SKU", 7)]);
    let got = b.get_or_load("SKU", || origin_b.load("SKU")).await;
    assert_eq!(got, Ok(Some(item("SKU", 7))));
    assert_eq!(origin_b.loads(), 1);
    let stats = b.stats();
    assert_eq!(stats.leases_busy, 1, "B first found the lease taken");
    assert_eq!(stats.leases_acquired, 1, "then took it once it expired");
    assert_eq!(stats.lease_wait_timeouts, 0);
    assert!(!hung.is_finished());
    hung.abort();
    // B stored what it loaded.
    assert!(exists(&url, &b.redis_key("SKU")).await);
}

#[tokio::test]
async fn a_waiter_whose_wait_runs_out_loads_itself_without_writing() {
    let url = shared_redis();
    let config = CacheConfig {
        lease_ttl_ms: 60_000,
        lease_wait_ms: 50,
        lease_poll_ms: 10,
        ..config(&url)
    };
    let (a, b) = two_processes(&unique("patience"), &config).await;
    let loading = Arc::new(Notify::new());
    let hung = {
        let (a, loading) = (a.clone(), loading.clone());
        tokio::spawn(async move {
            a.get_or_load("SKU", || async move {
                loading.notify_one();
                std::future::pending::<Result<Option<Item>, String>>().await
            })
            .await
        })
    };
    loading.notified().await;
    let origin_b = Origin::with(&[item("SKU", 3)]);
    assert_eq!(
        b.get_or_load("SKU", || origin_b.load("SKU")).await,
        Ok(Some(item("SKU", 3)))
    );
    assert_eq!(b.stats().lease_wait_timeouts, 1);
    assert!(
        !exists(&url, &b.redis_key("SKU")).await,
        "no lease, no write"
    );
    hung.abort();
}

#[tokio::test]
async fn while_one_process_reloads_an_expired_value_the_other_serves_it_stale() {
    let url = shared_redis();
    let clock = ManualClock::at_now();
    let config = CacheConfig {
        ttl_ms: 1_000,
        stale_ms: 60_000,
        ..config(&url)
    };
    let name = unique("stale");
    let build = || {
        Cache::<Item>::builder(&name, 1, &config)
            .clock(clock.clone())
            .random(FixedRandom::new(1.0))
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    let origin = Origin::with(&[item("SKU", 1)]);
    a.get_or_load("SKU", || origin.load("SKU")).await.unwrap();
    clock.advance(Duration::from_secs(2)); // expired, inside the stale window
    origin.set(item("SKU", 2));

    let (loading, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let reload = {
        let (a, origin, loading, release) =
            (a.clone(), origin.clone(), loading.clone(), release.clone());
        tokio::spawn(async move {
            a.get_or_load("SKU", || async move {
                loading.notify_one();
                release.notified().await;
                origin.load("SKU").await
            })
            .await
        })
    };
    loading.notified().await;
    let origin_b = Origin::with(&[item("SKU", 2)]);
    assert_eq!(
        b.get_or_load("SKU", || origin_b.load("SKU")).await,
        Ok(Some(item("SKU", 1))),
        "B is served the stale value at once"
    );
    assert_eq!(origin_b.loads(), 0);
    assert_eq!(b.stats().stale, 1);
    release.notify_one();
    assert_eq!(reload.await.unwrap(), Ok(Some(item("SKU", 2))));
    assert_eq!(
        b.get_or_load("SKU", || origin_b.load("SKU")).await,
        Ok(Some(item("SKU", 2)))
    );
}
