//! Pricing an order: the catalog's unit prices times the quantities, summed in one currency.
//! Pure, so that every rule is a unit test; `orders::place` calls it between the catalog
//! lookup and the inserts.

use faultline_domain::{Currency, Money, MoneyError, Sku};

use crate::catalog::CatalogItem;
use crate::orders::{FieldError, OrderLine, PlaceOrderError};

/// An order priced from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// Each line with the price it was sold at.
    pub lines: Vec<PricedLine>,
    /// Their sum.
    pub total: Money,
}

/// Prices `lines` from the catalog's `found` items: one currency for the whole order and a
/// total that fits, or the reason why not.
pub fn price(lines: &[OrderLine], found: &[CatalogItem]) -> Result<Priced, PlaceOrderError> {
    let unpriceable = |e: MoneyError| match e {
        MoneyError::CurrencyMismatch(..) => {
            PlaceOrderError::Unpriceable("the items are priced in different currencies".into())
        }
        MoneyError::Overflow => PlaceOrderError::Unpriceable("the order total is too large".into()),
        MoneyError::Negative => PlaceOrderError::Unpriceable("a price is negative".into()),
    };
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: Option<Money> = None;
    for line in lines {
        let Some(item) = found.iter().find(|item| item.sku == line.sku.as_str()) else {
            return Err(PlaceOrderError::UnknownSkus(vec![line.sku.to_string()]));
        };
        let currency = Currency::parse(&item.currency)
            .map_err(|e| PlaceOrderError::Unpriceable(format!("{}: {e}", line.sku)))?;
        let unit = Money::new(item.unit_price_minor, currency).map_err(unpriceable)?;
        let line_total = unit.checked_times(line.quantity).map_err(unpriceable)?;
        total = Some(match total {
            None => line_total,
            Some(sum) => sum.checked_add(line_total).map_err(unpriceable)?,
        });
        priced.push(PricedLine {
            sku: line.sku.clone(),
            name: item.name.clone(),
            quantity: line.quantity,
            unit_price: unit,
        });
    }
    let total = total.ok_or_else(|| {
        PlaceOrderError::Invalid(vec![FieldError::new(
            "items",
            "must contain at least one item",
        )])
    })?;
    Ok(Priced {
        lines: priced,
        total,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    /// The product.
    pub sku: Sku,
    /// Its name when ordered.
    pub name: String,
    /// Units.
    pub quantity: i64,
    /// Its price when ordered.
    pub unit_price: Money,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::PlaceOrder;

    fn order(lines: &[(&str, i64)]) -> PlaceOrder {
        PlaceOrder::parse(
            "customer-1",
            lines.iter().map(|(s, q)| ((*s).to_owned(), *q)),
        )
        .unwrap()
    }

    fn item(sku: &str, price: i64, currency: &str) -> CatalogItem {
        CatalogItem {
            sku: sku.into(),
            name: format!("the {sku}"),
            unit_price_minor: price,
            currency: currency.into(),
            available: 10,
        }
    }

    #[test]
    fn the_total_is_the_sum_of_quantity_times_unit_price() {
        let order = order(&[("LAMP-01", 2), ("DESK-02", 3)]);
        let found = [
            item("DESK-02", 10_000, "EUR"),
            item("LAMP-01", 1_999, "EUR"),
        ];
        let priced = price(order.lines(), &found).unwrap();
        assert_eq!(priced.total.minor(), 2 * 1_999 + 3 * 10_000);
        assert_eq!(priced.total.currency().as_str(), "EUR");
        assert_eq!(priced.lines[0].sku.as_str(), "LAMP-01");
        assert_eq!(priced.lines[0].unit_price.minor(), 1_999);
    }

    #[test]
    fn a_free_order_prices_to_zero() {
        let priced = price(
            order(&[("GIFT-01", 3)]).lines(),
            &[item("GIFT-01", 0, "EUR")],
        );
        assert!(priced.unwrap().total.is_zero());
    }

    #[test]
    fn mixed_currencies_and_overflowing_totals_are_unpriceable() {
        let order = order(&[("LAMP-01", 1), ("DESK-02", 1)]);
        let mixed = [item("LAMP-01", 1, "EUR"), item("DESK-02", 1, "USD")];
        assert!(matches!(
            price(order.lines(), &mixed),
            Err(PlaceOrderError::Unpriceable(reason)) if reason.contains("currencies")
        ));
        let huge = [item("LAMP-01", i64::MAX, "EUR"), item("DESK-02", 1, "EUR")];
        assert!(matches!(
            price(order.lines(), &huge),
            Err(PlaceOrderError::Unpriceable(reason)) if reason.contains("too large")
        ));
    }

    #[test]
    fn a_line_the_catalog_did_not_return_is_unknown() {
        let result = price(order(&[("LAMP-01", 1)]).lines(), &[]);
        assert!(matches!(result, Err(PlaceOrderError::UnknownSkus(skus)) if skus == ["LAMP-01"]));
    }
}
