//! Placing and reading orders.
//!
//! A request is parsed once into a [`PlaceOrder`] (every rule checked, every broken one
//! reported). Placing it prices it from the catalog ([`crate::pricing`]) and writes the
//! order, its lines, its saga and the saga's first command in one transaction: the order
//! exists if and only if its saga has started.

use chrono::{DateTime, Utc};
use faultline_domain::{CustomerId, Sku};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError};
use crate::orchestrator::{Orchestrator, OrderFacts};
use crate::pricing::{Priced, price};

/// Most lines in one order.
pub const MAX_LINES: usize = 50;
/// Most units of one product in one order.
pub const MAX_QUANTITY: i64 = 1_000;

/// A request to place an order, parsed ([`PlaceOrder::parse`]): every rule holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    customer_id: CustomerId,
    lines: Vec<OrderLine>,
}

/// One requested line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// The product; no other line of the order names it.
    pub sku: Sku,
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
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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

impl PlaceOrder {
    /// Parses an order of `items` (SKU, quantity) for `customer` (the authenticated caller,
    /// never a field of the request body), reporting every broken rule at once.
    pub fn parse(
        customer: &str,
        items: impl IntoIterator<Item = (String, i64)>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let customer_id = match CustomerId::parse(customer) {
            Ok(id) => Some(id),
            Err(e) => {
                errors.push(FieldError::new("sub", format!("the token's subject: {e}")));
                None
            }
        };
        let items: Vec<(String, i64)> = items.into_iter().collect();
        if items.is_empty() {
            errors.push(FieldError::new("items", "must contain at least one item"));
        }
        if items.len() > MAX_LINES {
            errors.push(FieldError::new(
                "items",
                format!("must contain at most {MAX_LINES} items"),
            ));
        }
        let mut lines: Vec<OrderLine> = Vec::with_capacity(items.len());
        for (i, (sku, quantity)) in items.into_iter().enumerate() {
            let sku = match Sku::parse(sku) {
                Err(e) => {
                    errors.push(FieldError::new(format!("items[{i}].sku"), e.to_string()));
                    None
                }
                Ok(sku) if lines.iter().any(|earlier| earlier.sku == sku) => {
                    errors.push(FieldError::new(
                        format!("items[{i}].sku"),
                        format!("{sku} appears more than once; use one line per product"),
                    ));
                    None
                }
                Ok(sku) => Some(sku),
            };
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                errors.push(FieldError::new(
                    format!("items[{i}].quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            lines.extend(sku.map(|sku| OrderLine { sku, quantity }));
        }
        match customer_id {
            Some(customer_id) if errors.is_empty() => Ok(Self { customer_id, lines }),
            _ => Err(errors),
        }
    }

    /// Who orders.
    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }

    /// What, in which quantities: at least one line.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }
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

/// Prices and writes `order` (already parsed) and starts its saga, in one transaction that the
/// caller commits ([`PendingOrder::commit`]). Dropping the result rolls everything back.
#[tracing::instrument(name = "order place", skip_all, fields(order.id = tracing::field::Empty, customer.id = %order.customer_id()))]
pub async fn place<C: Catalog>(
    pool: &PgPool,
    catalog: &C,
    orchestrator: &Orchestrator,
    order: PlaceOrder,
) -> Result<PendingOrder, PlaceOrderError> {
    let skus: Vec<String> = order.lines.iter().map(|l| l.sku.to_string()).collect();
    let lookup = catalog
        .lookup(&skus, Some(order.customer_id.as_str()))
        .await?;
    if !lookup.missing.is_empty() {
        return Err(PlaceOrderError::UnknownSkus(lookup.missing));
    }
    let Priced { lines, total } = price(&order.lines, &lookup.found)?;

    let order_id = Uuid::now_v7();
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, total_minor, currency)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(order_id)
    .bind(order.customer_id.as_str())
    .bind(OrderStatus::Pending)
    .bind(total.minor())
    .bind(total.currency().as_str())
    .execute(&mut *tx)
    .await?;
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price.minor()).collect();
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
        customer_id: order.customer_id.to_string(),
        total_minor: total.minor(),
        currency: total.currency().to_string(),
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

    fn parse(customer: &str, lines: &[(&str, i64)]) -> Result<PlaceOrder, Vec<FieldError>> {
        PlaceOrder::parse(customer, lines.iter().map(|(s, q)| ((*s).to_owned(), *q)))
    }

    fn order(lines: &[(&str, i64)]) -> PlaceOrder {
        parse("customer-1", lines).unwrap()
    }

    fn fields(result: Result<PlaceOrder, Vec<FieldError>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_sound_order_parses() {
        let order = order(&[("LAMP-01", 1), ("DESK-02", 3)]);
        assert_eq!(order.customer_id().as_str(), "customer-1");
        assert_eq!(order.lines().len(), 2);
    }

    #[test]
    fn every_broken_rule_is_reported_with_its_field() {
        let bad = parse(
            "",
            &[
                ("LAMP 01", 0),
                ("DESK-02", MAX_QUANTITY + 1),
                ("DESK-02", 1),
            ],
        );
        assert_eq!(
            fields(bad),
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
        assert_eq!(fields(parse("customer-1", &[])), vec!["items"]);
    }

    #[test]
    fn too_many_lines_are_invalid() {
        let skus: Vec<String> = (0..=MAX_LINES).map(|i| format!("SKU-{i}")).collect();
        let lines: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 1)).collect();
        assert_eq!(fields(parse("customer-1", &lines)), vec!["items"]);
    }
}
