//! The outbox row and the one function that writes it.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use uuid::Uuid;

/// A message waiting in the outbox for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique id; the relay sends it as the Kafka header `id`, and consumers deduplicate on it.
    pub id: Uuid,
    /// Destination topic.
    pub topic: String,
    /// Kind of aggregate the message is about ("order").
    pub aggregate_type: String,
    /// The aggregate's id; also the Kafka key, which keeps one aggregate's messages in order.
    pub aggregate_id: String,
    /// Message type, for routing and for humans reading the table.
    pub message_type: String,
    /// The Kafka record value.
    pub payload: Vec<u8>,
    /// Extra Kafka headers, such as the W3C `traceparent` of the writing request.
    pub headers: BTreeMap<String, String>,
}

impl OutboxMessage {
    /// A message with a fresh time-ordered id and no extra headers.
    pub fn new(
        topic: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        message_type: impl Into<String>,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic: topic.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            message_type: message_type.into(),
            payload,
            headers: BTreeMap::new(),
        }
    }

    /// Uses `id` instead of a fresh one (to make the outbox id equal an envelope's event id).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Adds a Kafka header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// Writes `message` to the outbox on `conn`, which should be the transaction that makes the
/// change the message announces; nothing is sent until that transaction commits.
pub async fn enqueue(conn: &mut PgConnection, message: &OutboxMessage) -> Result<(), sqlx::Error> {
    let headers =
        serde_json::to_value(&message.headers).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, topic, payload, headers)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(message.id)
    .bind(&message.aggregate_type)
    .bind(&message.aggregate_id)
    .bind(&message.message_type)
    .bind(&message.topic)
    .bind(&message.payload)
    .bind(headers)
    .execute(conn)
    .await?;
    Ok(())
}
