//! gRPC specifics (cargo feature `tonic`): which `tonic::Status` codes are transient, and
//! the server's retry pushback.
//!
//! Following gRPC's retry design (A6) and the Google API guidance: `UNAVAILABLE`,
//! `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` and `ABORTED` are transient. `INTERNAL`,
//! `UNKNOWN`, `DATA_LOSS`, `UNIMPLEMENTED` and `CANCELLED` are failures of the downstream
//! that a retry will not fix. Everything else (`INVALID_ARGUMENT`, `NOT_FOUND`,
//! `ALREADY_EXISTS`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`,
//! `UNAUTHENTICATED`) is the request's fault: not retried and not a breaker failure.
//!
//! A server may attach `grpc-retry-pushback-ms` to its status: a retry waits at least that
//! long; a negative or unreadable value means "do not retry", as A6 specifies.

use std::time::Duration;

use tonic::{Code, Status};

use crate::classify::{Classifier, ErrorClass, ErrorRef};

/// The trailer a gRPC server sets to ask for a retry delay.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Classifies `tonic::Status` errors (and, for any other error, says transient: a
/// connection that could not be made is worth another try).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

impl GrpcClassifier {
    /// The class of `status`.
    pub fn classify_status(status: &Status) -> ErrorClass {
        match status.code() {
            // CANCELLED is what a tonic server answers when the caller's `grpc-timeout` has
            // passed: the callee ran out of the time it was given, as with DEADLINE_EXCEEDED.
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted => match status.metadata().get(RETRY_PUSHBACK) {
                None => ErrorClass::Transient { retry_after: None },
                Some(value) => match value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<i64>().ok())
                {
                    Some(ms) if ms >= 0 => ErrorClass::Transient {
                        retry_after: Some(Duration::from_millis(ms.unsigned_abs())),
                    },
                    _ => ErrorClass::Permanent,
                },
            },
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented => {
                ErrorClass::Permanent
            }
            _ => ErrorClass::CallerError,
        }
    }
}

impl<Res> Classifier<Res> for GrpcClassifier {
    fn classify_error(&self, error: ErrorRef<'_>) -> ErrorClass {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(err) = current {
            if let Some(status) = err.downcast_ref::<Status>() {
                return Self::classify_status(status);
            }
            current = err.source();
        }
        ErrorClass::Transient { retry_after: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_pushback(code: Code, value: &str) -> Status {
        let mut status = Status::new(code, "busy");
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK, value.parse().unwrap());
        status
    }

    #[test]
    fn codes_sort_into_transient_permanent_and_caller_errors() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            assert_eq!(
                GrpcClassifier::classify_status(&Status::new(code, "")),
                ErrorClass::Transient { retry_after: None },
                "{code:?}"
            );
        }
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
            Code::Unimplemented,
        ] {
            assert_eq!(
                GrpcClassifier::classify_status(&Status::new(code, "")),
                ErrorClass::Permanent
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::Unauthenticated,
        ] {
            let class = GrpcClassifier::classify_status(&Status::new(code, ""));
            assert_eq!(class, ErrorClass::CallerError, "{code:?}");
            assert!(
                !class.is_failure(),
                "{code:?} must not count against the breaker"
            );
        }
    }

    #[test]
    fn pushback_is_a_minimum_delay_and_negative_means_stop() {
        assert_eq!(
            GrpcClassifier::classify_status(&with_pushback(Code::ResourceExhausted, "250")),
            ErrorClass::Transient {
                retry_after: Some(Duration::from_millis(250))
            }
        );
        assert_eq!(
            GrpcClassifier::classify_status(&with_pushback(Code::Unavailable, "-1")),
            ErrorClass::Permanent
        );
        assert_eq!(
            GrpcClassifier::classify_status(&with_pushback(Code::Unavailable, "soon")),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn statuses_are_found_inside_boxed_errors() {
        let boxed: tower::BoxError = Box::new(Status::invalid_argument("no such sku"));
        let class = <GrpcClassifier as Classifier<()>>::classify_error(&GrpcClassifier, &*boxed);
        assert_eq!(class, ErrorClass::CallerError);
        let transport: tower::BoxError = "connection refused".into();
        let class =
            <GrpcClassifier as Classifier<()>>::classify_error(&GrpcClassifier, &*transport);
        assert!(class.is_transient());
    }
}
