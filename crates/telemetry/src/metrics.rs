//! The Prometheus registry every service exposes on its admin port at `/metrics`.
//!
//! [`Metrics`] registers the RED families shared by all services (HTTP and gRPC server
//! request durations, gRPC client call durations: rate and errors are the histograms'
//! counts by status); services register their own next to them. Names follow the
//! OpenTelemetry semantic conventions translated to Prometheus (`http.server.request.duration`
//! becomes `http_server_request_duration_seconds`). Buckets are the conventions' recommended
//! latency buckets, 5 ms to 10 s.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// Latency buckets in seconds.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Labels of an HTTP server request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `http.request.method`.
    pub method: String,
    /// `http.route`: the matched route template, never the raw path (bounded cardinality).
    pub route: String,
    /// `http.response.status_code`.
    pub status: u16,
}

/// Labels of a gRPC call, server or client side.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `rpc.service`.
    pub service: String,
    /// `rpc.method`.
    pub method: String,
    /// `rpc.grpc.status_code` as its name (`OK`, `UNAVAILABLE`, ...).
    pub code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry and the shared RED families. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// `http_server_request_duration_seconds`.
    pub http_server: Histograms<HttpLabels>,
    /// `rpc_server_duration_seconds`.
    pub rpc_server: Histograms<RpcLabels>,
    /// `rpc_client_duration_seconds`.
    pub rpc_client: Histograms<RpcLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the shared families registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_server: Histograms<HttpLabels> = Family::new_with_constructor(latency_histogram);
        let rpc_server: Histograms<RpcLabels> = Family::new_with_constructor(latency_histogram);
        let rpc_client: Histograms<RpcLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests",
            prometheus_client::registry::Unit::Seconds,
            http_server.clone(),
        );
        registry.register_with_unit(
            "rpc_server_duration",
            "Duration of gRPC server calls",
            prometheus_client::registry::Unit::Seconds,
            rpc_server.clone(),
        );
        registry.register_with_unit(
            "rpc_client_duration",
            "Duration of gRPC client calls",
            prometheus_client::registry::Unit::Seconds,
            rpc_client.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            http_server,
            rpc_server,
            rpc_client,
        }
    }

    /// Registers a service's own metric.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// Registers a metric with a unit (appended to its name, `_seconds` for example).
    pub fn register_with_unit(
        &self,
        name: &str,
        help: &str,
        unit: prometheus_client::registry::Unit,
        metric: impl Metric,
    ) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_with_unit(name, help, unit, metric);
        }
    }

    /// Registers a collector that produces values at scrape time.
    pub fn register_collector(&self, collector: impl Collector) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(Box::new(collector));
        }
    }

    /// The registry in the OpenMetrics text format, which Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        }
        text
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
