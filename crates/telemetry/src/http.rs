//! Server spans and RED metrics for every request an axum or tonic server handles.
//!
//! [`HttpServerLayer`] continues the caller's trace (from `traceparent`), opens a server span
//! named and attributed by the OpenTelemetry semantic conventions, and records the request's
//! duration by route and status. gRPC requests (content type `application/grpc`) get `rpc.*`
//! attributes and the `rpc_server_duration_seconds` family instead of the HTTP ones.
//!
//! The gRPC status is read from the response headers, where tonic puts it for errors
//! ("trailers-only" responses); a response without it is `OK`, whose status travels in the
//! trailers. Per the conventions, server spans are errors for HTTP 5xx and for the gRPC codes
//! that mean the server failed (not for a client's `INVALID_ARGUMENT` or `NOT_FOUND`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};

use crate::metrics::{HttpLabels, Metrics, RpcLabels};
use crate::propagation::{extract_headers, set_parent};

/// Adds [`HttpServer`] to a service.
#[derive(Debug, Clone)]
pub struct HttpServerLayer {
    metrics: Metrics,
}

impl HttpServerLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for HttpServerLayer {
    type Service = HttpServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpServer {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct HttpServer<S> {
    inner: S,
    metrics: Metrics,
}

/// What a request is, for its span and its metric labels.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Http { method: String, route: String },
    Grpc { service: String, method: String },
}

/// `/pkg.Service/Method` as (`pkg.Service`, `Method`).
pub(crate) fn grpc_parts(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    (service, method)
}

pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The name of a numeric gRPC status code.
pub fn grpc_code_name(code: u16) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The gRPC status a response carries in its headers, `0` (OK) if none.
pub(crate) fn grpc_status<B>(response: &Response<B>) -> u16 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl<S, B, RB> Service<Request<B>> for HttpServer<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (kind, span) = if is_grpc(&request) {
            let (service, method) = grpc_parts(request.uri().path());
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %format!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = Empty,
                "rpc.system" = "grpc",
                "rpc.service" = %service,
                "rpc.method" = %method,
                "rpc.grpc.status_code" = Empty,
            );
            (Kind::Grpc { service, method }, span)
        } else {
            let method = request.method().as_str().to_owned();
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "unmatched".to_owned());
            let span = tracing::info_span!(
                "http.server",
                otel.name = %format!("{method} {route}"),
                otel.kind = "server",
                otel.status_code = Empty,
                "http.request.method" = %method,
                "http.route" = %route,
                "url.path" = %request.uri().path(),
                "http.response.status_code" = Empty,
            );
            (Kind::Http { method, route }, span)
        };
        set_parent(&span, extract_headers(request.headers()));
        ResponseFuture {
            inner: self.inner.call(request).instrument(span.clone()),
            span,
            kind,
            started: Instant::now(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`HttpServer`]: finishes the span and records the metric.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        span: Span,
        kind: Kind,
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
        let elapsed = this.started.elapsed().as_secs_f64();
        match this.kind {
            Kind::Http { method, route } => {
                let status = match &result {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 500,
                };
                this.span.record("http.response.status_code", status);
                if status >= 500 {
                    this.span.record("otel.status_code", "ERROR");
                }
                this.metrics
                    .http_server
                    .get_or_create(&HttpLabels {
                        method: method.clone(),
                        route: route.clone(),
                        status,
                    })
                    .observe(elapsed);
            }
            Kind::Grpc { service, method } => {
                let code = match &result {
                    Ok(response) => grpc_status(response),
                    Err(_) => 13,
                };
                this.span.record("rpc.grpc.status_code", code);
                if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                    this.span.record("otel.status_code", "ERROR");
                }
                this.metrics
                    .rpc_server
                    .get_or_create(&RpcLabels {
                        service: service.clone(),
                        method: method.clone(),
                        code: grpc_code_name(code).to_owned(),
                    })
                    .observe(elapsed);
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            grpc_parts("/faultline.inventory.v1.InventoryService/GetProducts"),
            (
                "faultline.inventory.v1.InventoryService".to_owned(),
                "GetProducts".to_owned()
            )
        );
        assert_eq!(grpc_parts("/"), (String::new(), String::new()));
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_and_status() {
        use tower::ServiceExt;
        let metrics = Metrics::new();
        let service = HttpServerLayer::new(metrics.clone()).layer(tower::service_fn(
            |_request: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(()).unwrap())
            },
        ));
        service
            .oneshot(Request::post("/v1/orders").body(()).unwrap())
            .await
            .unwrap();
        let text = metrics.render();
        assert!(
            text.contains(
                r#"http_server_request_duration_seconds_count{method="POST",route="unmatched",status="503"} 1"#
            ),
            "{text}"
        );
    }
}
