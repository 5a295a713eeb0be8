//! Telemetry set up the same way in every Faultline service: one OpenTelemetry trace from
//! the HTTP request through the outbox, Kafka and gRPC; RED metrics in Prometheus text
//! format; JSON log lines that carry the trace and span ids.
//!
//! - [`init`] installs the tracer (OTLP over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//!   spans without export otherwise), the W3C `traceparent`/`tracestate`/`baggage`
//!   propagators, and the log subscriber. [`Telemetry::shutdown`] flushes.
//! - [`propagation`] moves the trace context in and out of HTTP headers, gRPC metadata and
//!   Kafka/outbox headers.
//! - [`http::HttpServerLayer`] gives every request to an axum or tonic server a server span
//!   and RED metrics; [`grpc_client::GrpcClientLayer`] does the same for tonic clients and
//!   injects the context into the call.
//! - [`metrics::Metrics`] holds the Prometheus registry and renders it.
//! - [`logs`] is the JSON line format.
//!
//! Export never slows a request: spans go through the SDK's batch processor, whose bounded
//! queue drops (and counts, reported by the SDK) when the collector cannot keep up.

#![warn(missing_docs)]

pub mod grpc_client;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod propagation;

use std::io::IsTerminal;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines when stdout is not a terminal, readable lines when it is.
    Auto,
    /// Always JSON lines.
    Json,
    /// Always readable lines.
    Pretty,
}

/// What [`init`] needs. [`TelemetryConfig::from_env`] reads the standard OpenTelemetry
/// variables; the defaults are written there.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of every span and the `service` of every log line.
    pub service: &'static str,
    /// OTLP/gRPC endpoint (`http://host:4317`); `None` turns export off.
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled; child spans follow their parent's decision.
    pub sampling_ratio: f64,
    /// Log line format.
    pub log_format: LogFormat,
}

/// Why telemetry could not start.
#[derive(Debug)]
pub struct InitError(String);

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "telemetry: {}", self.0)
    }
}

impl std::error::Error for InitError {}

impl TelemetryConfig {
    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT` (unset or empty: no export),
    /// `OTEL_TRACES_SAMPLER_ARG` (ratio 0..=1, default 1) and `FAULTLINE_LOG_FORMAT`
    /// (`auto`, `json` or `pretty`, default `auto`).
    pub fn from_env(service: &'static str) -> Result<Self, InitError> {
        let otlp_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let sampling_ratio = match std::env::var("OTEL_TRACES_SAMPLER_ARG") {
            Err(_) => 1.0,
            Ok(raw) => match raw.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
                _ => {
                    return Err(InitError(format!(
                        "OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1, got {raw:?}"
                    )));
                }
            },
        };
        let log_format = match std::env::var("FAULTLINE_LOG_FORMAT").as_deref() {
            Err(_) | Ok("auto") | Ok("") => LogFormat::Auto,
            Ok("json") => LogFormat::Json,
            Ok("pretty") => LogFormat::Pretty,
            Ok(other) => {
                return Err(InitError(format!(
                    "FAULTLINE_LOG_FORMAT must be auto, json or pretty, got {other:?}"
                )));
            }
        };
        Ok(Self {
            service,
            otlp_endpoint,
            sampling_ratio,
            log_format,
        })
    }
}

/// Installed telemetry; call [`Telemetry::shutdown`] last, to flush spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is still queued and stops the exporter. (The SDK's shutdown flushes
    /// first; flushing separately would wait twice on an unreachable collector.)
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "tracer shutdown failed");
        }
    }
}

/// Installs the tracer, the propagators and the log subscriber. Call once, first thing in
/// `main`, inside the Tokio runtime.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, InitError> {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    let resource = Resource::builder()
        .with_service_name(config.service)
        .with_attribute(KeyValue::new("service.namespace", "faultline"))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))));
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| InitError(format!("OTLP exporter for {endpoint}: {e}")))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("faultline");
    global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = if json {
        registry
            .with(fmt::layer().event_format(logs::JsonLines::new(config.service)))
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    installed.map_err(|e| InitError(e.to_string()))?;

    match &config.otlp_endpoint {
        Some(endpoint) => {
            tracing::info!(%endpoint, ratio = config.sampling_ratio, "exporting traces over OTLP")
        }
        None => tracing::info!("tracing export is off (OTEL_EXPORTER_OTLP_ENDPOINT is not set)"),
    }
    Ok(Telemetry { provider })
}

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
