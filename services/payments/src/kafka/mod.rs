//! The Kafka adapter: payment commands in, payment events out. What asks the payment
//! provider runs in the handler's `prepare` step, before the command's inbox transaction
//! opens, so no connection is held across a provider call; the reply then commits with the
//! command's inbox row.

mod authorize;

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

/// Service name written into every envelope payments sends.
pub const PRODUCER: &str = "payments";

/// Handles `AuthorizePayment`, `VoidPayment` and `CapturePayment`.
#[derive(Debug)]
pub struct CommandHandler<P> {
    events_topic: String,
    provider: Arc<P>,
    pool: PgPool,
    keys: Store,
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

/// What a command came to once the provider has been asked: all the reply needs.
#[derive(Debug)]
pub enum Done {
    /// `AuthorizePayment`'s answer.
    Authorization(Authorization),
    /// `VoidPayment` is final for the order.
    Voided,
    /// `CapturePayment` moved the money.
    Captured(Capture),
}

/// A command's envelope (its reply is addressed from it) and what it came to.
#[derive(Debug)]
pub struct Prepared {
    envelope: Envelope,
    order_id: Uuid,
    done: Done,
}

impl<P: PaymentProvider + 'static> Handler for CommandHandler<P> {
    type Prepared = Prepared;

    /// Asks the provider, holding no connection across the call: each operation commits
    /// its recovery point first and finishes in a transaction of its own, with a key the
    /// provider deduplicates on, so running it again for a redelivered command resumes or
    /// finds it done and gives the same answer.
    async fn prepare(&self, message: &Incoming) -> Result<Prepared, HandlerError> {
        let envelope = open_envelope(message)?;
        let order_id = aggregate_uuid(&envelope)?;
        let provider = self.provider.as_ref();
        let done = match Command::from_envelope(&envelope, order_id)? {
            Command::Authorize(request) => Done::Authorization(
                authorize::authorize(&self.pool, provider, &self.keys, request).await?,
            ),
            Command::Void => {
                payments::void(&self.pool, provider, order_id).await?;
                Done::Voided
            }
            Command::Capture => {
                Done::Captured(payments::capture(&self.pool, provider, order_id).await?)
            }
        };
        Ok(Prepared {
            envelope,
            order_id,
            done,
        })
    }

    /// The reply, which commits with the command's inbox row.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        _: &Incoming,
        prepared: Prepared,
    ) -> Result<(), HandlerError> {
        let reply = Reply::to(&prepared.envelope, &self.events_topic, PRODUCER);
        let order_id = prepared.order_id;
        let order = order_id.to_string();
        match prepared.done {
            Done::Authorization(authorization) => {
                answer_authorization(tx, reply, order_id, authorization).await?;
            }
            Done::Voided => {
                reply
                    .send(tx, &pb::PaymentVoided { order_id: order })
                    .await?;
            }
            Done::Captured(capture) => {
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
