//! Continuing traces across Kafka.
//!
//! The writer of an outbox row stores its trace context (W3C `traceparent`, `tracestate`,
//! `baggage`) in the row's headers. The relay's send span takes that context as its parent
//! and puts *its own* context in the Kafka record; the consumer's process span takes the
//! record's context as its parent, and whatever the handler writes to the outbox carries the
//! process span on. One trace thus follows a message from the request that caused it, through
//! every hop. Without the `opentelemetry` feature the spans are plain `tracing` spans and no
//! context crosses.

use tracing::Span;

/// Header names that carry the trace context; the relay replaces them rather than copy them.
pub const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// Makes the context carried in `headers` the parent of `span`. A missing or malformed
/// context leaves `span` a new root.
#[cfg(feature = "opentelemetry")]
pub fn adopt<'a>(span: &Span, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let pairs: Vec<(&str, &str)> = headers.into_iter().collect();
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Pairs(&pairs)));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The headers that carry `span`'s context onward.
#[cfg(feature = "opentelemetry")]
pub fn headers_of(span: &Span) -> Vec<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let context = span.context();
    let mut out = Vec::new();
    if context.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut Out(&mut out))
        });
    }
    out
}

/// Without OpenTelemetry nothing crosses.
#[cfg(not(feature = "opentelemetry"))]
pub fn adopt<'a>(_span: &Span, _headers: impl IntoIterator<Item = (&'a str, &'a str)>) {}

/// Without OpenTelemetry nothing crosses.
#[cfg(not(feature = "opentelemetry"))]
pub fn headers_of(_span: &Span) -> Vec<(String, String)> {
    Vec::new()
}

#[cfg(feature = "opentelemetry")]
struct Pairs<'a>(&'a [(&'a str, &'a str)]);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Extractor for Pairs<'_> {
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

#[cfg(feature = "opentelemetry")]
struct Out<'a>(&'a mut Vec<(String, String)>);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Injector for Out<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}
