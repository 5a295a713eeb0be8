//! Client spans and metrics for gRPC calls, with the trace context injected into the call.
//!
//! Wrap a tonic `Channel` (or any `http` client service) with [`GrpcClientLayer`]:
//!
//! ```no_run
//! # async fn example(metrics: faultline_telemetry::metrics::Metrics) -> Result<(), Box<dyn std::error::Error>> {
//! use faultline_telemetry::grpc_client::GrpcClientLayer;
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let traced = tower::ServiceBuilder::new().layer(GrpcClientLayer::new(metrics)).service(channel);
//! // InventoryServiceClient::new(traced)
//! # Ok(()) }
//! ```
//!
//! The callee continues the trace from the injected `traceparent`; the span and the
//! `rpc_client_duration_seconds` family record the status the callee answered.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::http::{grpc_code_name, grpc_parts, grpc_status};
use crate::metrics::{Metrics, RpcLabels};
use crate::propagation::inject_headers;

/// Adds [`GrpcClient`] to a client service.
#[derive(Debug, Clone)]
pub struct GrpcClientLayer {
    metrics: Metrics,
}

impl GrpcClientLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClient {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct GrpcClient<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> Service<Request<B>> for GrpcClient<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let (service, method) = grpc_parts(request.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = Empty,
            "rpc.system" = "grpc",
            "rpc.service" = %service,
            "rpc.method" = %method,
            "rpc.grpc.status_code" = Empty,
            "server.address" = request.uri().host().unwrap_or_default(),
        );
        inject_headers(&span.context(), request.headers_mut());
        ResponseFuture {
            inner: self.inner.call(request).instrument(span.clone()),
            span,
            service,
            method,
            started: Instant::now(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcClient`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        span: Span,
        service: String,
        method: String,
        started: Instant,
        metrics: Metrics,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // A transport failure never reached the server: UNAVAILABLE, as tonic reports it.
        let code = match &result {
            Ok(response) => grpc_status(response),
            Err(_) => 14,
        };
        this.span.record("rpc.grpc.status_code", code);
        if code != 0 {
            this.span.record("otel.status_code", "ERROR");
        }
        this.metrics
            .rpc_client
            .get_or_create(&RpcLabels {
                service: this.service.clone(),
                method: this.method.clone(),
                code: grpc_code_name(code).to_owned(),
            })
            .observe(this.started.elapsed().as_secs_f64());
        Poll::Ready(result)
    }
}
