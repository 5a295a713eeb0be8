//! The Kafka adapter: participants' answers in, saga transitions out, each in one
//! transaction with the inbox row; and inventory's catalog changes in, cache entries out.

use faultline_domain::Sku;
use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{aggregate_uuid, open, open_envelope};
use faultline_proto::envelope::Envelope;
use faultline_proto::inventory::v1 as inventory;
use faultline_proto::payments::v1 as payments;
use sqlx::PgConnection;

use crate::catalog::GrpcCatalog;
use crate::catalog_cache::CachedCatalog;
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::saga::Event;

/// Handles the events on `inventory.events` and `payments.events` (the saga) and on
/// `catalog.events` (the catalog cache).
#[derive(Debug, Clone)]
pub struct EventHandler {
    /// The orchestrator the events drive.
    pub orchestrator: Orchestrator,
    /// The cached catalog that product changes invalidate.
    pub catalog: CachedCatalog<GrpcCatalog>,
}

impl From<OrchestratorError> for HandlerError {
    fn from(error: OrchestratorError) -> Self {
        match error {
            OrchestratorError::Database(error) => HandlerError::Database(error),
            other => HandlerError::Permanent(other.to_string()),
        }
    }
}

/// A message checkout reads, decoded once from its envelope.
#[derive(Debug)]
enum Received {
    /// A participant's answer: the saga event it stands for.
    Saga(Event),
    /// Inventory changed a product: its cached entry goes.
    ProductChanged { sku: Sku },
}

impl Received {
    fn from_envelope(envelope: &Envelope) -> Result<Self, HandlerError> {
        if envelope.is::<inventory::ProductChanged>() {
            let event: inventory::ProductChanged = open(envelope)?;
            let sku = Sku::parse(event.sku).map_err(|e| HandlerError::Permanent(e.to_string()))?;
            return Ok(Self::ProductChanged { sku });
        }
        saga_event(envelope).map(Self::Saga)
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
    type Prepared = ();

    async fn prepare(&self, _: &Incoming) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming,
        (): (),
    ) -> Result<(), HandlerError> {
        let envelope = open_envelope(message)?;
        match Received::from_envelope(&envelope)? {
            Received::ProductChanged { sku } => self.product_changed(sku.as_str()).await,
            Received::Saga(event) => {
                let order_id = aggregate_uuid(&envelope)?;
                self.orchestrator
                    .apply(tx, order_id, &event, Some(&envelope.event_id))
                    .await?;
                Ok(())
            }
        }
    }
}

impl EventHandler {
    /// Drops the cached entry of a changed product. The effect is outside the transaction,
    /// which is sound because it is idempotent: a redelivery deletes again. Until Redis
    /// answers the record waits (retried without limit), since acknowledging it would leave
    /// the old price cached until its TTL.
    async fn product_changed(&self, sku: &str) -> Result<(), HandlerError> {
        self.catalog
            .product_changed(sku)
            .await
            .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
        tracing::debug!(%sku, "catalog entry invalidated");
        Ok(())
    }
}
