//! The Kafka adapter: stock commands in, stock events out, each in one transaction with the
//! inbox row (see `faultline_outbox::consumer`).

use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{Reply, aggregate_uuid, open, open_envelope};
use faultline_proto::envelope::Envelope;
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

/// A command inventory accepts, decoded once from its envelope.
#[derive(Debug)]
enum Command {
    Reserve(Vec<Line>),
    Release,
    Commit,
}

impl Command {
    /// The command in `envelope`; one inventory does not know is parked.
    fn from_envelope(envelope: &Envelope) -> Result<Self, HandlerError> {
        if envelope.is::<pb::ReserveStock>() {
            let command: pb::ReserveStock = open(envelope)?;
            let lines = command
                .items
                .into_iter()
                .map(|item| Line {
                    sku: item.sku,
                    quantity: i64::from(item.quantity),
                })
                .collect();
            Ok(Self::Reserve(lines))
        } else if envelope.is::<pb::ReleaseStock>() {
            let _: pb::ReleaseStock = open(envelope)?;
            Ok(Self::Release)
        } else if envelope.is::<pb::CommitStock>() {
            let _: pb::CommitStock = open(envelope)?;
            Ok(Self::Commit)
        } else {
            Err(HandlerError::Permanent(format!(
                "inventory does not handle {}",
                envelope.message_type
            )))
        }
    }
}

impl Handler for CommandHandler {
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
        let order_id = aggregate_uuid(&envelope)?;
        let order = order_id.to_string();
        let reply = Reply::to(&envelope, &self.events_topic, PRODUCER);

        match Command::from_envelope(&envelope)? {
            Command::Reserve(lines) => match stock::reserve(tx, order_id, &lines).await? {
                Reservation::Reserved => {
                    reply
                        .send(tx, &pb::StockReserved { order_id: order })
                        .await?;
                }
                Reservation::Rejected { reason } => {
                    tracing::info!(%order_id, %reason, "reservation rejected");
                    let event = pb::StockRejected {
                        order_id: order,
                        reason,
                    };
                    reply.send(tx, &event).await?;
                }
            },
            Command::Release => {
                stock::release(tx, order_id).await?;
                reply
                    .send(tx, &pb::StockReleased { order_id: order })
                    .await?;
            }
            Command::Commit => {
                stock::commit(tx, order_id).await?;
                reply
                    .send(tx, &pb::StockCommitted { order_id: order })
                    .await?;
            }
        }
        Ok(())
    }
}
