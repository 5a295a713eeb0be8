//! Work a command needs done outside its inbox transaction, because it asks the payment
//! provider.
//!
//! # Why not in the inbox transaction
//!
//! The consumer loop opens a record's inbox transaction before it calls the handler and
//! commits it after, so that transaction holds a pooled connection for as long as the handler
//! runs. A handler that asked the provider inside it would hold that connection idle across
//! the call; one that also took a connection of its own (the idempotency key, the pending
//! payment) would need two at once. With as many busy partitions as the pool has
//! connections, every lane then holds one and waits for a second that never comes: the
//! service deadlocks its own pool until the acquire timeout, and again on every retry.
//!
//! # What the handler does instead
//!
//! On the first attempt at a record the handler starts the work here, on a task of its own
//! that takes a connection only while a phase writes and holds none across the provider call,
//! and answers [`HandlerError::Unavailable`]. The loop rolls the inbox transaction back (its
//! connection goes back to the pool, nothing was written) and retries the record after its
//! backoff, without counting an attempt and for as long as it takes. A later attempt finds
//! the work's result and writes only what belongs to the inbox transaction: the reply
//! event, which commits with the inbox row. So the handler itself never waits for a
//! connection or for the provider.
//!
//! # Why this is still effectively-once and crash-safe
//!
//! Nothing here is the record of truth; the work is. Each piece of work runs in the
//! recovery points of its operation (the authorization's idempotency key at
//! `payment_created`, a capture's or void's marker on the payment row), committed before the
//! provider is asked, with an idempotency key the provider deduplicates on. If the process
//! dies at any point, the record's inbox row is not written, so the record is delivered
//! again, on this instance or another; that delivery starts the work afresh, which finds the
//! recovery point and resumes (or finds the operation finished and answers as it did). Two
//! deliveries racing on two instances meet at the same key or row. The inbox row still makes
//! the reply happen once. What is lost with the process is only this in-memory slot, which
//! costs one more round of the work, never a second effect.
//!
//! A result is kept until its record comes back for it, or [`KEPT_FOR`] if it never does (its
//! partition moved to another instance, which does the work again and finds it done).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use faultline_outbox::consumer::HandlerError;
use tracing::Instrument;

/// How long a result nobody came back for is kept.
pub(crate) const KEPT_FOR: Duration = Duration::from_secs(300);

enum Slot<T> {
    Running,
    Done {
        result: Result<T, HandlerError>,
        at: Instant,
    },
}

/// Results of work started by records, by the record's event id.
pub(crate) struct Detached<T> {
    what: &'static str,
    slots: Arc<Mutex<HashMap<String, Slot<T>>>>,
}

impl<T> std::fmt::Debug for Detached<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached")
            .field("what", &self.what)
            .finish()
    }
}

impl<T: Send + 'static> Detached<T> {
    /// Work called `what` in logs and errors ("authorization", say).
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            slots: Arc::default(),
        }
    }

    /// The result of the work for the record `id` if it has finished (handed over once);
    /// otherwise starts `work` unless it runs already, and answers that the record must come
    /// back later.
    pub(crate) fn poll<F>(&self, id: &str, work: impl FnOnce() -> F) -> Result<T, HandlerError>
    where
        F: Future<Output = Result<T, HandlerError>> + Send + 'static,
    {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(id) {
            Some(Slot::Done { result, .. }) => return result,
            Some(Slot::Running) => {
                slots.insert(id.to_owned(), Slot::Running);
                return Err(self.not_yet());
            }
            None => {}
        }
        slots.retain(|_, slot| match slot {
            Slot::Running => true,
            Slot::Done { at, .. } => at.elapsed() < KEPT_FOR,
        });
        slots.insert(id.to_owned(), Slot::Running);
        drop(slots);

        // The work stays in the record's trace: its spans (the provider call's among them)
        // are children of the record's, which it keeps open until it ends.
        let running = tokio::spawn(work().instrument(tracing::Span::current()));
        let (slots, id, what) = (self.slots.clone(), id.to_owned(), self.what);
        tokio::spawn(async move {
            // A panic in the work is a bug the record trips: it is parked with the message,
            // as the consumer loop parks a handler that panics, instead of waiting forever.
            let result = running.await.unwrap_or_else(|failed| {
                Err(HandlerError::Permanent(format!(
                    "the {what} failed: {failed}"
                )))
            });
            let done = Slot::Done {
                result,
                at: Instant::now(),
            };
            slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, done);
        });
        Err(self.not_yet())
    }

    fn not_yet(&self) -> HandlerError {
        HandlerError::Unavailable(format!(
            "the {} runs outside the inbox transaction; the record finishes on a later attempt",
            self.what
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn eventually<T: Send + 'static>(
        detached: &Detached<T>,
        id: &str,
    ) -> Result<T, HandlerError> {
        for _ in 0..200 {
            match detached.poll(id, || async { panic!("started twice") }) {
                Err(HandlerError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                done => return done,
            }
        }
        panic!("the work never finished");
    }

    #[tokio::test]
    async fn work_starts_once_and_its_result_is_handed_over_once() {
        let detached = Detached::new("test work");
        let first = detached.poll("r-1", || async { Ok(7) });
        assert!(matches!(first, Err(HandlerError::Unavailable(_))));
        assert_eq!(eventually(&detached, "r-1").await.ok(), Some(7));
        // Handed over: the next poll starts the work again.
        let again = detached.poll("r-1", || async { Ok(8) });
        assert!(matches!(again, Err(HandlerError::Unavailable(_))));
        assert_eq!(eventually(&detached, "r-1").await.ok(), Some(8));
    }

    #[tokio::test]
    async fn work_that_panics_parks_its_record() {
        let detached = Detached::<()>::new("test work");
        let _ = detached.poll("r-1", || async { panic!("bug") });
        let result = eventually(&detached, "r-1").await;
        assert!(
            matches!(&result, Err(HandlerError::Permanent(m)) if m.contains("panic")),
            "{result:?}"
        );
    }
}
