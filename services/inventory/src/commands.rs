//! The Kafka adapter: stock commands in, stock events out, each in one transaction with the
//! inbox row (see `faultline_outbox::consumer`).

use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{aggregate_uuid, open, open_envelope, publish};
use faultline_proto::inventory::v1 as pb;
use sqlx::PgConnection;

use crate::stock::{self, Line, Reservation, StockError};

/// Service name written into every envelope inventory sends.
pub const PRODUCER: &str = "inventory";

/// Handles `ReserveStock`, `ReleaseStock` and `CommitStock`.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    /// Full name of the topic replies go to.
    pub events_topic: String,
}

impl From<StockError> for HandlerError {
    fn from(error: StockError) -> Self {
        match error {
            StockError::Database(error) => HandlerError::Database(error),
            contradiction => HandlerError::Permanent(contradiction.to_string()),
        }
    }
}

impl Handler for CommandHandler {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let envelope = open_envelope(message)?;
        let order_id = aggregate_uuid(&envelope)?;
        let reply = envelope.reply_provenance(PRODUCER);
        let topic = self.events_topic.as_str();

        if envelope.is::<pb::ReserveStock>() {
            let command: pb::ReserveStock = open(&envelope)?;
            let lines: Vec<Line> = command
                .items
                .into_iter()
                .map(|item| Line {
                    sku: item.sku,
                    quantity: i64::from(item.quantity),
                })
                .collect();
            match stock::reserve(tx, order_id, &lines).await? {
                Reservation::Reserved => {
                    let event = pb::StockReserved {
                        order_id: order_id.to_string(),
                    };
                    publish(tx, topic, "order", &event, reply).await?;
                }
                Reservation::Rejected { reason } => {
                    tracing::info!(%order_id, %reason, "reservation rejected");
                    let event = pb::StockRejected {
                        order_id: order_id.to_string(),
                        reason,
                    };
                    publish(tx, topic, "order", &event, reply).await?;
                }
            }
        } else if envelope.is::<pb::ReleaseStock>() {
            let _: pb::ReleaseStock = open(&envelope)?;
            stock::release(tx, order_id).await?;
            let event = pb::StockReleased {
                order_id: order_id.to_string(),
            };
            publish(tx, topic, "order", &event, reply).await?;
        } else if envelope.is::<pb::CommitStock>() {
            let _: pb::CommitStock = open(&envelope)?;
            stock::commit(tx, order_id).await?;
            let event = pb::StockCommitted {
                order_id: order_id.to_string(),
            };
            publish(tx, topic, "order", &event, reply).await?;
        } else {
            return Err(HandlerError::Permanent(format!(
                "inventory does not handle {}",
                envelope.message_type
            )));
        }
        Ok(())
    }
}
