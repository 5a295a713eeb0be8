//! The product catalog: names, prices and how many units are available.

use faultline_domain::{Currency, Money, Sku};
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

/// Creates a product or changes its name and price, and adds stock. Parsed
/// ([`ProductUpsert::parse`]): every field holds its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductUpsert {
    sku: Sku,
    name: String,
    unit_price: Money,
    add_stock: i64,
}

/// Most products one request may read or write.
pub const MAX_PRODUCTS_PER_REQUEST: usize = 100;

/// Longest display name.
pub const MAX_NAME_LEN: usize = 200;

impl ProductUpsert {
    /// Parses one product of an upsert request; the error names the product and the rule.
    pub fn parse(
        sku: String,
        name: String,
        unit_price_minor: i64,
        currency: &str,
        add_stock: i64,
    ) -> Result<Self, String> {
        let sku = Sku::parse(sku).map_err(|e| e.to_string())?;
        if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
            return Err(format!(
                "{sku}: name must be 1 to {MAX_NAME_LEN} characters"
            ));
        }
        let currency = Currency::parse(currency).map_err(|e| format!("{sku}: {e}"))?;
        let unit_price = Money::new(unit_price_minor, currency)
            .map_err(|_| format!("{sku}: unit price must not be negative"))?;
        if add_stock < 0 {
            return Err(format!("{sku}: add_stock must not be negative"));
        }
        Ok(Self {
            sku,
            name,
            unit_price,
            add_stock,
        })
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
        .bind(upsert.sku.as_str())
        .bind(&upsert.name)
        .bind(upsert.unit_price.minor())
        .bind(upsert.unit_price.currency().as_str())
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

    fn parse(price: i64, currency: &str, add_stock: i64) -> Result<ProductUpsert, String> {
        ProductUpsert::parse(
            "LAMP-01".into(),
            "Desk lamp".into(),
            price,
            currency,
            add_stock,
        )
    }

    #[test]
    fn a_sound_upsert_parses() {
        let upsert = parse(2_500, "EUR", 10).unwrap();
        assert_eq!(upsert.unit_price.minor(), 2_500);
        assert_eq!(upsert.unit_price.currency().as_str(), "EUR");
    }

    #[test]
    fn each_rule_names_the_product_and_the_field() {
        assert!(parse(-1, "EUR", 10).unwrap_err().contains("unit price"));
        assert!(parse(1, "euro", 10).unwrap_err().contains("currency"));
        assert!(parse(1, "EUR", -5).unwrap_err().contains("add_stock"));
        let nameless = ProductUpsert::parse("LAMP-01".into(), " ".into(), 1, "EUR", 0);
        assert!(nameless.unwrap_err().contains("LAMP-01: name"));
        let bad_sku = ProductUpsert::parse("LAMP 01".into(), "Lamp".into(), 1, "EUR", 0);
        assert!(bad_sku.unwrap_err().contains("sku"));
    }
}
