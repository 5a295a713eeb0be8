//! One relay round: read the pending rows of the slots this relay's lock session holds right
//! now, hand them to the producer in write order, wait for every acknowledgement, then
//! settle what was delivered and park what the broker refuses for good.
//!
//! # Fenced by the lock session
//!
//! The rows are read *on the session that holds the slot locks*, and only from slots that
//! session holds at that moment (`pg_locks` of `pg_backend_pid()`). A relay whose session was
//! terminated, reset, or ended by the server's idle timeout while it was frozen cannot read
//! a row: the statement fails, and the relay starts over with a new session and no slots.
//! So two relays never publish one slot round after round; the most a lost session costs is
//! the round that was already in flight, published twice (duplicates, in order).
//!
//! # No gaps, and no endless head-of-line retries
//!
//! The producer never times a message out (`message.timeout.ms = 0`, see
//! [`crate::kafka::producer_config`]): librdkafka's timeouts are what leave gaps in a
//! partition (r1 expires, r2 is delivered, r1 is sent again after it). Instead the round
//! waits for its acknowledgements however long the broker is away, checking its lock
//! session every [`RelayConfig::delivery_patience`] (which also keeps that session from
//! looking idle) and giving the round up only if the session is lost.
//!
//! A delivery error is either retriable (the row stays pending, the round reports an error)
//! or permanent: the broker will refuse this row whatever we do (too large, no such topic,
//! not allowed to write it). A permanent failure parks the row (see `0003_parked_rows.sql`)
//! and the round goes on; that row's later siblings on the same topic wait behind it, and
//! nothing else does.

use std::collections::HashSet;
use std::time::Instant;

use futures_util::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::FromRow;
use tracing::Instrument;
use uuid::Uuid;

use super::{LOCK_CLASS, Relay, RelayError, Retention};
use crate::trace;

#[derive(Debug, FromRow)]
pub(super) struct Row {
    id: Uuid,
    aggregateid: String,
    #[sqlx(rename = "type")]
    message_type: String,
    topic: String,
    payload: Vec<u8>,
    headers: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
}

/// What became of the rows of one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Rows read from the outbox.
    pub read: usize,
    /// Rows the broker acknowledged (now deleted or marked published).
    pub published: usize,
    /// Rows the broker refuses for good, now parked.
    pub parked: usize,
}

/// The pending rows of the slots the lock session holds, in write order, skipping every row
/// that has a parked predecessor on its (topic, aggregate).
const FETCH: &str = "
    SELECT o.id, o.aggregateid, o.type, o.topic, o.payload, o.headers
    FROM outbox o
    WHERE o.published_at IS NULL
      AND o.parked_at IS NULL
      AND o.slot IN (
          SELECT objid::integer FROM pg_locks
          WHERE locktype = 'advisory' AND classid = $1::oid AND objsubid = 2
            AND pid = pg_backend_pid() AND granted)
      AND NOT EXISTS (
          SELECT 1 FROM outbox p
          WHERE p.parked_at IS NOT NULL
            AND p.topic = o.topic AND p.aggregateid = o.aggregateid AND p.seq < o.seq)
    ORDER BY o.seq
    LIMIT $2";

impl Relay {
    /// Publishes one round from the slots this relay holds (see the module docs).
    pub async fn relay_once(&mut self) -> Result<RoundOutcome, RelayError> {
        if self.owned.is_empty() {
            return Ok(RoundOutcome::default());
        }
        let Some(session) = self.locks.as_mut() else {
            return Ok(RoundOutcome::default());
        };
        let fetched = sqlx::query_as::<_, Row>(FETCH)
            .bind(LOCK_CLASS)
            .bind(self.config.batch_size)
            .fetch_all(&mut *session)
            .await;
        let rows = match fetched {
            Ok(rows) => rows,
            Err(error) => {
                self.lose_locks();
                return Err(RelayError::LockSessionLost(error));
            }
        };
        if rows.is_empty() {
            return Ok(RoundOutcome::default());
        }

        // Enqueue in write order. A row that cannot even be enqueued blocks the rest of its
        // (topic, aggregate) for this round, so nothing overtakes it.
        let mut blocked: HashSet<(&str, &str)> = HashSet::new();
        let mut pending = Vec::with_capacity(rows.len());
        let mut failed: Vec<(&Row, KafkaError)> = Vec::new();
        for row in &rows {
            let key = (row.topic.as_str(), row.aggregateid.as_str());
            if blocked.contains(&key) {
                continue;
            }
            match self.enqueue(row) {
                Ok(delivery) => pending.push((row, delivery)),
                Err(error) => {
                    blocked.insert(key);
                    failed.push((row, error));
                }
            }
        }
        let acknowledged = self.await_deliveries(pending).await?;

        let mut delivered = Vec::with_capacity(rows.len());
        for (row, result) in acknowledged {
            match result {
                Ok(()) => delivered.push(row.id),
                Err(error) => failed.push((row, error)),
            }
        }
        self.settle(&delivered).await?;

        let mut outcome = RoundOutcome {
            read: rows.len(),
            published: delivered.len(),
            parked: 0,
        };
        let mut first_retriable = None;
        for (row, error) in failed {
            if is_permanent(&error) {
                self.park(row, &error).await?;
                outcome.parked += 1;
            } else {
                first_retriable.get_or_insert(error);
            }
        }
        tracing::debug!(?outcome, "outbox round done");
        match first_retriable {
            None => Ok(outcome),
            Some(first_error) => Err(RelayError::Delivery {
                failed: outcome.read - outcome.published - outcome.parked,
                total: outcome.read,
                first_error,
            }),
        }
    }

    /// Waits for every acknowledgement, however long the broker takes; every
    /// `delivery_patience` it says so and checks the lock session, and gives the round up
    /// only when that session is gone (another relay owns these slots now).
    async fn await_deliveries<'r>(
        &mut self,
        pending: Vec<(&'r Row, DeliveryWait)>,
    ) -> Result<Vec<(&'r Row, Result<(), KafkaError>)>, RelayError> {
        let (rows, waits): (Vec<&Row>, Vec<DeliveryWait>) = pending.into_iter().unzip();
        let mut all = std::pin::pin!(join_all(waits));
        let started = Instant::now();
        loop {
            match tokio::time::timeout(self.config.delivery_patience, &mut all).await {
                Ok(results) => return Ok(rows.into_iter().zip(results).collect()),
                Err(_still_waiting) => {
                    tracing::warn!(
                        unacknowledged = rows.len(),
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the broker has not acknowledged this round yet; still waiting"
                    );
                    if let Err(error) = self.check_locks().await {
                        self.lose_locks();
                        return Err(RelayError::LockSessionLost(error));
                    }
                }
            }
        }
    }

    async fn settle(&self, delivered: &[Uuid]) -> Result<(), sqlx::Error> {
        if delivered.is_empty() {
            return Ok(());
        }
        match self.config.retention {
            Retention::Delete => sqlx::query("DELETE FROM outbox WHERE id = ANY($1)"),
            Retention::Keep(_) => {
                sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            }
        }
        .bind(delivered)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn park(&self, row: &Row, error: &KafkaError) -> Result<(), sqlx::Error> {
        let reason = error.to_string();
        sqlx::query("UPDATE outbox SET parked_at = now(), park_error = $2 WHERE id = $1")
            .bind(row.id)
            .bind(&reason)
            .execute(&self.pool)
            .await?;
        tracing::error!(
            outbox_id = %row.id,
            topic = %row.topic,
            aggregate = %row.aggregateid,
            reason,
            "outbox row parked: the broker refuses it for good; later rows of this aggregate \
             on this topic wait until it is re-driven"
        );
        Ok(())
    }

    /// Hands `row` to the producer; the returned future resolves with the broker's answer.
    fn enqueue(&self, row: &Row) -> Result<DeliveryWait, KafkaError> {
        let span = tracing::info_span!(
            "outbox.publish",
            otel.name = %format!("{} publish", row.topic),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            "messaging.system" = "kafka",
            "messaging.operation.type" = "send",
            "messaging.destination.name" = %row.topic,
            "messaging.message.id" = %row.id,
            "messaging.kafka.message.key" = %row.aggregateid,
        );
        trace::adopt(
            &span,
            row.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let headers = record_headers(row, &trace::headers_of(&span));
        let record = FutureRecord::to(&row.topic)
            .key(row.aggregateid.as_bytes())
            .payload(row.payload.as_slice())
            .headers(headers);
        let delivery = match self.producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((error, _record)) => {
                span.record("otel.status_code", "ERROR");
                return Err(error);
            }
        };
        Ok(Box::pin(
            async move {
                let result = answer(delivery).await;
                if result.is_err() {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                }
                result
            }
            .instrument(span),
        ))
    }
}

type DeliveryWait = std::pin::Pin<Box<dyn Future<Output = Result<(), KafkaError>> + Send>>;

async fn answer(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _message))) => Err(error),
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}

/// The row's headers plus `id` and `type`. The row's own trace headers are replaced by the
/// relay span's context, which is their child; without one (no OpenTelemetry here) they go
/// out as written, so the consumer still joins the writer's trace.
fn record_headers(row: &Row, carried: &[(String, String)]) -> OwnedHeaders {
    let id = row.id.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(row.headers.len() + 2)
        .insert(Header {
            key: "id",
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: "type",
            value: Some(row.message_type.as_str()),
        });
    for (key, value) in row.headers.iter() {
        if carried.is_empty() || !trace::TRACE_HEADERS.contains(&key.as_str()) {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_str()),
            });
        }
    }
    for (key, value) in carried {
        headers = headers.insert(Header {
            key: key.as_str(),
            value: Some(value.as_str()),
        });
    }
    headers
}

/// True when the broker (or the producer, before sending) refuses this record for good:
/// sending it again can only fail again, so it is parked instead of retried.
pub fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return false,
    };
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_record_is_permanent_an_outage_is_not() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(
                is_permanent(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(
                !is_permanent(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        assert!(!is_permanent(&KafkaError::Canceled));
    }
}
