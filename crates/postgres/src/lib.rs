//! What a Postgres error means to the code that got it.
//!
//! Every boundary of a Faultline service has to answer one question about a database
//! error: is the database out of reach (try again later: `503` with `Retry-After` at the HTTP
//! edge, `UNAVAILABLE` on gRPC, a backoff without parking in a Kafka consumer), or did it
//! refuse this particular request (a constraint, a bad statement: a bug or bad data)? The
//! answer is [`is_unreachable`], written once, because three answers to it meant that a
//! Postgres restart was "retry" for the consumer and a `500` at the edges.

#![warn(missing_docs)]

/// True when the error says the database cannot be reached at all, or not right now, as
/// opposed to refusing this request. Covers the transport (I/O, TLS, a crashed connection
/// worker), the pool (none free in time, closed), and the server's own SQLSTATEs for it:
/// class `08` (connection exception), `57P01`-`57P03` (administrator shutdown, crash
/// shutdown, cannot connect now: a restart or failover) and `53300` (too many connections).
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

/// True when the server refused the statement because of other sessions, not because of
/// anything in it: a lock it waited for longer than `lock_timeout` (`55P03`), a deadlock
/// victim (`40P01`), a serialization failure (`40001`). The same statement succeeds once the
/// other session is done, or is ended by its `idle_in_transaction_session_timeout`; so a
/// caller retries it (a consumer without counting an attempt, an edge with `503`).
pub fn is_contention(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.as_ref(), "55P03" | "40P01" | "40001")),
        _ => false,
    }
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A server error with only a SQLSTATE, as Postgres sends one.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_restart_a_lost_connection_and_a_full_server_are_out_of_reach() {
        for code in ["57P01", "57P03", "08006", "08001", "53300"] {
            assert!(
                is_unreachable(&sqlx::Error::Database(Box::new(Sqlstate(code)))),
                "{code}"
            );
        }
        // A unique violation, a syntax error, a statement timeout: this request's own doing.
        for code in ["23505", "42601", "57014"] {
            assert!(
                !is_unreachable(&sqlx::Error::Database(Box::new(Sqlstate(code)))),
                "{code}"
            );
        }
    }

    #[test]
    fn a_lock_timeout_and_a_deadlock_are_contention_a_constraint_is_not() {
        for code in ["55P03", "40P01", "40001"] {
            let error = sqlx::Error::Database(Box::new(Sqlstate(code)));
            assert!(is_contention(&error), "{code}");
            assert!(!is_unreachable(&error), "{code}");
        }
        for code in ["23505", "57014", "08006"] {
            assert!(
                !is_contention(&sqlx::Error::Database(Box::new(Sqlstate(code)))),
                "{code}"
            );
        }
        assert!(!is_contention(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn the_transport_and_the_pool_are_out_of_reach_a_missing_row_is_not() {
        assert!(is_unreachable(&sqlx::Error::PoolTimedOut));
        assert!(is_unreachable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
        assert!(!is_unreachable(&sqlx::Error::Protocol("bad".into())));
    }
}
