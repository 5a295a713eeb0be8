//! The cache's hit path against a raw Redis `GET` of the same bytes with the same client.
//!
//! The cache runs with its L1 off, so every lookup is a real Redis round trip plus what the
//! cache adds: key building, the in-process flight, the node's breaker and timeout, decoding
//! the entry and the XFetch draw. The raw side is a `GET` of the very key the cache reads,
//! on a redis-rs `ConnectionManager` (the cache's connection type), decoding nothing. Both
//! run in one criterion group on one runtime, so their ratio comes from one run; it is
//! printed at the end. An L1 hit is measured too, for scale.
//!
//! Runs against a `redis-server` child of its own (no other clients queueing ahead on
//! Redis's one thread), or `FAULTLINE_REDIS_URL` if set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use faultline_cache::{Cache, CacheConfig, L1Config};
use faultline_testkit::RedisServer;
use serde::{Deserialize, Serialize};

/// Shaped like checkout's catalog item.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    sku: String,
    name: String,
    unit_price_minor: i64,
    currency: String,
    available: i64,
}

/// Where to measure: `FAULTLINE_REDIS_URL`, or a fresh server on a free port.
fn redis() -> (String, Option<RedisServer>) {
    if let Ok(url) = std::env::var("FAULTLINE_REDIS_URL") {
        return (url, None);
    }
    let server = RedisServer::start();
    (server.url(), Some(server))
}

fn item() -> Item {
    Item {
        sku: "LAMP-01".into(),
        name: "Desk lamp, brushed steel".into(),
        unit_price_minor: 4_990,
        currency: "EUR".into(),
        available: 42,
    }
}

fn hit_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (url, _server) = redis();
    let name = format!("bench-{}", std::process::id());
    let config = |l1: bool| CacheConfig {
        nodes: url.clone(),
        ttl_ms: 3_600_000,
        l1: L1Config {
            enabled: l1,
            ..L1Config::default()
        },
        ..CacheConfig::default()
    };
    let (cache, l1_cache, mut raw, key) = runtime.block_on(async {
        let cache: Cache<Item> = Cache::connect(&name, 1, &config(false)).await.unwrap();
        let l1_cache: Cache<Item> = Cache::connect(&name, 1, &config(true)).await.unwrap();
        cache
            .get_or_load("LAMP-01", || async { Ok::<_, String>(Some(item())) })
            .await
            .unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let key = cache.redis_key("LAMP-01");
        (cache, l1_cache, raw, key)
    });
    let never = || async { Err::<Option<Item>, String>("the bench only hits".into()) };

    let mut group = c.benchmark_group("hit_path");
    group.bench_function("raw_get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = raw.clone();
            let key = &key;
            async move {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(bytes.expect("the cache stored it"))
            }
        })
    });
    group.bench_function("cache_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(cache.get_or_load("LAMP-01", never).await.unwrap().unwrap())
        })
    });
    group.bench_function("l1_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(
                l1_cache
                    .get_or_load("LAMP-01", never)
                    .await
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    group.finish();
    interleaved(&runtime, &cache, &raw, &key);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1, "every measured lookup was a hit: {stats:?}");
    runtime.block_on(async {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
    });
}

/// The same comparison, robust to a machine whose load drifts (other builds, other Redis
/// clients): short alternating rounds of raw GETs and cache hits, the ratio taken per round,
/// its median reported. Criterion measures each function for seconds in turn, so a change of
/// background load between the two shows up as a difference between them.
fn interleaved(
    runtime: &tokio::runtime::Runtime,
    cache: &Cache<Item>,
    raw: &redis::aio::ConnectionManager,
    key: &str,
) {
    const ROUNDS: usize = 300;
    const CALLS: u32 = 200;
    let ratios = runtime.block_on(async {
        let mut ratios = Vec::with_capacity(ROUNDS);
        let mut conn = raw.clone();
        for round in 0..ROUNDS {
            // Alternate which side goes first, so neither always follows the other.
            let (raw_time, cache_time) = if round % 2 == 0 {
                let raw_time = raw_gets(&mut conn, key, CALLS).await;
                (raw_time, cache_hits(cache, CALLS).await)
            } else {
                let cache_time = cache_hits(cache, CALLS).await;
                (raw_gets(&mut conn, key, CALLS).await, cache_time)
            };
            ratios.push(cache_time / raw_time);
        }
        ratios
    });
    let mut sorted = ratios;
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    INTERLEAVED.with(|cell| cell.set(Some((at(0.25), at(0.5), at(0.75)))));
}

async fn raw_gets(conn: &mut redis::aio::ConnectionManager, key: &str, calls: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
        black_box(bytes);
    }
    start.elapsed().as_secs_f64()
}

async fn cache_hits(cache: &Cache<Item>, calls: u32) -> f64 {
    let never = || async { Err::<Option<Item>, String>("the bench only hits".into()) };
    let start = Instant::now();
    for _ in 0..calls {
        black_box(cache.get_or_load("LAMP-01", never).await.unwrap());
    }
    start.elapsed().as_secs_f64()
}

thread_local! {
    static INTERLEAVED: std::cell::Cell<Option<(f64, f64, f64)>> = const { std::cell::Cell::new(None) };
}

/// Criterion's median for `bench`, in nanoseconds, from this run's estimates (the median,
/// because a busy machine's outliers drag the mean).
fn median_ns(bench: &str) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let path = home.join("hit_path").join(bench).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

criterion_group!(benches, hit_path);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let (Some(raw), Some(hit), Some(l1)) = (
        median_ns("raw_get"),
        median_ns("cache_hit"),
        median_ns("l1_hit"),
    ) {
        println!();
        println!("criterion medians, each measured for seconds in turn:");
        println!("raw GET      {:>9.2} µs  1.00x", raw / 1_000.0);
        println!(
            "cache hit    {:>9.2} µs  {:.2}x  (target <= 1.10x)",
            hit / 1_000.0,
            hit / raw
        );
        println!("L1 hit       {:>9.2} µs  {:.3}x", l1 / 1_000.0, l1 / raw);
    }
    if let Some((q1, median, q3)) = INTERLEAVED.with(std::cell::Cell::get) {
        println!(
            "cache hit / raw GET, interleaved rounds: median {median:.3}x (quartiles {q1:.3}x .. {q3:.3}x)"
        );
    }
}
