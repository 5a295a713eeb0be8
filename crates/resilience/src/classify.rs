//! Deciding what a call's outcome means: success, a failure worth retrying, a failure not
//! worth retrying, or the caller's own fault.
//!
//! Retry, circuit breaking, hedging and throttling all need the same judgement, and only the
//! caller knows its error type, so it is one small trait, [`Classifier`], passed to each
//! layer. Ready-made: [`AllErrorsTransient`] (the default), [`HttpStatusClassifier`] for
//! `http::Response` status codes, and `GrpcClassifier` for `tonic::Status` (cargo feature
//! `tonic`). Errors raised by this crate's own layers ([`crate::ResilienceError`]) are
//! classified before the caller's classifier is asked, so an attempt timeout is always
//! transient and an open breaker further in is never retried.

use std::error::Error as StdError;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

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
/// `429`, `408`, `502`, `503` and `504` are transient (honouring `Retry-After` given in
/// seconds); other `5xx` are permanent failures; other `4xx` are the caller's fault.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpStatusClassifier;

impl HttpStatusClassifier {
    /// The class of a response with `status` and `headers`; `None` for success.
    pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Option<ErrorClass> {
        let retry_after = || parse_retry_after(headers);
        match status.as_u16() {
            408 => Some(ErrorClass::Transient { retry_after: None }),
            429 | 502..=504 => Some(ErrorClass::Transient {
                retry_after: retry_after(),
            }),
            500..=599 => Some(ErrorClass::Permanent),
            400..=499 => Some(ErrorClass::CallerError),
            _ => None,
        }
    }
}

impl<B> Classifier<http::Response<B>> for HttpStatusClassifier {
    fn classify_error(&self, _error: ErrorRef<'_>) -> ErrorClass {
        ErrorClass::Transient { retry_after: None }
    }

    fn classify_response(&self, response: &http::Response<B>) -> Option<ErrorClass> {
        Self::classify_status(response.status(), response.headers())
    }
}

/// `Retry-After` in delta-seconds. The HTTP-date form is ignored (no hint): services behind
/// this stack send seconds, and a clock-skewed date is a poor hint anyway.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<&str>) -> http::Response<()> {
        let mut builder = http::Response::builder().status(status);
        if let Some(value) = retry_after {
            builder = builder.header(http::header::RETRY_AFTER, value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn http_statuses_sort_into_transient_permanent_and_caller_errors() {
        let c = HttpStatusClassifier;
        assert_eq!(c.classify_response(&response(200, None)), None);
        assert_eq!(
            c.classify_response(&response(503, Some("3"))),
            Some(ErrorClass::Transient {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        assert_eq!(
            c.classify_response(&response(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Some(ErrorClass::Transient { retry_after: None })
        );
        assert_eq!(
            c.classify_response(&response(500, None)),
            Some(ErrorClass::Permanent)
        );
        assert_eq!(
            c.classify_response(&response(404, None)),
            Some(ErrorClass::CallerError)
        );
    }

    #[test]
    fn our_own_errors_are_judged_before_the_callers_classifier() {
        let timeout: tower::BoxError = ResilienceError::AttemptTimedOut {
            timeout: Duration::from_millis(5),
        }
        .boxed();
        let class = classify::<_, http::Response<()>>(&HttpStatusClassifier, Err(&*timeout));
        assert_eq!(class, Some(ErrorClass::Transient { retry_after: None }));
        let open: tower::BoxError = ResilienceError::Throttled.boxed();
        assert_eq!(
            classify::<_, ()>(&AllErrorsTransient, Err(&*open)),
            Some(ErrorClass::CallerError)
        );
    }
}
