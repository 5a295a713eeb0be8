//! The Kafka adapter: payment commands in, payment events out, each in one transaction with
//! the inbox row.

use std::sync::Arc;

use faultline_outbox::consumer::{Handler, HandlerError, Incoming};
use faultline_platform::messaging::{Reply, aggregate_uuid, open, open_envelope};
use faultline_proto::common::v1::Money;
use faultline_proto::envelope::Envelope;
use faultline_proto::payments::v1 as pb;
use sqlx::PgConnection;

use faultline_idempotency::Store;
use faultline_idempotency::grpc::stored;
use faultline_idempotency::{Claim, IdempotencyKey};
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::grpc::{KEY_SCOPE, authorize_response};
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
    /// Payments' database, for the authorization phase that commits on its own.
    pub pool: PgPool,
    /// Idempotency keys, shared with the gRPC door.
    pub keys: Store,
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

impl<P: PaymentProvider> CommandHandler<P> {
    /// The Kafka door into [`payments::authorize`]: same key scope and fingerprint as gRPC,
    /// final phase in the inbox transaction `tx`.
    async fn authorize(
        &self,
        tx: &mut PgConnection,
        request: &AuthorizeRequest,
    ) -> Result<Authorization, HandlerError> {
        let key = IdempotencyKey::parse(&request.idempotency_key)
            .map_err(|e| HandlerError::Permanent(format!("idempotency_key: {e}")))?;
        let mut lease = match self
            .keys
            .claim(KEY_SCOPE, &key, request.fingerprint())
            .await?
        {
            Claim::Owned(lease) => lease,
            Claim::Completed(stored) => {
                let response =
                    pb::AuthorizeResponse::decode(stored.body.as_slice()).map_err(|e| {
                        HandlerError::Permanent(format!("stored reply unreadable: {e}"))
                    })?;
                return authorization_from(&response);
            }
            // Another request holds the key (the gRPC door, or this command's previous
            // attempt on another instance); it finishes or its lease runs out, so waiting
            // always ends, and parking the command would cancel a payable order.
            Claim::InFlight { .. } => {
                return Err(HandlerError::Unavailable(
                    "the same authorization is in progress elsewhere".into(),
                ));
            }
            Claim::Mismatch => {
                return Err(HandlerError::Permanent(format!(
                    "idempotency key {:?} was used for a different authorization",
                    request.idempotency_key
                )));
            }
        };
        match payments::authorize(&self.pool, self.provider.as_ref(), &mut lease, request, tx).await
        {
            Ok(authorization) => {
                lease
                    .complete(tx, &stored(&authorize_response(&authorization)))
                    .await
                    .map_err(PaymentError::from)?;
                Ok(authorization)
            }
            Err(error) => {
                if let Err(release) = lease.release(&self.pool).await {
                    tracing::warn!(%release, "could not release the idempotency key");
                }
                Err(error.into())
            }
        }
    }
}

/// Reads a stored reply back into the domain's answer.
fn authorization_from(response: &pb::AuthorizeResponse) -> Result<Authorization, HandlerError> {
    let payment_id = Uuid::parse_str(&response.payment_id)
        .map_err(|_| HandlerError::Permanent("stored reply has no payment id".into()))?;
    Ok(match response.status() {
        pb::AuthorizationStatus::Authorized => Authorization::Authorized { payment_id },
        pb::AuthorizationStatus::Declined => Authorization::Declined {
            payment_id,
            reason: response.decline_reason.clone(),
        },
        pb::AuthorizationStatus::Captured => Authorization::Captured { payment_id },
        pb::AuthorizationStatus::Voided => Authorization::Voided { payment_id },
        // Only this service writes these replies; an unknown status is not ours to guess.
        pb::AuthorizationStatus::Unspecified => {
            return Err(HandlerError::Permanent(
                "stored reply has no authorization status".into(),
            ));
        }
    })
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

impl<P: PaymentProvider> Handler for CommandHandler<P> {
    async fn handle(&self, tx: &mut PgConnection, message: &Incoming) -> Result<(), HandlerError> {
        let envelope = open_envelope(message)?;
        let order_id = aggregate_uuid(&envelope)?;
        let order = order_id.to_string();
        let reply = Reply::to(&envelope, &self.events_topic, PRODUCER);

        match Command::from_envelope(&envelope, order_id)? {
            Command::Authorize(request) => match self.authorize(tx, &request).await? {
                // A captured payment was authorized: the answer to the question asked. The
                // saga only gets here for an order it already confirmed, and ignores it.
                Authorization::Authorized { payment_id }
                | Authorization::Captured { payment_id } => {
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
            },
            Command::Void => {
                payments::void(tx, order_id).await?;
                reply
                    .send(tx, &pb::PaymentVoided { order_id: order })
                    .await?;
            }
            Command::Capture => {
                let capture = payments::capture(tx, order_id).await?;
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
