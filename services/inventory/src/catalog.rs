//! The product catalog: names, prices and how many units are available.

use faultline_proto::contract::{validate_currency, validate_sku};
use sqlx::{FromRow, PgConnection};

/// A product as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Product {
    /// Stock-keeping unit, the product's id.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price of one unit in minor units of `currency`.
    pub unit_price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Units that can still be reserved.
    pub available: i64,
}

/// Creates a product or changes its name and price, and adds stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductUpsert {
    /// Product to create or change.
    pub sku: String,
    /// New display name.
    pub name: String,
    /// New unit price in minor units.
    pub unit_price_minor: i64,
    /// New currency.
    pub currency: String,
    /// Units to add (0 to change only name or price).
    pub add_stock: i64,
}

/// Most products one request may read or write.
pub const MAX_PRODUCTS_PER_REQUEST: usize = 100;

impl ProductUpsert {
    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), String> {
        validate_sku(&self.sku)?;
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(format!("{}: name must be 1 to 200 characters", self.sku));
        }
        if self.unit_price_minor < 0 {
            return Err(format!("{}: unit price must not be negative", self.sku));
        }
        validate_currency(&self.currency).map_err(|e| format!("{}: {e}", self.sku))?;
        if self.add_stock < 0 {
            return Err(format!("{}: add_stock must not be negative", self.sku));
        }
        Ok(())
    }
}

/// The products among `skus` that exist, in SKU order.
pub async fn find(conn: &mut PgConnection, skus: &[String]) -> Result<Vec<Product>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, name, unit_price_minor, currency, available
         FROM products WHERE sku = ANY($1) ORDER BY sku",
    )
    .bind(skus)
    .fetch_all(conn)
    .await
}

/// Applies `upserts` (already validated) and returns the products as they now are.
pub async fn upsert(
    conn: &mut PgConnection,
    upserts: &[ProductUpsert],
) -> Result<Vec<Product>, sqlx::Error> {
    let mut products = Vec::with_capacity(upserts.len());
    for upsert in upserts {
        let product = sqlx::query_as(
            "INSERT INTO products (sku, name, unit_price_minor, currency, available, loaded)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (sku) DO UPDATE SET
                 name = EXCLUDED.name,
                 unit_price_minor = EXCLUDED.unit_price_minor,
                 currency = EXCLUDED.currency,
                 available = products.available + EXCLUDED.available,
                 loaded = products.loaded + EXCLUDED.loaded,
                 updated_at = now()
             RETURNING sku, name, unit_price_minor, currency, available",
        )
        .bind(&upsert.sku)
        .bind(&upsert.name)
        .bind(upsert.unit_price_minor)
        .bind(&upsert.currency)
        .bind(upsert.add_stock)
        .fetch_one(&mut *conn)
        .await?;
        products.push(product);
    }
    Ok(products)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert() -> ProductUpsert {
        ProductUpsert {
            sku: "LAMP-01".into(),
            name: "Desk lamp".into(),
            unit_price_minor: 2_500,
            currency: "EUR".into(),
            add_stock: 10,
        }
    }

    #[test]
    fn a_sound_upsert_passes() {
        assert_eq!(upsert().validate(), Ok(()));
    }

    #[test]
    fn each_rule_names_the_product_and_the_field() {
        let negative_price = ProductUpsert {
            unit_price_minor: -1,
            ..upsert()
        };
        assert!(
            negative_price
                .validate()
                .unwrap_err()
                .contains("unit price")
        );
        let bad_currency = ProductUpsert {
            currency: "euro".into(),
            ..upsert()
        };
        assert!(bad_currency.validate().unwrap_err().contains("currency"));
        let negative_stock = ProductUpsert {
            add_stock: -5,
            ..upsert()
        };
        assert!(negative_stock.validate().unwrap_err().contains("add_stock"));
    }
}
