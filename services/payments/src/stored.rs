//! Payments as the database keeps them: the status type, the row, and the lookups.

use std::fmt;

use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

/// Where a payment stands. Stored as the Postgres enum `payment_status` (migration 0003), so
/// the database refuses a status this type does not name, and every `match` on it is
/// exhaustive: a new status cannot fall into some other status's arm unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "payment_status", rename_all = "lowercase")]
pub enum PaymentStatus {
    /// Written before the provider is asked; its decision is not recorded yet.
    Pending,
    /// Funds are held.
    Authorized,
    /// The provider refused.
    Declined,
    /// The held funds were moved, and the ledger has the entries.
    Captured,
    /// The hold was released; final.
    Voided,
}

impl PaymentStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Authorized => "authorized",
            Self::Declined => "declined",
            Self::Captured => "captured",
            Self::Voided => "voided",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `payments`.
#[derive(Debug, FromRow)]
pub(crate) struct Payment {
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) status: PaymentStatus,
    pub(crate) decline_reason: Option<String>,
}

pub(crate) async fn by_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, customer_id, amount_minor, currency, status, decline_reason
         FROM payments WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub(crate) async fn by_order_for_update(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, customer_id, amount_minor, currency, status, decline_reason
         FROM payments WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await
}
