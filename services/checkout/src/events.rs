//! The Kafka adapter: participants' answers in, saga transitions out, each in one
//! transaction with the inbox row.

use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{aggregate_uuid, open, open_envelope};
use faultline_proto::envelope::Envelope;
use faultline_proto::inventory::v1 as inventory;
use faultline_proto::payments::v1 as payments;
use sqlx::PgConnection;

use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::saga::Event;

/// Handles the events on `inventory.events` and `payments.events`.
#[derive(Debug, Clone)]
pub struct EventHandler {
    /// The orchestrator the events drive.
    pub orchestrator: Orchestrator,
}

impl From<OrchestratorError> for HandlerError {
    fn from(error: OrchestratorError) -> Self {
        match error {
            OrchestratorError::Database(error) => HandlerError::Database(error),
            other => HandlerError::Permanent(other.to_string()),
        }
    }
}

/// Reads the saga event a participant's message stands for.
fn saga_event(envelope: &Envelope) -> Result<Event, HandlerError> {
    Ok(if envelope.is::<inventory::StockReserved>() {
        let _: inventory::StockReserved = open(envelope)?;
        Event::StockReserved
    } else if envelope.is::<inventory::StockRejected>() {
        let event: inventory::StockRejected = open(envelope)?;
        Event::StockRejected {
            reason: event.reason,
        }
    } else if envelope.is::<inventory::StockReleased>() {
        let _: inventory::StockReleased = open(envelope)?;
        Event::StockReleased
    } else if envelope.is::<inventory::StockCommitted>() {
        let _: inventory::StockCommitted = open(envelope)?;
        Event::StockCommitted
    } else if envelope.is::<payments::PaymentAuthorized>() {
        let _: payments::PaymentAuthorized = open(envelope)?;
        Event::PaymentAuthorized
    } else if envelope.is::<payments::PaymentDeclined>() {
        let event: payments::PaymentDeclined = open(envelope)?;
        Event::PaymentDeclined {
            reason: event.reason,
        }
    } else if envelope.is::<payments::PaymentVoided>() {
        let _: payments::PaymentVoided = open(envelope)?;
        Event::PaymentVoided
    } else if envelope.is::<payments::PaymentCaptured>() {
        let _: payments::PaymentCaptured = open(envelope)?;
        Event::PaymentCaptured
    } else {
        return Err(HandlerError::Permanent(format!(
            "checkout does not handle {}",
            envelope.message_type
        )));
    })
}

impl Handler for EventHandler {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let envelope = open_envelope(message)?;
        let order_id = aggregate_uuid(&envelope)?;
        let event = saga_event(&envelope)?;
        self.orchestrator
            .apply(tx, order_id, &event, Some(&envelope.event_id))
            .await?;
        Ok(())
    }
}
