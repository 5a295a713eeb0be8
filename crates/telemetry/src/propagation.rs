//! Moving the W3C trace context (`traceparent`, `tracestate`, `baggage`) across process
//! boundaries with the globally registered propagator.
//!
//! The outbox writes [`current_headers`] into each row, so the relay and the consumer on the
//! other side of Kafka continue the trace of the request that wrote it; HTTP and gRPC use
//! [`inject_headers`] and [`extract_headers`]. An unparseable `traceparent` is ignored: the
//! extracted context is empty and the span starts a new trace, never an error.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct MapCarrier<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct PairsExtractor<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Writes `context` into HTTP (and gRPC metadata) headers.
pub fn inject_headers(context: &Context, headers: &mut HeaderMap) {
    global::get_text_map_propagator(|p| p.inject_context(context, &mut HeaderInjector(headers)));
}

/// Reads a context from HTTP (and gRPC metadata) headers; empty if there is none or it is
/// malformed.
pub fn extract_headers(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// The current span's context as header name/value pairs, for an outbox row or a Kafka
/// record. Empty when there is no valid span.
pub fn current_headers() -> BTreeMap<String, String> {
    context_headers(&tracing::Span::current().context())
}

/// `context` as header name/value pairs.
pub fn context_headers(context: &Context) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if context.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(context, &mut MapCarrier(&mut map)));
    }
    map
}

/// Reads a context from name/value pairs (Kafka headers, outbox headers).
pub fn extract_pairs(pairs: &[(&str, &str)]) -> Context {
    global::get_text_map_propagator(|p| p.extract(&PairsExtractor(pairs)))
}

/// Makes `context` the parent of `span` when it carries a valid remote span; otherwise
/// leaves `span` as it is (a new root, or a child of the current span).
pub fn set_parent(span: &tracing::Span, context: Context) {
    if context.span().span_context().is_valid() {
        // Fails only if the span is disabled, in which case there is nothing to link.
        let _ = span.set_parent(context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    fn with_propagator() {
        global::set_text_map_propagator(TraceContextPropagator::new());
    }

    #[test]
    fn a_traceparent_survives_headers_and_pairs() {
        with_propagator();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = extract_pairs(&[("traceparent", parent)]);
        assert!(context.span().span_context().is_valid());
        assert_eq!(
            context_headers(&context)
                .get("traceparent")
                .map(String::as_str),
            Some(parent)
        );

        let mut headers = HeaderMap::new();
        inject_headers(&context, &mut headers);
        let back = extract_headers(&headers);
        assert_eq!(
            back.span().span_context().trace_id(),
            context.span().span_context().trace_id()
        );
    }

    #[test]
    fn garbage_is_ignored_not_an_error() {
        with_propagator();
        for bad in [
            "nonsense",
            "00-zzzz-yyyy-01",
            "",
            "00-00000000000000000000000000000000-0000000000000000-01",
        ] {
            let context = extract_pairs(&[("traceparent", bad)]);
            assert!(!context.span().span_context().is_valid(), "{bad}");
            assert!(context_headers(&context).is_empty());
        }
    }
}
