//! What happens to an authorization once the order is decided: captured into the ledger when
//! the order is confirmed, voided when it is cancelled.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::payments::{Capture, PaymentError};
use crate::stored::{PaymentStatus, by_order_for_update};

/// Captures the order's authorized payment and books it in the ledger. Idempotent.
#[tracing::instrument(name = "payment capture", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn capture(conn: &mut PgConnection, order_id: Uuid) -> Result<Capture, PaymentError> {
    let Some(payment) = by_order_for_update(conn, order_id).await? else {
        return Err(PaymentError::NotCapturable {
            order_id,
            status: None,
        });
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

/// Releases the order's authorization. Idempotent; voiding an order without an authorized
/// payment (never authorized, declined, already voided) changes nothing.
#[tracing::instrument(name = "payment void", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn void(conn: &mut PgConnection, order_id: Uuid) -> Result<(), PaymentError> {
    let Some(payment) = by_order_for_update(conn, order_id).await? else {
        return Ok(());
    };
    match payment.status {
        PaymentStatus::Authorized => {
            sqlx::query("UPDATE payments SET status = 'voided', updated_at = now() WHERE id = $1")
                .bind(payment.id)
                .execute(conn)
                .await?;
            Ok(())
        }
        PaymentStatus::Captured => Err(PaymentError::AlreadyCaptured(order_id)),
        PaymentStatus::Pending | PaymentStatus::Declined | PaymentStatus::Voided => Ok(()),
    }
}
