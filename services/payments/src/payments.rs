//! The payment rules: authorize once per idempotency key and order, capture into a balanced
//! ledger, void what will never be captured.
//!
//! gRPC `Authorize` and the Kafka `AuthorizePayment` command both end in [`authorize`], and
//! every function runs inside the caller's transaction.

use faultline_idempotency::{Lease, LeaseError, STARTED};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::provider::{PaymentProvider, ProviderDecision, ProviderError, ProviderRequest};
pub use crate::request::AuthorizeRequest;
pub use crate::settle::{capture, void};
pub use crate::stored::PaymentStatus;
use crate::stored::{Lock, Payment, by_id, by_key, by_order};

/// The answer to an authorization: what became of the payment the key made. A repeated key
/// gets the payment's state now, not the first answer when that has changed since, so a
/// voided payment is never reported as holding funds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Funds are held.
    Authorized { payment_id: Uuid },
    /// The provider refused.
    Declined {
        /// The payment (kept, so the answer can be replayed).
        payment_id: Uuid,
        /// The provider's reason.
        reason: String,
    },
    /// Authorized, and captured since: the funds were moved, nothing is held any more.
    Captured { payment_id: Uuid },
    /// Voided: nothing is held, and nothing will be for this order.
    Voided { payment_id: Uuid },
}

/// A captured payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub payment_id: Uuid,
    /// Amount moved, minor units.
    pub amount_minor: i64,
    pub currency: String,
}

/// Why a payment operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The key was already used for a different request.
    #[error("idempotency key {0:?} was already used with different parameters")]
    KeyReused(String),
    /// The order already has a payment under another key.
    #[error("order {0} already has a payment")]
    OrderAlreadyPaid(Uuid),
    /// Only an authorized payment can be captured.
    #[error("payment of order {order_id} cannot be captured: it is {}", .status.map_or("missing", PaymentStatus::as_str))]
    NotCapturable {
        order_id: Uuid,
        /// Its payment's status; `None` when it has none.
        status: Option<PaymentStatus>,
    },
    /// Captured money is refunded, not voided.
    #[error("payment of order {0} is captured and cannot be voided")]
    AlreadyCaptured(Uuid),
    /// An authorization for the order has not finished yet (it resumes on retry).
    #[error("the authorization of order {0} is still in progress")]
    InProgress(Uuid),
    /// Another request took the idempotency key over after this one's lease ran out.
    #[error("the idempotency key was taken over by another request")]
    KeyTakenOver,
    /// Stored state contradicts itself; a bug or a manual edit.
    #[error("inconsistent payment state: {0}")]
    Corrupt(String),
    /// The provider could not be reached.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The provider refused a capture or a void for good.
    #[error("the payment provider refused: {0}")]
    ProviderRefused(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<LeaseError> for PaymentError {
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::Lost => PaymentError::KeyTakenOver,
            LeaseError::Database(error) => PaymentError::Database(error),
        }
    }
}

impl Payment {
    /// The stored answer for a repeated request, if it is the same request.
    fn replay(self, request: &AuthorizeRequest) -> Result<Authorization, PaymentError> {
        self.made_by(request)?;
        self.answer()
    }

    /// Refuses a request with this payment's key but other terms (another order, say): a
    /// key reused, whose answer (or pending payment) belongs to someone else.
    fn made_by(&self, request: &AuthorizeRequest) -> Result<(), PaymentError> {
        let same = self.order_id == request.order_id
            && self.customer_id == request.customer_id
            && self.amount_minor == request.amount_minor
            && self.currency == request.currency;
        if same {
            Ok(())
        } else {
            Err(PaymentError::KeyReused(request.idempotency_key.clone()))
        }
    }

    /// What the payment is now, as an answer to its authorization.
    fn answer(self) -> Result<Authorization, PaymentError> {
        let payment_id = self.id;
        match self.status {
            PaymentStatus::Pending => Err(PaymentError::InProgress(self.order_id)),
            PaymentStatus::Authorized => Ok(Authorization::Authorized { payment_id }),
            PaymentStatus::Declined => Ok(Authorization::Declined {
                payment_id,
                reason: self.decline_reason.unwrap_or_default(),
            }),
            PaymentStatus::Captured => Ok(Authorization::Captured { payment_id }),
            PaymentStatus::Voided => Ok(Authorization::Voided { payment_id }),
        }
    }
}

/// Recovery point once the pending payment row is committed.
pub const PAYMENT_CREATED: &str = "payment_created";

/// Authorizes `request` (already validated) through `provider`, at most once per key and
/// per order, in recovery points, because the provider call in the middle cannot be rolled
/// back:
///
/// 1. `started` → a `pending` payment row is committed with the key's checkpoint
///    `payment_created`;
/// 2. the provider is asked, with the idempotency key, so asking again after a crash returns
///    the same answer and never holds funds twice;
/// 3. the decision is recorded on `finish`, the caller's final transaction, in which the
///    caller also stores the reply ([`Lease::complete`]).
///
/// A retry after a crash in step 2 or 3 takes the key over at `payment_created` and resumes
/// at step 2.
///
/// [`decide`] and [`record`] are the two halves, for a caller that should open its final
/// transaction only once the provider has answered, as both doors do: holding a connection
/// idle across the provider call would let a burst of gRPC requests exhaust the pool, and
/// deadlock it under the Kafka door, whose inbox transaction already holds one.
pub async fn authorize<P: PaymentProvider>(
    pool: &PgPool,
    provider: &P,
    lease: &mut Lease,
    request: &AuthorizeRequest,
    finish: &mut PgConnection,
) -> Result<Authorization, PaymentError> {
    let decided = decide(pool, provider, lease, request).await?;
    record(finish, decided).await
}

/// The provider's answer for a key, or the one already recorded under it.
#[derive(Debug)]
pub enum Decided {
    /// Recorded before (under this key, before it expired or during an earlier attempt).
    Replay(Authorization),
    /// Fresh from the provider; [`record`] writes it.
    Fresh {
        /// The pending payment it decides.
        payment_id: Uuid,
        /// What the provider said.
        decision: ProviderDecision,
    },
    /// An amount of 0: authorized without asking the provider, since there is nothing to
    /// hold (and a provider may refuse a zero hold, which would cancel a free order).
    NothingToHold {
        /// The pending payment it decides.
        payment_id: Uuid,
    },
}

/// Steps 1 and 2 of [`authorize`], on connections of their own from `pool`.
#[tracing::instrument(name = "payment authorize", skip_all, fields(order.id = %request.order_id, payment.recovery_point = lease.recovery_point()))]
pub async fn decide<P: PaymentProvider>(
    pool: &PgPool,
    provider: &P,
    lease: &mut Lease,
    request: &AuthorizeRequest,
) -> Result<Decided, PaymentError> {
    let payment_id = match lease.recovery_point() {
        STARTED => {
            let mut tx = pool.begin().await?;
            let pending = create_pending(&mut tx, request).await?;
            let payment_id = match pending {
                Pending::Created(id) => id,
                Pending::Answered(answer) => return Ok(Decided::Replay(answer)),
            };
            lease.checkpoint(&mut tx, PAYMENT_CREATED).await?;
            tx.commit().await?;
            payment_id
        }
        PAYMENT_CREATED => {
            let existing = by_key(&mut *pool.acquire().await?, &request.idempotency_key)
                .await?
                .ok_or_else(|| {
                    PaymentError::Corrupt(format!(
                        "key {:?} is at {PAYMENT_CREATED} but has no payment",
                        request.idempotency_key
                    ))
                })?;
            if existing.status != PaymentStatus::Pending {
                return existing.replay(request).map(Decided::Replay);
            }
            existing.made_by(request)?;
            existing.id
        }
        other => {
            return Err(PaymentError::Corrupt(format!(
                "unknown recovery point {other:?} for key {:?}",
                request.idempotency_key
            )));
        }
    };

    if request.amount_minor == 0 {
        return Ok(Decided::NothingToHold { payment_id });
    }

    // The provider is an external dependency: a client span, as for any remote call.
    let psp = tracing::info_span!(
        "psp authorize",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        "peer.service" = "payment-provider",
        "payment.decision" = tracing::field::Empty,
    );
    let decision = provider
        .authorize(ProviderRequest {
            idempotency_key: &request.idempotency_key,
            order_id: request.order_id,
            amount_minor: request.amount_minor,
            currency: &request.currency,
        })
        .instrument(psp.clone())
        .await;
    match &decision {
        Ok(ProviderDecision::Approved { .. }) => {
            psp.record("payment.decision", "approved");
        }
        Ok(ProviderDecision::Declined { .. }) => {
            psp.record("payment.decision", "declined");
        }
        Err(_) => {
            psp.record("otel.status_code", "ERROR");
        }
    }
    Ok(Decided::Fresh {
        payment_id,
        decision: decision?,
    })
}

/// Step 3 of [`authorize`]: records a fresh decision in `finish`, the caller's final
/// transaction, and returns the answer.
pub async fn record(
    finish: &mut PgConnection,
    decided: Decided,
) -> Result<Authorization, PaymentError> {
    let (payment_id, status, reason, reference) = match decided {
        Decided::Replay(authorization) => return Ok(authorization),
        Decided::Fresh {
            payment_id,
            decision: ProviderDecision::Approved { reference },
        } => (payment_id, PaymentStatus::Authorized, None, Some(reference)),
        Decided::Fresh {
            payment_id,
            decision: ProviderDecision::Declined { reason },
        } => (payment_id, PaymentStatus::Declined, Some(reason), None),
        Decided::NothingToHold { payment_id } => {
            (payment_id, PaymentStatus::Authorized, None, None)
        }
    };
    if !record_decision(
        finish,
        payment_id,
        status,
        reason.as_deref(),
        reference.as_deref(),
    )
    .await?
    {
        // Decided meanwhile: the order was cancelled and its void won over this pending
        // authorization. Whatever the provider said, the truth is the row's.
        return by_id(finish, payment_id).await?.answer();
    }
    Ok(match reason {
        Some(reason) => Authorization::Declined { payment_id, reason },
        None => Authorization::Authorized { payment_id },
    })
}

/// What step 1 found.
enum Pending {
    /// A pending payment to ask the provider about.
    Created(Uuid),
    /// Nothing to ask: the answer is already known.
    Answered(Authorization),
}

async fn create_pending(
    conn: &mut PgConnection,
    request: &AuthorizeRequest,
) -> Result<Pending, PaymentError> {
    let payment_id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO payments (id, order_id, idempotency_key, customer_id, amount_minor,
                               currency, status)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending')
         ON CONFLICT DO NOTHING",
    )
    .bind(payment_id)
    .bind(request.order_id)
    .bind(&request.idempotency_key)
    .bind(&request.customer_id)
    .bind(request.amount_minor)
    .bind(&request.currency)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Pending::Created(payment_id));
    }
    match by_key(conn, &request.idempotency_key).await? {
        // A pending payment under this key is resumed only if this request made it: the
        // key's row may have expired and the key come back for another order.
        Some(existing) if existing.status == PaymentStatus::Pending => {
            existing.made_by(request)?;
            Ok(Pending::Created(existing.id))
        }
        // Decided under this key before the key itself was forgotten (expired).
        Some(existing) => existing.replay(request).map(Pending::Answered),
        // The order has a payment under another key, or was voided (a payment or a
        // tombstone): a void is final, and this authorization is refused with its state.
        None => match by_order(conn, request.order_id, Lock::None).await? {
            Some(stored) => match stored.status() {
                (payment_id, PaymentStatus::Voided) => {
                    Ok(Pending::Answered(Authorization::Voided { payment_id }))
                }
                _ => Err(PaymentError::OrderAlreadyPaid(request.order_id)),
            },
            None => Err(PaymentError::OrderAlreadyPaid(request.order_id)),
        },
    }
}

/// Writes the decision on a payment still pending; `false` if it no longer was.
async fn record_decision(
    conn: &mut PgConnection,
    payment_id: Uuid,
    status: PaymentStatus,
    reason: Option<&str>,
    reference: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE payments
         SET status = $2, decline_reason = $3, provider_reference = $4, updated_at = now()
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(payment_id)
    .bind(status)
    .bind(reason)
    .bind(reference)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

#[cfg(test)]
#[path = "payments_tests.rs"]
mod tests;
