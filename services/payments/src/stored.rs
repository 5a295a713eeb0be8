//! Payments as the database keeps them: the status type, the row, and the lookups.

use std::fmt;

use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::payments::PaymentError;

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

/// A provider call a payment waits for (migration 0006): written, and committed, before the
/// provider is asked, and cleared by the local write its answer makes. A retry after a crash
/// in between finds it and asks again under the same key, so the provider acts once and
/// payments never forgets that it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub(crate) enum Settling {
    /// A capture of the authorized payment's hold.
    Capture,
    /// The release of a voided payment's hold.
    Void,
}

/// A payment: a row of `payments` with its terms.
#[derive(Debug)]
pub(crate) struct Payment {
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    /// The authorization's key, which also names its hold at the provider.
    pub(crate) idempotency_key: String,
    pub(crate) customer_id: String,
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    pub(crate) status: PaymentStatus,
    pub(crate) decline_reason: Option<String>,
    pub(crate) settling: Option<Settling>,
}

/// What `payments` holds for an order.
#[derive(Debug)]
pub(crate) enum Stored {
    Payment(Payment),
    /// What a void leaves for an order that had no payment yet (migration 0004): the order is
    /// voided, and no payment will ever be authorized for it.
    Tombstone {
        /// The row's id.
        id: Uuid,
    },
}

impl Stored {
    /// The row's id and status.
    pub(crate) fn status(&self) -> (Uuid, PaymentStatus) {
        match self {
            Self::Payment(payment) => (payment.id, payment.status),
            Self::Tombstone { id } => (*id, PaymentStatus::Voided),
        }
    }
}

/// A row as read; the table's CHECK guarantees terms on every row but tombstones.
#[derive(Debug, FromRow)]
struct Row {
    id: Uuid,
    order_id: Uuid,
    idempotency_key: Option<String>,
    customer_id: Option<String>,
    amount_minor: Option<i64>,
    currency: Option<String>,
    status: PaymentStatus,
    decline_reason: Option<String>,
    settling: Option<Settling>,
}

impl Row {
    fn into_stored(self) -> Result<Stored, PaymentError> {
        let terms = (
            self.idempotency_key,
            self.customer_id,
            self.amount_minor,
            self.currency,
        );
        match terms {
            (Some(idempotency_key), Some(customer_id), Some(amount_minor), Some(currency)) => {
                Ok(Stored::Payment(Payment {
                    id: self.id,
                    order_id: self.order_id,
                    idempotency_key,
                    customer_id,
                    amount_minor,
                    currency,
                    status: self.status,
                    decline_reason: self.decline_reason,
                    settling: self.settling,
                }))
            }
            (None, None, None, None) if self.status == PaymentStatus::Voided => {
                Ok(Stored::Tombstone { id: self.id })
            }
            _ => Err(PaymentError::Corrupt(format!(
                "payment {} has partial terms",
                self.id
            ))),
        }
    }

    fn into_payment(self) -> Result<Payment, PaymentError> {
        let id = self.id;
        match self.into_stored()? {
            Stored::Payment(payment) => Ok(payment),
            Stored::Tombstone { .. } => Err(PaymentError::Corrupt(format!(
                "tombstone {id} was found as a payment"
            ))),
        }
    }
}

/// The payment made under `key`. Tombstones have no key, so this is always a payment.
pub(crate) async fn by_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<Payment>, PaymentError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, order_id, idempotency_key, customer_id, amount_minor, currency, status,
                decline_reason, settling
         FROM payments WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(Row::into_payment).transpose()
}

/// The payment with `id`.
pub(crate) async fn by_id(conn: &mut PgConnection, id: Uuid) -> Result<Payment, PaymentError> {
    let row: Row = sqlx::query_as(
        "SELECT id, order_id, idempotency_key, customer_id, amount_minor, currency, status,
                decline_reason, settling
         FROM payments WHERE id = $1",
    )
    .bind(id)
    .fetch_one(conn)
    .await?;
    row.into_payment()
}

/// What the order has, locked until the end of the transaction if `lock`.
pub(crate) async fn by_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    lock: Lock,
) -> Result<Option<Stored>, PaymentError> {
    let query = match lock {
        Lock::ForUpdate => {
            "SELECT id, order_id, idempotency_key, customer_id, amount_minor, currency, status,
                decline_reason, settling
             FROM payments WHERE order_id = $1 FOR UPDATE"
        }
        Lock::None => {
            "SELECT id, order_id, idempotency_key, customer_id, amount_minor, currency, status,
                decline_reason, settling
             FROM payments WHERE order_id = $1"
        }
    };
    let row: Option<Row> = sqlx::query_as(query)
        .bind(order_id)
        .fetch_optional(conn)
        .await?;
    row.map(Row::into_stored).transpose()
}

/// Whether [`by_order`] locks the row it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// `FOR UPDATE`: the caller changes the row.
    ForUpdate,
    /// A plain read.
    None,
}
