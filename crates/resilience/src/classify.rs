//! Deciding what a call's outcome means: success, a failure worth retrying, a failure not
//! worth retrying, or the caller's own fault.
//!
//! Retry, circuit breaking, hedging and throttling all need the same judgement, and only the
//! caller knows its error type, so it is one small trait, [`Classifier`], passed to each
//! layer. Ready-made: [`AllErrorsTransient`] (the default) and `GrpcClassifier` for
//! `tonic::Status` (cargo feature `tonic`), the one the services use. Errors raised by this crate's own layers ([`crate::ResilienceError`]) are
//! classified before the caller's classifier is asked, so an attempt timeout is always
//! transient and an open breaker further in is never retried.

use std::error::Error as StdError;
use std::time::Duration;

use crate::error::ResilienceError;

/// An error as the classifier sees it: what is inside a [`tower::BoxError`].
pub type ErrorRef<'a> = &'a (dyn StdError + Send + Sync + 'static);

/// What a failed call says about the downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The downstream is unavailable, overloaded or slow: counts as a breaker failure, and
    /// may be retried if the request is safe to repeat. `retry_after` carries the server's
    /// hint (`Retry-After`, `grpc-retry-pushback-ms`); a retry waits at least that long.
    Transient {
        /// The server's pushback, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The downstream failed and retrying will not help (an internal error, an
    /// unimplemented method): a breaker failure, never retried.
    Permanent,
    /// The request's own fault (bad argument, not found, not allowed) or a local refusal:
    /// the downstream is healthy, so neither retried nor held against it.
    CallerError,
}

impl ErrorClass {
    /// Whether a breaker counts this as a failure.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::CallerError)
    }

    /// Whether a retry could help.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// Tells the layers what a call's result means. Implement it for your error type; it must
/// be cheap (it runs on every completed call).
pub trait Classifier<Res>: Clone + Send + Sync + 'static {
    /// The class of an error returned by the inner service.
    fn classify_error(&self, error: ErrorRef<'_>) -> ErrorClass;

    /// The class of a response that is really a failure (an HTTP `503` arrives as `Ok`);
    /// `None`, the default, means success.
    fn classify_response(&self, _response: &Res) -> Option<ErrorClass> {
        None
    }
}

/// Classifies a result: `None` for success, otherwise the failure's class. This crate's own
/// errors are judged here; everything else goes to `classifier`.
pub(crate) fn classify<C, Res>(
    classifier: &C,
    result: Result<&Res, ErrorRef<'_>>,
) -> Option<ErrorClass>
where
    C: Classifier<Res>,
{
    match result {
        Ok(response) => classifier.classify_response(response),
        Err(error) => Some(match ResilienceError::find(error) {
            Some(ours) => ours.class(),
            None => classifier.classify_error(error),
        }),
    }
}

/// Every error is transient; every response a success. The right default for in-process
/// adapters whose errors are all "could not reach it", and a safe one, since retries also
/// need the request to be declared safe to repeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllErrorsTransient;

impl<Res> Classifier<Res> for AllErrorsTransient {
    fn classify_error(&self, _error: ErrorRef<'_>) -> ErrorClass {
        ErrorClass::Transient { retry_after: None }
    }
}

/// For HTTP clients: responses are judged by status, transport errors are transient.
///
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_errors_are_judged_before_the_callers_classifier() {
        let timeout: tower::BoxError = ResilienceError::AttemptTimedOut {
            timeout: Duration::from_millis(5),
        }
        .boxed();
        let class = classify::<_, ()>(&AllErrorsTransient, Err(&*timeout));
        assert_eq!(class, Some(ErrorClass::Transient { retry_after: None }));
        let open: tower::BoxError = ResilienceError::Throttled.boxed();
        assert_eq!(
            classify::<_, ()>(&AllErrorsTransient, Err(&*open)),
            Some(ErrorClass::CallerError)
        );
    }
}
