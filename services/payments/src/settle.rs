//! What happens to an authorization once the order is decided: captured into the ledger when
//! the order is confirmed, voided when it is cancelled.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::payments::{Capture, PaymentError};
use crate::stored::{Lock, PaymentStatus, Stored, by_order};

/// Captures the order's authorized payment and books it in the ledger. Idempotent.
#[tracing::instrument(name = "payment capture", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn capture(conn: &mut PgConnection, order_id: Uuid) -> Result<Capture, PaymentError> {
    let payment = match by_order(conn, order_id, Lock::ForUpdate).await? {
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
    let capture = Capture {
        payment_id: payment.id,
        amount_minor: payment.amount_minor,
        currency: payment.currency.clone(),
    };
    match payment.status {
        PaymentStatus::Captured => Ok(capture),
        PaymentStatus::Pending => Err(PaymentError::InProgress(order_id)),
        PaymentStatus::Authorized => {
            sqlx::query(
                "UPDATE payments SET status = 'captured', updated_at = now() WHERE id = $1",
            )
            .bind(payment.id)
            .execute(&mut *conn)
            .await?;
            // A free order moves nothing: no entries, and the ledger balances as it was.
            if payment.amount_minor == 0 {
                return Ok(capture);
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
            .execute(&mut *conn)
            .await?;
            Ok(capture)
        }
        status @ (PaymentStatus::Declined | PaymentStatus::Voided) => {
            Err(PaymentError::NotCapturable {
                order_id,
                status: Some(status),
            })
        }
    }
}

/// Voids the order's payment, for good: releases an authorization, cancels one still pending
/// (the void wins; the authorization finishing later finds it voided and says so), and for
/// an order with no payment yet leaves a tombstone, so that an authorization arriving after
/// the void is refused instead of holding funds for a cancelled order. Idempotent; a
/// declined or voided payment stays as it is, a captured one is refused (it is refunded,
/// not voided).
#[tracing::instrument(name = "payment void", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn void(conn: &mut PgConnection, order_id: Uuid) -> Result<(), PaymentError> {
    // The tombstone and an authorization's pending payment collide on order_id, so whichever
    // commits second sees the first: no authorization slips past a void unseen.
    let tombstone = sqlx::query(
        "INSERT INTO payments (id, order_id, status) VALUES ($1, $2, 'voided')
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(order_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if tombstone == 1 {
        return Ok(());
    }
    let Some(stored) = by_order(conn, order_id, Lock::ForUpdate).await? else {
        return Err(PaymentError::Corrupt(format!(
            "order {order_id} conflicts with a payment that is not there"
        )));
    };
    let (payment_id, status) = stored.status();
    match status {
        PaymentStatus::Authorized | PaymentStatus::Pending => {
            sqlx::query("UPDATE payments SET status = 'voided', updated_at = now() WHERE id = $1")
                .bind(payment_id)
                .execute(conn)
                .await?;
            Ok(())
        }
        PaymentStatus::Captured => Err(PaymentError::AlreadyCaptured(order_id)),
        PaymentStatus::Declined | PaymentStatus::Voided => Ok(()),
    }
}
