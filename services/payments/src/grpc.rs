//! The gRPC adapter for `faultline.payments.v1.PaymentsService`.

use std::sync::Arc;

use faultline_platform::grpc::database_status;
use faultline_proto::payments::v1 as pb;
use faultline_proto::payments::v1::payments_service_server::PaymentsService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use faultline_idempotency::Store;
use faultline_idempotency::grpc::{self, GrpcClaim};

use crate::keyed::authorize_owned;
use crate::payments::{Authorization, AuthorizeRequest, PaymentError};
use crate::provider::PaymentProvider;

/// Scope of payments' idempotency keys. Keys are shared by every door into payments (gRPC
/// and the saga's Kafka command), so one key never authorizes twice whichever way it comes.
pub const KEY_SCOPE: &str = "payments";

/// Serves `Authorize` with the same domain function the Kafka command uses.
#[derive(Debug)]
pub struct PaymentsGrpc<P> {
    pool: PgPool,
    provider: Arc<P>,
    keys: Store,
}

impl<P> PaymentsGrpc<P> {
    /// A service writing to `pool`, asking `provider`, and keeping idempotency keys in `keys`.
    pub fn new(pool: PgPool, provider: Arc<P>, keys: Store) -> Self {
        Self {
            pool,
            provider,
            keys,
        }
    }
}

/// The reply to an authorization, as gRPC sends it and as the key stores it for replay.
pub fn authorize_response(authorization: &Authorization) -> pb::AuthorizeResponse {
    let (payment_id, status, decline_reason) = match authorization {
        Authorization::Authorized { payment_id } => {
            (payment_id, pb::AuthorizationStatus::Authorized, "")
        }
        Authorization::Declined { payment_id, reason } => (
            payment_id,
            pb::AuthorizationStatus::Declined,
            reason.as_str(),
        ),
        Authorization::Captured { payment_id } => {
            (payment_id, pb::AuthorizationStatus::Captured, "")
        }
        Authorization::Voided { payment_id } => (payment_id, pb::AuthorizationStatus::Voided, ""),
    };
    pb::AuthorizeResponse {
        payment_id: payment_id.to_string(),
        status: status.into(),
        decline_reason: decline_reason.to_owned(),
    }
}

/// The status a caller can act on for each refusal.
pub fn payment_status(error: &PaymentError) -> Status {
    match error {
        PaymentError::KeyReused(_) => Status::failed_precondition(error.to_string()),
        PaymentError::OrderAlreadyPaid(_) => Status::already_exists(error.to_string()),
        PaymentError::NotCapturable { .. } | PaymentError::AlreadyCaptured(_) => {
            Status::failed_precondition(error.to_string())
        }
        PaymentError::InProgress(_) | PaymentError::KeyTakenOver => {
            Status::aborted(format!("{error}; retry"))
        }
        PaymentError::Corrupt(_) => {
            tracing::error!(%error, "payment state is inconsistent");
            Status::internal("internal error")
        }
        PaymentError::Provider(_) => Status::unavailable(error.to_string()),
        PaymentError::ProviderRefused(_) => Status::failed_precondition(error.to_string()),
        PaymentError::Database(db) => database_status(db),
    }
}

#[tonic::async_trait]
impl<P: PaymentProvider + 'static> PaymentsService for PaymentsGrpc<P> {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let request = request.into_inner();
        let order_id = Uuid::parse_str(&request.order_id)
            .map_err(|_| Status::invalid_argument("order_id must be a UUID"))?;
        let amount = request
            .amount
            .ok_or_else(|| Status::invalid_argument("amount is required"))?;
        let request = AuthorizeRequest {
            idempotency_key: request.idempotency_key,
            order_id,
            customer_id: request.customer_id,
            amount_minor: amount.amount_minor,
            currency: amount.currency,
        };
        request.validate().map_err(Status::invalid_argument)?;

        let claim = grpc::claim_with::<pb::AuthorizeResponse>(
            &self.keys,
            KEY_SCOPE,
            &request.idempotency_key,
            request.fingerprint(),
        )
        .await?;
        let lease = match claim {
            GrpcClaim::Replay(response) => return Ok(Response::new(response)),
            GrpcClaim::Owned(lease) => lease,
        };
        let authorization = authorize_owned(&self.pool, self.provider.as_ref(), lease, &request)
            .await
            .map_err(|error| payment_status(&error))?;
        Ok(Response::new(authorize_response(&authorization)))
    }
}
