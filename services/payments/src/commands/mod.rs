//! The Kafka adapter: payment commands in, payment events out. Each reply commits with the
//! command's inbox row; what asks the payment provider runs [detached](detached) from that
//! transaction, so no connection is held across a provider call.

mod authorize;
mod detached;

use std::sync::Arc;

use faultline_idempotency::Store;
use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{Reply, aggregate_uuid, open, open_envelope};
use faultline_proto::common::v1::Money;
use faultline_proto::envelope::Envelope;
use faultline_proto::payments::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::payments::{self, Authorization, AuthorizeRequest, Capture, PaymentError};
use crate::provider::PaymentProvider;
use detached::Detached;

/// Service name written into every envelope payments sends.
pub const PRODUCER: &str = "payments";

/// Handles `AuthorizePayment`, `VoidPayment` and `CapturePayment`.
#[derive(Debug)]
pub struct CommandHandler<P> {
    events_topic: String,
    provider: Arc<P>,
    pool: PgPool,
    keys: Store,
    authorizations: Detached<Authorization>,
    captures: Detached<Capture>,
    voids: Detached<()>,
}

impl<P> CommandHandler<P> {
    /// Replies go to `events_topic` (its full name); authorizations, captures and voids ask
    /// `provider` and write to `pool`; authorizations keep their keys in `keys`, shared with
    /// the gRPC door.
    pub fn new(events_topic: String, provider: Arc<P>, pool: PgPool, keys: Store) -> Self {
        Self {
            events_topic,
            provider,
            pool,
            keys,
            authorizations: Detached::new("authorization"),
            captures: Detached::new("capture"),
            voids: Detached::new("void"),
        }
    }
}

impl From<PaymentError> for HandlerError {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Database(error) => HandlerError::Database(error),
            // The provider being down is not this command's fault; wait for it.
            PaymentError::Provider(error) => HandlerError::Unavailable(error.to_string()),
            // Another request holds the key; it finishes or its lease runs out, so waiting
            // always ends. Parking the command instead would cancel a payable order.
            PaymentError::InProgress(_) => HandlerError::Unavailable(error.to_string()),
            PaymentError::KeyTakenOver => HandlerError::Transient(error.to_string()),
            refused => HandlerError::Permanent(refused.to_string()),
        }
    }
}

/// A command payments accepts, decoded once from its envelope.
#[derive(Debug)]
enum Command {
    Authorize(AuthorizeRequest),
    Void,
    Capture,
}

impl Command {
    /// The command in `envelope` about `order_id`; one payments does not know, or an
    /// authorization that breaks the request rules, is parked.
    fn from_envelope(envelope: &Envelope, order_id: Uuid) -> Result<Self, HandlerError> {
        if envelope.is::<pb::AuthorizePayment>() {
            let command: pb::AuthorizePayment = open(envelope)?;
            let amount = command.amount.unwrap_or_default();
            let request = AuthorizeRequest {
                idempotency_key: command.idempotency_key,
                order_id,
                customer_id: command.customer_id,
                amount_minor: amount.amount_minor,
                currency: amount.currency,
            };
            request.validate().map_err(HandlerError::Permanent)?;
            Ok(Self::Authorize(request))
        } else if envelope.is::<pb::VoidPayment>() {
            let _: pb::VoidPayment = open(envelope)?;
            Ok(Self::Void)
        } else if envelope.is::<pb::CapturePayment>() {
            let _: pb::CapturePayment = open(envelope)?;
            Ok(Self::Capture)
        } else {
            Err(HandlerError::Permanent(format!(
                "payments does not handle {}",
                envelope.message_type
            )))
        }
    }
}

impl<P: PaymentProvider + 'static> Handler for CommandHandler<P> {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let envelope = open_envelope(message)?;
        let order_id = aggregate_uuid(&envelope)?;
        let order = order_id.to_string();
        let reply = Reply::to(&envelope, &self.events_topic, PRODUCER);

        match Command::from_envelope(&envelope, order_id)? {
            Command::Authorize(request) => {
                let (pool, provider, keys) =
                    (self.pool.clone(), self.provider.clone(), self.keys.clone());
                let authorization = self.authorizations.poll(&message.event_id, || {
                    authorize::authorize(pool, provider, keys, request)
                })?;
                answer_authorization(tx, reply, order_id, authorization).await?;
            }
            Command::Void => {
                let (pool, provider) = (self.pool.clone(), self.provider.clone());
                self.voids.poll(&message.event_id, || async move {
                    Ok(payments::void(&pool, provider.as_ref(), order_id).await?)
                })?;
                reply
                    .send(tx, &pb::PaymentVoided { order_id: order })
                    .await?;
            }
            Command::Capture => {
                let (pool, provider) = (self.pool.clone(), self.provider.clone());
                let capture = self.captures.poll(&message.event_id, || async move {
                    Ok(payments::capture(&pool, provider.as_ref(), order_id).await?)
                })?;
                let event = pb::PaymentCaptured {
                    order_id: order,
                    payment_id: capture.payment_id.to_string(),
                    amount: Some(Money {
                        amount_minor: capture.amount_minor,
                        currency: capture.currency,
                    }),
                };
                reply.send(tx, &event).await?;
            }
        }
        Ok(())
    }
}

/// The reply to `AuthorizePayment`, on `tx`, the command's inbox transaction.
async fn answer_authorization(
    tx: &mut PgConnection,
    reply: Reply<'_>,
    order_id: Uuid,
    authorization: Authorization,
) -> Result<(), sqlx::Error> {
    let order = order_id.to_string();
    match authorization {
        // A captured payment was authorized: the answer to the question asked. The saga only
        // gets here for an order it already confirmed, and ignores it.
        Authorization::Authorized { payment_id } | Authorization::Captured { payment_id } => {
            let event = pb::PaymentAuthorized {
                order_id: order,
                payment_id: payment_id.to_string(),
            };
            reply.send(tx, &event).await?;
        }
        Authorization::Declined { reason, .. } => {
            tracing::info!(%order_id, %reason, "payment declined");
            let event = pb::PaymentDeclined {
                order_id: order,
                reason,
            };
            reply.send(tx, &event).await?;
        }
        // Nothing is held, so the only true answer the contract has is a refusal.
        Authorization::Voided { .. } => {
            tracing::info!(%order_id, "authorization refused: the order's payment is voided");
            let event = pb::PaymentDeclined {
                order_id: order,
                reason: format!("the payment of order {order_id} was voided"),
            };
            reply.send(tx, &event).await?;
        }
    }
    Ok(())
}
