//! One breaker shared by 8 tasks on a multi-threaded runtime, every task calling as fast
//! as it can: calls per second through ours and through `tower-resilience-circuitbreaker`
//! (0.14), side by side in one run. Both guard the same instantly-ready service through
//! their tower layer, configured alike (count window of 100, 50% failure threshold).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faultline_resilience::{AllErrorsTransient, BreakerConfig, CircuitBreaker};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_resilience_circuitbreaker::CircuitBreakerLayer;

const TASKS: u64 = 8;

fn bare() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|request: u64| async move { Ok::<u64, BoxError>(request) })
}

/// Runs `iters` calls split over `TASKS` tasks sharing `svc`'s state; returns wall time.
async fn hammer<S>(svc: S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let per_task = iters.div_ceil(TASKS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let ready = svc.ready().await.expect("an always-ready service");
                    black_box(
                        ready
                            .call(black_box(i))
                            .await
                            .expect("a healthy service never fails"),
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a benchmark task panicked");
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let _guard = rt.enter();

    let config = BreakerConfig {
        window_size: 100,
        minimum_calls: 20,
        failure_rate_threshold: 50.0,
        ..BreakerConfig::default()
    };
    let ours = CircuitBreaker::new("bench", &config)
        .layer(AllErrorsTransient)
        .layer(bare());
    let theirs = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .build()
        .expect("a valid breaker configuration")
        .layer(bare());

    let mut group = c.benchmark_group("breaker_8_tasks");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("faultline", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| hammer(ours.clone(), iters))
    });
    group.bench_function("tower_resilience_circuitbreaker", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| hammer(theirs.clone(), iters))
    });
    group.finish();
}

criterion_group!(benches, contention);
criterion_main!(benches);
