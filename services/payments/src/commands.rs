//! The Kafka adapter: payment commands in, payment events out, each in one transaction with
//! the inbox row.

use std::sync::Arc;

use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{aggregate_uuid, open, open_envelope, publish};
use faultline_proto::common::v1::Money;
use faultline_proto::payments::v1 as pb;
use sqlx::PgConnection;

use crate::payments::{self, Authorization, AuthorizeRequest, PaymentError};
use crate::provider::PaymentProvider;

/// Service name written into every envelope payments sends.
pub const PRODUCER: &str = "payments";

/// Handles `AuthorizePayment`, `VoidPayment` and `CapturePayment`.
#[derive(Debug)]
pub struct CommandHandler<P> {
    /// Full name of the topic replies go to.
    pub events_topic: String,
    /// The payment provider.
    pub provider: Arc<P>,
}

impl From<PaymentError> for HandlerError {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Database(error) => HandlerError::Database(error),
            PaymentError::Provider(error) => HandlerError::Transient(error.to_string()),
            refused => HandlerError::Permanent(refused.to_string()),
        }
    }
}

impl<P: PaymentProvider> Handler for CommandHandler<P> {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let envelope = open_envelope(message)?;
        let order_id = aggregate_uuid(&envelope)?;
        let reply = envelope.reply_provenance(PRODUCER);
        let topic = self.events_topic.as_str();
        let order = order_id.to_string();

        if envelope.is::<pb::AuthorizePayment>() {
            let command: pb::AuthorizePayment = open(&envelope)?;
            let amount = command.amount.unwrap_or_default();
            let request = AuthorizeRequest {
                idempotency_key: command.idempotency_key,
                order_id,
                customer_id: command.customer_id,
                amount_minor: amount.amount_minor,
                currency: amount.currency,
            };
            request.validate().map_err(HandlerError::Permanent)?;
            match payments::authorize(tx, self.provider.as_ref(), &request).await? {
                Authorization::Authorized { payment_id } => {
                    let event = pb::PaymentAuthorized {
                        order_id: order,
                        payment_id: payment_id.to_string(),
                    };
                    publish(tx, topic, "order", &event, reply).await?;
                }
                Authorization::Declined { reason, .. } => {
                    tracing::info!(%order_id, %reason, "payment declined");
                    let event = pb::PaymentDeclined {
                        order_id: order,
                        reason,
                    };
                    publish(tx, topic, "order", &event, reply).await?;
                }
            }
        } else if envelope.is::<pb::VoidPayment>() {
            let _: pb::VoidPayment = open(&envelope)?;
            payments::void(tx, order_id).await?;
            let event = pb::PaymentVoided { order_id: order };
            publish(tx, topic, "order", &event, reply).await?;
        } else if envelope.is::<pb::CapturePayment>() {
            let _: pb::CapturePayment = open(&envelope)?;
            let capture = payments::capture(tx, order_id).await?;
            let event = pb::PaymentCaptured {
                order_id: order,
                payment_id: capture.payment_id.to_string(),
                amount: Some(Money {
                    amount_minor: capture.amount_minor,
                    currency: capture.currency,
                }),
            };
            publish(tx, topic, "order", &event, reply).await?;
        } else {
            return Err(HandlerError::Permanent(format!(
                "payments does not handle {}",
                envelope.message_type
            )));
        }
        Ok(())
    }
}
