//! Tower layers that keep calls between services safe when the network, a downstream or
//! the service itself is failing: deadlines that travel, retries that cannot multiply an
//! outage, circuit breaking, bulkheads, hedging, rate limiting, priority load shedding and
//! adaptive client throttling.
//!
//! Every piece is a small [`tower::Layer`] generic over the inner service, with
//! [`tower::BoxError`] as its error, so the same stack serves a tonic client, an axum
//! router and an in-process adapter. Refusals are one type, [`ResilienceError`]; what the
//! inner errors mean is the caller's call, through a [`Classifier`].
//!
//! Two compositions are ready-made:
//! - [`ClientStack`]: calls to one downstream, in the recommended order
//!   `bulkhead → total timeout → retry → hedge → throttle → breaker → attempt timeout`
//!   (see [`stack`] for why that order), composed layer by layer.
//! - [`EdgeStack`]: a server's front door, `rate limit → priority shed → concurrency cap`,
//!   with [`RecoverLayer`] turning refusals into the app's own responses.
//!
//! Each layer's settings are a serde struct whose `Default` is the one place its defaults
//! live, with `validate(path)` naming the offending environment variable. The crate's
//! README shows the three uses Faultline has: a gRPC call, the HTTP edge and an in-process
//! payment adapter.
//!
//! Where tower has the piece, it is used: `Retry` with its `Policy` trait,
//! `ConcurrencyLimit`, `LoadShed`; GCRA comes from `governor`. The rest is written here, and
//! each such module says why (the retry budget, for one, keeps `TpsBudget`'s accounting
//! without its mutex and clock read per call).

#![warn(missing_docs)]

mod backoff;
pub mod breaker;
mod budget;
mod bulkhead;
mod classify;
mod deadline;
pub mod edge;
mod error;
#[cfg(feature = "tonic")]
mod grpc;
mod hedge;
mod latency;
mod limit;
mod rate_limit;
mod reject;
mod retry;
mod shed;
pub mod stack;
mod throttle;
mod timeout;

pub use backoff::{Backoff, Jitter};
pub use breaker::{
    BreakerConfig, BreakerFuture, BreakerLayer, BreakerMetrics, BreakerService, CircuitBreaker,
    Permit, State, StateChange, WindowKind,
};
pub use bulkhead::{
    Bulkhead, BulkheadConfig, BulkheadFuture, BulkheadService, KeyedBulkhead, KeyedBulkheadService,
};
pub use classify::{AllErrorsTransient, Classifier, ErrorClass, ErrorRef};
pub use deadline::{Deadline, Scoped};
pub use edge::{EdgeConfig, EdgeService, EdgeStack, Recover, RecoverFuture, RecoverLayer};
pub use error::{HttpRejection, ResilienceError};
#[cfg(feature = "tonic")]
pub use grpc::{GrpcClassifier, RETRY_PUSHBACK};
pub use hedge::{HedgeConfig, HedgeFuture, HedgeLayer, HedgeService};
pub use rate_limit::{RateLimitConfig, RateLimitLayer, RateLimitService, RateLimiter, TokioClock};
pub use reject::RejectOr;
pub use retry::{
    Idempotent, NeverRetry, RetryBudget, RetryConfig, RetryIf, RetryLayer, RetryPolicy, RetrySafety,
};
pub use shed::{
    AdaptiveLimiter, Priority, PriorityShedLayer, PriorityShedService, ShedConfig, ShedFuture,
};
pub use stack::{ClientConfig, ClientService, ClientStack};
pub use throttle::{
    AdaptiveThrottle, ThrottleConfig, ThrottleFuture, ThrottleLayer, ThrottleService,
};
pub use timeout::{TimeoutConfig, TimeoutFuture, TimeoutLayer, TimeoutService};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
