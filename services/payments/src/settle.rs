//! What happens to an authorization once the order is decided: captured into the ledger when
//! the order is confirmed, voided when it is cancelled. Both reach the provider, in recovery
//! points as [`authorize`](crate::payments::authorize) does, because the provider call in
//! the middle cannot be rolled back:
//!
//! 1. the payment is marked with the call it waits for ([`Settling`], migration 0006), and
//!    the mark commits;
//! 2. the provider is asked with a key of the operation's own (`<payment id>:capture` or
//!    `:void`), stable across retries, so asking again after a crash never captures or
//!    releases twice;
//! 3. the answer is written and the mark cleared, in one transaction.
//!
//! A retry after a crash in step 2 or 3 finds the mark and resumes at step 2; nothing else
//! can happen to a marked payment meanwhile (a capture's mark keeps a void out, and a void's
//! mark is written with the voided status, which is final). Each function takes connections
//! of its own from the pool and holds none while the provider is asked.

use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::payments::{Capture, PaymentError};
use crate::provider::{PaymentProvider, SettleRequest, Settlement};
use crate::stored::{Lock, Payment, PaymentStatus, Settling, Stored, by_order};

/// Captures the order's authorized payment at the provider and books it in the ledger.
/// Idempotent.
#[tracing::instrument(name = "payment capture", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn capture<P: PaymentProvider>(
    pool: &PgPool,
    provider: &P,
    order_id: Uuid,
) -> Result<Capture, PaymentError> {
    let payment = match prepare_capture(pool, order_id).await? {
        Prepared::Finished(capture) => return Ok(capture),
        Prepared::AskProvider(payment) => payment,
    };
    let key = format!("{}:capture", payment.id);
    let asked = provider
        .capture(settle_request(&key, &payment))
        .instrument(psp_span("psp capture"))
        .await?;
    let mut tx = pool.begin().await?;
    let result = match asked {
        Settlement::Done => {
            book(&mut tx, &payment).await?;
            Ok(capture_of(&payment))
        }
        // Nothing is at the provider any more; the payment stays authorized, and the parked
        // command carries the reason.
        Settlement::Refused { reason } => {
            clear(&mut tx, payment.id, Settling::Capture).await?;
            Err(PaymentError::ProviderRefused(reason))
        }
    };
    tx.commit().await?;
    result
}

/// Voids the order's payment, for good, and releases its hold at the provider: an
/// authorization is released; one still pending is cancelled (the void wins; the
/// authorization finishing later finds it voided and says so, and the provider, told to
/// release a hold it may not have placed yet, will not place it); an order with no payment
/// yet gets a tombstone, so that an authorization arriving after the void is refused instead
/// of holding funds for a cancelled order. Idempotent; a declined or voided payment stays as
/// it is, a captured one is refused (it is refunded, not voided).
#[tracing::instrument(name = "payment void", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn void<P: PaymentProvider>(
    pool: &PgPool,
    provider: &P,
    order_id: Uuid,
) -> Result<(), PaymentError> {
    let Some(payment) = prepare_void(pool, order_id).await? else {
        return Ok(());
    };
    let key = format!("{}:void", payment.id);
    let asked = provider
        .void(settle_request(&key, &payment))
        .instrument(psp_span("psp void"))
        .await?;
    let mut tx = pool.begin().await?;
    clear(&mut tx, payment.id, Settling::Void).await?;
    tx.commit().await?;
    match asked {
        Settlement::Done => Ok(()),
        Settlement::Refused { reason } => Err(PaymentError::ProviderRefused(reason)),
    }
}

/// What step 1 of a capture found.
enum Prepared {
    /// Nothing to ask the provider: captured before, or there is nothing held (a free order,
    /// booked now).
    Finished(Capture),
    /// Marked (now or by an earlier attempt); the provider is to be asked.
    AskProvider(Payment),
}

async fn prepare_capture(pool: &PgPool, order_id: Uuid) -> Result<Prepared, PaymentError> {
    let mut tx = pool.begin().await?;
    let payment = match by_order(&mut tx, order_id, Lock::ForUpdate).await? {
        Some(Stored::Payment(payment)) => payment,
        Some(Stored::Tombstone { .. }) => {
            return Err(PaymentError::NotCapturable {
                order_id,
                status: Some(PaymentStatus::Voided),
            });
        }
        None => {
            return Err(PaymentError::NotCapturable {
                order_id,
                status: None,
            });
        }
    };
    match payment.status {
        PaymentStatus::Captured => Ok(Prepared::Finished(capture_of(&payment))),
        PaymentStatus::Pending => Err(PaymentError::InProgress(order_id)),
        status @ (PaymentStatus::Declined | PaymentStatus::Voided) => {
            Err(PaymentError::NotCapturable {
                order_id,
                status: Some(status),
            })
        }
        // A free order holds nothing at the provider and moves nothing.
        PaymentStatus::Authorized if payment.amount_minor == 0 => {
            book(&mut tx, &payment).await?;
            tx.commit().await?;
            Ok(Prepared::Finished(capture_of(&payment)))
        }
        PaymentStatus::Authorized => {
            if payment.settling.is_none() {
                mark(&mut tx, payment.id, Settling::Capture).await?;
                tx.commit().await?;
            }
            Ok(Prepared::AskProvider(payment))
        }
    }
}

/// Step 1 of a void: the payment whose hold the provider is to release, if there is one.
async fn prepare_void(pool: &PgPool, order_id: Uuid) -> Result<Option<Payment>, PaymentError> {
    let mut tx = pool.begin().await?;
    // The tombstone and an authorization's pending payment collide on order_id, so whichever
    // commits second sees the first: no authorization slips past a void unseen.
    let tombstone = sqlx::query(
        "INSERT INTO payments (id, order_id, status) VALUES ($1, $2, 'voided')
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(order_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if tombstone == 1 {
        tx.commit().await?;
        return Ok(None);
    }
    let payment = match by_order(&mut tx, order_id, Lock::ForUpdate).await? {
        Some(Stored::Payment(payment)) => payment,
        Some(Stored::Tombstone { .. }) => return Ok(None),
        None => {
            return Err(PaymentError::Corrupt(format!(
                "order {order_id} conflicts with a payment that is not there"
            )));
        }
    };
    match (payment.status, payment.settling) {
        (PaymentStatus::Captured, _) => Err(PaymentError::AlreadyCaptured(order_id)),
        // Its capture is at the provider; once it is done this void is refused as captured.
        (PaymentStatus::Authorized, Some(Settling::Capture)) => {
            Err(PaymentError::InProgress(order_id))
        }
        (PaymentStatus::Authorized | PaymentStatus::Pending, _) => {
            // A pending payment may hold funds already: its authorization may have reached
            // the provider. Only a free order certainly holds nothing.
            let release = (payment.amount_minor > 0).then_some(Settling::Void);
            sqlx::query(
                "UPDATE payments SET status = 'voided', settling = $2, updated_at = now()
                 WHERE id = $1",
            )
            .bind(payment.id)
            .bind(release)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(release.map(|_| payment))
        }
        (PaymentStatus::Voided, Some(Settling::Void)) => Ok(Some(payment)),
        (PaymentStatus::Voided | PaymentStatus::Declined, _) => Ok(None),
    }
}

/// Turns the authorized payment captured and books the ledger entries, unless another
/// delivery of the same command did so first.
async fn book(conn: &mut PgConnection, payment: &Payment) -> Result<(), PaymentError> {
    let captured = sqlx::query(
        "UPDATE payments SET status = 'captured', settling = NULL, updated_at = now()
         WHERE id = $1 AND status = 'authorized'",
    )
    .bind(payment.id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // A free order moves nothing: no entries, and the ledger balances as it was.
    if captured == 0 || payment.amount_minor == 0 {
        return Ok(());
    }
    // The customer owes the amount; the merchant's revenue grows by it.
    let customer_account = format!("customer:{}", payment.customer_id);
    sqlx::query(
        "INSERT INTO ledger_entries (payment_id, account, amount_minor, currency)
         VALUES ($1, $2, $3, $5), ($1, $4, -$3, $5)",
    )
    .bind(payment.id)
    .bind(customer_account)
    .bind(payment.amount_minor)
    .bind("merchant:revenue")
    .bind(&payment.currency)
    .execute(conn)
    .await?;
    Ok(())
}

async fn mark(conn: &mut PgConnection, id: Uuid, settling: Settling) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET settling = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(settling)
        .execute(conn)
        .await?;
    Ok(())
}

async fn clear(conn: &mut PgConnection, id: Uuid, settling: Settling) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET settling = NULL, updated_at = now() WHERE id = $1 AND settling = $2",
    )
    .bind(id)
    .bind(settling)
    .execute(conn)
    .await?;
    Ok(())
}

fn settle_request<'a>(key: &'a str, payment: &'a Payment) -> SettleRequest<'a> {
    SettleRequest {
        idempotency_key: key,
        hold: &payment.idempotency_key,
        amount_minor: payment.amount_minor,
        currency: &payment.currency,
    }
}

fn capture_of(payment: &Payment) -> Capture {
    Capture {
        payment_id: payment.id,
        amount_minor: payment.amount_minor,
        currency: payment.currency.clone(),
    }
}

/// The provider is an external dependency: a client span, as for any remote call.
fn psp_span(name: &'static str) -> tracing::Span {
    tracing::info_span!(
        "psp",
        otel.name = name,
        otel.kind = "client",
        "peer.service" = "payment-provider",
    )
}
