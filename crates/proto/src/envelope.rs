//! Wrapping typed messages into an [`Envelope`] and opening them again.
//!
//! A consumer first decodes the envelope (which never changes shape), looks at
//! `message_type`, and only then decodes the payload. That keeps routing independent of the
//! payload schema and lets a consumer park a message it does not understand instead of
//! failing on it.

use chrono::{DateTime, Utc};
use prost::{Message, Name};
use uuid::Uuid;

pub use crate::messaging::v1::Envelope;

/// Schema version written for every payload today. Bump it (per message type) when a payload
/// changes in a way older consumers cannot read; they will park such messages rather than
/// misread them.
pub const CURRENT_SCHEMA_VERSION: u32 = 1;

/// Where a message comes from, in the business flow and in the system.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The aggregate the message is about (the Kafka key).
    pub aggregate_id: String,
    /// The flow the message belongs to.
    pub correlation_id: String,
    /// The event that caused this message, if any.
    pub causation_id: Option<String>,
    /// The service writing the message.
    pub producer: &'static str,
}

/// Why an envelope or its payload could not be read. Every variant is permanent: retrying the
/// same bytes can never succeed, so consumers park the message.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not a protobuf envelope, or the payload is not the message it claims.
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The payload is some other message type than the caller asked for.
    #[error("expected message type {expected}, found {found}")]
    WrongType {
        /// What the caller asked for.
        expected: String,
        /// What the envelope says it holds.
        found: String,
    },
    /// The payload was written with a schema this build does not know yet.
    #[error("{message_type} has schema version {found}, this build reads up to {supported}")]
    UnsupportedVersion {
        /// The payload's type.
        message_type: String,
        /// Version in the envelope.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// A field the contract requires is empty.
    #[error("envelope field `{0}` is empty")]
    MissingField(&'static str),
}

impl Envelope {
    /// Wraps `message` in a fresh envelope with a new time-ordered event id.
    pub fn wrap<M: Message + Name>(message: &M, provenance: Provenance) -> Self {
        Self::wrap_at(message, provenance, Uuid::now_v7(), Utc::now())
    }

    /// Like [`Envelope::wrap`] with the event id and time given, for deterministic tests.
    pub fn wrap_at<M: Message + Name>(
        message: &M,
        provenance: Provenance,
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: event_id.to_string(),
            message_type: M::full_name(),
            schema_version: CURRENT_SCHEMA_VERSION,
            aggregate_id: provenance.aggregate_id,
            correlation_id: provenance.correlation_id,
            causation_id: provenance.causation_id.unwrap_or_default(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: occurred_at.timestamp(),
                nanos: occurred_at.timestamp_subsec_nanos() as i32,
            }),
            producer: provenance.producer.to_owned(),
            payload: message.encode_to_vec(),
        }
    }

    /// Decodes an envelope from a Kafka record value and checks its required fields.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope = Self::decode(bytes)?;
        if envelope.event_id.is_empty() {
            return Err(EnvelopeError::MissingField("event_id"));
        }
        if envelope.message_type.is_empty() {
            return Err(EnvelopeError::MissingField("message_type"));
        }
        if envelope.aggregate_id.is_empty() {
            return Err(EnvelopeError::MissingField("aggregate_id"));
        }
        Ok(envelope)
    }

    /// True when the payload is an `M`.
    pub fn is<M: Name>(&self) -> bool {
        self.message_type == M::full_name()
    }

    /// Decodes the payload as an `M`, refusing other types and newer schema versions.
    pub fn open<M: Message + Name + Default>(&self) -> Result<M, EnvelopeError> {
        if !self.is::<M>() {
            return Err(EnvelopeError::WrongType {
                expected: M::full_name(),
                found: self.message_type.clone(),
            });
        }
        if self.schema_version > CURRENT_SCHEMA_VERSION {
            return Err(EnvelopeError::UnsupportedVersion {
                message_type: self.message_type.clone(),
                found: self.schema_version,
                supported: CURRENT_SCHEMA_VERSION,
            });
        }
        Ok(M::decode(self.payload.as_slice())?)
    }

    /// The provenance a reply to this message should carry: same aggregate and flow, caused
    /// by this message.
    pub fn reply_provenance(&self, producer: &'static str) -> Provenance {
        Provenance {
            aggregate_id: self.aggregate_id.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.event_id.clone()),
            producer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::v1::{ReserveStock, StockReserved};

    fn provenance() -> Provenance {
        Provenance {
            aggregate_id: "order-1".into(),
            correlation_id: "order-1".into(),
            causation_id: None,
            producer: "checkout",
        }
    }

    #[test]
    fn a_wrapped_message_opens_as_itself() {
        let command = ReserveStock {
            order_id: "order-1".into(),
            items: vec![],
        };
        let envelope = Envelope::wrap(&command, provenance());
        let bytes = envelope.encode_to_vec();

        let decoded = Envelope::decode_checked(&bytes).unwrap();
        assert_eq!(decoded.message_type, "faultline.inventory.v1.ReserveStock");
        assert_eq!(decoded.open::<ReserveStock>().unwrap(), command);
    }

    #[test]
    fn opening_as_another_type_is_refused() {
        let envelope = Envelope::wrap(&StockReserved::default(), provenance());
        let err = envelope.open::<ReserveStock>().unwrap_err();
        assert!(matches!(err, EnvelopeError::WrongType { .. }), "{err}");
    }

    #[test]
    fn a_newer_schema_version_is_refused() {
        let mut envelope = Envelope::wrap(&StockReserved::default(), provenance());
        envelope.schema_version = CURRENT_SCHEMA_VERSION + 1;
        let err = envelope.open::<StockReserved>().unwrap_err();
        assert!(
            matches!(err, EnvelopeError::UnsupportedVersion { .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let err = Envelope::decode_checked(b"\xff\xff\xff not protobuf").unwrap_err();
        assert!(matches!(err, EnvelopeError::Malformed(_)), "{err}");
    }

    #[test]
    fn an_empty_envelope_names_the_missing_field() {
        let err = Envelope::decode_checked(&[]).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::MissingField("event_id")),
            "{err}"
        );
    }

    #[test]
    fn replies_stay_in_the_flow_and_name_their_cause() {
        let command = Envelope::wrap(&ReserveStock::default(), provenance());
        let reply = Envelope::wrap(
            &StockReserved::default(),
            command.reply_provenance("inventory"),
        );
        assert_eq!(reply.correlation_id, command.correlation_id);
        assert_eq!(reply.causation_id, command.event_id);
        assert_eq!(reply.producer, "inventory");
    }
}
