//! The Kafka door into [`payments::authorize`](crate::payments::authorize): the same key
//! scope, fingerprint and phases as gRPC, run in the handler's `prepare` step so that no
//! inbox transaction is open across the provider call.

use faultline_idempotency::{Claim, IdempotencyKey, Store};
use faultline_outbox::consumer::HandlerError;
use faultline_proto::payments::v1 as pb;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::grpc::KEY_SCOPE;
use crate::keyed::authorize_owned;
use crate::payments::{Authorization, AuthorizeRequest};
use crate::provider::PaymentProvider;

/// Claims the request's key and, if this attempt owns it, authorizes to the end; a key
/// already completed answers with its stored reply.
pub(super) async fn authorize<P: PaymentProvider>(
    pool: &PgPool,
    provider: &P,
    keys: &Store,
    request: AuthorizeRequest,
) -> Result<Authorization, HandlerError> {
    let key = IdempotencyKey::parse(&request.idempotency_key)
        .map_err(|e| HandlerError::Permanent(format!("idempotency_key: {e}")))?;
    let lease = match keys.claim(KEY_SCOPE, &key, request.fingerprint()).await? {
        Claim::Owned(lease) => lease,
        Claim::Completed(stored) => {
            let response = pb::AuthorizeResponse::decode(stored.body.as_slice())
                .map_err(|e| HandlerError::Permanent(format!("stored reply unreadable: {e}")))?;
            return authorization_from(&response);
        }
        // Another request holds the key (the gRPC door, or this command's previous attempt
        // on another instance); it finishes or its lease runs out, so waiting always ends,
        // and parking the command would cancel a payable order.
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
    Ok(authorize_owned(pool, provider, lease, &request).await?)
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
