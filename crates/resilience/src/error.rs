//! The one error type every layer in this crate rejects a call with.
//!
//! Layers return [`tower::BoxError`], as tower's own layers do, so they stack in any order
//! and plug into axum and tonic unchanged. A call that a layer refused (or gave up on) fails
//! with a boxed [`ResilienceError`]; a call the inner service failed keeps the inner error
//! untouched. [`ResilienceError::find`] tells the two apart, and [`ResilienceError::http_status`]
//! and [`ResilienceError::retry_after`] give an HTTP edge what it needs for a `429`/`503`/`504`
//! with `Retry-After`.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower::BoxError;

use crate::classify::ErrorClass;
use crate::shed::Priority;

/// Why a layer refused or abandoned a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResilienceError {
    /// The overall deadline passed before an answer arrived.
    #[error("deadline exceeded after {budget:?}")]
    DeadlineExceeded {
        /// The budget the call had when it started.
        budget: Duration,
    },
    /// One attempt took longer than the per-attempt timeout (it may be retried).
    #[error("attempt timed out after {timeout:?}")]
    AttemptTimedOut {
        /// The per-attempt timeout.
        timeout: Duration,
    },
    /// The downstream's circuit breaker is open: the call was not sent.
    #[error("circuit breaker `{name}` is open; next probe in {retry_after:?}")]
    CircuitOpen {
        /// The breaker (the downstream's name).
        name: Arc<str>,
        /// How long until the breaker lets probes through again (zero when it is already
        /// half-open and all probe slots are taken; the configured wait when an operator
        /// forced it open).
        retry_after: Duration,
    },
    /// Every slot of a bulkhead stayed taken for the whole allowed wait.
    #[error("bulkhead `{name}` is full (waited {waited:?})")]
    BulkheadFull {
        /// The bulkhead (the downstream's or partition's name).
        name: Arc<str>,
        /// How long the call waited for a slot.
        waited: Duration,
    },
    /// The caller's key is over its rate; try again after `retry_after`.
    #[error("rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// When the next call from this key would be allowed.
        retry_after: Duration,
    },
    /// Shed by the adaptive concurrency limit to protect higher-priority work.
    #[error("shed {priority:?} request under load; retry after {retry_after:?}")]
    Shed {
        /// The priority the request was classified as.
        priority: Priority,
        /// A hint for `Retry-After`.
        retry_after: Duration,
    },
    /// Rejected locally by adaptive client throttling: the downstream has been refusing
    /// most calls, so this one was not sent.
    #[error("throttled locally: the downstream is rejecting most requests")]
    Throttled,
    /// The call failed with a transient error, but the retry budget had no tokens left.
    #[error("retry budget exhausted; last error: {last}")]
    BudgetExhausted {
        /// The error of the last attempt.
        #[source]
        last: BoxError,
    },
}

impl ResilienceError {
    /// The first [`ResilienceError`] in `error` or its chain of sources.
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a ResilienceError> {
        let mut current = Some(error);
        while let Some(err) = current {
            if let Some(found) = err.downcast_ref::<ResilienceError>() {
                return Some(found);
            }
            current = err.source();
        }
        None
    }

    /// How long the caller should wait before trying again, when the layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after, .. }
            | Self::RateLimited { retry_after }
            | Self::Shed { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The HTTP status an edge should answer with: `429` for rate limiting, `504` for time
    /// running out, `503` for everything that says "the system is protecting itself".
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::DeadlineExceeded { .. } | Self::AttemptTimedOut { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// How retry and circuit-breaking layers further out treat this error.
    ///
    /// An attempt timeout is the downstream being slow: transient, and a breaker failure. A
    /// passed deadline counts against the downstream too, but there is no time left to
    /// retry. Everything else is a local refusal: neither retried nor held against the
    /// downstream.
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            Self::AttemptTimedOut { .. } => ErrorClass::Transient { retry_after: None },
            Self::DeadlineExceeded { .. } => ErrorClass::Permanent,
            _ => ErrorClass::CallerError,
        }
    }

    pub(crate) fn boxed(self) -> BoxError {
        Box::new(self)
    }
}

/// A rejection as an HTTP edge renders it: status plus optional `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRejection {
    /// `429`, `503` or `504`.
    pub status: StatusCode,
    /// Seconds for the `Retry-After` header (rounded up, so never zero when there is a wait).
    pub retry_after_secs: Option<u64>,
}

impl HttpRejection {
    /// How an HTTP edge should answer `error`, if it is a rejection by a resilience layer
    /// of this crate or by tower's own `LoadShed` (`503`); `None` for any other error, which
    /// the app renders as it renders its own failures.
    pub fn from_error(error: &(dyn StdError + 'static)) -> Option<Self> {
        if let Some(found) = ResilienceError::find(error) {
            // A full bulkhead knows no wait of its own; its slots turn over within a
            // request's time, so the shortest hint, as for tower's LoadShed below.
            let hint = match found {
                ResilienceError::BulkheadFull { .. } => Some(1),
                _ => found.retry_after().map(ceil_secs),
            };
            return Some(Self {
                status: found.http_status(),
                retry_after_secs: hint,
            });
        }
        if error.is::<tower::load_shed::error::Overloaded>() {
            return Some(Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                retry_after_secs: Some(1),
            });
        }
        None
    }
}

/// Whole seconds, rounded up: `Retry-After` has one-second resolution and must not invite
/// the client back before the wait is over.
pub(crate) fn ceil_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_directly_and_through_sources() {
        let direct: BoxError = ResilienceError::Throttled.boxed();
        assert!(matches!(
            ResilienceError::find(&*direct),
            Some(ResilienceError::Throttled)
        ));
        let inner = std::io::Error::other("boom");
        assert!(ResilienceError::find(&inner).is_none());
    }

    #[test]
    fn rejections_map_to_status_and_rounded_up_retry_after() {
        let limited: BoxError = ResilienceError::RateLimited {
            retry_after: Duration::from_millis(1_200),
        }
        .boxed();
        assert_eq!(
            HttpRejection::from_error(&*limited),
            Some(HttpRejection {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after_secs: Some(2),
            })
        );
        let deadline: BoxError = ResilienceError::DeadlineExceeded {
            budget: Duration::from_secs(1),
        }
        .boxed();
        assert_eq!(
            HttpRejection::from_error(&*deadline).map(|r| r.status),
            Some(StatusCode::GATEWAY_TIMEOUT)
        );
        let overloaded: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(
            HttpRejection::from_error(&*overloaded).map(|r| r.status),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        let other = std::io::Error::other("boom");
        assert_eq!(HttpRejection::from_error(&other), None);
    }
}
