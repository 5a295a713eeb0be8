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

/// Revision of the payload schemas this build writes. It is bumped for compatible changes
/// only (a field added): a build that knows an older revision reads a newer one and ignores
/// what it does not know, as protobuf readers do, so producers and consumers can be upgraded
/// in either order. A change that older readers would misread (a field's meaning or type
/// changed, a required field added) is never a revision: it is a new message type in a new
/// package version (`faultline.inventory.v2.ReserveStock`), which an older build parks as a
/// type it does not know (ADR 0009).
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

    /// Decodes the payload as an `M`, refusing other types. A newer revision of `M` is read
    /// like the one this build knows; fields it added are ignored
    /// ([`CURRENT_SCHEMA_VERSION`]).
    pub fn open<M: Message + Name + Default>(&self) -> Result<M, EnvelopeError> {
        if !self.is::<M>() {
            return Err(EnvelopeError::WrongType {
                expected: M::full_name(),
                found: self.message_type.clone(),
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

    /// `StockReserved` as a later build might write it: one field added.
    #[derive(Clone, PartialEq, prost::Message)]
    struct StockReservedNextRevision {
        #[prost(string, tag = "1")]
        order_id: String,
        #[prost(string, tag = "2")]
        warehouse: String,
    }

    impl Name for StockReservedNextRevision {
        const NAME: &'static str = "StockReserved";
        const PACKAGE: &'static str = "faultline.inventory.v1";
    }

    #[test]
    fn a_newer_revision_with_an_added_field_is_read_by_this_build() {
        let newer = StockReservedNextRevision {
            order_id: "order-1".into(),
            warehouse: "north".into(),
        };
        let mut envelope = Envelope::wrap(&newer, provenance());
        envelope.schema_version = CURRENT_SCHEMA_VERSION + 1;
        let bytes = envelope.encode_to_vec();

        let received = Envelope::decode_checked(&bytes).unwrap();
        let read = received.open::<StockReserved>().unwrap();
        assert_eq!(read.order_id, "order-1");
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
