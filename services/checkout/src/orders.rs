//! Placing and reading orders.
//!
//! Placing an order validates it, prices it from the catalog, and writes the order, its
//! lines, its saga and the saga's first command in one transaction: the order exists if and
//! only if its saga has started.

use chrono::{DateTime, Utc};
use faultline_proto::contract::validate_sku;
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError};
use crate::orchestrator::{Orchestrator, OrderFacts};

/// Most lines in one order.
pub const MAX_LINES: usize = 50;
/// Most units of one product in one order.
pub const MAX_QUANTITY: i64 = 1_000;
/// Longest customer id (the token's subject).
pub const MAX_CUSTOMER_ID_LEN: usize = 255;

/// A request to place an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    /// Who orders: the authenticated caller, never a field of the request body.
    pub customer_id: String,
    /// What, in which quantities.
    pub lines: Vec<OrderLine>,
}

/// One requested line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// Units, 1 to [`MAX_QUANTITY`].
    pub quantity: i64,
}

/// One broken rule, with the path of the field that breaks it (`items[2].quantity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an order was not placed. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum PlaceOrderError {
    /// The request breaks one or more rules.
    #[error("the order is invalid")]
    Invalid(Vec<FieldError>),
    /// The catalog does not know these SKUs.
    #[error("unknown products: {}", .0.join(", "))]
    UnknownSkus(Vec<String>),
    /// The items cannot be priced together.
    #[error("{0}")]
    Unpriceable(String),
    /// The catalog could not be asked.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Checks every rule and reports all broken ones at once.
pub fn validate(order: &PlaceOrder) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let customer = &order.customer_id;
    if customer.is_empty()
        || customer.len() > MAX_CUSTOMER_ID_LEN
        || !customer.bytes().all(|b| b.is_ascii_graphic())
    {
        errors.push(FieldError::new(
            "sub",
            format!(
                "the token's subject must be 1 to {MAX_CUSTOMER_ID_LEN} visible ASCII characters"
            ),
        ));
    }
    if order.lines.is_empty() {
        errors.push(FieldError::new("items", "must contain at least one item"));
    }
    if order.lines.len() > MAX_LINES {
        errors.push(FieldError::new(
            "items",
            format!("must contain at most {MAX_LINES} items"),
        ));
    }
    for (i, line) in order.lines.iter().enumerate() {
        if let Err(message) = validate_sku(&line.sku) {
            errors.push(FieldError::new(format!("items[{i}].sku"), message));
        } else if order.lines[..i]
            .iter()
            .any(|earlier| earlier.sku == line.sku)
        {
            errors.push(FieldError::new(
                format!("items[{i}].sku"),
                format!(
                    "{} appears more than once; use one line per product",
                    line.sku
                ),
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            errors.push(FieldError::new(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

struct PricedLine {
    sku: String,
    name: String,
    quantity: i64,
    unit_price_minor: i64,
}

/// An order written in a transaction that is not committed yet, so the caller can add what
/// must commit with it (the idempotency record of the request that placed it).
#[derive(Debug)]
pub struct PendingOrder {
    /// The new order's id.
    pub id: Uuid,
    tx: Transaction<'static, Postgres>,
}

impl PendingOrder {
    /// The open transaction, to write more in it.
    pub fn transaction(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits the order, its saga and whatever else was written; returns the order's id.
    pub async fn commit(self) -> Result<Uuid, sqlx::Error> {
        self.tx.commit().await?;
        tracing::info!(order_id = %self.id, "order placed");
        Ok(self.id)
    }
}

/// Validates, prices and writes `order` and starts its saga, in one transaction that the
/// caller commits ([`PendingOrder::commit`]). Dropping the result rolls everything back.
#[tracing::instrument(name = "order place", skip_all, fields(order.id = tracing::field::Empty, customer.id = %order.customer_id))]
pub async fn place<C: Catalog>(
    pool: &PgPool,
    catalog: &C,
    orchestrator: &Orchestrator,
    order: PlaceOrder,
) -> Result<PendingOrder, PlaceOrderError> {
    validate(&order).map_err(PlaceOrderError::Invalid)?;
    let skus: Vec<String> = order.lines.iter().map(|l| l.sku.clone()).collect();
    let lookup = catalog.lookup(&skus, Some(&order.customer_id)).await?;
    if !lookup.missing.is_empty() {
        return Err(PlaceOrderError::UnknownSkus(lookup.missing));
    }

    let mut priced = Vec::with_capacity(order.lines.len());
    let mut currency: Option<&str> = None;
    let mut total: i64 = 0;
    for line in &order.lines {
        let Some(item) = lookup.found.iter().find(|item| item.sku == line.sku) else {
            return Err(PlaceOrderError::UnknownSkus(vec![line.sku.clone()]));
        };
        match currency {
            None => currency = Some(&item.currency),
            Some(c) if c != item.currency => {
                return Err(PlaceOrderError::Unpriceable(
                    "the items are priced in different currencies".into(),
                ));
            }
            Some(_) => {}
        }
        total = line
            .quantity
            .checked_mul(item.unit_price_minor)
            .and_then(|line_total| total.checked_add(line_total))
            .ok_or_else(|| PlaceOrderError::Unpriceable("the order total is too large".into()))?;
        priced.push(PricedLine {
            sku: line.sku.clone(),
            name: item.name.clone(),
            quantity: line.quantity,
            unit_price_minor: item.unit_price_minor,
        });
    }
    let currency = currency
        .ok_or_else(|| {
            PlaceOrderError::Invalid(vec![FieldError::new(
                "items",
                "must contain at least one item",
            )])
        })?
        .to_owned();

    let order_id = Uuid::now_v7();
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, total_minor, currency)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order_id)
    .bind(&order.customer_id)
    .bind(OrderStatus::Pending)
    .bind(total)
    .bind(&currency)
    .execute(&mut *tx)
    .await?;
    let skus: Vec<&str> = priced.iter().map(|l| l.sku.as_str()).collect();
    let names: Vec<&str> = priced.iter().map(|l| l.name.as_str()).collect();
    let quantities: Vec<i64> = priced.iter().map(|l| l.quantity).collect();
    let prices: Vec<i64> = priced.iter().map(|l| l.unit_price_minor).collect();
    sqlx::query(
        "INSERT INTO order_items (order_id, sku, name, quantity, unit_price_minor)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])",
    )
    .bind(order_id)
    .bind(&skus)
    .bind(&names)
    .bind(&quantities)
    .bind(&prices)
    .execute(&mut *tx)
    .await?;
    let facts = OrderFacts {
        customer_id: order.customer_id.clone(),
        total_minor: total,
        currency: currency.clone(),
        created_at: chrono::Utc::now(),
    };
    orchestrator.start(&mut tx, order_id, &facts).await?;
    Ok(PendingOrder { id: order_id, tx })
}

/// Where an order stands. The column stays `text` (its CHECK constraint already refuses any
/// other value, and old and new builds read it alike); the code reads it into this enum, so
/// every `match` on a status is exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Placed; its saga is running.
    Pending,
    /// Stock committed and payment captured, or on their way: final.
    Confirmed,
    /// Compensated, with a cancellation code: final.
    Cancelled,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Order {
    /// Its id.
    pub id: Uuid,
    /// Who ordered.
    pub customer_id: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// Sum of the lines, minor units.
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Set when cancelled: a stable code.
    pub cancellation_code: Option<String>,
    /// Set when cancelled: why, for people.
    pub cancellation_reason: Option<String>,
    /// When placed.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// The lines.
    #[sqlx(skip)]
    pub items: Vec<OrderItem>,
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct OrderItem {
    /// The product.
    pub sku: String,
    /// Its name when ordered.
    pub name: String,
    /// Units.
    pub quantity: i64,
    /// Its price when ordered.
    pub unit_price_minor: i64,
}

/// The order `id`, if it exists.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let order: Option<Order> = sqlx::query_as(
        "SELECT id, customer_id, status, total_minor, currency, cancellation_code,
                cancellation_reason, created_at, updated_at
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(mut order) = order else {
        return Ok(None);
    };
    order.items = sqlx::query_as(
        "SELECT sku, name, quantity, unit_price_minor FROM order_items
         WHERE order_id = $1 ORDER BY sku",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(order))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(&str, i64)]) -> PlaceOrder {
        PlaceOrder {
            customer_id: "customer-1".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
        }
    }

    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_sound_order_passes() {
        assert_eq!(validate(&order(&[("LAMP-01", 1), ("DESK-02", 3)])), Ok(()));
    }

    #[test]
    fn every_broken_rule_is_reported_with_its_field() {
        let mut bad = order(&[
            ("LAMP 01", 0),
            ("DESK-02", MAX_QUANTITY + 1),
            ("DESK-02", 1),
        ]);
        bad.customer_id = String::new();
        assert_eq!(
            fields(validate(&bad)),
            vec![
                "sub",
                "items[0].sku",
                "items[0].quantity",
                "items[1].quantity",
                "items[2].sku",
            ]
        );
    }

    #[test]
    fn an_empty_order_is_invalid() {
        assert_eq!(fields(validate(&order(&[]))), vec!["items"]);
    }

    #[test]
    fn too_many_lines_are_invalid() {
        let skus: Vec<String> = (0..=MAX_LINES).map(|i| format!("SKU-{i}")).collect();
        let lines: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 1)).collect();
        assert_eq!(fields(validate(&order(&lines))), vec!["items"]);
    }
}
