//! One record, start to finish: its transaction with the inbox claim, the retry policy
//! (see the module docs of [`super`]), and parking on the dead-letter topic.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::FutureExt;
use rand::RngExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{ConsumerSettings, ConsumerStats, Handler, HandlerError, Incoming};
use crate::inbox::{self, Outcome};
use crate::message::{OutboxMessage, enqueue};

/// Shutdown interrupted a retry.
pub(super) struct Interrupted;

/// What every lane of one consumer shares.
pub(super) struct Worker<H> {
    pub(super) pool: PgPool,
    pub(super) handler: H,
    pub(super) settings: ConsumerSettings,
    pub(super) shutdown: CancellationToken,
    pub(super) stats: Arc<ConsumerStats>,
    /// Records handed to lanes (or held back for them) and not finished yet; the watchdog's
    /// measure of work waiting.
    pub(super) in_hand: AtomicUsize,
}

impl<H: Handler> Worker<H> {
    /// Processes or parks `incoming`; returns only once the record is finished for good.
    pub(super) async fn finish(&self, incoming: &Incoming) -> Result<(), Interrupted> {
        let mut counted_attempts = 0u32;
        let mut backoff_step = 0u32;
        loop {
            let error = match self.process(incoming).await {
                Ok(()) => return Ok(()),
                Err(HandlerError::Permanent(reason)) => return self.park(incoming, &reason).await,
                Err(error) => error,
            };
            if !is_unavailable(&error) {
                counted_attempts += 1;
                if counted_attempts >= self.settings.max_attempts {
                    let reason = format!("gave up after {counted_attempts} attempts: {error}");
                    return self.park(incoming, &reason).await;
                }
            }
            backoff_step = backoff_step.saturating_add(1);
            ConsumerStats::bump(&self.stats.retries);
            tracing::warn!(
                topic = %incoming.topic,
                partition = incoming.partition,
                offset = incoming.offset,
                attempt = backoff_step,
                %error,
                "processing failed; retrying"
            );
            self.sleep(backoff_step).await?;
        }
    }

    async fn process(&self, incoming: &Incoming) -> Result<(), HandlerError> {
        // First what holds no connection (a call to another system), then the transaction.
        let prepared = guard(&self.stats, self.handler.prepare(incoming)).await?;
        let mut tx = self.pool.begin().await?;
        let first_time = inbox::claim(
            &mut tx,
            &self.settings.name,
            &incoming.event_id,
            incoming.origin(),
            Outcome::Processed,
            None,
        )
        .await?;
        if !first_time {
            tracing::debug!(event_id = %incoming.event_id, "duplicate delivery skipped");
            ConsumerStats::bump(&self.stats.duplicates);
            return Ok(());
        }
        // The transaction is dropped on any error, so whatever the handler wrote rolls back.
        guard(
            &self.stats,
            self.handler.handle(&mut tx, incoming, prepared),
        )
        .await?;
        tx.commit().await?;
        ConsumerStats::bump(&self.stats.processed);
        Ok(())
    }

    async fn park(&self, incoming: &Incoming, reason: &str) -> Result<(), Interrupted> {
        let mut step = 0u32;
        loop {
            match self.try_park(incoming, reason).await {
                Ok(false) => {
                    // Another delivery of the record was finished (processed or parked)
                    // meanwhile; nothing was parked now.
                    tracing::debug!(event_id = %incoming.event_id, "already finished; not parked again");
                    ConsumerStats::bump(&self.stats.duplicates);
                    return Ok(());
                }
                Ok(true) => {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    tracing::error!(
                        topic = %incoming.topic,
                        partition = incoming.partition,
                        offset = incoming.offset,
                        event_id = %incoming.event_id,
                        dead_letter_topic = %self.settings.dead_letter_topic,
                        reason,
                        "message parked on the dead-letter topic"
                    );
                    ConsumerStats::bump(&self.stats.parked);
                    return Ok(());
                }
                Err(error) => {
                    step = step.saturating_add(1);
                    tracing::warn!(%error, offset = incoming.offset, "cannot park message yet; retrying");
                    self.sleep(step).await?;
                }
            }
        }
    }

    /// Parks `incoming` unless its event id is already in the inbox; says which.
    async fn try_park(&self, incoming: &Incoming, reason: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let first_time = inbox::claim(
            &mut tx,
            &self.settings.name,
            &incoming.event_id,
            incoming.origin(),
            Outcome::Parked,
            Some(reason),
        )
        .await?;
        if first_time {
            let key = incoming
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let mut message = OutboxMessage::new(
                &self.settings.dead_letter_topic,
                "dead-letter",
                key,
                "faultline.DeadLetter",
                incoming.payload.clone(),
            );
            // The relay writes `id` and `type` itself (the dead letter's own); the original
            // type travels as `dlq.original.type`, so a record carries each header once.
            for (name, value) in &incoming.headers {
                let Ok(value) = std::str::from_utf8(value) else {
                    continue;
                };
                match name.as_str() {
                    "id" => {}
                    "type" => message = message.with_header("dlq.original.type", value),
                    _ => message = message.with_header(name.clone(), value),
                }
            }
            message = message
                .with_header("dlq.error", reason)
                .with_header("dlq.consumer", &self.settings.name)
                .with_header("dlq.original.id", &incoming.event_id)
                .with_header("dlq.original.topic", &incoming.topic)
                .with_header("dlq.original.partition", incoming.partition.to_string())
                .with_header("dlq.original.offset", incoming.offset.to_string());
            enqueue(&mut tx, &message).await?;
        }
        tx.commit().await?;
        Ok(first_time)
    }

    async fn sleep(&self, step: u32) -> Result<(), Interrupted> {
        let delay = full_jitter(self.settings.base_backoff, self.settings.max_backoff, step);
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Runs one step of the handler. A panic is a bug that this record trips: the record is
/// parked with the panic's message (retrying would trip it again) and the lane goes on with
/// the next one, instead of dying and silently taking the partition with it.
async fn guard<T>(
    stats: &ConsumerStats,
    step: impl Future<Output = Result<T, HandlerError>>,
) -> Result<T, HandlerError> {
    match AssertUnwindSafe(step).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            ConsumerStats::bump(&stats.panics);
            Err(HandlerError::Permanent(format!(
                "the handler panicked: {}",
                panic_message(panic.as_ref())
            )))
        }
    }
}

/// What a panic said, when it said it with a string (as `panic!` and `expect` do).
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}

/// Capped exponential backoff with full jitter: uniform in `[0, min(max, base * 2^(step-1))]`.
fn full_jitter(base: Duration, max: Duration, step: u32) -> Duration {
    let exponent = step.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// True when the handler could not reach what it needs (the database, or a dependency it
/// said was unavailable) or waited out another session's lock, as opposed to refusing this
/// particular record. Such failures are retried without counting an attempt: a record must
/// not be parked because a frozen peer held its row until the server ended that peer.
fn is_unavailable(error: &HandlerError) -> bool {
    match error {
        HandlerError::Unavailable(_) => true,
        HandlerError::Database(error) => {
            faultline_postgres::is_unreachable(error) || faultline_postgres::is_contention(error)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for step in 1..40 {
            let delay = full_jitter(base, max, step);
            let ceiling = base.saturating_mul(1 << (step - 1).min(20)).min(max);
            assert!(delay <= ceiling, "step {step}: {delay:?} > {ceiling:?}");
        }
    }

    #[test]
    fn an_unreachable_database_is_not_the_messages_fault() {
        assert!(is_unavailable(&HandlerError::Database(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!is_unavailable(&HandlerError::Database(
            sqlx::Error::RowNotFound
        )));
        assert!(!is_unavailable(&HandlerError::Transient("busy".into())));
        assert!(is_unavailable(&HandlerError::Unavailable(
            "provider down".into()
        )));
    }
}
