//! What the client stack costs next to the call it protects: a real gRPC unary call over
//! loopback with mutual TLS, bare and through `ClientStack` (bulkhead, total timeout, retry
//! with its budget, disabled hedge and throttle, breaker, attempt timeout, `grpc-timeout`
//! propagation), the way checkout calls inventory.
//!
//! The server is tonic's standard health service behind the same mTLS listener the
//! services use, with a certificate from a fresh dev CA, so the call is all transport:
//! TLS, HTTP/2, protobuf, tonic, the loopback, and nothing of ours on the server side.
//! Both shapes run in one criterion group, so their ratio comes from one run.
//!
//! `cargo bench -p faultline-e2e --bench grpc_call` (or `make bench-resilience`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use faultline_auth::MtlsIncoming;
use faultline_auth::ServerTls;
use faultline_e2e::credentials::Credentials;
use faultline_resilience::{ClientConfig, ClientStack, Deadline, GrpcClassifier};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

type Client = HealthClient<tonic::transport::Channel>;

/// Starts the health service on loopback behind mTLS and connects a client to it as the
/// operator. The temporary directory holds the certificates and must outlive both.
async fn connect(dir: &std::path::Path) -> Client {
    let credentials = Credentials::generate(dir).expect("dev credentials");
    let tls = ServerTls::load(credentials.mtls("inventory")).expect("server TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().expect("addr").port()
    );
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(MtlsIncoming::new(listener, tls)),
    );
    let channel = credentials
        .operator_tls("inventory")
        .expect("client TLS")
        .channel(&url, |e| e.connect_timeout(Duration::from_secs(5)))
        .expect("endpoint");
    let mut client = HealthClient::new(channel);
    // Connect (and finish the handshake) before anything is measured.
    client
        .check(HealthCheckRequest::default())
        .await
        .expect("first call");
    client
}

/// One call, as the last hop of a stack makes it: build the request, send the deadline.
async fn check(mut client: Client) -> Result<HealthCheckResponse, BoxError> {
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    Deadline::propagate(&mut request);
    Ok(client.check(request).await?.into_inner())
}

fn measure<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    service: S,
) where
    S: Service<(), Response = HealthCheckResponse, Error = BoxError> + Clone + 'static,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let service = service.clone();
            async move { black_box(service.oneshot(()).await.expect("a healthy server")) }
        })
    });
}

fn grpc_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = std::env::temp_dir().join(format!("grpc-call-bench-{}", std::process::id()));
    let client = rt.block_on(connect(&dir));
    let _guard = rt.enter();

    let bare = {
        let client = client.clone();
        service_fn(move |()| check(client.clone()))
    };
    let stacked = ClientStack::new("bench", &ClientConfig::default())
        .expect("the defaults are valid")
        .classifier(GrpcClassifier)
        .idempotent()
        .layer(bare.clone());

    let mut group = c.benchmark_group("grpc_unary_loopback_mtls");
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    measure(&mut group, "bare_call", &rt, bare);
    measure(&mut group, "through_client_stack", &rt, stacked);
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, grpc_call);
criterion_main!(benches);
