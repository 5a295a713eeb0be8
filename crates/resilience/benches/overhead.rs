//! Per-call overhead of the full client stack against the bare service and against tower's
//! stock `Timeout` + `Retry` pair, on an in-process service that answers at once: the
//! micro-benchmark. What the stack costs next to a real call over loopback mTLS gRPC is
//! `tests/benches/grpc_call.rs`.
//!
//! They run in one criterion group, so their ratios come from the same run on the
//! same (noisy) machine. Each measured iteration is `ready().await` + `call().await` on
//! one long-lived service, the way a client holding a stack uses it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use faultline_resilience::{
    AllErrorsTransient, ClientConfig, ClientStack, HedgeLayer, Idempotent, RetryLayer, TimeoutLayer,
};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// The bare service: answers at once.
fn bare() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|request: u64| async move { Ok::<u64, BoxError>(request) })
}

/// A service whose future carries 512 bytes, about what a tonic unary call's future holds:
/// it answers at once too, so the difference from [`bare`] is only the size every layer
/// around it has to move.
fn heavy() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|request: u64| {
        let payload = [request as u8; 512];
        async move { Ok::<u64, BoxError>(u64::from(black_box(payload)[0]) + request) }
    })
}

/// The smallest retry policy one would write with tower alone: up to three attempts,
/// drawing on the same kind of budget, no backoff.
#[derive(Clone)]
struct StockPolicy {
    attempts: u32,
    budget: Arc<TpsBudget>,
}

impl<Req: Clone, Res> tower::retry::Policy<Req, Res, BoxError> for StockPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        self.attempts += 1;
        if self.attempts == 1 {
            self.budget.deposit();
        }
        match result {
            Ok(_) => None,
            Err(_) if self.attempts < 3 && self.budget.withdraw() => Some(std::future::ready(())),
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn measure<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    svc: S,
) where
    S: Service<u64, Response = u64> + Clone + 'static,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    let ready = svc.ready().await.expect("an always-ready service");
                    black_box(
                        ready
                            .call(black_box(i))
                            .await
                            .expect("a healthy service never fails"),
                    );
                }
                start.elapsed()
            }
        })
    });
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    // Timers and clocks need the runtime's context when the services are built.
    let _guard = rt.enter();

    let stock = ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            500,
        )))
        .layer(tower::retry::RetryLayer::new(StockPolicy {
            attempts: 0,
            budget: Arc::new(TpsBudget::default()),
        }))
        .service(bare());
    // The nearest tower-only stack to ours: concurrency limit, total timeout, retry,
    // attempt timeout (tower has no breaker; its concurrency limit waits without bound).
    let tower_equivalent = ServiceBuilder::new()
        .layer(tower::limit::ConcurrencyLimitLayer::new(64))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            2_000,
        )))
        .layer(tower::retry::RetryLayer::new(StockPolicy {
            attempts: 0,
            budget: Arc::new(TpsBudget::default()),
        }))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            500,
        )))
        .service(bare());
    let stack = ClientStack::new("bench", &ClientConfig::default())
        .expect("the defaults are valid")
        .idempotent();
    let full = stack.layer(bare());

    let mut group = c.benchmark_group("per_call");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    measure(&mut group, "bare_service", &rt, bare());
    measure(&mut group, "tower_timeout_retry", &rt, stock);
    measure(
        &mut group,
        "tower_four_layer_equivalent",
        &rt,
        tower_equivalent,
    );
    measure(&mut group, "full_client_stack", &rt, full);
    group.finish();

    // The same comparison around an inner future of realistic size (see `heavy`).
    let stock_heavy = ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            500,
        )))
        .layer(tower::retry::RetryLayer::new(StockPolicy {
            attempts: 0,
            budget: Arc::new(TpsBudget::default()),
        }))
        .service(heavy());
    let mut group = c.benchmark_group("per_call_512_byte_future");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    measure(&mut group, "bare_service", &rt, heavy());
    measure(&mut group, "tower_timeout_retry", &rt, stock_heavy);
    measure(&mut group, "full_client_stack", &rt, stack.layer(heavy()));
    group.finish();

    // What each of our layers costs alone over the bare service, to find the hot spots.
    let config = ClientConfig::default();
    let stack = ClientStack::new("bench", &config)
        .expect("the defaults are valid")
        .idempotent();
    let mut group = c.benchmark_group("per_layer");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    measure(&mut group, "bulkhead", &rt, stack.bulkhead().layer(bare()));
    measure(
        &mut group,
        "total_timeout",
        &rt,
        TimeoutLayer::total(config.timeout.total()).layer(bare()),
    );
    measure(
        &mut group,
        "retry",
        &rt,
        RetryLayer::new(
            &config.retry,
            stack.budget().clone(),
            AllErrorsTransient,
            Idempotent,
        )
        .layer(bare()),
    );
    measure(
        &mut group,
        "breaker",
        &rt,
        stack.breaker().layer(AllErrorsTransient).layer(bare()),
    );
    measure(
        &mut group,
        "attempt_timeout",
        &rt,
        TimeoutLayer::per_attempt(config.timeout.attempt()).layer(bare()),
    );
    measure(
        &mut group,
        "hedge_disabled",
        &rt,
        HedgeLayer::new(&config.hedge, stack.budget().clone(), Idempotent).layer(bare()),
    );
    measure(
        &mut group,
        "tower_timeout_alone",
        &rt,
        tower::timeout::TimeoutLayer::new(config.timeout.attempt()).layer(bare()),
    );
    // One clock read: the unit most of the layers above pay in. Benchmarks are built with
    // the dev-dependencies, so tokio's `test-util` is on and `tokio::time::Instant::now`
    // locks the runtime clock's mutex; in production it is `std::time::Instant::now`.
    group.bench_function("tokio_clock_read", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(tokio::time::Instant::now()) })
    });
    group.bench_function("std_clock_read", |b| b.iter(|| black_box(Instant::now())));
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
