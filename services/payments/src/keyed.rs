//! An authorization whose idempotency key the caller owns, run to the end as both doors run
//! it: every phase on a connection of its own, and none held while the provider is asked.

use faultline_idempotency::Lease;
use faultline_idempotency::grpc::stored;
use sqlx::PgPool;

use crate::grpc::authorize_response;
use crate::payments::{self, Authorization, AuthorizeRequest, PaymentError};
use crate::provider::PaymentProvider;

/// Steps 1 to 3 of [`payments::authorize`] under `lease`, committed: the pending payment,
/// the provider's answer, then the decision and the stored reply in one final transaction
/// opened only once the provider has answered. A connection held idle across the provider
/// call would let a burst of requests drain the pool (the gRPC door) or deadlock it (the
/// Kafka door, whose inbox transaction already holds one).
///
/// On an error the key is given back: forgotten if no phase committed, otherwise kept at
/// its recovery point so the next identical request resumes there at once.
pub(crate) async fn authorize_owned<P: PaymentProvider>(
    pool: &PgPool,
    provider: &P,
    mut lease: Lease,
    request: &AuthorizeRequest,
) -> Result<Authorization, PaymentError> {
    let decided = match payments::decide(pool, provider, &mut lease, request).await {
        Ok(decided) => decided,
        Err(error) => return Err(give_back(pool, lease, error).await),
    };
    let finished = async {
        let mut tx = pool.begin().await?;
        let authorization = payments::record(&mut tx, decided).await?;
        Ok::<_, PaymentError>((tx, authorization))
    }
    .await;
    let (mut tx, authorization) = match finished {
        Ok(finished) => finished,
        Err(error) => return Err(give_back(pool, lease, error).await),
    };
    lease
        .complete(&mut tx, &stored(&authorize_response(&authorization)))
        .await?;
    tx.commit().await?;
    Ok(authorization)
}

async fn give_back(pool: &PgPool, lease: Lease, error: PaymentError) -> PaymentError {
    if let Err(release) = lease.release(pool).await {
        tracing::warn!(%release, "could not release the idempotency key");
    }
    error
}
