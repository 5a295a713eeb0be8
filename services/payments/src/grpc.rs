//! The gRPC adapter for `faultline.payments.v1.PaymentsService`.

use std::sync::Arc;

use faultline_platform::grpc::database_status;
use faultline_proto::payments::v1 as pb;
use faultline_proto::payments::v1::payments_service_server::PaymentsService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::payments::{self, Authorization, AuthorizeRequest, PaymentError};
use crate::provider::PaymentProvider;

/// Serves `Authorize` with the same domain function the Kafka command uses.
#[derive(Debug)]
pub struct PaymentsGrpc<P> {
    pool: PgPool,
    provider: Arc<P>,
}

impl<P> PaymentsGrpc<P> {
    /// A service writing to `pool` and asking `provider`.
    pub fn new(pool: PgPool, provider: Arc<P>) -> Self {
        Self { pool, provider }
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
        PaymentError::Provider(_) => Status::unavailable(error.to_string()),
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

        let mut tx = self.pool.begin().await.map_err(|e| database_status(&e))?;
        let authorization = payments::authorize(&mut tx, self.provider.as_ref(), &request)
            .await
            .map_err(|e| payment_status(&e))?;
        tx.commit().await.map_err(|e| database_status(&e))?;

        let response = match authorization {
            Authorization::Authorized { payment_id } => pb::AuthorizeResponse {
                payment_id: payment_id.to_string(),
                status: pb::AuthorizationStatus::Authorized.into(),
                decline_reason: String::new(),
            },
            Authorization::Declined { payment_id, reason } => pb::AuthorizeResponse {
                payment_id: payment_id.to_string(),
                status: pb::AuthorizationStatus::Declined.into(),
                decline_reason: reason,
            },
        };
        Ok(Response::new(response))
    }
}
