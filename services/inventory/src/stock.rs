//! Stock reservations: the inventory side of the order saga.
//!
//! Every function runs inside the caller's transaction (the one that also writes the inbox
//! row and the reply), so an answer is sent if and only if its stock change committed.
//!
//! Reservation is all-or-nothing and cannot oversell: the product rows of an order are locked
//! in SKU order (a fixed order, so two orders never deadlock on each other), checked, and only
//! then changed. The table's CHECK constraints stay as the last line of defence.

use std::collections::BTreeMap;

use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

/// One line of a reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Product.
    pub sku: String,
    /// Units, at least 1.
    pub quantity: i64,
}

/// What became of a reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every line is reserved.
    Reserved,
    /// Nothing is reserved, for this reason (safe to show to the customer).
    Rejected {
        /// Why.
        reason: String,
    },
}

/// A command that contradicts what already happened to the order. The saga never sends
/// one, so it is a bug somewhere and the message is parked for a human.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// Committing needs a live reservation.
    #[error("order {order_id} has no reservation to commit (state: {state:?})")]
    NothingToCommit {
        order_id: Uuid,
        /// What the reservation is instead; `None` when there is none.
        state: Option<ReservationState>,
    },
    /// Sold stock is not given back by a release.
    #[error("order {order_id} has committed stock, which cannot be released")]
    AlreadyCommitted { order_id: Uuid },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where an order's reservation is, as the `reservations.state` column holds it (text, with
/// a CHECK naming exactly these). Read into this enum so that every `match` is exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ReservationState {
    /// Stock is held for the order.
    Reserved,
    /// There was not enough stock (or the lines were invalid); nothing is held.
    Rejected,
    /// Given back, or released before any reservation: final, a later reserve is refused.
    Released,
    /// Sold: final.
    Committed,
}

#[derive(Debug, FromRow)]
struct Existing {
    state: ReservationState,
    reason: Option<String>,
}

async fn lock_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Existing>, sqlx::Error> {
    sqlx::query_as("SELECT state, reason FROM reservations WHERE order_id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// Reserves every line for `order_id`, or nothing. Idempotent per order: asking again gives
/// the first answer, and an order whose reservation was released cannot reserve again.
#[tracing::instrument(name = "stock reserve", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn reserve(
    conn: &mut PgConnection,
    order_id: Uuid,
    lines: &[Line],
) -> Result<Reservation, StockError> {
    if let Some(existing) = lock_reservation(conn, order_id).await? {
        return Ok(match existing.state {
            ReservationState::Reserved | ReservationState::Committed => Reservation::Reserved,
            ReservationState::Released => Reservation::Rejected {
                reason: "the order's reservation was already released".into(),
            },
            ReservationState::Rejected => Reservation::Rejected {
                reason: existing.reason.unwrap_or_else(|| "rejected".into()),
            },
        });
    }

    let merged = merge_lines(lines);
    let outcome = match &merged {
        Err(reason) => Reservation::Rejected {
            reason: reason.clone(),
        },
        Ok(wanted) => try_reserve(conn, wanted).await?,
    };

    let (state, reason) = match &outcome {
        Reservation::Reserved => (ReservationState::Reserved, None),
        Reservation::Rejected { reason } => (ReservationState::Rejected, Some(reason.as_str())),
    };
    sqlx::query("INSERT INTO reservations (order_id, state, reason) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(state)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    if let (Reservation::Reserved, Ok(wanted)) = (&outcome, &merged) {
        let skus: Vec<&str> = wanted.keys().copied().collect();
        let quantities: Vec<i64> = wanted.values().copied().collect();
        sqlx::query(
            "INSERT INTO reservation_lines (order_id, sku, quantity)
             SELECT $1, sku, quantity FROM unnest($2::text[], $3::bigint[]) AS l(sku, quantity)",
        )
        .bind(order_id)
        .bind(&skus)
        .bind(&quantities)
        .execute(&mut *conn)
        .await?;
    }
    Ok(outcome)
}

/// Sums quantities per SKU (sorted by SKU) and refuses lines that can never be reserved.
fn merge_lines(lines: &[Line]) -> Result<BTreeMap<&str, i64>, String> {
    if lines.is_empty() {
        return Err("the order has no items".into());
    }
    let mut wanted = BTreeMap::new();
    for line in lines {
        if line.quantity < 1 {
            return Err(format!("quantity for {} must be at least 1", line.sku));
        }
        let total: &mut i64 = wanted.entry(line.sku.as_str()).or_default();
        *total = total
            .checked_add(line.quantity)
            .ok_or_else(|| format!("quantity for {} is too large", line.sku))?;
    }
    Ok(wanted)
}

async fn try_reserve(
    conn: &mut PgConnection,
    wanted: &BTreeMap<&str, i64>,
) -> Result<Reservation, sqlx::Error> {
    let skus: Vec<&str> = wanted.keys().copied().collect();
    let stock: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, available FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(&skus)
    .fetch_all(&mut *conn)
    .await?;
    let stock: BTreeMap<String, i64> = stock.into_iter().collect();

    let mut problems = Vec::new();
    for (sku, quantity) in wanted {
        match stock.get(*sku) {
            None => problems.push(format!("{sku} is not in the catalog")),
            Some(available) if available < quantity => problems.push(format!(
                "{sku}: {quantity} requested, {available} available"
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        return Ok(Reservation::Rejected {
            reason: format!("insufficient stock: {}", problems.join("; ")),
        });
    }

    let quantities: Vec<i64> = wanted.values().copied().collect();
    sqlx::query(
        "UPDATE products p
         SET available = p.available - l.quantity,
             reserved = p.reserved + l.quantity,
             updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) AS l(sku, quantity)
         WHERE p.sku = l.sku",
    )
    .bind(&skus)
    .bind(&quantities)
    .execute(&mut *conn)
    .await?;
    Ok(Reservation::Reserved)
}

/// Gives a reservation back. Idempotent; releasing an order that never reserved records a
/// release, so a late `ReserveStock` for it is refused instead of holding stock forever.
#[tracing::instrument(name = "stock release", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn release(conn: &mut PgConnection, order_id: Uuid) -> Result<(), StockError> {
    match lock_reservation(conn, order_id).await? {
        None => {
            sqlx::query(
                "INSERT INTO reservations (order_id, state, reason)
                 VALUES ($1, $2, 'released before any reservation')",
            )
            .bind(order_id)
            .bind(ReservationState::Released)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        Some(existing) => match existing.state {
            ReservationState::Reserved => {
                move_reserved(conn, order_id, Bucket::Available).await?;
                set_state(conn, order_id, ReservationState::Released).await?;
                Ok(())
            }
            ReservationState::Committed => Err(StockError::AlreadyCommitted { order_id }),
            // Nothing is held.
            ReservationState::Rejected | ReservationState::Released => Ok(()),
        },
    }
}

/// Turns a reservation into sold stock. Idempotent.
#[tracing::instrument(name = "stock commit", skip_all, fields(db.system.name = "postgresql", order.id = %order_id))]
pub async fn commit(conn: &mut PgConnection, order_id: Uuid) -> Result<(), StockError> {
    let state = lock_reservation(conn, order_id).await?.map(|e| e.state);
    match state {
        Some(ReservationState::Reserved) => {
            move_reserved(conn, order_id, Bucket::Sold).await?;
            set_state(conn, order_id, ReservationState::Committed).await?;
            Ok(())
        }
        Some(ReservationState::Committed) => Ok(()),
        Some(ReservationState::Rejected | ReservationState::Released) | None => {
            Err(StockError::NothingToCommit { order_id, state })
        }
    }
}

enum Bucket {
    Available,
    Sold,
}

async fn move_reserved(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: Bucket,
) -> Result<(), sqlx::Error> {
    let update = match to {
        Bucket::Available => {
            "UPDATE products p
             SET reserved = p.reserved - l.quantity, available = p.available + l.quantity,
                 updated_at = now()
             FROM reservation_lines l
             WHERE l.order_id = $1 AND p.sku = l.sku"
        }
        Bucket::Sold => {
            "UPDATE products p
             SET reserved = p.reserved - l.quantity, sold = p.sold + l.quantity,
                 updated_at = now()
             FROM reservation_lines l
             WHERE l.order_id = $1 AND p.sku = l.sku"
        }
    };
    // Lock in SKU order first, as reserve() does, so concurrent orders cannot deadlock.
    sqlx::query(
        "SELECT 1 FROM products WHERE sku IN
           (SELECT sku FROM reservation_lines WHERE order_id = $1)
         ORDER BY sku FOR UPDATE",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(update).bind(order_id).execute(conn).await?;
    Ok(())
}

async fn set_state(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: ReservationState,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET state = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64) -> Line {
        Line {
            sku: sku.into(),
            quantity,
        }
    }

    #[test]
    fn lines_of_one_sku_are_summed_and_sorted() {
        let lines = [line("B", 1), line("A", 2), line("B", 3)];
        let merged = merge_lines(&lines).unwrap();
        assert_eq!(
            merged.into_iter().collect::<Vec<_>>(),
            vec![("A", 2), ("B", 4)]
        );
    }

    #[test]
    fn empty_or_non_positive_lines_are_rejected_with_a_reason() {
        assert!(merge_lines(&[]).unwrap_err().contains("no items"));
        assert!(
            merge_lines(&[line("A", 0)])
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            merge_lines(&[line("A", i64::MAX), line("A", 1)])
                .unwrap_err()
                .contains("too large")
        );
    }
}
